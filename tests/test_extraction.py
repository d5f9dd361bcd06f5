"""Golden answer-extraction cases run through lm-eval's own filters and exact_match, configured from the
installed task YAML (so a change in lm-eval's patterns shows up here, not in a copy of them) and from our offline
twins' YAML, which must score exactly as upstream does except for the one deliberate change (BBH direct answer
strips the generation's whitespace before exact match)."""
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
OFFLINE_TASKS = Path(__file__).resolve().parents[1] / "tasks" / "offline"
OFFLINE_TWIN = {  # upstream config -> the offline twin's template that carries its filters and metrics
    "gsm8k/gsm8k-cot.yaml": "gsm8k_cot_offline.yaml",
    "bbh/cot_fewshot/_cot_fewshot_template_yaml": "_bbh_cot_offline_template_yaml",
    "bbh/fewshot/_fewshot_template_yaml": "_bbh_offline_template_yaml",
    "mmlu/default/_default_template_yaml": "_mmlu_offline_template_yaml",
}
STRIP = [{"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}]
METRIC_ENTRY_KEYS = {"metric", "aggregation", "higher_is_better", "hf_evaluate"}


class _TaskLoader(yaml.SafeLoader):
    """Our task YAML names its data loader with ``!function``; it plays no part in scoring."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@lru_cache(maxsize=None)
def task_config(relpath: str) -> dict:
    return yaml.safe_load((LM_EVAL_TASKS / relpath).read_text())


@lru_cache(maxsize=None)
def offline_config(name: str) -> dict:
    return yaml.load((OFFLINE_TASKS / name).read_text(), Loader=_TaskLoader)


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


def check_case(config: dict, case: dict, expected: dict) -> None:
    ensembles = filter_ensembles(config)
    assert {e.name for e in ensembles} == set(expected), "golden case must cover every filter of the task"
    exact_match = get_metric("exact_match")
    for ensemble in ensembles:
        answer = extract(ensemble, case["response"])
        score = exact_match(references=[case["target"]], predictions=[answer], **exact_match_kwargs(config))["exact_match"]
        assert (answer, bool(score)) == (expected[ensemble.name]["answer"], expected[ensemble.name]["correct"])


CASE_ID = lambda c: f"{Path(c['config']).parent.name}:{c['response'][:30]}"  # noqa: E731


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=CASE_ID)
def test_extraction_matches_lm_eval(case):
    check_case(task_config(case["config"]), case, case["expected"])


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=CASE_ID)
def test_offline_twins_extract_and_score_as_upstream_but_for_the_bbh_strip(case):
    """Our task files, not upstream's: the same answers and verdicts, except BBH direct answer (``offline``)."""
    check_case(offline_config(OFFLINE_TWIN[case["config"]]), case, case.get("offline", case["expected"]))


def test_bbh_strip_is_the_only_change_it_makes():
    offline = [c for c in GOLDEN["cases"] if "offline" in c]
    assert any(c["response"] != c["response"].strip() for c in offline)  # a leading space is among the cases
    for c in offline:  # upstream scores the raw text; we score it stripped and nothing else
        assert c["offline"]["strip"]["answer"] == c["expected"]["none"]["answer"].strip()


@pytest.mark.parametrize("upstream,twin", sorted(OFFLINE_TWIN.items()))
def test_offline_yaml_keeps_upstream_filters_metrics_and_stops(upstream, twin):
    ours, theirs = offline_config(twin), task_config(upstream)
    assert ours["metric_list"] == theirs["metric_list"]
    assert ours["output_type"] == theirs["output_type"]
    assert ours.get("target_delimiter", " ") == theirs.get("target_delimiter", " ")
    if upstream.startswith("bbh/fewshot"):
        assert theirs.get("filter_list") is None and ours["filter_list"] == STRIP  # the deliberate change
    else:
        assert ours.get("filter_list") == theirs.get("filter_list")
    if ours["output_type"] == "generate_until":
        assert ours["generation_kwargs"]["until"] == theirs["generation_kwargs"]["until"]
    else:
        assert (ours["doc_to_text"], ours["doc_to_choice"]) == (theirs["doc_to_text"], theirs["doc_to_choice"])
