"""Statistics on per-item values: the exact McNemar test, the paired bootstrap, significance of every cell against
its baseline, the flipped items, and bootstrap intervals of ability scores (the plots' error bars)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evalsuite.report.frame import normalize, task_info
from evalsuite.report.views import ability_order, task_order

INTERVAL_COLUMNS = ["cell_id", "ability", "ci_low", "ci_high", "n"]
SCORE_INTERVAL_COLUMNS = ["cell_id", "column", "ci_low", "ci_high", "n"]


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs are Binomial(lost + gained, 1/2) under no change."""
    n, k = lost + gained, min(lost, gained)
    if n == 0:
        return 1.0
    log_pmf = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) - n * math.log(2) for j in range(k + 1)]
    return float(min(1.0, 2.0 * np.exp(log_pmf).sum()))


def bootstrap_means(values, n_boot: int, rng: np.random.Generator, chunk: int = 200) -> np.ndarray:
    """``n_boot`` means of ``values`` resampled with replacement (in chunks, to bound memory)."""
    v = np.asarray(values, dtype=float)
    return np.concatenate([v[rng.integers(0, len(v), size=(min(chunk, n_boot - s), len(v)))].mean(axis=1)
                           for s in range(0, n_boot, chunk)])


def paired_bootstrap(diff, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Percentile 95% CI of the mean paired difference over items resampled with replacement, and the two-sided
    bootstrap p-value of "no difference" ((count on the far side of 0 + 1) / (n_boot + 1), doubled)."""
    means = bootstrap_means(diff, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [0.025, 0.975])
    p = 2 * (min((means <= 0).sum(), (means >= 0).sum()) + 1) / (n_boot + 1)
    return float(lo), float(hi), float(min(1.0, p))


def significance(items: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Delta vs the baseline per cell x task on the paired items (``pair``): scores (``score16`` is the baseline's),
    delta with its paired-bootstrap 95% CI, p-value (exact McNemar when the metric is right/wrong per item, else the
    bootstrap's), and the flips: items right for the baseline and wrong for the cell (``lost``) and the reverse."""
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


def flips(items: pd.DataFrame, texts: bool = False) -> pd.DataFrame:
    """The items whose right/wrong verdict changed: ``lost`` (right for the baseline, wrong for the cell) or
    ``gained``. With ``texts``, also the item's question and both full generations (what report.html shows)."""
    binary = items["value16"].isin((0.0, 1.0)) & items["value"].isin((0.0, 1.0))
    changed = items[binary & (items["value16"] != items["value"])]
    changed = changed.assign(flip=np.where(changed["value16"] == 1.0, "lost", "gained"))
    columns = ["model", "label", "bits", "task", "subtask", "doc_id", "flip", "target", "answer16", "answer"]
    return changed[[*columns, *(["cell_id", "question", "response16", "response"] if texts else [])]] \
        .reset_index(drop=True)


def score_intervals(items: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """95% percentile interval of every cell's normalized scores, one row per leaderboard column it belongs to:
    ``<task>:norm``, ``ability:<ability>`` and ``average``. Each task's items are resampled on their own (so every
    replicate keeps the task sizes) and normalized as the score is; an ability's and the average's replicates are
    the means of their tasks'. ``n`` counts the items behind the score. ``items`` is ``items.item_frame``."""
    info, rng, rows = task_info(), np.random.default_rng(seed), []
    for cid, cell in items.groupby("cell_id", sort=True):
        reps, sizes = {}, {}
        for task, g in cell.groupby("task", sort=True):
            if info.get(task, {}).get("chance") is None or info[task].get("lower_is_better"):
                continue
            reps[task] = normalize(bootstrap_means(g["value"].to_numpy(float), n_boot, rng), info[task]["chance"])
            sizes[task] = len(g)
        groups = {f"{task}:norm": [task] for task in reps}
        for ability in ability_order({info[t]["ability"] for t in reps}):
            groups[f"ability:{ability}"] = [t for t in reps if info[t]["ability"] == ability]
        if reps:
            groups["average"] = list(reps)
        for column, tasks in groups.items():
            lo, hi = np.quantile(np.mean([reps[t] for t in tasks], axis=0), [0.025, 0.975])
            rows.append({"cell_id": cid, "column": column, "ci_low": float(lo), "ci_high": float(hi),
                         "n": sum(sizes[t] for t in tasks)})
    return pd.DataFrame(rows, columns=SCORE_INTERVAL_COLUMNS)


def ability_intervals(items: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """95% interval of every cell's ability scores (the plots' error bars); see ``score_intervals``."""
    return ability_rows(score_intervals(items, n_boot, seed))


def ability_rows(intervals: pd.DataFrame) -> pd.DataFrame:
    """The ability rows of a ``score_intervals`` frame, with their ``ability``."""
    rows = intervals[intervals["column"].str.startswith("ability:")]
    return rows.assign(ability=rows["column"].str.removeprefix("ability:"))[INTERVAL_COLUMNS].reset_index(drop=True)
