"""Records on disk: one JSON per cell, written atomically, read back with validation.

A record is written last, after its per-sample log, by write-to-temp + fsync + rename, so a record that
exists is complete; a killed run leaves at most a ``.tmp-*`` file that nothing reads. A record that does not
parse or validate is reported and treated as missing (its cell is recomputed), never silently used.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from evalsuite.records.record import Record, RecordError


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n").encode())


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    write_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows).encode())


def record_path(run_dir: Path, cell_id: str) -> Path:
    return run_dir / f"{cell_id}.json"


def samples_path(run_dir: Path, cell_id: str) -> Path:
    return run_dir / f"{cell_id}.samples.jsonl"


def write_record(run_dir: Path, rec: Record) -> Path:
    path = record_path(run_dir, rec.cell_id)
    write_json(path, rec.to_dict())
    return path


def read_record(path: Path) -> tuple[Record | None, str | None]:
    """(record, None) or (None, why it is unusable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable: {e}"
    try:
        rec = Record.from_dict(data)
    except (RecordError, TypeError) as e:
        return None, str(e)
    if path.stem != rec.cell_id:
        return None, f"file name does not match its cell id {rec.cell_id}"
    return rec, None


def record_files(run_dir: Path) -> list[Path]:
    """A run's record files: ``<cell id>.json``, never a hidden temporary (``.tmp-*``) a killed write left."""
    return sorted(p for p in Path(run_dir).glob("*.json") if not p.name.startswith("."))


def read_run(run_dir: Path) -> tuple[list[Record], list[str]]:
    """All usable records of a run, and one line per unusable file."""
    records, problems = [], []
    for path in record_files(run_dir):
        rec, problem = read_record(path)
        if rec is None:
            problems.append(f"{path}: {problem}; its cell will be recomputed")
        else:
            records.append(rec)
    return records, problems
