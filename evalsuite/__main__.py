"""CLI: ``evalsuite eval | sweep | table | ls``. Parses, calls the library, prints. Bad input: one line, exit 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from evalsuite.errors import UsageError

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "results"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage + message; we want one line
        raise UsageError(f"{message} (see `evalsuite {self.prog.split()[-1]} --help`)")


def _bits(text: str) -> list[int]:
    try:
        return [int(b) for b in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--bits takes whole numbers such as 16 8 4 3 2 (16 = unquantized); got {text!r}") from None


def _limit(text: str) -> int | None:
    if text in ("", "none", "None"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--limit takes a positive whole number of items per task, or nothing for all; got {text!r}")
    return int(text)


def _batch(text: str) -> int | str:
    if text == "auto" or (text.isdigit() and int(text) > 0):
        return text if text == "auto" else int(text)
    raise UsageError(f"--batch-size takes a positive whole number or 'auto'; got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from evalsuite.spec import DEFAULT_BACKEND

    p = _Parser(prog="evalsuite", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("eval", help="evaluate one model at several bit widths")
    e.add_argument("--model", default="smollm2-135m", help="alias (evalsuite ls models), local checkpoint dir, or hub id")
    e.add_argument("--method", default="rtn", help="quantizer (evalsuite ls methods)")
    e.add_argument("--bits", nargs="+", default=["16", "8", "4", "3", "2"], help="bit widths; 16 = unquantized baseline")
    e.add_argument("--group-size", type=int, help="quantization group size (-1: one group per row); default 128, or the model's")
    e.add_argument("--sym", action="store_true", default=None, help="symmetric grid (default: asymmetric with zero point)")
    e.add_argument("--keep", nargs="+", help="linears left at 16 bit: attention, ffn, or globs over module names")
    g = e.add_argument_group("GPTQ (--method gptq)")
    g.add_argument("--gptq-backend", choices=["native", "gptqmodel", "auto-gptq"], help="default native")
    g.add_argument("--no-act-order", action="store_true", default=None, help="quantize columns in order")
    g.add_argument("--static-groups", action="store_true", default=None)
    g.add_argument("--damp", type=float, help="Hessian dampening, fraction of its mean diagonal (default 0.01)")
    g.add_argument("--calib-n", type=int, help="calibration sequences (default 128; 16 for the bundled model)")
    g.add_argument("--calib-seqlen", type=int, help="calibration sequence length (default 2048; 512 for the bundled model)")
    g.add_argument("--calib-seed", type=int)
    g.add_argument("--calib-source", choices=["pydoc", "c4"], help="pydoc (offline, default) or c4 (the paper's; needs the hub)")
    e.add_argument("--keep-outliers", type=int, help="rtn/gptq: per layer, input channels with the largest calibration activations kept at 16 bit")
    b = e.add_argument_group("bitsandbytes (--method bnb; 8 = LLM.int8, 4 = nf4)")
    b.add_argument("--bnb-type", choices=["nf4", "fp4"])
    b.add_argument("--double-quant", action="store_true", default=None)
    b.add_argument("--compute-dtype", help="auto (fp32 on CPU, fp16 on CUDA), float16, bfloat16, float32")
    b.add_argument("--int8-threshold", type=float, help="LLM.int8 outlier threshold (default 6.0)")
    m = e.add_argument_group("MPO (--method mpo | mpo+rtn): exactly one of --bond-dim, --rel-error, --mpo-ratio")
    m.add_argument("--bond-dim", type=int, help="bond dimension cap D")
    m.add_argument("--rel-error", type=float, help="per-layer relative Frobenius error budget, in (0, 1)")
    m.add_argument("--mpo-ratio", type=float, help="per-layer target compression ratio, in (0, 1]")
    m.add_argument("--n-factors", type=int, help="cores per layer (default 5, as MPOP)")
    m.add_argument("--mpo-factors", nargs="+", help="explicit factorizations such as 576=3x4x4x4x3")
    m.add_argument("--aux-bits", type=int, help="mpo+rtn: bits of the small auxiliary cores (16 = unquantized)")
    m.add_argument("--mpo-contract", action="store_true", default=None,
                   help="evaluate by contracting the cores per call instead of rebuilding W once (slow; the real MPO cost)")
    e.add_argument("--suite", default="smoke", help="suite(s) or task(s), comma-separated (evalsuite ls suites)")
    e.add_argument("--limit", default="", type=str, help="items per task (default: all)")
    e.add_argument("--run", default="default", help="results/<RUN>/ receives the records")
    e.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--batch-size", default="auto")
    e.add_argument("--backend", default=DEFAULT_BACKEND, help="evalsuite (default: prefix KV reuse, metered) or hf (stock lm-eval HFLM)")
    e.add_argument("--chat-template", action="store_true", help="apply the tokenizer's chat template to prompts")

    s = sub.add_parser("sweep", help="run a sweep file (models x methods x bits x suites); resumable")
    s.add_argument("config", type=Path, help="sweep YAML, e.g. sweeps/local.yaml")
    s.add_argument("--run", help="results/<RUN>/ (default: the file's run, else its name)")
    s.add_argument("--limit", default=None, help="items per task (overrides the file)")
    s.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    s.add_argument("--dry-run", action="store_true", help="list the cells, their ids and which are done; run nothing")
    s.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as failed")
    s.add_argument("--quiet", action="store_true", help="one line per cell, no progress bars (CI logs)")

    t = sub.add_parser("table", help="print a run's comparison table and write its leaderboard.csv")
    t.add_argument("--run", default="default")
    t.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)

    ls = sub.add_parser("ls", help="list models, methods, suites or tasks")
    ls.add_argument("what", choices=["models", "methods", "suites", "tasks"])
    return p


def cmd_eval(args: argparse.Namespace) -> None:
    from evalsuite.evaluate import run_cells
    from evalsuite.spec import BACKENDS, CellSpec, check_run_name, expand_suite, make_quant_config

    run = check_run_name(args.run)
    bits = [b for text in args.bits for b in _bits(text)]
    limit = _limit(args.limit)
    if args.backend not in BACKENDS:
        raise UsageError(f"unknown backend {args.backend!r}; use one of {', '.join(BACKENDS)}")
    tasks = expand_suite(args.suite)
    options = {k: v for k, v in {
        "group_size": args.group_size, "sym": args.sym, "keep": tuple(args.keep) if args.keep else None,
        "bond_dim": args.bond_dim, "rel_error": args.rel_error, "ratio": args.mpo_ratio, "n_factors": args.n_factors,
        "factors": tuple(args.mpo_factors) if args.mpo_factors else None, "aux_bits": args.aux_bits,
        "dense": False if args.mpo_contract else None,
        "backend": args.gptq_backend, "act_order": False if args.no_act_order else None,
        "static_groups": args.static_groups, "damp": args.damp, "calib_n": args.calib_n,
        "calib_seqlen": args.calib_seqlen, "calib_seed": args.calib_seed, "calib_source": args.calib_source,
        "keep_outliers": args.keep_outliers, "quant_type": args.bnb_type, "double_quant": args.double_quant,
        "compute_dtype": args.compute_dtype, "int8_threshold": args.int8_threshold,
    }.items() if v is not None}
    cells = [
        CellSpec(model=args.model, quant=make_quant_config(args.method, b, options, model=args.model),
                 suite=args.suite, tasks=tasks, limit=limit, seed=args.seed, backend=args.backend,
                 batch_size=_batch(args.batch_size), chat_template=args.chat_template)
        for b in dict.fromkeys(bits)
    ]
    cells = list({c.quant: c for c in cells}.values())  # e.g. MPO: one cell whatever the bits
    run_dir = args.results_dir / run
    run_cells(cells, run_dir, log=_log)
    _print_table(run_dir)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_sweep(args: argparse.Namespace) -> None:
    import os

    from evalsuite import sweep
    from evalsuite.evaluate import plan, preflight, run_cells

    doc = sweep.load(args.config)
    cells = sweep.cells(doc, _limit(args.limit) if args.limit is not None else None)
    run_dir = args.results_dir / sweep.run_name(doc, args.run, args.config)
    if args.dry_run:
        for cell, _, cid, state in plan(cells, run_dir, preflight(cells)):
            print(f"{cid}  {state:7s}  {cell.model} {cell.quant.label()} {cell.suite}")
        return
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    run_cells(cells, run_dir, log=_log, retry_failed=args.retry_failed)
    _print_table(run_dir)


def _print_table(run_dir: Path) -> None:
    from evalsuite import export, report, store

    records, problems = store.read_run(run_dir)
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    paths = export.export_all(run_dir)  # leaderboard.csv, significance, flips, report.md/.tex, plots
    print(report.format_table(export.summary(report.leaderboard(report.tidy(records)))))
    print(f"\nwrote {len(paths)} files to {run_dir}: {', '.join(p.name for p in paths)}")


def cmd_table(args: argparse.Namespace) -> None:
    from evalsuite.spec import check_run_name

    run_dir = args.results_dir / check_run_name(args.run)
    if not run_dir.is_dir():
        raise UsageError(f"no results for run {args.run!r} under {args.results_dir}; run `make eval RUN={args.run}` first")
    _print_table(run_dir)


def cmd_ls(args: argparse.Namespace) -> None:
    if args.what == "models":
        from evalsuite.models import aliases

        for name, entry in aliases().items():
            print(f"{name:14s} {'bundled (offline)' if 'bundled' in entry else entry['hub']}")
    elif args.what == "methods":
        import quant

        print("\n".join(quant.known_methods()))
    elif args.what == "suites":
        from evalsuite.spec import suites_file

        for name, members in suites_file()["suites"].items():
            print(f"{name:8s} {', '.join(members)}")
    else:
        from evalsuite.spec import known_task_names

        print("\n".join(sorted(known_task_names())))


def main(argv: list[str] | None = None) -> int:
    from quant import QuantError

    try:
        args = build_parser().parse_args(argv)
        {"eval": cmd_eval, "sweep": cmd_sweep, "table": cmd_table, "ls": cmd_ls}[args.command](args)
    except (UsageError, QuantError) as e:
        print(f"evalsuite: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
