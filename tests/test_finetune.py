"""The fine-tune stage (peft LoRA, before or after quantization) on the real bundled model, with tiny budgets: it
compensates (held-out KL and perplexity fall), touches only the adapters, merges as a low-rank product, trains on
text disjoint from every evaluation text, counts the adapters' bytes, resumes, and refuses bad input in preflight."""
import copy
import json

import pytest
import torch

from evalsuite.__main__ import main
from evalsuite.finetune import data, train
from evalsuite.run import heldout
from evalsuite.spec.cell import CellSpec, cell_id
from evalsuite.spec.finetune import FinetuneSpec
from quant import quantize_
from quant.rtn import RTNConfig

POST = FinetuneSpec("lora-post", steps=8, batch=2, seqlen=64, lr=2e-3, log_every=1)  # distill, 1,024 tokens


def base_weights(model) -> dict[str, torch.Tensor]:
    """Every non-adapter parameter by its name before peft wrapped it."""
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def test_cell_id_changes_only_when_a_finetune_stage_is_set():
    plain = CellSpec(model="m", quant=RTNConfig(bits=4), suite="smoke", tasks=("t",), backend="evalsuite")
    tuned = CellSpec(model="m", quant=RTNConfig(bits=4), suite="smoke", tasks=("t",), backend="evalsuite", finetune=POST)
    assert "finetune" not in plain.identity("fp")  # old runs keep their ids and resume
    assert cell_id(plain.identity("fp")) != cell_id(tuned.identity("fp"))
    assert tuned.label() == "4bit-rtn-g128+lora-post-distill-r8-s8"


def test_offline_training_text_shares_no_13gram_with_any_evaluation_text():
    from quant.calib import split_text

    evals = data.evaluation_texts()
    assert len(evals) == 1 + 281 + 81 + 8 + 70 + 18  # held-out text; MMLU, BBH (CoT shares its items), GSM8K, IFEval, ppl docs
    raw = data.ngrams(split_text()[0])
    assert sum(bool(raw & data.ngrams(t)) for t in evals) > 0  # the plain calibration split does overlap
    trained = data.ngrams(data.offline_text())
    assert not [t[:80] for t in evals if trained & data.ngrams(t)]
    assert len(data.offline_text()) > 0.95 * len(split_text()[0])


def test_lora_post_distill_recovers_3bit_rtn_and_leaves_the_quantized_weights_alone(fresh_model, bundled):
    model, tok = fresh_model(), bundled[1]
    ids = heldout.probe_ids(tok)[:512]
    ref = heldout.logprobs(model, ids)[0]
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    quantize_(model, RTNConfig(bits=3, group_size=64))
    before, frozen = heldout.measure(*heldout.logprobs(model, ids), ref=ref), base_weights(model)
    out = train.lora_post_(model, POST, tok, teacher)
    after = heldout.measure(*heldout.logprobs(model, ids), ref=ref)
    assert after.kl_mean < before.kl_mean and after.token_ppl < before.token_ppl, (before, after)
    assert out["loss_curve"][-1]["loss"] < out["loss_curve"][0]["loss"]
    now = base_weights(model)
    assert now.keys() == frozen.keys() and all(torch.equal(now[n], frozen[n]) for n in frozen)
    # accounting: every adapter is A [r, in] and B [out, r] in fp32 on 7 projections x 30 layers
    lins = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert len(lins) == 7 * 30
    expected = sum(POST.rank * (m.in_features + m.out_features) for m in lins.values())
    assert out["adapter_params"] == expected and out["adapter_bytes"] == 4 * expected
    assert out["tokens"] == POST.steps * POST.batch * POST.seqlen


def test_lora_pre_merges_a_rank_r_product_into_the_16bit_weights(fresh_model, bundled):
    model, tok = fresh_model(), bundled[1]
    original = dict((n, p.detach().clone()) for n, p in model.named_parameters())
    spec = FinetuneSpec("lora-pre", steps=2, batch=1, seqlen=32, lr=1e-3)
    out = train.lora_pre_(model, spec, tok)
    merged = dict(model.named_parameters())
    assert merged.keys() == original.keys() and out["merged"]  # no adapter left
    targets = [n for n in original if any(f".{t}." in n for t in spec.targets)]
    assert len(targets) == 7 * 30
    for n, w in original.items():
        delta = merged[n].detach() - w
        if n in targets:  # W' = W + B @ A * alpha / r: nonzero (B moved off 0) and of rank <= r
            assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta) <= spec.rank, n
        else:
            assert torch.equal(delta, torch.zeros_like(delta)), n
    quantize_(model, RTNConfig(bits=4, group_size=64))  # the cell's quantizer then runs on the merged weights
    assert heldout.perplexity(model, heldout.probe_ids(tok)[:256]) < 100


def test_finetuned_cell_end_to_end_records_its_stage_and_resumes(tmp_path):
    argv = ["eval", "--bits", "3", "--suite", "mmlu_offline_smoke", "--limit", "1", "--run", "ft", "--finetune",
            "lora-post", "--ft-steps", "2", "--ft-batch", "1", "--ft-seqlen", "32", "--results-dir", str(tmp_path)]
    assert main(argv) == 0
    (path,) = [p for p in (tmp_path / "ft").glob("*.json")]
    rec = json.loads(path.read_text())
    ft, fp = rec["finetune"], rec["footprint"]
    assert ft["steps"] == 2 and ft["tokens"] == 64 and "3 epochs" in ft["note"] and ft["memory"]["peak_rss_bytes"] > 0
    assert fp["adapter_bytes"] == ft["adapter_bytes"] > 0 and rec["spec"]["finetune"]["mode"] == "lora-post"
    assert fp["bits_per_weight"] > 3.297  # 3-bit RTN g64 alone; the fp32 adapters add theirs
    mtime = path.stat().st_mtime
    assert main(argv) == 0 and path.stat().st_mtime == mtime  # resumed: the finished cell is skipped


BAD = [
    (["--bits", "16", "--finetune", "lora-post"], "needs a quantized cell"),
    (["--bits", "4", "--finetune", "lora-post", "--ft-objective", "nope"], "unknown --ft-objective 'nope'"),
    (["--bits", "4", "--finetune", "lora-post", "--ft-steps", "0"], "--ft-steps must be a positive"),
    (["--bits", "4", "--finetune", "lora-post", "--ft-rank", "0"], "--ft-rank must be a positive"),
    (["--bits", "4", "--finetune", "lora-post", "--ft-data", "/no/such.txt"], "no such file"),
    (["--bits", "4", "--finetune", "lora-pre", "--ft-objective", "distill"], "trains the 16-bit model toward itself"),
    (["--method", "mpo", "--bond-dim", "8", "--bits", "4", "--finetune", "lora-post"], "MPO's factored cores"),
    (["--method", "gptq", "--gptq-impl", "gptqmodel", "--bits", "4", "--finetune", "lora-post"], "needs optimum"),
    (["--bits", "4", "--sym", "--backend", "vllm", "--finetune", "lora-post"], "without LoRA adapters"),
    (["--bits", "4", "--ft-steps", "3"], "needs --finetune"),
    (["--method", "bnb", "--bits", "4", "--finetune", "lora-pre"], "no 16-bit model to train before quantizing"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_finetune_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    rc = main(["eval", *argv, "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_data_file_too_short_for_one_batch_is_refused(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short " * 10)
    rc = main(["eval", "--bits", "4", "--finetune", "lora-post", "--ft-data", str(short), "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fewer than one batch of 8 x 256" in err[0], err


def test_qlora_bnb_nf4_lora_post_on_cpu(bundled_ref):
    from evalsuite.load.models import load
    from quant.bnb import BnbConfig

    try:
        model, tok = load(bundled_ref, **BnbConfig(bits=4).load_kwargs())
    except Exception as e:  # noqa: BLE001 - the reason is the skip message
        pytest.skip(f"bitsandbytes nf4 does not load on this CPU: {e}")
    spec = FinetuneSpec("lora-post", steps=2, batch=1, seqlen=32, lr=1e-3, objective="lm")
    out = train.lora_post_(model, spec, tok, None)
    assert out["adapter_params"] > 0 and all(torch.isfinite(torch.tensor(c["loss"])) for c in out["loss_curve"])
