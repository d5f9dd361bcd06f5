"""AWQ: the scale and clip searches on block 0 of the bundled model against AutoAWQ 0.2.9's own code (where it is
installed), the fold keeping the unquantized model exact, the whole model against RTN on held-out text, and bad
input refused."""
from __future__ import annotations

import copy

import pytest
import torch

from quant import QuantError, quantize_
from quant.awq import AWQConfig, _capture, _layouts, candidate_scales, clip_range, fold, search_scale
from quant.blocks import block_inputs
from quant.rtn import RTNConfig, fake_quantize


@pytest.fixture(scope="module")
def block0(bundled):
    """A private copy of the bundled model's first block and what the model feeds it on 8 x 256 calibration tokens."""
    from quant.calib import calibration_ids

    model, tok = bundled
    (inps,) = block_inputs(model, model.model.layers[0], calibration_ids(tok, 8, 256, seed=0))
    return copy.deepcopy(model.model.layers[0]), inps


def reference_quantizer(bits: int, group_size: int):
    """AutoAWQ's AwqQuantizer with only the settings its searches read: its __init__ would calibrate a whole model
    on the hub's pile-val."""
    try:
        from awq.quantize.quantizer import AwqQuantizer
    except ImportError:
        pytest.skip("the AWQ reference is not installed: pip install --no-deps autoawq==0.2.9 (the awq-ref extra)")
    ref = AwqQuantizer.__new__(AwqQuantizer)
    ref.w_bit, ref.group_size, ref.zero_point, ref.duo_scaling = bits, group_size, True, True
    ref.max_chunk_memory, ref.n_parallel_calib_samples = 1024**3, None
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("inspect,linears,prev,bits", [
    ("self_attn", ("q_proj", "k_proj", "v_proj"), "input_layernorm", 4),
    ("mlp", ("gate_proj", "up_proj"), "post_attention_layernorm", 3),
])
def test_scale_search_matches_autoawq(block0, monkeypatch, inspect, linears, prev, bits):
    """Same inputs, same group (64): the same best ratio and scales (rtol 1e-5), the same output MSE (rel 1e-4)."""
    ref = reference_quantizer(bits, 64)
    block, inps = copy.deepcopy(block0[0]), block0[1]
    module = block.get_submodule(inspect)
    # The reference saves the module's weights as {k: v.cpu()} to restore them after each grid point: a copy on
    # the GPU it runs on, but no copy on the CPU, where every grid point would start from the last one's Q(W s).
    monkeypatch.setattr(module, "state_dict", lambda: {k: v.clone() for k, v in torch.nn.Module.state_dict(module).items()})
    group = [module.get_submodule(n) for n in linears]
    calls, (x,) = _capture(block, [module], group[-1], [inps])
    args, kwargs = calls[0][0]
    x_mean = x.abs().float().reshape(-1, x.shape[-1]).mean(0)
    ratio, s, losses = search_scale(group, group, [module], calls, x_mean, bits, 64, 20)

    kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}  # the reference passes x positionally
    _, _, ref_s = ref._search_best_scale(block, block.get_submodule(prev), group, x, module2inspect=module, kwargs=kwargs)
    ref_ratio = min(range(20), key=lambda i: (candidate_scales(x_mean, _w_mean(group), i / 20) - ref_s).abs().max()) / 20
    assert ratio == ref_ratio and 0 < ratio  # a = 0 would mean the activations did not matter
    assert torch.allclose(s, ref_s, rtol=1e-5, atol=0)

    exact = ref._module_forward(x, module, ref._sanitize_kwargs(kwargs, module))
    with torch.no_grad():
        for lin in group:
            lin.weight.copy_(ref.pseudo_quantize_tensor(lin.weight * ref_s)[0] / ref_s)
    ref_loss = ref._compute_loss(exact, ref._module_forward(x, module, ref._sanitize_kwargs(kwargs, module)), x.device)
    assert losses[int(ratio * 20)] == pytest.approx(ref_loss, rel=1e-4)
    assert losses[int(ratio * 20)] < losses[0]


def _w_mean(group):
    from quant.awq import weight_mean

    return weight_mean([lin.weight for lin in group], 64)


@pytest.mark.slow
@pytest.mark.parametrize("name,bits", [("self_attn.o_proj", 4), ("self_attn.v_proj", 3)])
def test_clip_search_matches_autoawq(block0, name, bits):
    """The clip range per (row, group) equals the reference's for >= 99% of groups (the rest are near-ties that
    float summation order decides), and the clipped-and-quantized output MSE is within 0.1% of the reference's."""
    ref = reference_quantizer(bits, 64)
    block, inps = copy.deepcopy(block0[0]), block0[1]
    lin = block.get_submodule(name)
    _, (x,) = _capture(block, [lin], lin, [inps])
    w = lin.weight.detach()
    ours = clip_range(w, x, bits, 64, 20)
    theirs = ref._compute_best_clip(w, x).reshape(ours.shape)
    assert torch.isclose(ours, theirs, rtol=1e-6).float().mean() >= 0.99

    def error(limit):
        clipped = torch.clamp(w.reshape(*limit.shape, -1), -limit[..., None], limit[..., None]).reshape(w.shape)
        xs = x.reshape(-1, x.shape[-1])
        return (xs @ (fake_quantize(clipped, bits, 64) - w).T).pow(2).mean().item()

    assert error(ours) == pytest.approx(error(theirs), rel=1e-3)
    assert error(ours) < error(w.abs().reshape(*ours.shape, -1).amax(-1))  # clipping helped


@pytest.mark.slow
def test_layout_is_autoawqs_llama_layout_found_without_names(block0):
    """Which op each scale folds into and which module's output the search compares: AutoAWQ's llama table, with
    o_proj unscaled because v_proj (192 rows, grouped-query attention) does not match it."""
    block, inps = copy.deepcopy(block0[0]), block0[1]
    every = {id(m) for m in block.modules() if isinstance(m, torch.nn.Linear)}
    got = {(lay.linears, lay.inspect, lay.prev) for lay in _layouts(block, every, inps)}
    assert got == {
        (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn",), "input_layernorm"),
        (("self_attn.o_proj",), ("self_attn.o_proj",), None),
        (("mlp.gate_proj", "mlp.up_proj"), ("mlp",), "post_attention_layernorm"),
        (("mlp.down_proj",), ("mlp.down_proj",), "mlp.up_proj"),
    }


@pytest.mark.slow
def test_folded_scales_keep_the_unquantized_model_exact(bundled, fresh_model, block0):
    """Scales between 1/4 and 4 folded into every block: logits on held-out text within 1e-5 relative."""
    from evalsuite.run.heldout import heldout_ids

    model, tok = fresh_model(), bundled[1]
    ids = heldout_ids(tok, 256)[None]
    with torch.no_grad():
        before = model(ids).logits
        first = copy.deepcopy(block0[0])
        every = {id(m) for m in first.modules() if isinstance(m, torch.nn.Linear)}
        layouts = [lay for lay in _layouts(first, every, block0[1]) if lay.prev]
        assert len(layouts) == 3
        g = torch.Generator().manual_seed(0)
        for block in model.model.layers:
            for lay in layouts:
                group = [block.get_submodule(n) for n in lay.linears]
                fold(block.get_submodule(lay.prev), group, 4 ** (2 * torch.rand(group[0].in_features, generator=g) - 1))
        after = model(ids).logits
    assert ((after - before).norm() / before.norm()).item() < 1e-5
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, bundled[0].model.layers[0].input_layernorm.weight)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 3])
def test_model_awq_beats_rtn(bundled, fresh_model, bits):
    """Held-out perplexity, group 64 asym, on 2 x 128 calibration tokens and a 10-point grid (the searches cost a
    forward of each attention and MLP per grid point; the default 20 on 8 x 256 is measured in the README).
    Storage as RTN's: codes, an fp16 scale and a b-bit zero per 64 weights."""
    from evalsuite.run.heldout import heldout_ids, perplexity
    from quant.calib import calibration_ids

    tok = bundled[1]
    calib, held = calibration_ids(tok, 2, 128, seed=0), heldout_ids(tok, 512)
    ppl, fps = {}, {}
    for cfg in (RTNConfig(bits=bits, group_size=64), AWQConfig(bits=bits, group_size=64, n_grid=10)):
        model = fresh_model()
        fps[cfg.method] = quantize_(model, cfg, tokenizer=tok, calib=calib)
        ppl[cfg.method] = perplexity(model, held, seqlen=256)
    assert fps["awq"].bits_per_weight == fps["rtn"].bits_per_weight == pytest.approx(bits + (16 + bits) / 64, rel=1e-12)
    assert fps["awq"].extra["scaled_groups"] == 3 * 30  # q/k/v, gate/up, down in each of 30 blocks
    assert ppl["awq"] < ppl["rtn"], ppl


# ---- config and bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"bits": 8}, "AWQ bits must be one of 2, 3, 4"),
    ({"group_size": 0}, "group size must be a positive integer or -1"),
    ({"n_grid": 1}, "--n-grid must be 2 or more"),
    ({"calib_n": 0}, "--calib-n and --calib-seqlen must be positive"),
    ({"calib_source": "pile"}, "unknown calibration source 'pile'"),
])
def test_bad_config_is_one_line(kwargs, message):
    with pytest.raises(QuantError, match=message) as err:
        AWQConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_defaults_are_autoawqs_and_label_is_short():
    c = AWQConfig()
    assert (c.group_size, c.n_grid, c.clip, c.calib_n, c.calib_seqlen) == (128, 20, True, 128, 512)
    assert AWQConfig(bits=4, group_size=64).label() == "4bit-awq-g64"
    assert AWQConfig(bits=3, group_size=64, clip=False, n_grid=10).label() == "3bit-awq-g64-noclip-grid10"
    assert not c.load_time and not c.exports_checkpoint


def test_group_size_checked_per_layer():
    with torch.device("meta"):
        skeleton = torch.nn.Sequential(torch.nn.Linear(576, 64))
    with pytest.raises(QuantError, match="group size 128 does not divide in_features=576 of 0; use --group-size 64"):
        AWQConfig(group_size=128).validate(skeleton)
