"""Decode steps of the evalsuite backend against HF ``generate`` with a static cache, at batch 8 and 64.

Each model forward is timestamped by a hook; the wall time between consecutive decode forwards is one step
(the forward plus the backend's host work around it). A step whose Python overhead grows with the generated length
shows as late steps slower than early ones beyond what attention over a longer cache costs, so the script prints,
per backend and batch size, the mean step time over the first and the last 16 steps and their ratio, and the
ratio of ours to HF's.

    .venv/bin/python benchmarks/bench_decode.py [--batch 8 64] [--new-tokens 256] [--prompt-tokens 128]
"""
from __future__ import annotations

import argparse
import time

import torch

from evalsuite.backend.lm import EvalsuiteLM
from evalsuite.load.models import load, resolve
from evalsuite.run.heldout import heldout_ids

EDGE = 16  # steps averaged at each end


class StepClock:
    """Timestamps of every forward of ``model``."""

    def __init__(self, model):
        self.stamps: list[float] = []
        self._handle = model.register_forward_pre_hook(lambda *_: self.stamps.append(time.perf_counter()))

    def steps(self, n_decode: int) -> list[float]:
        """Durations of the last ``n_decode`` steps (the forwards before them are the prefill)."""
        t = self.stamps[-(n_decode + 1):]
        return [b - a for a, b in zip(t, t[1:])]

    def close(self) -> None:
        self._handle.remove()


def prompts(tok, batch: int, length: int) -> list[list[int]]:
    ids = heldout_ids(tok, None)
    return [ids[k * 37 : k * 37 + length].tolist() for k in range(batch)]  # distinct windows, equal length


def ours(model, tok, rows: list[list[int]], new_tokens: int) -> list[float]:
    from lm_eval.api.instance import Instance

    lm = EvalsuiteLM(pretrained=model, tokenizer=tok, batch_size=len(rows))
    reqs = [Instance("generate_until", {}, (tok.decode(r), {"until": [], "max_gen_toks": new_tokens}), i)
            for i, r in enumerate(rows)]
    clock = StepClock(model)
    lm.generate_until(reqs, disable_tqdm=True)
    clock.close()
    return clock.steps(new_tokens - 1)


def hf_static(model, rows: list[list[int]], new_tokens: int) -> list[float]:
    ids = torch.tensor(rows, device=model.device)
    clock = StepClock(model)
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, cache_implementation="static", pad_token_id=model.config.eos_token_id)
    clock.close()
    return clock.steps(new_tokens - 1)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    args = ap.parse_args()
    model, tok = load(resolve("smollm2-135m"))
    print(f"device {model.device}, torch threads {torch.get_num_threads()}, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens per row\n")
    print("| batch | backend | first 16 steps ms | last 16 steps ms | last / first | decode tok/s |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        rows = prompts(tok, batch, args.prompt_tokens)
        times = {"evalsuite": ours(model, tok, rows, args.new_tokens), "hf static": hf_static(model, rows, args.new_tokens)}
        for name, steps in times.items():
            first, last = mean(steps[:EDGE]), mean(steps[-EDGE:])
            print(f"| {batch} | {name} | {1e3 * first:.1f} | {1e3 * last:.1f} | {last / first:.2f} | "
                  f"{batch * len(steps) / sum(steps):.0f} |", flush=True)
        print(f"| {batch} | ours / hf | | | | {sum(times['hf static']) / sum(times['evalsuite']):.2f}x |")


if __name__ == "__main__":
    main()
