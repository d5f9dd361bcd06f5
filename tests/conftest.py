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


E2E_ARGV = ["eval", "--bits", "16", "4", "--suite", "smoke", "--limit", "2", "--run", "e2e"]  # the default backend


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory):
    """The e2e run dir: the real bundled model at 16 and 4 bit on the smoke suite, 2 items per task, through the
    CLI; made once per session for test_e2e and test_html_report."""
    from evalsuite.__main__ import main

    results = tmp_path_factory.mktemp("results")
    assert main([*E2E_ARGV, "--results-dir", str(results)]) == 0
    return results / "e2e"


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
