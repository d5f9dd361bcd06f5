"""Build a cache directory once, safely: under a lock per cache key, into a temporary sibling that is renamed into
place when complete. Readers therefore never see a half-written directory, a killed build leaves only a temporary
that the next build ignores, and two processes (or Ray workers) asking for the same key build it once.
"""
from __future__ import annotations

import fcntl
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

COMPLETE = "config.json"  # every cached checkpoint has one; its presence after the rename means done


def is_built(target: Path) -> bool:
    return (Path(target) / COMPLETE).exists()


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes, also when the process dies
        yield


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, made by ``build(tmp_dir)`` unless it exists; returns ``target``."""
    target = Path(target)
    if is_built(target):
        return target
    with _locked(target):
        if is_built(target):  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            build(tmp)
            if not is_built(tmp):
                raise RuntimeError(f"building {target.name} wrote no {COMPLETE}")
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; removes a failed build's leftovers
    return target
