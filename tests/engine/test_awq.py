"""AWQ search / apply on real transformers decoder blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from qtapp.engine.config import AWQOptions, QuantScheme
from qtapp.engine.model.arch import AwqGroup, arch_for
from qtapp.engine.quant.methods.awq import (
    AwqBlockResult,
    _clip_search,
    awq_apply_block,
    awq_search_block,
    fake_quantize_scheme,
)
from qtapp.engine.quant.primitives import fake_quantize

QKV = AwqGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "self_attn")
VO = AwqGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj")
GATE_UP = AwqGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp")
UP_DOWN = AwqGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj")
ALL_GROUPS = (QKV, VO, GATE_UP, UP_DOWN)
W4G32 = QuantScheme(4, 32, False)


class _Stop(Exception):
    pass


def capture_block_inputs(model, tokens: torch.Tensor, layer: int):
    """Hidden states and keyword arguments entering decoder block `layer`."""
    got = {}

    def hook(_module, args, kwargs):
        got["x"] = args[0] if args else kwargs["hidden_states"]
        got["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    handle = model.model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(input_ids=tokens, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got["x"], got["kwargs"]


def run_block(block, x, kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = block(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def rtn_linears(block, scheme_for) -> None:
    for name, module in block.named_modules():
        if isinstance(module, torch.nn.Linear) and scheme_for(name) is not None:
            s = scheme_for(name)
            module.weight.data = fake_quantize(module.weight.data, s.bits, s.group_size, s.sym)


def tiny_block(model_type: str = "llama", kv_heads: int = 4, n: int = 8, seq: int = 32):
    """Block 0 of a tiny random model, with non-uniform norms and a few outlier channels."""
    config = AutoConfig.for_model(
        model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=kv_heads, vocab_size=97,
    )
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50)
        model.model.embed_tokens.weight[:, [3, 17, 40]] *= 20  # salient input channels
        block = model.model.layers[0]
        for norm in (block.input_layernorm, block.post_attention_layernorm):
            norm.weight.copy_(torch.rand(64, generator=gen) + 0.5)
        for lin in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
            if lin.bias is not None:
                lin.bias.normal_(0, 0.1, generator=gen)
    tokens = torch.randint(0, 97, (n, seq), generator=gen)
    x, kwargs = capture_block_inputs(model, tokens, 0)
    return block, x, kwargs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_scales(block, groups, seed: int = 1) -> AwqBlockResult:
    gen = torch.Generator().manual_seed(seed)
    result = AwqBlockResult()
    for g in groups:
        width = block.get_submodule(g.linears[0]).in_features
        result.scales[g.prev] = torch.exp(torch.randn(width, generator=gen))  # spread ~ e^±3
    return result


# ---------------------------------------------------------------------------- folding


@pytest.mark.parametrize("model_type,kv_heads", [("llama", 4), ("llama", 2), ("qwen2", 4)])
def test_folded_scales_keep_the_float_block_output(model_type, kv_heads):
    block, x, kwargs = tiny_block(model_type, kv_heads)
    ref = run_block(block, x, kwargs)
    groups = arch_for(AutoConfig.for_model(
        model_type, num_attention_heads=4, num_key_value_heads=kv_heads, hidden_size=64,
    ).to_dict()).awq_groups
    assert (VO in groups) == (kv_heads == 4)

    searched = awq_search_block(block, x, kwargs, ALL_GROUPS, lambda n: W4G32,
                                AWQOptions(clip=False), batch_size=3)
    assert torch.equal(run_block(block, x, kwargs), ref), "the search changed the block"
    if kv_heads == 4:
        assert set(searched.scales) == {g.prev for g in ALL_GROUPS}
    else:  # v_proj (32 outputs) cannot absorb o_proj's (64 inputs) scales
        assert "self_attn.v_proj" not in searched.scales
        assert "grouped-query" in searched.losses["self_attn.v_proj"]["skipped"]
    assert any(rec.get("alpha") for rec in searched.losses.values())

    for result in (searched, random_scales(block, [g for g in ALL_GROUPS
                                                   if g.prev in searched.scales])):
        folded = copy.deepcopy(block)
        awq_apply_block(folded, result, ALL_GROUPS)
        out = run_block(folded, x, kwargs)
        assert rel_err(out - x, ref - x) < 1e-5
        moved = rel_err(folded.mlp.down_proj.weight, block.mlp.down_proj.weight)
        assert moved > 1e-3 or result is searched


def test_scales_reduce_the_quantized_error_on_salient_channels():
    block, x, kwargs = tiny_block()
    result = awq_search_block(block, x, kwargs, ALL_GROUPS, lambda n: W4G32, AWQOptions(clip=False))
    for prev, rec in result.losses.items():
        assert rec["loss"] <= rec["loss_rtn"], prev
        assert rec["history"][0] == rec["loss_rtn"] and min(rec["history"]) == rec["loss"]
    s = result.scales["input_layernorm"]
    salient = torch.tensor([3, 17, 40])
    assert s[salient].min() > s.median() * 2  # outlier channels are scaled up
    ref = run_block(block, x, kwargs)
    plain = copy.deepcopy(block)
    rtn_linears(plain, lambda n: W4G32)
    awq = copy.deepcopy(block)
    awq_apply_block(awq, result, ALL_GROUPS)
    rtn_linears(awq, lambda n: W4G32)
    assert rel_err(run_block(awq, x, kwargs), ref) < 0.8 * rel_err(run_block(plain, x, kwargs), ref)


# ---------------------------------------------------------------------------- mixed precision


def attn8_ffn4(name: str) -> QuantScheme | None:
    return QuantScheme(8, 32, False) if name.startswith("self_attn.") else W4G32


def linear_errors(block, quantized, x, kwargs) -> dict[str, float]:
    """Relative output error ‖(Ŵ − W) X‖ / ‖W X‖ of each linear on its own inputs."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, a[0]))
             for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    run_block(block, x, kwargs)
    for h in hooks:
        h.remove()
    errors = {}
    for name, xin in inputs.items():
        W = block.get_submodule(name).weight
        W_hat = quantized.get_submodule(name).weight
        errors[name] = rel_err(xin @ W_hat.T, xin @ W.T)
    return errors


def test_mixed_precision_attention_8_bit_ffn_4_bit():
    block, x, kwargs = tiny_block()
    result = awq_search_block(block, x, kwargs, ALL_GROUPS, attn8_ffn4, AWQOptions())
    assert result.losses["input_layernorm"]["loss"] < result.losses["mlp.up_proj"]["loss"] / 20
    folded = copy.deepcopy(block)
    awq_apply_block(folded, result, ALL_GROUPS)
    quantized = copy.deepcopy(folded)
    rtn_linears(quantized, attn8_ffn4)
    errors = linear_errors(folded, quantized, x, kwargs)
    attn = [e for n, e in errors.items() if n.startswith("self_attn.")]
    ffn = [e for n, e in errors.items() if n.startswith("mlp.")]
    assert max(attn) < min(ffn) / 5, errors


def test_unquantized_linears_are_scaled_but_not_judged():
    block, x, kwargs = tiny_block()
    ref = run_block(block, x, kwargs)

    def scheme_for(name: str) -> QuantScheme | None:
        return None if name in ("mlp.gate_proj", "mlp.down_proj") else W4G32

    result = awq_search_block(block, x, kwargs, ALL_GROUPS, scheme_for, AWQOptions(clip=True))
    assert "post_attention_layernorm" in result.scales  # up_proj is quantized
    assert "no linear" in result.losses["mlp.up_proj"]["skipped"]  # down_proj is not
    assert "mlp.gate_proj" not in result.clips and "mlp.down_proj" not in result.clips
    assert not {"self_attn.q_proj", "self_attn.k_proj"} & set(result.clips)
    folded = copy.deepcopy(block)
    awq_apply_block(folded, AwqBlockResult(result.scales), ALL_GROUPS)
    assert rel_err(run_block(folded, x, kwargs) - x, ref - x) < 1e-5


# ---------------------------------------------------------------------------- clipping


def test_clip_search_shrinks_an_outlier_weight_nobody_reads():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(16, 64, generator=gen)
    W[:, 5] = 40.0  # huge weights on an input channel that is always zero
    X = torch.randn(256, 64, generator=gen)
    X[:, 5] = 0
    scheme = QuantScheme(4, 32, True)
    opts = AWQOptions(clip_grid=20, max_shrink=0.5)
    c = _clip_search(W, X, scheme, opts)
    w_max = W.reshape(16, 2, 32).abs().amax(-1)
    assert c.shape == (16, 2)
    assert torch.all(c >= w_max * (1 - opts.max_shrink) - 1e-6) and torch.all(c <= w_max)
    assert (c[:, 0] < 0.65 * 40.0).float().mean() > 0.8  # group 0 holds the outliers
    Wc = torch.maximum(torch.minimum(W, c.repeat_interleave(32, 1)), -c.repeat_interleave(32, 1))
    err_clip = ((fake_quantize_scheme(Wc, scheme) - W) @ X.T).pow(2).mean()
    err_plain = ((fake_quantize_scheme(W, scheme) - W) @ X.T).pow(2).mean()
    assert err_clip < 0.7 * err_plain, (err_clip, err_plain)


@pytest.mark.parametrize("group_size", [32, 64, 128, -1, 0])
@pytest.mark.parametrize("sym", [True, False])
def test_grouped_fake_quantize_matches_the_primitives(group_size, sym):
    W = torch.randn(24, 200, generator=torch.Generator().manual_seed(2)) * 3
    for bits in (3, 4, 8):
        got = fake_quantize_scheme(W, QuantScheme(bits, group_size, sym))
        assert torch.equal(got, fake_quantize(W, bits, group_size, sym))


# ---------------------------------------------------------------------------- plain data


def test_result_round_trips_through_safetensors_and_json(tmp_path):
    block, x, kwargs = tiny_block()
    result = awq_search_block(block, x, kwargs, ALL_GROUPS, attn8_ffn4, AWQOptions())
    path = tmp_path / "awq_block0.safetensors"
    result.save(path)
    loaded = AwqBlockResult.load(path)
    assert loaded.losses == result.losses
    assert loaded.group_sizes == result.group_sizes == {
        n: 32 for n in ("self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                        "mlp.down_proj")}
    a, b = copy.deepcopy(block), copy.deepcopy(block)
    awq_apply_block(a, result, ALL_GROUPS)
    awq_apply_block(b, loaded, ALL_GROUPS)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.mlp.down_proj.weight, block.mlp.down_proj.weight)


@pytest.mark.cuda
def test_search_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    block, x, kwargs = tiny_block()
    cpu = awq_search_block(block, x, kwargs, ALL_GROUPS, attn8_ffn4, AWQOptions())
    cuda_kwargs = {k: (tuple(t.cuda() for t in v) if isinstance(v, tuple) else
                       v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    gpu_block = copy.deepcopy(block).cuda()
    gpu = awq_search_block(gpu_block, x.cuda(), cuda_kwargs, ALL_GROUPS, attn8_ffn4, AWQOptions())
    for prev, rec in cpu.losses.items():
        assert gpu.losses[prev]["alpha"] == rec["alpha"], prev
        assert gpu.losses[prev]["loss"] == pytest.approx(rec["loss"], rel=1e-3)
    for prev, s in cpu.scales.items():
        torch.testing.assert_close(gpu.scales[prev].cpu(), s, rtol=1e-4, atol=0, msg=prev)
    for name, c in cpu.clips.items():  # near-ties (~4 %) may fall the other way on a GPU
        diff = (gpu.clips[name].cpu() - c).abs() / c
        assert (diff < 1e-4).float().mean() > 0.9, name


# ---------------------------------------------------------------------------- real activations


@pytest.fixture(scope="module")
def demo_block2(demo_dir):
    """Block 2 of the demo model with its inputs for 24 calibration windows × 128 tokens."""
    from transformers import AutoTokenizer

    from qtapp.engine.quant.calibration import calibration_batches

    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    tokens = calibration_batches(tokenizer, n_samples=24, seq_len=128, seed=0)
    model = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32).eval()
    x, kwargs = capture_block_inputs(model, tokens, 2)
    groups = arch_for(model.config.to_dict()).awq_groups
    return copy.deepcopy(model.model.layers[2]), x, kwargs, groups


@pytest.mark.slow
def test_awq_beats_rtn_on_a_real_block(demo_block2):
    """W4 g64 asym: AWQ + RTN vs RTN, block output MSE on 8 held-out windows."""
    block, x, kwargs, groups = demo_block2
    calib, held_out = x[:16], x[16:]
    scheme = QuantScheme(4, 64, False)
    result = awq_search_block(block, calib, kwargs, groups, lambda n: scheme, AWQOptions())
    assert "self_attn.v_proj" not in result.scales  # SmolLM2 uses grouped-query attention
    ref = run_block(block, held_out, kwargs)
    plain = copy.deepcopy(block)
    rtn_linears(plain, lambda n: scheme)
    awq = copy.deepcopy(block)
    awq_apply_block(awq, result, groups)
    rtn_linears(awq, lambda n: scheme)
    mse_rtn = float((run_block(plain, held_out, kwargs) - ref).pow(2).mean())
    mse_awq = float((run_block(awq, held_out, kwargs) - ref).pow(2).mean())
    assert mse_awq < 0.7 * mse_rtn, (mse_awq, mse_rtn, result.losses)
