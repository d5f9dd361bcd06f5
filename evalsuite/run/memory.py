"""Peak memory of one cell: RSS high-water mark (Linux resets it through clear_refs) and CUDA max allocated."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def peak_memory() -> Iterator[dict[str, Any]]:
    import torch

    out: dict[str, Any] = {}
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield out
    out.update(peak_so_far())


def peak_so_far() -> dict[str, Any]:
    """The high-water marks since the enclosing ``peak_memory`` began (or since the process started)."""
    import torch

    out: dict[str, Any] = {}
    try:
        status = Path("/proc/self/status").read_text()
        out["peak_rss_bytes"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) * 1024
    except (OSError, StopIteration):
        import resource

        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out
