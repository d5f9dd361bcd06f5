"""Shared fixtures. The real bundled model is loaded once per session (0.6 s after its one-time conversion)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bundled_ref():
    from evalsuite.models import resolve

    return resolve("smollm2-135m")


@pytest.fixture(scope="session")
def bundled(bundled_ref):
    """(model, tokenizer) of the real bundled SmolLM2-135M; tests must not modify it (load their own copy)."""
    from evalsuite.models import load

    return load(bundled_ref)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
