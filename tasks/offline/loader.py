"""lm-eval ``custom_dataset`` for the bundled JSONL: paths are relative to tasks/offline/data, wherever the repo is.

(lm-eval resolves neither ``data_files`` nor ``!function`` paths against the task file, so every offline task
YAML sits in this folder and names this one loader.) A malformed row raises with its file and line number.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

DATA = Path(__file__).resolve().parent / "data"


class OfflineDataError(ValueError):
    """A bundled data file that is missing or does not parse; the message names the file and line."""


def read_jsonl(data_file: str, check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """The rows of ``data/<data_file>``; ``check(row)`` may return what is wrong with a row."""
    path = DATA / data_file
    if not path.exists():
        raise OfflineDataError(f"task data file {path} is missing; rebuild it with `.venv/bin/python tasks/build_offline.py`")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise OfflineDataError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix the line or rebuild with tasks/build_offline.py") from None
            problem = "expected a JSON object per line" if not isinstance(row, dict) else check(row) if check else None
            if problem:
                raise OfflineDataError(f"{path}:{lineno}: {problem}")
            rows.append(row)
    if not rows:
        raise OfflineDataError(f"{path} holds no items")
    return rows


def _test_split(rows: list[dict]):
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(rows)})


def load_jsonl(data_file: str, **_: object):
    """A DatasetDict with one ``test`` split; extra kwargs are lm-eval's task metadata, unused here."""
    return _test_split(read_jsonl(data_file))


IFEVAL_FIELDS = {"key": int, "prompt": str, "instruction_id_list": list, "kwargs": list}


def ifeval_problem(row: dict) -> str | None:
    """What makes a google/IFEval-format row unusable by lm-eval's checkers, if anything."""
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    if any(not isinstance(row.get(k), t) for k, t in IFEVAL_FIELDS.items()):
        return f"needs fields {', '.join(f'{k} ({t.__name__})' for k, t in IFEVAL_FIELDS.items())}"
    if len(row["kwargs"]) != len(row["instruction_id_list"]):
        return "kwargs needs one object per entry of instruction_id_list"
    unknown = [i for i in row["instruction_id_list"] if i not in INSTRUCTION_DICT]
    if unknown:
        return f"unknown instruction id {unknown[0]!r}; known: {', '.join(INSTRUCTION_DICT)}"
    return None


def load_ifeval(data_file: str, **_: object):
    return _test_split(read_jsonl(data_file, ifeval_problem))
