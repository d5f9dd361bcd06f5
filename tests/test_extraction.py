"""Golden answer-extraction cases run through lm-eval's own filters and exact_match, configured from the
installed task YAML (so a change in lm-eval's patterns shows up here, not in a copy of them)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

import lm_eval.tasks
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_metric
from lm_eval.filters import build_filter_ensemble

GOLDEN = json.loads((Path(__file__).parent / "golden" / "extraction_cases.json").read_text())
LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent
METRIC_ENTRY_KEYS = {"metric", "aggregation", "higher_is_better", "hf_evaluate"}


@lru_cache(maxsize=None)
def task_config(relpath: str) -> dict:
    return yaml.safe_load((LM_EVAL_TASKS / relpath).read_text())


def filter_ensembles(config: dict) -> list:
    """The filter pipelines ConfigurableTask builds from a config (take_first alone when it has no filter_list)."""
    if config.get("filter_list") is None:
        return [build_filter_ensemble("none", [["take_first", None]])]
    return [
        build_filter_ensemble(f["name"], [[s["function"], {k: v for k, v in s.items() if k != "function"}] for s in f["filter"]])
        for f in config["filter_list"]
    ]


def exact_match_kwargs(config: dict) -> dict:
    """The keyword arguments ConfigurableTask passes to exact_match: the metric entry minus its bookkeeping keys."""
    (entry,) = [m for m in config["metric_list"] if m["metric"] == "exact_match"]
    return {k: v for k, v in entry.items() if k not in METRIC_ENTRY_KEYS}


def extract(ensemble, response: str) -> str:
    inst = Instance(request_type="generate_until", doc={}, arguments=("", {}), idx=0)
    inst.resps = [response]
    ensemble.apply([inst])
    return inst.filtered_resps[ensemble.name]


def test_golden_file_is_large_enough_and_covers_the_awkward_inputs():
    responses = " ".join(c["response"] for c in GOLDEN["cases"])
    assert len(GOLDEN["cases"]) >= 25
    for needle in [",", "$", "-", "(B)", "B.", " (B)"]:
        assert needle in responses, needle


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{Path(c['config']).parent.name}:{c['response'][:30]}")
def test_extraction_matches_lm_eval(case):
    config = task_config(case["config"])
    ensembles = filter_ensembles(config)
    assert {e.name for e in ensembles} == set(case["expected"]), "golden case must cover every filter of the task"
    exact_match = get_metric("exact_match")
    for ensemble in ensembles:
        answer = extract(ensemble, case["response"])
        score = exact_match(references=[case["target"]], predictions=[answer], **exact_match_kwargs(config))["exact_match"]
        assert (answer, bool(score)) == (case["expected"][ensemble.name]["answer"], case["expected"][ensemble.name]["correct"])
