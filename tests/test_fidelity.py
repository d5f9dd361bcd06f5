"""Fidelity to the unquantized model: zero for the model against itself, positive after 2-bit RTN."""
import pytest
import torch

from evalsuite import fidelity
from evalsuite.models import load
from quant import quantize_
from quant.rtn import RTNConfig

pytestmark = pytest.mark.slow


def test_model_against_itself_and_after_2bit_rtn(bundled_ref):
    model, tok = load(bundled_ref)
    ids = fidelity.probe_ids(tok)[:256]
    ref, target = fidelity.logprobs(model, ids)
    same = fidelity.measure(ref, target, ref)
    assert same["kl_mean"] == 0 and same["top1_agreement"] == 1 and same["tokens"] == 255
    quantize_(model, RTNConfig(bits=2, group_size=64))
    logp, _ = fidelity.logprobs(model, ids)
    q = fidelity.measure(logp, target, ref)
    assert q["kl_mean"] > 0.1 and q["top1_agreement"] < 1 and q["token_ppl"] > same["token_ppl"]


def test_kl_matches_closed_form_on_two_point_distributions():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.9)) + 0.5 * torch.log(torch.tensor(0.5 / 0.1))
    out = fidelity.measure(q, torch.tensor([0]), ref=p)
    assert out["kl_mean"] == pytest.approx(expected.item(), rel=1e-6)
    assert out["token_ppl"] == pytest.approx(1 / 0.9)
