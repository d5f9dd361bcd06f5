"""What one cell needs to run: CPUs, GPUs, memory. Not part of the cell's id (they change where and how fast a cell
runs, not its answers). A sweep file sets them per model; GPUs left unset are derived from the cluster: one per
cell where the cluster has GPUs, none otherwise."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evalsuite.errors import UsageError

KEYS = {"gpus": int, "cpus": (int, float), "memory_gb": (int, float)}


@dataclass(frozen=True)
class Resources:
    cpus: float = 1
    gpus: int | None = None  # None: derived from the cluster (see module docstring)
    memory_gb: float | None = None  # None: no reservation

    def gpus_on(self, cluster_has_gpus: bool) -> int:
        return self.gpus if self.gpus is not None else int(cluster_has_gpus)


def model_entry(entry: Any) -> tuple[str, Resources]:
    """A sweep file's model: a name, or ``{model: llama-65b, gpus: 4, cpus: 8, memory_gb: 200}``."""
    if isinstance(entry, str):
        return entry, Resources()
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
        raise UsageError(f"a sweep model is a name or a mapping with 'model' (and gpus, cpus, memory_gb); got {entry!r}")
    extra = sorted(set(entry) - {"model", *KEYS})
    if extra:
        raise UsageError(f"sweep model {entry['model']}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(KEYS)}")
    for key, kind in KEYS.items():
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind) or value < (0 if key == "gpus" else 0.01)):
            raise UsageError(f"sweep model {entry['model']}: {key} must be a {'whole number >= 0' if key == 'gpus' else 'positive number'}; got {value!r}")
    return entry["model"], Resources(**{k: entry[k] for k in KEYS if k in entry})
