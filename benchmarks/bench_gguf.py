"""Held-out perplexity, bits/weight and quantization time of each GGUF type on the bundled model (one run)."""
from __future__ import annotations

import copy
import sys
import time

import torch


def main(types: list[str]) -> None:
    from evalsuite.load.models import load, resolve
    from evalsuite.run.heldout import heldout_ids, perplexity
    from quant import quantize_
    from quant.gguf import TYPES, GGUFConfig

    model, tok = load(resolve("smollm2-135m"))
    ids = heldout_ids(tok, 1024)
    print(f"16-bit: ppl {perplexity(model, ids):.4f}", flush=True)
    for t in types:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        fp = quantize_(m, GGUFConfig(bits=TYPES[t], gguf_type=t))
        dt = time.perf_counter() - t0
        print(f"{t}: ppl {perplexity(m, ids):.4f} bpw(linears) {fp.bits_per_weight:.4f} "
              f"bpw(file) {fp.extra['file_bits_per_weight']} emb {fp.extra['embedding_type']} "
              f"types {fp.extra['tensor_types']} {dt:.1f}s", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1:] or ["Q8_0", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "Q4_0"])
