"""Records -> pandas. ``load`` gives the tidy frame (one row per cell x task x metric); everything else pivots it.

Each task is scored by the metric tasks/suites.yaml names for it (its ``primary`` row) and normalized as the Open
LLM Leaderboard does: ``max(0, (score - chance) / (1 - chance))``, chance = 1/choices for multiple choice and 0 for
generation, so 0 means "no better than guessing". An ability's score is the mean of its tasks' normalized scores.
Perplexity-like tasks (``lower_is_better``) are never normalized and are reported apart.

Every quantized cell is compared with its baseline: the 16-bit cell of the same model, suite, limit, seed, backend
and chat-template setting in the same run (``baseline_id``). Retention = score / baseline score (baseline / score
for lower-is-better tasks, so below 1 always means lost); delta = score - baseline score, with a paired test on the
per-item scores logged in the samples files.
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from evalsuite import store
from evalsuite.spec import OFFLINE_DIR, suites_file

CELL_COLUMNS = ["model", "method", "bits", "group_size", "bits_per_weight", "packed_bytes"]
CELL_FRAME = [
    "cell_id", "status", "error", *CELL_COLUMNS, "label", "family", "params", "suite", "limit", "seed", "backend",
    "chat_template", "baseline_id", "heldout_ppl", "kl_mean", "kl_p95", "top1_agreement", "wall_s",
]
TASK_FRAME = ["task", "top_level", "ability", "metric", "filter", "primary", "value", "stderr", "n", "lower_is_better",
              "normalized"]
INTEGER_COLUMNS = ["bits", "group_size", "packed_bytes", "params", "limit", "seed", "n"]
BASELINE_KEY = ("model", "suite", "limit", "seed", "backend", "chat_template")
HELDOUT = {"token_ppl": "heldout_ppl", "kl_mean": "kl_mean", "kl_p95": "kl_p95", "top1_agreement": "top1_agreement"}
ITEM_FRAME = ["cell_id", "baseline_id", "model", "label", "family", "bits", "task", "subtask", "doc_id", "target",
              "answer16", "answer", "value16", "value"]


# ---- tidy frame ---------------------------------------------------------------------------------------------------

def task_info() -> dict[str, dict[str, Any]]:
    """suites.yaml ``tasks:``: per task its ability, chance, primary metric ("name,filter"), lower_is_better."""
    return suites_file()["tasks"]


def normalize(score, chance):
    """Open LLM Leaderboard normalization: (score - chance) / (1 - chance), clipped at 0 (works on arrays too)."""
    return np.maximum(0.0, (np.asarray(score, dtype=float) - chance) / (1.0 - chance))


def baseline_ids(records: list[dict]) -> dict[str, str]:
    """cell id -> the cell id of its 16-bit baseline (ok records only; a baseline maps to itself)."""
    def key(rec):
        spec = rec["spec"]
        return tuple(json.dumps(spec.get(k), sort_keys=True) for k in BASELINE_KEY)

    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: r.get("created") or "")
    base = {key(r): r["cell_id"] for r in ok if r["spec"]["bits"] == 16}  # the newest wins if there are several
    return {r["cell_id"]: base[key(r)] for r in ok if key(r) in base}


def _family(label: str, bits: int, method: str) -> str:
    """The method with its options, without the bit width: '4bit-rtn-g64' -> 'rtn-g64'; the baseline is 'none'."""
    prefix = f"{bits}bit-"
    return label[len(prefix):] if bits != 16 and label.startswith(prefix) else method


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cell_row(rec: dict, baselines: dict[str, str]) -> dict[str, Any]:
    spec, fp, held = rec["spec"], rec.get("footprint") or {}, rec.get("heldout") or {}
    label = spec["quant"]["label"]
    return {
        "cell_id": rec["cell_id"], "status": rec["status"], "error": rec.get("error"), "model": spec["model"],
        "method": spec["method"], "bits": spec["bits"], "group_size": spec["quant"].get("group_size"),
        "bits_per_weight": fp.get("bits_per_weight"), "packed_bytes": fp.get("packed_bytes"), "label": label,
        "family": _family(label, spec["bits"], spec["method"]), "params": (rec.get("model") or {}).get("params"),
        **{k: spec.get(k) for k in BASELINE_KEY}, "baseline_id": baselines.get(rec["cell_id"]),
        **{col: _number(held.get(k)) for k, col in HELDOUT.items()}, "wall_s": rec.get("wall_s"),
    }


def tidy(records: list[dict]) -> pd.DataFrame:
    """One row per cell x task x metric (subtasks kept, ``top_level`` False); a failed cell is one row, no task."""
    info, baselines = task_info(), baseline_ids(records)
    rows = []
    for rec in records:
        cell = _cell_row(rec, baselines)
        if rec["status"] != "ok":
            rows.append(cell)
            continue
        top = set(rec["spec"]["tasks"])
        for task, metrics in rec["results"].items():
            entry = info.get(task, {}) if task in top else {}
            lower = bool(entry.get("lower_is_better", False))
            n = (rec.get("tasks") or {}).get(task, {}).get("n") or metrics.get("sample_len")
            for key, value in metrics.items():
                name, comma, filt = key.partition(",")
                if not comma or name.endswith("_stderr") or _number(value) is None:  # alias, name, sample_len
                    continue
                primary = key == entry.get("metric")
                rows.append({
                    **cell, "task": task, "top_level": task in top, "ability": entry.get("ability"), "metric": name,
                    "filter": filt, "primary": primary, "value": float(value),
                    "stderr": _number(metrics.get(f"{name}_stderr,{filt}")),
                    "n": n, "lower_is_better": lower,
                    "normalized": float(normalize(value, entry["chance"]))
                    if primary and not lower and entry.get("chance") is not None else None,
                })
    frame = pd.DataFrame(rows, columns=CELL_FRAME + TASK_FRAME)
    return frame.astype({c: "Int64" for c in INTEGER_COLUMNS})  # whole numbers stay whole beside missing values


def load(run_dir: str | Path) -> pd.DataFrame:
    """The tidy frame of every usable record in ``run_dir`` (unusable files are skipped; see store.read_run)."""
    records, _ = store.read_run(Path(run_dir))
    return tidy(records)


# ---- per-cell views -----------------------------------------------------------------------------------------------

def _sorted_cells(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["model", "bits", "label"], ascending=[True, False, True], ignore_index=True)


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (ok and failed): its identity, footprint and held-out fidelity columns."""
    return _sorted_cells(df[CELL_FRAME].drop_duplicates("cell_id"))


def failures(df: pd.DataFrame) -> pd.DataFrame:
    failed = cells(df)
    return failed.loc[failed["status"] != "ok", ["model", "label", "suite", "error"]].reset_index(drop=True)


def scores(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok cell x top-level task: its primary metric's raw and normalized value."""
    return df[(df["status"] == "ok") & df["primary"].fillna(False).astype(bool)].reset_index(drop=True)


def label_order(frame: pd.DataFrame) -> list[str]:
    """Precision labels from 16-bit down, for pivot columns."""
    ordered = frame[["bits", "label"]].drop_duplicates().sort_values(["bits", "label"], ascending=[False, True])
    return list(dict.fromkeys(ordered["label"]))


def _in_order(names, known: list[str]) -> list[str]:
    return sorted(set(names), key=lambda x: (known.index(x) if x in known else len(known), x))


def task_order(names) -> list[str]:
    """Tasks in suites.yaml order, unknown ones after them alphabetically."""
    return _in_order(names, list(task_info()))


def ability_order(names) -> list[str]:
    """Abilities in suites.yaml order, unknown ones after them alphabetically."""
    return _in_order(names, list(dict.fromkeys(v["ability"] for v in task_info().values())))


def abilities(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell x ability: mean normalized score of the ability's tasks (perplexity tasks excluded)."""
    s = scores(df).dropna(subset=["normalized", "ability"])
    out = s.groupby(["cell_id", "ability"], as_index=False).agg(score=("normalized", "mean"), tasks=("task", "count"))
    return out.merge(cells(df), on="cell_id")


def ability_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Ability x precision label per model: mean normalized score (0 = chance)."""
    ab = abilities(df)
    if ab.empty:
        return pd.DataFrame()
    order = ability_order(ab["ability"])
    wide = ab.pivot_table(index=["model", "ability"], columns="label", values="score", aggfunc="first")
    wide = wide.reindex(columns=label_order(ab))
    wide = wide.reindex(sorted(wide.index, key=lambda i: (i[0], order.index(i[1]))))
    wide.columns.name = None
    return wide


def with_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """Primary scores of quantized cells next to their baseline's: value16, delta, retention."""
    s = scores(df)
    base = s[["cell_id", "task", "value"]].rename(columns={"cell_id": "baseline_id", "value": "value16"})
    out = s[s["baseline_id"].notna() & (s["cell_id"] != s["baseline_id"])].merge(base, on=["baseline_id", "task"])
    out["delta"] = out["value"] - out["value16"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(out["lower_is_better"], out["value16"] / out["value"], out["value"] / out["value16"])
    out["retention"] = np.where(np.isfinite(ratio), ratio, np.nan)
    return out


def retention_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Task x precision label per model: score / 16-bit score of the same model (1 = nothing lost)."""
    r = with_baseline(df)
    if r.empty:
        return pd.DataFrame()
    wide = r.pivot_table(index=["model", "task"], columns="label", values="retention", aggfunc="first")
    wide = wide.reindex(columns=label_order(r))
    tasks = task_order(wide.index.get_level_values("task"))
    wide = wide.reindex(sorted(wide.index, key=lambda i: (i[0], tasks.index(i[1]))))
    wide.columns.name = None
    return wide


def perplexity(df: pd.DataFrame) -> pd.DataFrame:
    """Perplexity-like results per cell (never normalized): every metric of lower-is-better tasks, and the
    held-out token perplexity where the record has it."""
    ok = df[df["status"] == "ok"]
    ppl = ok[ok["lower_is_better"].fillna(False).astype(bool) & ok["top_level"].fillna(False).astype(bool)]
    ppl = ppl.assign(column=[metric_column(t, m, f) for t, m, f in zip(ppl["task"], ppl["metric"], ppl["filter"])])
    wide = ppl.pivot_table(index="cell_id", columns="column", values="value", aggfunc="first")
    board = cells(ok)[["cell_id", "model", "label", "bits", "heldout_ppl"]].merge(wide, on="cell_id", how="left")
    values = [c for c in board.columns if c == "heldout_ppl" or ":" in c]
    board = board.dropna(subset=values, how="all").dropna(axis=1, how="all")
    return board.drop(columns="cell_id").reset_index(drop=True) if board.shape[1] > 4 else pd.DataFrame()


# ---- leaderboard --------------------------------------------------------------------------------------------------

def metric_column(task: str, metric: str, filt: str) -> str:
    return f"{task}:{metric}" + ("" if filt in ("none", "", None) else f"[{filt}]")


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok cell, in the spirit of the Open LLM Leaderboard: identity and size, the overall average
    (mean normalized score over tasks), per-ability averages, held-out fidelity where present, then per task its
    normalized score (``task:norm``) and every raw top-level metric (``task:metric[filter]``)."""
    ok = df[df["status"] == "ok"]
    board = cells(ok)
    if board.empty:
        return pd.DataFrame(columns=CELL_COLUMNS)
    board = board.rename(columns={"label": "precision"})
    s = scores(ok).dropna(subset=["normalized"])
    board = board.merge(s.groupby("cell_id")["normalized"].mean().rename("average"), on="cell_id", how="left")
    ab = abilities(ok)
    ability_cols = []
    if not ab.empty:
        wide = ab.pivot_table(index="cell_id", columns="ability", values="score", aggfunc="first")
        wide = wide[ability_order(wide.columns)].add_prefix("ability:")
        ability_cols = list(wide.columns)
        board = board.merge(wide, on="cell_id", how="left")

    top = ok[ok["top_level"].fillna(False).astype(bool)]
    task_cols = []
    for task in task_order(top["task"]):
        rows = top[top["task"] == task].sort_values(["primary", "metric", "filter"], ascending=[False, True, True])
        if rows["normalized"].notna().any():
            board = board.merge(rows.dropna(subset=["normalized"]).set_index("cell_id")["normalized"]
                                .rename(f"{task}:norm"), on="cell_id", how="left")
            task_cols.append(f"{task}:norm")
        for (metric, filt), g in rows.groupby(["metric", "filter"], sort=False):
            col = metric_column(task, metric, filt)
            board = board.merge(g.set_index("cell_id")["value"].rename(col), on="cell_id", how="left")
            task_cols.append(col)
    fidelity = [c for c in HELDOUT.values() if board[c].notna().any()]
    columns = [*CELL_COLUMNS, "precision", "params", "average", *ability_cols, *fidelity, *task_cols]
    return board[columns].reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    store.write_atomic(Path(path), frame.to_csv(index=False).encode())


def format_table(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    if "packed_bytes" in shown:
        shown["packed_MB"] = (shown.pop("packed_bytes") / 1e6).round(1)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")


# ---- per-item comparison with the 16-bit baseline -----------------------------------------------------------------

@lru_cache(maxsize=1)
def _offline_groups() -> dict[str, list[str]]:
    """group -> member tasks, from the offline group YAMLs (for records that predate ``group_subtasks``)."""
    groups = {}
    for f in OFFLINE_DIR.glob("*.yaml"):
        text = f.read_text()
        if re.search(r"^group:", text, re.M):
            d = yaml.safe_load(text)
            groups[d["group"]] = [t if isinstance(t, str) else t["task"] for t in d.get("task", [])]
    return groups


def leaf_to_top(rec: dict) -> dict[str, str]:
    """Every task or subtask name a record's samples can carry -> the top-level task it counts towards."""
    tree = rec.get("group_subtasks") or _offline_groups()
    out: dict[str, str] = {}

    def walk(name: str, top: str) -> None:
        out.setdefault(name, top)
        for child in tree.get(name, ()):
            walk(child, top)

    for top in rec["spec"]["tasks"]:
        walk(top, top)
    return out


def item_values(run_dir: Path, rec: dict) -> pd.DataFrame:
    """Per-item value of each top-level task's primary metric, read from the cell's samples log."""
    path = store.samples_path(Path(run_dir), rec["cell_id"])
    info, tops = task_info(), leaf_to_top(rec)
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            s = json.loads(line)
            top = tops.get(s.get("task"))
            name, _, filt = info.get(top, {}).get("metric", "").partition(",")
            value = s.get(name)
            if top is None or s.get("filter", "none") != filt or not isinstance(value, (bool, int, float)):
                continue
            rows.append({"task": top, "subtask": s["task"], "doc_id": s.get("doc_id"), "doc_hash": s.get("doc_hash"),
                         "target": str(s.get("target")), "answer": _answer(s.get("filtered_resps")),
                         "value": float(value)})
    return pd.DataFrame(rows, columns=["task", "subtask", "doc_id", "doc_hash", "target", "answer", "value"])


def _answer(filtered_resps: Any) -> str:
    """What the model answered: the chosen option's index for multiple choice (lm-eval logs one
    [loglikelihood, is_greedy] pair per option), else the filtered generation."""
    resps = filtered_resps if isinstance(filtered_resps, list) else [filtered_resps]
    if resps and all(isinstance(r, list) and r and _number(r[0]) is not None for r in resps):
        return str(int(np.argmax([r[0] for r in resps])))
    return str(resps[0]) if len(resps) == 1 else str(resps)


def paired_items(run_dir: str | Path) -> pd.DataFrame:
    """One row per quantized cell x item that its baseline also answered: both per-item values (``value16``,
    ``value``) of the task's primary metric. Items are paired on (subtask, doc_id, doc_hash)."""
    run_dir = Path(run_dir)
    records, _ = store.read_run(run_dir)
    by_id, baselines = {r["cell_id"]: r for r in records}, baseline_ids(records)
    cache: dict[str, pd.DataFrame] = {}

    def values(cid: str) -> pd.DataFrame:
        if cid not in cache:
            cache[cid] = item_values(run_dir, by_id[cid])
        return cache[cid]

    frames = []
    for cid, base in baselines.items():
        if cid == base:
            continue
        base_values = values(base).drop(columns=["task", "target"]).rename(
            columns={"answer": "answer16", "value": "value16"})
        pairs = values(cid).merge(base_values, on=["subtask", "doc_id", "doc_hash"])
        spec = by_id[cid]["spec"]
        frames.append(pairs.assign(cell_id=cid, baseline_id=base, model=spec["model"], label=spec["quant"]["label"],
                                   family=_family(spec["quant"]["label"], spec["bits"], spec["method"]),
                                   bits=spec["bits"]))
    if not frames:
        return pd.DataFrame(columns=ITEM_FRAME)
    return pd.concat(frames, ignore_index=True)[ITEM_FRAME]


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs are Binomial(lost + gained, 1/2) under no change."""
    n, k = lost + gained, min(lost, gained)
    if n == 0:
        return 1.0
    log_pmf = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) - n * math.log(2) for j in range(k + 1)]
    return float(min(1.0, 2.0 * np.exp(log_pmf).sum()))


def paired_bootstrap(diff, n_boot: int = 2000, seed: int = 0, chunk: int = 200) -> tuple[float, float, float]:
    """Percentile 95% CI of the mean paired difference over items resampled with replacement, and the two-sided
    bootstrap p-value of "no difference" ((count on the far side of 0 + 1) / (n_boot + 1), doubled)."""
    d = np.asarray(diff, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, len(d), size=(min(chunk, n_boot - s), len(d)))].mean(axis=1)
                            for s in range(0, n_boot, chunk)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    p = 2 * (min((means <= 0).sum(), (means >= 0).sum()) + 1) / (n_boot + 1)
    return float(lo), float(hi), float(min(1.0, p))


def significance(items: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Delta vs 16-bit per quantized cell x task on the paired items: scores, delta with its paired-bootstrap 95% CI,
    p-value (exact McNemar when the metric is right/wrong per item, else the bootstrap's), and the flips: items
    right at 16-bit and wrong quantized (``lost``) and the reverse (``gained``)."""
    rows = []
    for (cid, task), g in items.groupby(["cell_id", "task"], sort=False):
        base, quant = g["value16"].to_numpy(float), g["value"].to_numpy(float)
        binary = np.isin(np.concatenate([base, quant]), (0.0, 1.0)).all()
        lost = int(((base == 1) & (quant == 0)).sum()) if binary else None
        gained = int(((base == 0) & (quant == 1)).sum()) if binary else None
        lo, hi, p_boot = paired_bootstrap(quant - base, n_boot, seed)
        first = g.iloc[0]
        rows.append({
            "model": first["model"], "label": first["label"], "bits": first["bits"], "task": task, "n": len(g),
            "score16": base.mean(), "score": quant.mean(), "delta": quant.mean() - base.mean(), "ci_low": lo,
            "ci_high": hi, "p_value": mcnemar_exact(lost, gained) if binary else p_boot,
            "test": "mcnemar-exact" if binary else "paired-bootstrap", "lost": lost, "gained": gained, "cell_id": cid,
        })
    columns = ["model", "label", "bits", "task", "n", "score16", "score", "delta", "ci_low", "ci_high", "p_value",
               "test", "lost", "gained", "cell_id"]
    out = pd.DataFrame(rows, columns=columns)
    tasks = task_order(out["task"])
    out["_order"] = [tasks.index(t) for t in out["task"]]
    return out.sort_values(["model", "bits", "label", "_order"], ascending=[True, False, True, True],
                           ignore_index=True).drop(columns="_order")


def flips(items: pd.DataFrame) -> pd.DataFrame:
    """The items whose right/wrong verdict changed: ``lost`` (right at 16-bit, wrong quantized) or ``gained``."""
    binary = items["value16"].isin((0.0, 1.0)) & items["value"].isin((0.0, 1.0))
    changed = items[binary & (items["value16"] != items["value"])]
    changed = changed.assign(flip=np.where(changed["value16"] == 1.0, "lost", "gained"))
    return changed[["model", "label", "bits", "task", "subtask", "doc_id", "flip", "target", "answer16", "answer"]] \
        .reset_index(drop=True)
