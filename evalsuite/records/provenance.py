"""What a record needs to be reproduced: library versions, git sha, device, threads."""
from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

LIBRARIES = ("evalsuite", "torch", "transformers", "lm_eval", "accelerate", "datasets", "bitsandbytes", "gptqmodel", "gguf", "numpy",
             "vllm")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}{'-dirty' if dirty else ''}" if sha else None


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "versions": {lib: package_version(lib) for lib in LIBRARIES if package_version(lib)},
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
    }
