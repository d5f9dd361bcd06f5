"""MPO, RTN and MPO+RTN on the bundled model: held-out perplexity against bits/weight, and MPOLinear speed.

    .venv/bin/python benchmarks/bench_mpo.py [--tokens 4096] [--png benchmarks/mpo_tradeoff.png]
                                             [--smoke all|LABEL,LABEL --smoke-limit 10]

MPO runs at fixed bond caps and at the compression ratio that gives exactly each RTN cell's bits/weight
(16 x ratio); MPO+RTN (central core at 4 or 8 bits, auxiliary cores at 8, groups of 32) at the ratio that
lands next to the same bits/weight. Prints a Markdown table row by row and writes the plot.
``--smoke`` also runs the smoke suite on the named cells through the evaluation pipeline (records in
results/bench-mpo/, resumable; about 7 minutes a cell at limit 10 on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from evalsuite.load.models import load, resolve
from quant import NoQuant, QuantConfig, quantize_
from evalsuite.run.heldout import heldout_ids, perplexity
from quant.mpo import MPOConfig, MPOLinear, MPORTNConfig
from quant.mpo_tensor import layer_factors, matrix2mpo
from quant.rtn import RTNConfig, storage_bits

MODEL = "smollm2-135m"
RTN_CELLS = ((8, 64), (4, 32), (3, 32), (2, 32))  # (bits, group); 576 = hidden size takes groups of 32 or 64
BOND_CAPS = (16, 32, 64, 128)
CORE_GROUP = 32
RESULTS = Path(__file__).resolve().parent.parent / "results"


def cells() -> list[tuple[str, QuantConfig]]:
    out: list[tuple[str, QuantConfig]] = [("16-bit", NoQuant())]
    out += [("RTN", RTNConfig(bits=b, group_size=g)) for b, g in RTN_CELLS]
    out += [("MPO, bond cap", MPOConfig(bond_dim=d)) for d in BOND_CAPS]
    out.append(("MPO, error budget", MPOConfig(rel_error=0.3)))
    for b, g in RTN_CELLS:
        bpw = storage_bits((1, g), b, g, sym=False) / g
        out.append(("MPO at RTN's bits/weight", MPOConfig(mpo_ratio=round(bpw / 16, 4))))
        core_bits = 8 if b == 8 else 4
        core_bpw = storage_bits((1, CORE_GROUP), core_bits, CORE_GROUP, sym=False) / CORE_GROUP
        out.append(("MPO+RTN near RTN's bits/weight", MPORTNConfig(
            mpo_ratio=min(1.0, round(bpw / core_bpw, 4)), bits=core_bits, aux_bits=8, group_size=CORE_GROUP)))
    return out


def run_cell(family: str, config: QuantConfig, ids: torch.Tensor) -> dict:
    model, _ = load(resolve(MODEL))
    t0 = time.perf_counter()
    fp = quantize_(model, config)
    t1 = time.perf_counter()
    ppl = perplexity(model, ids)
    t2 = time.perf_counter()
    return {"family": family, "label": config.label(), "bpw": fp.bits_per_weight,
            "ratio": fp.extra.get("mpo_ratio"), "rel_error": fp.extra.get("rel_error_mean"),
            "ppl": ppl, "compress_s": t1 - t0, "eval_s": t2 - t1}


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def speed(tokens: int = 512, bond: int = 64, repeats: int = 5) -> None:
    """One gate_proj-shaped layer (576 -> 1536): MPOLinear's contraction and dense paths against nn.Linear."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 1536)
    cores = matrix2mpo(lin.weight, *layer_factors(1536, 576, 5), max_bond=bond).cores
    x = torch.randn(tokens, 576)

    def median_s(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    with torch.no_grad():
        base = median_s(lambda: lin(x))
        contract = median_s(lambda: MPOLinear(cores, lin.bias)(x))
        dense_module = MPOLinear(cores, lin.bias, dense=True)
        dense = median_s(lambda: dense_module(x))
    print(f"\nspeed, {tokens} tokens through a 576->1536 layer at bond {bond} (median of {repeats}, this machine): "
          f"MPO contraction {contract / base:.1f}x nn.Linear's time, MPO dense (cached W) {dense / base:.2f}x")


def smoke(configs: list[QuantConfig], limit: int, run: str = "bench-mpo") -> None:
    """The smoke suite through the same pipeline, records and metrics as every other method."""
    from evalsuite.report.frame import task_info
    from evalsuite.run.cells import run_cells
    from evalsuite.run.preflight import preflight
    from evalsuite.spec.cell import CellSpec
    from evalsuite.spec.tasks import expand_suite

    tasks = expand_suite("smoke")
    specs = [CellSpec(model=MODEL, quant=c, suite="smoke", tasks=tasks, limit=limit, backend="evalsuite") for c in configs]
    records = run_cells(specs, RESULTS / run, preflight(specs), log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"\nsmoke suite, limit {limit} per task\n\n| cell | bits/weight | " + " | ".join(tasks) + " |")
    print("|---|---|" + "---|" * len(tasks))
    for rec in records:
        if not rec.ok:
            print(f"| {rec.spec.label} | failed: {rec.error} |")
            continue
        scores = {**rec.results, **rec.groups}
        cols = [fmt(scores.get(t, {}).get(task_info()[t]["metric"]), ".3f") for t in tasks]
        print(f"| {rec.spec.label} | {rec.footprint['bits_per_weight']:.3f} | " + " | ".join(cols) + " |")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"RTN": "o-", "MPO, bond cap": "s--", "MPO at RTN's bits/weight": "s:", "MPO+RTN near RTN's bits/weight": "^-",
              "MPO, error budget": "D"}
    for family, style in styles.items():
        pts = sorted((r["bpw"], r["ppl"], r["label"]) for r in rows if r["family"] == family)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=family)
            if family == "MPO, bond cap":
                for bpw, ppl, label in pts:
                    ax.annotate(label.removeprefix("mpo-"), (bpw, ppl), fontsize=7, xytext=(3, 3), textcoords="offset points")
    base = next(r for r in rows if r["family"] == "16-bit")
    ax.axhline(base["ppl"], color="grey", lw=0.8, label=f"16-bit ({base['ppl']:.2f})")
    ax.set(xscale="log", yscale="log", xlabel="bits per linear weight (packed)", ylabel="held-out perplexity",
           title=f"{MODEL}: MPO vs RTN vs MPO+RTN")
    ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16) if min(r["bpw"] for r in rows) / 2 <= t <= 32]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens for perplexity")
    ap.add_argument("--png", default="benchmarks/mpo_tradeoff.png")
    ap.add_argument("--smoke", default="", help="cells for the smoke suite: 'all' or comma-separated labels")
    ap.add_argument("--smoke-limit", type=int, default=10, help="items per smoke task")
    args = ap.parse_args()

    _, tok = load(resolve(MODEL))
    ids = heldout_ids(tok, args.tokens)
    print(f"{MODEL}, held-out perplexity on {len(ids)} tokens (windows of 512), torch threads {torch.get_num_threads()}\n")
    print("| family | cell | bits/weight | MPO ratio | mean rel. error | perplexity | compress s | eval s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for family, config in cells():
        r = run_cell(family, config, ids)
        rows.append(r)
        print(f"| {family} | {r['label']} | {r['bpw']:.3f} | {fmt(r['ratio'], '.4f')} | {fmt(r['rel_error'], '.3f')} "
              f"| {r['ppl']:.4g} | {r['compress_s']:.0f} | {r['eval_s']:.0f} |", flush=True)
    plot(rows, args.png)
    speed()
    if args.smoke:
        wanted = set(args.smoke.split(","))
        chosen = [c for _, c in cells() if args.smoke == "all" or c.label() in wanted]
        if not chosen:
            sys.exit(f"--smoke {args.smoke!r} names no cell; labels: {', '.join(c.label() for _, c in cells())}")
        smoke(chosen, args.smoke_limit)


if __name__ == "__main__":
    main()
