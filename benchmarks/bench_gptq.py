"""Native GPTQ vs GPTQModel on the bundled model, identical settings and calibration windows, in one run:
wall time to quantize (printed as a ratio) and held-out perplexity of each, with RTN for reference.

    .venv/bin/python benchmarks/bench_gptq.py [--bits 4] [--group-size 64] [--calib-n 32] [--calib-seqlen 512]

GPTQModel takes ~10 minutes on a 2-core CPU; its checkpoint goes to a temporary directory, not the cache,
so every run measures a real quantization. Its model is evaluated packed, on its own kernels.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from evalsuite.models import ModelRef, load, resolve
from quant import quantize_
from quant.backends import load_packed, quantize_with_gptqmodel
from quant.calib import calibration_ids, heldout_ids, perplexity
from quant.gptq import GPTQConfig
from quant.rtn import RTNConfig


def row(name: str, secs: float | None, ppl: float, bpw: float | None) -> None:
    print(f"{name:<16}{'' if secs is None else f'{secs:.1f}':>12}{ppl:>12.3f}{'' if bpw is None else f'{bpw:.3f}':>13}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--heldout-tokens", type=int, default=4096)
    args = ap.parse_args()

    ref = resolve(args.model)
    cfg = GPTQConfig(bits=args.bits, group_size=args.group_size, calib_n=args.calib_n, calib_seqlen=args.calib_seqlen)
    model, tok = load(ref)
    held = heldout_ids(tok, args.heldout_tokens)
    print(f"{args.model}  {cfg.label()}  calibration {cfg.calib_n} x {cfg.calib_seqlen} tokens ({cfg.calib_source}), "
          f"held-out {len(held)} tokens")
    print(f"{'method':<16}{'quantize s':>12}{'perplexity':>12}{'bits/weight':>13}")
    row("fp32", None, perplexity(model, held), None)

    model = load(ref)[0]
    fp = quantize_(model, RTNConfig(bits=args.bits, group_size=args.group_size))
    row("rtn", None, perplexity(model, held), fp.bits_per_weight)

    model = load(ref)[0]
    calib = calibration_ids(tok, cfg.calib_n, cfg.calib_seqlen, cfg.calib_seed, cfg.calib_source)
    start = time.perf_counter()
    fp = quantize_(model, cfg, tokenizer=tok, calib=calib)
    native_s = time.perf_counter() - start
    native_ppl = perplexity(model, held)
    row("gptq native", native_s, native_ppl, fp.bits_per_weight)
    del model

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "packed"
        start = time.perf_counter()
        quantize_with_gptqmodel(ref, cfg, out)  # same calibration windows: same source, n, seqlen and seed
        gptqmodel_s = time.perf_counter() - start
        packed_ref = ModelRef(ref.name, "packed", str(out), ref.fingerprint, ref.source)
        model, _ = load_packed(packed_ref)
        fp = quantize_(model, replace(cfg, backend="gptqmodel"), ref=packed_ref)  # measures the packed layers
        gptqmodel_ppl = perplexity(model, held)
        row("gptq gptqmodel", gptqmodel_s, gptqmodel_ppl, fp.bits_per_weight)

    print(f"GPTQModel / native wall time: {gptqmodel_s / native_s:.1f}x; "
          f"native / GPTQModel perplexity: {native_ppl / gptqmodel_ppl:.3f}")


if __name__ == "__main__":
    main()
