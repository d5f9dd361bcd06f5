"""The paper's component analysis on the bundled model: which parts are most sensitive to quantization?

For RTN and native GPTQ at 2 and 3 bits, held-out perplexity and bits/weight of: every linear quantized,
all but attention (attention kept at 16 bit), all but the FFN, and all with the K outlier input channels
of every linear kept at 16 bit.

    .venv/bin/python benchmarks/bench_components.py [--bits 2 3] [--outliers 16] [--calib-n 16] [--calib-seqlen 256] [--damp 0.01]
"""
from __future__ import annotations

import argparse
import time

from evalsuite.load.models import load, resolve
from quant import quantize_
from evalsuite.run.heldout import heldout_ids, perplexity
from quant.calib import calibration_ids
from quant.gptq import GPTQConfig
from quant.rtn import RTNConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--outliers", type=int, default=16)
    ap.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening (0.1 is steadier at 2 bits on small calibration)")
    ap.add_argument("--calib-n", type=int, default=16)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--heldout-tokens", type=int, default=2048)
    args = ap.parse_args()

    ref = resolve(args.model)
    model, tok = load(ref)
    held = heldout_ids(tok, args.heldout_tokens)
    calib = calibration_ids(tok, args.calib_n, args.calib_seqlen, seed=0)  # the same windows for every cell
    print(f"{args.model}: fp32 perplexity {perplexity(model, held):.2f} on {len(held)} held-out tokens; "
          f"calibration {args.calib_n} x {args.calib_seqlen}, group {args.group_size}, GPTQ damp {args.damp}")
    variants = {"all": {}, "all-but-attention": {"keep": ("attention",)}, "all-but-ffn": {"keep": ("ffn",)},
                f"outliers-{args.outliers}-kept": {"keep_outliers": args.outliers}}
    print(f"{'method':<6}{'bits':>5}  {'variant':<22}{'perplexity':>12}{'bits/weight':>13}{'seconds':>9}")
    for bits in args.bits:
        for method, Config in (("rtn", RTNConfig), ("gptq", GPTQConfig)):
            for name, extra in variants.items():
                extra_gptq = {"damp": args.damp} if Config is GPTQConfig else {}
                cfg = Config(bits=bits, group_size=args.group_size, **extra, **extra_gptq)
                model = load(ref)[0]
                start = time.perf_counter()
                fp = quantize_(model, cfg, tokenizer=tok, calib=calib)
                secs = time.perf_counter() - start
                print(f"{method:<6}{bits:>5}  {name:<22}{perplexity(model, held):>12.2f}{fp.bits_per_weight:>13.3f}"
                      f"{secs:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
