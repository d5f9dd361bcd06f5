"""Native GPTQ vs GPTQModel on the bundled model, identical settings and calibration windows, in one run:
wall time to quantize (printed as a ratio) and held-out perplexity of each, with RTN for reference.

    .venv/bin/python benchmarks/bench_gptq.py [--bits 4 3] [--group-size 64] [--calib-n 32] [--calib-seqlen 512]
    python benchmarks/bench_gptq.py --calib-n 128 --calib-seqlen 2048 --kernel gptq_torch   # on a CUDA box

GPTQModel takes ~10 minutes per width on a 2-core CPU; its checkpoint goes to a temporary directory, not the
cache, so every run measures a real quantization. Its model is evaluated packed, on its own kernels (--kernel:
GPTQModel's BACKEND name; auto may compile a CUDA extension first). On CUDA the model is fp16, on CPU fp32.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from evalsuite.load.models import load, resolve
from quant import quantize_
from quant.gptq_packed import load_packed, quantize_with_gptqmodel
from evalsuite.run.heldout import heldout_ids, perplexity
from quant.calib import calibration_ids
from quant.gptq import GPTQConfig
from quant.rtn import RTNConfig


def row(name: str, secs: float | None, ppl: float, bpw: float | None, note: str = "") -> None:
    print(f"{name:<22}{'' if secs is None else f'{secs:.1f}':>12}{ppl:>12.3f}{'' if bpw is None else f'{bpw:.3f}':>13}"
          f"  {note}", flush=True)


def timed(fn, *args, **kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, nargs="+", default=[4])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--heldout-tokens", type=int, default=4096)
    ap.add_argument("--kernel", default="auto", help="GPTQModel kernel for the packed model (BACKEND value)")
    ap.add_argument("--skip-gptqmodel", action="store_true")
    args = ap.parse_args()

    ref = resolve(args.model)
    model, tok = load(ref)
    held = heldout_ids(tok, args.heldout_tokens)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model} on {device}, {next(model.parameters()).dtype}; calibration {args.calib_n} x {args.calib_seqlen} "
          f"tokens (pydoc), held-out {len(held)} tokens; group {args.group_size}, damp {args.damp}")
    print(f"{'method':<22}{'quantize s':>12}{'perplexity':>12}{'bits/weight':>13}")
    row("baseline", None, perplexity(model, held), None)
    del model
    for bits in args.bits:
        cfg = GPTQConfig(bits=bits, group_size=args.group_size, calib_n=args.calib_n, calib_seqlen=args.calib_seqlen,
                         damp=args.damp)
        model = load(ref)[0]
        fp = quantize_(model, RTNConfig(bits=bits, group_size=args.group_size))
        row(f"{bits}-bit rtn", None, perplexity(model, held), fp.bits_per_weight)

        model = load(ref)[0]
        calib = calibration_ids(tok, cfg.calib_n, cfg.calib_seqlen, cfg.calib_seed, cfg.calib_source)
        fp, native_s = timed(quantize_, model, cfg, tokenizer=tok, calib=calib)
        native_ppl = perplexity(model, held)
        row(f"{bits}-bit gptq native", native_s, native_ppl, fp.bits_per_weight)
        del model
        if args.skip_gptqmodel:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "packed"
            # same calibration windows: same source, n, seqlen and seed
            _, gptqmodel_s = timed(quantize_with_gptqmodel, Path(ref.path), cfg, out, calib, tok)
            model, _ = load_packed(out, kernel=args.kernel)
            fp = quantize_(model, replace(cfg, gptq_impl="gptqmodel"), checkpoint=out)  # measures the packed layers
            gptqmodel_ppl = perplexity(model, held)
            row(f"{bits}-bit gptq gptqmodel", gptqmodel_s, gptqmodel_ppl, fp.bits_per_weight, f"kernel {fp.extra['kernel']}")
            del model
        print(f"{bits}-bit: GPTQModel / native wall time {gptqmodel_s / native_s:.1f}x; "
              f"native / GPTQModel perplexity {native_ppl / gptqmodel_ppl:.3f}", flush=True)


if __name__ == "__main__":
    main()
