"""Stock lm-eval ``HFLM`` vs the evalsuite backend on the offline twins, in one process on one machine.

For each suite it runs both backends through ``lm_eval.simple_evaluate`` on the same model and tasks and prints
wall time, positions computed (every token a forward pass ran, padding included, counted by a hook on the model),
tokens/s, the speed-up, whether every prediction matched (chosen option, generated text, max |delta loglik|),
and each backend's distance from the FLOP floor: the tokens any exact backend must compute (the token trie of
all prompts plus the generated tokens, from our meter) x 2 x the transformer body's linear weights, at the fp32
matmul rate measured just before each suite on the model's own GEMM shape (attention and lm_head excluded: a
lower bound; on a CPU shared with other jobs the rate moves, so a ratio near or under 1x means "at the floor").

Layouts: ``twin`` runs the tasks as tasks/offline configures them (each item's shots are the other items of its
task, so prompts share only their first shot); ``fixed`` gives every item of a task the same first-k shots (the
prompt structure of the hub MMLU/GSM8K/BBH, whose shots come from a separate split; items may reappear among
their own shots, so its accuracy means nothing, only its speed and agreement).

    .venv/bin/python benchmarks/bench_backend.py                       # default size, both layouts
    .venv/bin/python benchmarks/bench_backend.py --threads 1 --layout fixed --bbh 6
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from copy import deepcopy
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITES = {  # suite -> (shots in the fixed layout, as in the paper's suite)
    "mmlu": 5,
    "gsm8k": 8,
    "bbh": 3,
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mmlu", type=int, default=1, help="MMLU subjects (of mmlu_offline_smoke's 4, then others)")
    p.add_argument("--gsm8k", type=int, default=8, help="GSM8K CoT items (of 8)")
    p.add_argument("--bbh", type=int, default=3, help="BBH direct-answer subtasks (of 27)")
    p.add_argument("--layout", choices=["twin", "fixed", "both"], default="both")
    p.add_argument("--hf-batch-size", type=int, default=8, help="stock HFLM rows per forward (ours: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is far faster on a shared CPU)")
    return p.parse_args()


def matmul_rate(model) -> float:
    """fp32 FLOP/s of the model's largest GEMM shape at 512 tokens, measured now."""
    w = max((m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)), key=lambda t: t.numel())
    x = torch.randn(512, w.shape[1], dtype=w.dtype, device=w.device)
    F.linear(x, w)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        F.linear(x, w)
        reps += 1
    return 2 * 512 * w.numel() * reps / (time.perf_counter() - t0)


def body_flops_per_token(model) -> int:
    out = model.get_output_embeddings()
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not out)


def task_names(tm, suite: str, n: int) -> list[str]:
    if suite == "gsm8k":
        return ["gsm8k_cot_offline"]
    if suite == "mmlu":
        smoke = tm.task_index["mmlu_offline_smoke"].cfg["task"]
        rest = sorted(t for t in tm.all_subtasks if t.startswith("mmlu_offline_") and t not in smoke)
        return (list(smoke) + rest)[:n]
    return sorted(t for t in tm.all_subtasks if t.startswith("bbh_offline_"))[:n]


def fixed_shots(tm, name: str, shots: int) -> dict:
    """``name``'s config with every item prompted by the task's first ``shots`` items."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = deepcopy(load_yaml(tm.task_index[name].yaml_path, resolve_func=True))
    load = cfg["custom_dataset"]

    def with_shot_split(**kwargs):
        data = load(**kwargs)
        data["shots"] = data["test"]
        return data

    n_items = len(load(**cfg["dataset_kwargs"])["test"])
    cfg.update(task=f"{name}_fixed", custom_dataset=with_shot_split, fewshot_split="shots", num_fewshot=min(shots, n_items))
    return cfg


def evaluate(lm, tasks, tm, limit: int | None):
    """(wall s, positions computed, per-item samples) of one backend on ``tasks``."""
    from lm_eval import simple_evaluate

    from evalsuite.backend.meter import PositionCounter

    with PositionCounter(lm.model) as counter:
        t0 = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, log_samples=True,
                              bootstrap_iters=0, verbosity="ERROR")
        wall = time.perf_counter() - t0
    return wall, counter.n, res["samples"]


def compare(ref: dict, ours: dict) -> tuple[int, int, float]:
    """(matching predictions, predictions, max |delta loglikelihood|) over every item of every task."""
    same = total = 0
    worst = 0.0
    for task, rows in ref.items():
        mine = {r["doc_id"]: r for r in ours[task]}
        for doc_id, r in {r["doc_id"]: r for r in rows}.items():  # one row per answer filter: keep one
            a, b = r["resps"], mine[doc_id]["resps"]
            total += 1
            if isinstance(a[0][0], str):
                same += a[0][0] == b[0][0]
            else:
                la, lb = [x[0][0] for x in a], [x[0][0] for x in b]
                same += max(range(len(la)), key=la.__getitem__) == max(range(len(lb)), key=lb.__getitem__)
                worst = max(worst, max(abs(x - y) for x, y in zip(la, lb)))
    return same, total, worst


def main() -> None:
    args = parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evalsuite.backend.lm import EvalsuiteLM
    from evalsuite.load.models import load, resolve

    model, tok = load(resolve(args.model))
    tm = TaskManager(include_path=str(ROOT / "tasks" / "offline"), include_defaults=False)
    per_token = body_flops_per_token(model)
    print(f"model {args.model}: {per_token / 2 / 1e6:.1f}M body linear params; torch threads {torch.get_num_threads()}; "
          f"HFLM batch {args.hf_batch_size}, ours auto")
    sizes = {"mmlu": args.mmlu, "gsm8k": args.gsm8k, "bbh": args.bbh}
    layouts = ["twin", "fixed"] if args.layout == "both" else [args.layout]
    header = ("suite", "layout", "items", "HF s", "ours s", "speed-up", "HF tokens", "our tokens", "needed",
              "HF tok/s", "our tok/s", "GFLOP/s", "floor s", "HF/floor", "ours/floor", "same", "max|dLL|")
    rows = []
    for suite, shots in SUITES.items():
        names = task_names(tm, suite, sizes[suite])
        limit = sizes[suite] if suite == "gsm8k" else None
        for layout in layouts:
            tasks = names if layout == "twin" else [fixed_shots(tm, n, shots) for n in names]
            rate = matmul_rate(model)
            hf_wall, hf_tokens, hf_samples = evaluate(HFLM(pretrained=model, tokenizer=tok, batch_size=args.hf_batch_size),
                                                      tasks, tm, limit)
            ours = EvalsuiteLM(pretrained=model, tokenizer=tok, batch_size="auto")
            wall, tokens, samples = evaluate(ours, tasks, tm, limit)
            same, total, worst = compare(hf_samples, samples)
            floor = ours.meter["tokens_needed"] * per_token / rate
            rows.append((suite, layout, total, f"{hf_wall:.1f}", f"{wall:.1f}", f"{hf_wall / wall:.2f}x", hf_tokens, tokens,
                         ours.meter["tokens_needed"], f"{hf_tokens / hf_wall:.0f}", f"{tokens / wall:.0f}",
                         f"{rate / 1e9:.0f}", f"{floor:.1f}",
                         f"{hf_wall / floor:.1f}x", f"{wall / floor:.1f}x", f"{same}/{total}", f"{worst:.1e}"))
            print("  ".join(map(str, rows[-1])), flush=True)
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")


if __name__ == "__main__":
    main()
