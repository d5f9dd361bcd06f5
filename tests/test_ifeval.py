"""IFEval offline: bundled punkt data, the bundled prompts, golden checker cases, and the task YAML in lm-eval."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "tasks" / "offline"
NLTK_DATA = REPO / "tasks" / "nltk_data"
GOLDEN = json.loads((Path(__file__).parent / "golden" / "ifeval_cases.json").read_text())
METRICS = {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"}


def _load_task_module(name):
    """A task helper module, loaded by path as lm-eval's !function does (ifeval.py also puts punkt on nltk's path)."""
    spec = importlib.util.spec_from_file_location(f"offline_{name}", TASK_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_load_task_module("ifeval")
loader = _load_task_module("loader")
from lm_eval.tasks.ifeval import instructions_registry, utils as lm_eval_ifeval  # noqa: E402

REGISTRY = instructions_registry.INSTRUCTION_DICT
PROMPTS = loader.read_jsonl("ifeval/ifeval_offline.jsonl", loader.ifeval_problem)


def test_bundled_punkt_tab_on_nltk_data_needs_no_download():
    """The pipeline's contract: NLTK_DATA=tasks/nltk_data before lm_eval's IFEval code is imported."""
    code = (
        "from lm_eval.tasks.ifeval import instructions_util as u\n"
        "print(u.count_sentences('Dr. Smith arrived at 5 p.m. on Monday. He left early.'))\n"
    )
    env = {**os.environ, "NLTK_DATA": str(NLTK_DATA)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Downloaded" not in out.stdout
    assert out.stdout.split()[-1] == "2"


def test_prompts_cover_every_registered_instruction():
    used = {i for row in PROMPTS for i in row["instruction_id_list"]}
    assert len(PROMPTS) >= 60
    assert len({row["key"] for row in PROMPTS}) == len(PROMPTS)
    assert set(REGISTRY) - used == set()


@pytest.mark.parametrize("row", PROMPTS, ids=lambda r: str(r["key"]))
def test_prompt_kwargs_fix_every_argument_and_instructions_do_not_conflict(row):
    for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
        assert all(kwargs.values()), "lm-eval drops falsy kwargs, which then get random values"
        instruction = REGISTRY[instruction_id](instruction_id)
        instruction.build_description(**kwargs)
        # A key missing from kwargs would be drawn at random by build_description and show up here.
        assert set(instruction.get_instruction_args() or {}) == set(kwargs), instruction_id
    if "combination:repeat_prompt" in row["instruction_id_list"]:
        kwargs = row["kwargs"][row["instruction_id_list"].index("combination:repeat_prompt")]
        assert row["prompt"].startswith(kwargs["prompt_to_repeat"])
    conflicts = instructions_registry.conflict_make(copy.deepcopy(instructions_registry.INSTRUCTION_CONFLICTS))
    ids = row["instruction_id_list"]
    assert len(set(ids)) == len(ids)
    assert not [(a, b) for a in ids for b in ids if a != b and b in conflicts[a]]


def test_bad_prompt_line_names_file_and_line(tmp_path):
    good = json.dumps({"key": 1, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    bad_file = tmp_path / "prompts.jsonl"
    for bad_line, message in [
        ("{not json", "not valid JSON"),
        (json.dumps({"key": 2, "prompt": "Hi."}), "needs fields"),
        (json.dumps({"key": 2, "prompt": "Hi.", "instruction_id_list": ["no:such"], "kwargs": [{}]}), "unknown instruction id"),
        (json.dumps({"key": 2, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}), "kwargs needs one object per"),
    ]:
        bad_file.write_text(good + "\n" + bad_line + "\n")
        with pytest.raises(ValueError, match=re.escape(f"{bad_file}:2: {message}")):
            loader.read_jsonl(str(bad_file), loader.ifeval_problem)  # an absolute path overrides data/


def test_golden_cases_pass_and_fail_every_instruction():
    for verdict in (True, False):
        covered = {c["instruction_id"] for c in GOLDEN["cases"] if c["strict"] is verdict}
        assert covered == set(REGISTRY), f"instruction ids without a strict={verdict} case"


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['instruction_id']}:{c['response'][:25]}")
def test_golden_case_through_lm_eval_checkers(case):
    inp = lm_eval_ifeval.InputExample(
        key=0, instruction_id_list=[case["instruction_id"]], prompt=case.get("prompt", ""), kwargs=[case["kwargs"]]
    )
    strict = lm_eval_ifeval.test_instruction_following_strict(inp, case["response"])
    loose = lm_eval_ifeval.test_instruction_following_loose(inp, case["response"])
    assert (strict.follow_instruction_list, loose.follow_instruction_list) == ([case["strict"]], [case["loose"]])


def test_task_yaml_loads_in_lm_eval_and_scores_like_ifeval():
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(TASK_DIR), include_defaults=False).load("ifeval_offline")["tasks"]["ifeval_offline"]
    docs = list(task.test_docs())
    assert [d["key"] for d in docs] == [row["key"] for row in PROMPTS]
    assert set(task.aggregation()) == METRICS
    assert task.aggregation()["inst_level_strict_acc"] is lm_eval_ifeval.agg_inst_level_acc
    # The first prompt asks for the keywords "insulated" and "leak-proof".
    assert task.process_results(docs[0], ["An insulated, leak-proof bottle."])["prompt_level_strict_acc"] is True
    assert task.process_results(docs[0], ["A bottle."])["prompt_level_strict_acc"] is False


@pytest.mark.slow
def test_ifeval_offline_runs_end_to_end_on_the_bundled_model(bundled):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok = bundled
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=1),
        tasks=["ifeval_offline"],
        task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False),
        limit=1, log_samples=True,
        gen_kwargs={"max_gen_toks": 4},  # a check that the task runs through lm-eval, not a score
    )
    scores = out["results"]["ifeval_offline"]
    (sample,) = out["samples"]["ifeval_offline"]
    # the aggregate of one prompt is that prompt's verdicts, as the checkers give them on the text generated
    inp = lm_eval_ifeval.InputExample(key=sample["doc"]["key"], instruction_id_list=sample["doc"]["instruction_id_list"],
                                      prompt=sample["doc"]["prompt"], kwargs=sample["doc"]["kwargs"])
    strict = lm_eval_ifeval.test_instruction_following_strict(inp, sample["filtered_resps"][0])
    assert scores["prompt_level_strict_acc,none"] == float(strict.follow_all_instructions)
    assert scores["inst_level_strict_acc,none"] == pytest.approx(sum(strict.follow_instruction_list) / len(strict.follow_instruction_list))
    for metric in METRICS:
        assert scores[f"{metric},none"] == pytest.approx(np.mean(sample[metric]))
    assert out["n-samples"]["ifeval_offline"]["effective"] == 1
