"""Fidelity to the unquantized model: KL(p16 || pq) and agreement against independent computations."""
import numpy as np
import pytest
import torch
from scipy.special import rel_entr

from evalsuite.run import heldout
from quant import quantize_
from quant.rtn import RTNConfig


@pytest.mark.slow
def test_2bit_rtn_kl_matches_scipy_on_the_real_model(bundled, fresh_model):
    model, tok = bundled
    ids = heldout.probe_ids(tok)[:256]
    ref, target = heldout.logprobs(model, ids)
    quantized = fresh_model()
    quantize_(quantized, RTNConfig(bits=2, group_size=64))
    logp, _ = heldout.logprobs(quantized, ids)
    q = heldout.measure(logp, target, ref)
    p16, p2 = ref.double().exp().numpy(), logp.double().exp().numpy()
    kl = rel_entr(p16, p2).sum(-1)  # scipy's KL per position, in float64
    assert q.tokens == 255
    assert q.kl_mean == pytest.approx(kl.mean(), rel=1e-3) and q.kl_p95 == pytest.approx(np.quantile(kl, 0.95), rel=1e-3)
    assert q.top1_agreement == pytest.approx((p16.argmax(-1) == p2.argmax(-1)).mean())
    assert q.kl_mean > 0.1 and q.token_ppl == pytest.approx(np.exp(-np.log(p2[np.arange(255), target]).mean()), rel=1e-4)


def test_kl_matches_closed_form_on_two_point_distributions():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.9)) + 0.5 * torch.log(torch.tensor(0.5 / 0.1))
    out = heldout.measure(q, torch.tensor([0]), ref=p)
    assert out.kl_mean == pytest.approx(expected.item(), rel=1e-6)
    assert out.token_ppl == pytest.approx(1 / 0.9)


def test_kl_matches_scipy_on_random_distributions():
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(7, 50, generator=g, dtype=torch.float64), -1)
    logp = torch.log_softmax(torch.randn(7, 50, generator=g, dtype=torch.float64), -1)
    out = heldout.measure(logp, torch.zeros(7, dtype=torch.long), ref=ref)
    kl = rel_entr(ref.exp().numpy(), logp.exp().numpy()).sum(-1)
    assert out.kl_mean == pytest.approx(kl.mean(), rel=1e-9)
    assert out.top1_agreement == pytest.approx((ref.argmax(-1) == logp.argmax(-1)).double().mean().item())


def test_nan_log_probs_fail_the_measurement():
    logp = torch.full((2, 3), float("nan"))
    with pytest.raises(FloatingPointError, match="NaN"):
        heldout.measure(logp, torch.zeros(2, dtype=torch.long))
