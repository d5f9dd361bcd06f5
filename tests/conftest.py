"""Shared fixtures. The real bundled model is loaded once per session; a test that changes a model takes a
``fresh_model()`` copy of it (a deep copy: about 0.3 s, against 2-5 s for a load)."""
from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bundled_ref():
    from evalsuite.load.models import resolve

    return resolve("smollm2-135m")


@pytest.fixture(scope="session")
def bundled(bundled_ref):
    """(model, tokenizer) of the real bundled SmolLM2-135M, shared by the whole session: never modify it."""
    from evalsuite.load.models import load

    return load(bundled_ref)


@pytest.fixture
def fresh_model(bundled):
    """A factory of private copies of the bundled model, for tests that quantize or edit one."""
    return lambda: copy.deepcopy(bundled[0])


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
