"""Hybrid linear-attention families (Qwen3.5): blocks of two kinds from config.json's
layer_types, Gated DeltaNet (linear attention) and full attention, quantized end to end.

A tiny Qwen3.5 built from transformers' own config class (4 blocks: linear, full, linear,
full; the DeltaNet with 2 key heads and 8 value heads, so llama.cpp's value-head reordering
is exercised), with peaked outputs as in test_families.py, goes through the CLI:

- RTN, GPTQ and AWQ at 8 bits, loaded with transformers: mean KLD < 1e-3 against the source,
  and a damaged output (a DeltaNet out_proj zeroed) above it;
- at 4 bits GPTQ and AWQ are closer to the source than RTN;
- the DeltaNet's conv1d, A_log, dt_bias and gated norm stay 16-bit (bit-equal to the source);
- GGUF: an F32 file opened by llama-cpp-python within 1e-5 and Q8_0 within 1e-2, each
  rejected once a DeltaNet tensor is damaged;
- the planner counts the KV cache of full-attention blocks only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from family_helpers import (
    GGUF_F32_KLD_MAX,
    W4_G32,
    assert_gguf_f32_reproduces,
    assert_gguf_q8_close,
    assert_w8_matches,
    build_family_model,
    damage_hf,
    gguf_logits,
    held_out_klds,
    mean_kld,
    quantize_cli,
    source_logits,
    token_ids,
)

from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import arch_for

KINDS = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
QWEN3_5 = {"num_hidden_layers": 4, "layer_types": KINDS, "head_dim": 16,
           "linear_num_key_heads": 2, "linear_num_value_heads": 8,
           "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4,
           # as the released configs (rope on a quarter of head_dim, interleaved multimodal
           # sections that add up to its pairs: [11, 11, 10] of 64 dims there, 8 here)
           "rope_parameters": {"rope_type": "default", "rope_theta": 1e7,
                               "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
                               "mrope_interleaved": True}}
# token-embedding std (family_helpers.EMBED_STD): at 1.0 the random blocks swing the output
# so much that GPTQ W8 landed at 1.06e-3
EMBED_STD = 1.5
# 16-bit parameters of a DeltaNet mixer (everything but its projections)
DELTANET_FLOATS = ("conv1d.weight", "A_log", "dt_bias", "norm.weight")


@pytest.fixture(scope="module")
def qwen35_dir(tmp_path_factory):
    return build_family_model(tmp_path_factory.mktemp("qwen3_5") / "qwen3_5_text",
                              "qwen3_5_text", embed_std=EMBED_STD, **QWEN3_5)


def _meta_model(model_type: str, **extra):
    """(config, transformers' model on the meta device) of `model_type` in the tiny shape
    with QWEN3_5's blocks, `extra` on top."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, hidden_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=300, **{**QWEN3_5, **extra})
    with torch.device("meta"):
        return config, AutoModelForCausalLM.from_config(config)


def test_table_follows_layer_types():
    config, model = _meta_model("qwen3_5_text", intermediate_size=128)
    spec = arch_for(config.to_dict())
    assert spec.layer_types == tuple(KINDS)
    for i, block in enumerate(model.model.layers):
        spec.check_block(block, i)  # every nn.Linear of the block, nothing else
        names = spec.linears_of(i)
        assert any(n.startswith("linear_attn.") for n in names) == (KINDS[i] == "linear_attention")
        assert any(n.startswith("self_attn.") for n in names) == (KINDS[i] == "full_attention")
        for g in spec.awq_groups_of(i):
            block.get_submodule(g.prev), block.get_submodule(g.target)
    with pytest.raises(UserError, match="linears the table lacks"):
        spec.check_block(model.model.layers[0], 1)  # a DeltaNet block read as full attention
    # without layer_types, transformers' rule: full attention every 4th block
    derived = arch_for({**config.to_dict(), "layer_types": None, "num_hidden_layers": 8})
    assert derived.layer_types == ("linear_attention",) * 3 + ("full_attention",) \
        + ("linear_attention",) * 3 + ("full_attention",)
    with pytest.raises(UserError, match="layer_types"):
        arch_for({**config.to_dict(), "layer_types": ["sliding_attention"] * 4})


@pytest.mark.slow
def test_source_outputs_are_peaked(qwen35_dir):
    import numpy as np

    logits = source_logits(qwen35_dir, token_ids(259))
    p = torch.softmax(logits.double(), -1)
    entropy = float(-(p * p.log()).sum(-1).mean())
    assert entropy < 0.5 * np.log(logits.shape[-1]), entropy


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_hf_methods_end_to_end(qwen35_dir, method, tmp_path):
    from safetensors import safe_open

    out = quantize_cli(qwen35_dir, tmp_path / "out", method)
    assert_w8_matches(qwen35_dir, out, lambda: damage_hf(
        out, tmp_path, "model.layers.0.linear_attn.out_proj"), f"qwen3_5_text {method} W8")
    # the DeltaNet's convolution, decay, time step and gated norm are the source's, bit for bit
    (src_file,) = qwen35_dir.glob("*.safetensors")
    outs = {}
    for f in out.glob("*.safetensors"):
        with safe_open(f, "pt") as h:
            keys = h.keys()  # a safe_open handle is not iterable
            outs.update({k: h.get_tensor(k) for k in keys if ".linear_attn." in k})
    with safe_open(src_file, "pt") as src:
        for i in (0, 2):
            for leaf in DELTANET_FLOATS:
                name = f"model.layers.{i}.linear_attn.{leaf}"
                assert torch.equal(outs[name].float(), src.get_tensor(name).float()), name


@pytest.fixture(scope="module")
def qwen35_bpe_dir(tmp_path_factory, demo_dir):
    """The tiny Qwen3.5 with the demo model's BPE tokenizer (one llama.cpp knows)."""
    return build_family_model(tmp_path_factory.mktemp("qwen3_5_bpe") / "qwen3_5_text",
                              "qwen3_5_text", demo_dir, embed_std=EMBED_STD, **QWEN3_5)


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_gguf_end_to_end(qwen35_bpe_dir, tmp_path):
    import gguf

    from qtapp.engine.gguf.convert import convert_to_gguf
    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = qwen35_bpe_dir
    ids = token_ids(259)
    f32, ref = assert_gguf_f32_reproduces(src, tmp_path, ("blk.0.ssm_out.weight", "blk.2.ssm_a"),
                                          "qwen3_5_text")
    reader = gguf.GGUFReader(f32)
    fields = {f.name: f.contents() for f in reader.fields.values()}
    assert fields["qwen35.full_attention_interval"] == 2
    assert fields["qwen35.ssm.group_count"] == 2 and fields["qwen35.ssm.time_step_rank"] == 8
    names = {t.name for t in reader.tensors}
    assert {"blk.0.ssm_a", "blk.0.ssm_dt.bias", "blk.0.ssm_conv1d.weight", "blk.0.attn_qkv.weight",
            "blk.0.attn_gate.weight", "blk.0.ssm_out.weight", "blk.1.attn_q.weight"} <= names
    # the value heads left grouped by key head (no tiling): llama.cpp reads them wrong
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("qtapp.engine.gguf.hf_model.tile_value_heads",
                   lambda w, *_args, **_kw: w)
        untiled = convert_to_gguf(src, tmp_path / "untiled.gguf", "F32").path
    damaged = mean_kld(ref, gguf_logits(untiled, ids))
    print(f"qwen3_5_text gguf F32 without value-head tiling: mean KLD {damaged:.2e}")
    assert damaged > GGUF_F32_KLD_MAX, damaged
    assert_gguf_q8_close(src, tmp_path, ref, "qwen3_5_text", broken="blk.0.attn_qkv.weight")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qwen35_dir", "qwen35_moe_dir"])
def test_four_bit_gptq_and_awq_beat_rtn(model, request, tmp_path):
    """W4 g32: the calibrated methods are closer to the source than plain rounding, on
    held-out text (the built-in evaluation text, one byte a token): calibration fits the
    weights to text activations, not to the random tokens of the 8-bit checks."""
    from qtapp.engine.quant.calibration import builtin_eval_text

    src = request.getfixturevalue(model)
    ids = [3 + b for b in builtin_eval_text().encode()[:128]]
    outputs = {m: quantize_cli(src, tmp_path / m, m, *W4_G32) for m in ("rtn", "gptq", "awq")}
    _, _, kld = held_out_klds(src, outputs, ids)
    print(f"{src.name} W4 g32: " + ", ".join(f"{m} {v:.2e}" for m, v in kld.items()))
    assert kld["gptq"] < kld["rtn"] and kld["awq"] < kld["rtn"], kld


# ------------------------------------------------------------------ Qwen3.5 mixture of experts

# two blocks (one of each kind): with four, the 8-bit noise flips enough top-2 routing
# decisions of the random routers to put RTN W8 at 2.8e-3
MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
       "shared_expert_intermediate_size": 64, "num_hidden_layers": 2,
       "layer_types": KINDS[:2]}


@pytest.fixture(scope="module")
def qwen35_moe_dir(tmp_path_factory):
    """A tiny Qwen3.5-MoE: the hybrid blocks of QWEN3_5 with 8 routed experts (top 2) and
    a shared expert in every block."""
    return build_family_model(tmp_path_factory.mktemp("qwen3_5_moe") / "qwen3_5_moe_text",
                              "qwen3_5_moe_text", embed_std=EMBED_STD, **{**QWEN3_5, **MOE})


@pytest.fixture(scope="module")
def qwen35_moe_bpe_dir(tmp_path_factory, demo_dir):
    """The tiny Qwen3.5-MoE with the demo model's BPE tokenizer (one llama.cpp knows)."""
    return build_family_model(tmp_path_factory.mktemp("qwen3_5_moe_bpe") / "qwen3_5_moe_text",
                              "qwen3_5_moe_text", demo_dir, embed_std=EMBED_STD,
                              **{**QWEN3_5, **MOE})


def test_moe_table_expands_experts_and_keeps_the_gates():
    from qtapp.engine.model.moe import unfuse_experts

    config, model = _meta_model("qwen3_5_moe_text", **MOE)
    unfuse_experts(model)
    spec = arch_for(config.to_dict())
    for i, block in enumerate(model.model.layers):
        spec.check_block(block, i)
        names = spec.linears_of(i)
        assert len(names) == len(set(names))
        assert "mlp.shared_expert.down_proj" in names and "mlp.experts.7.down_proj" in names
        assert "mlp.shared_expert_gate" not in names and "mlp.gate" not in names
    assert spec.keep == ("mlp.shared_expert_gate",)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_moe_hf_methods_end_to_end(qwen35_moe_dir, method, tmp_path):
    from safetensors import safe_open

    out = quantize_cli(qwen35_moe_dir, tmp_path / "out", method)
    assert_w8_matches(qwen35_moe_dir, out, lambda: damage_hf(
        out, tmp_path, "model.layers.0.mlp.shared_expert.down_proj"),
        f"qwen3_5_moe_text {method} W8")
    tensors = {}
    for f in out.glob("*.safetensors"):
        with safe_open(f, "pt") as h:
            keys = h.keys()  # a safe_open handle is not iterable
            tensors.update({k: h.get_tensor(k) for k in keys if ".mlp." in k})
    # quantized per expert (GPTQ's qweight, or compressed-tensors' weight_packed: AWQ's
    # asymmetric W8 default)
    packed = {k.rsplit(".", 1)[0] for k in tensors if k.endswith((".qweight", ".weight_packed"))}
    assert {"model.layers.0.mlp.experts.5.down_proj",
            "model.layers.0.mlp.shared_expert.down_proj"} <= packed, sorted(packed)
    floats = ("model.layers.0.mlp.gate.weight", "model.layers.0.mlp.shared_expert_gate.weight")
    assert set(floats) <= set(tensors)  # 16-bit, never quantized
    (src_file,) = qwen35_moe_dir.glob("*.safetensors")
    with safe_open(src_file, "pt") as src:
        for name in floats:  # AWQ writes the compensated router and gate, the others the source's
            assert torch.equal(tensors[name], src.get_tensor(name)) == (method != "awq"), name


def _fold_awq_scales(folder: Path, uncompensated: tuple[str, ...] = ()):
    """Block 0 (DeltaNet + routed and shared experts) of the pipeline's streamer: search AWQ
    (W4 g32), fold the scales alone (no clipping, no rounding) and return the block's output
    and the experts the router picks for every token, before and after. `uncompensated`:
    float modules left out of the pairs' `also` (a deliberately broken table)."""
    from dataclasses import replace

    from family_helpers import block0, routing

    from qtapp.engine.config import AWQOptions, QuantScheme
    from qtapp.engine.model.moe import min_expert_tokens
    from qtapp.engine.quant.methods.awq import awq_apply_block, awq_search_block

    info, block, inputs = block0(folder)
    arch = info.arch
    groups = tuple(replace(g, also=tuple(a for a in g.also if a not in uncompensated))
                   for g in arch.present(0, block)[1])
    y0, picked0 = routing(block, block.mlp.gate, inputs)
    scheme = QuantScheme(4, 32, True)
    result = awq_search_block(
        block, inputs.x, inputs.kwargs, groups, lambda _n: scheme, AWQOptions(), 8,
        min_tokens=lambda n: min_expert_tokens(32) if arch.expert_of(n) is not None else 0)
    # the DeltaNet's input norm, the norm before the experts and the shared expert's
    # up→down all took a scale other than 1 (else the check below proves nothing)
    for prev in ("input_layernorm", "post_attention_layernorm", "mlp.shared_expert.up_proj"):
        s = result.scales[prev]
        assert not torch.allclose(s, torch.ones_like(s)), prev
    result.clips.clear()
    awq_apply_block(block, result, groups, arch.norm_offset)
    y1, picked1 = routing(block, block.mlp.gate, inputs)
    return (y0, picked0), (y1, picked1)


def test_moe_awq_table_pairs():
    """The Qwen3.5-MoE table gives AWQ the dense Qwen3.5 mixers' pairs, one norm pair over
    every routed expert's and the shared expert's gate/up (the router and the shared
    expert's gate compensated), an up→down pair per routed expert and one for the shared
    expert; every pair names modules of the real blocks."""
    from qtapp.engine.model.arch import method_refusal
    from qtapp.engine.model.moe import unfuse_experts

    config, model = _meta_model("qwen3_5_moe_text", **MOE)
    unfuse_experts(model)
    spec = arch_for(config.to_dict())
    assert method_refusal("awq", config.to_dict()) == ""
    for i, block in enumerate(model.model.layers):
        pairs = {(g.prev, g.target): g for g in spec.awq_groups_of(i)}
        for g in pairs.values():
            for name in (g.prev, g.target, *g.linears, *g.also):
                block.get_submodule(name)
        mixer = "linear_attn" if KINDS[i] == "linear_attention" else "self_attn"
        assert ("input_layernorm", mixer) in pairs
        experts = pairs["post_attention_layernorm", "mlp"]
        assert experts.stat == "mlp"
        assert experts.also == ("mlp.gate", "mlp.shared_expert_gate")
        assert {"mlp.experts.7.gate_proj", "mlp.experts.0.up_proj", "mlp.shared_expert.gate_proj",
                "mlp.shared_expert.up_proj"} <= set(experts.linears)
        assert ("mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj") in pairs
        assert all((f"mlp.experts.{e}.up_proj", f"mlp.experts.{e}.down_proj") in pairs
                   for e in range(MOE["num_experts"]))


def test_moe_awq_scales_leave_routing_gating_and_outputs_unchanged(qwen35_moe_dir):
    """Folded without rounding, the scales change nothing: the router and the shared
    expert's (1 × hidden) gate read post_attention_layernorm's output, so their weight
    columns take its scale too; every token goes to the same experts and the block's output
    (DeltaNet, routed and shared experts) is the source's."""
    (y0, picked0), (y1, picked1) = _fold_awq_scales(qwen35_moe_dir)
    assert torch.equal(picked0, picked1), "the router picks other experts after scaling"
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)


def test_moe_awq_uncompensated_shared_expert_gate_is_caught(qwen35_moe_dir):
    """Without the shared expert gate's compensation the routing is the same (the router
    is still compensated) but the gate's sigmoid reads a rescaled input: the output moves."""
    (y0, picked0), (y1, picked1) = _fold_awq_scales(qwen35_moe_dir,
                                                    uncompensated=("mlp.shared_expert_gate",))
    assert torch.equal(picked0, picked1)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_moe_gguf_end_to_end(qwen35_moe_bpe_dir, tmp_path, monkeypatch):
    import gguf

    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    # transformers loads any qwen3_5_moe_text tokenizer as its Qwen3_5Tokenizer, which
    # splits text with Qwen's own pattern whatever tokenizer.json says, so the demo
    # tokenizer's pre-tokenizer hash is one llama.cpp does not know under this model type
    # (real checkpoints ship Qwen's tokenizer: "qwen35"). Token ids go to llama.cpp
    # directly here, so the vocabulary is written under the demo tokenizer's own name.
    monkeypatch.setattr("qtapp.engine.gguf.vocab.pre_tokenizer_name",
                        lambda _tokenizer, _dir: "smollm")
    f32, ref = assert_gguf_f32_reproduces(qwen35_moe_bpe_dir, tmp_path,
                                          ("blk.1.ffn_down_shexp.weight",), "qwen3_5_moe_text")
    tensors = {t.name: t for t in gguf.GGUFReader(f32).tensors}
    assert tuple(tensors["blk.0.ffn_gate_exps.weight"].shape) == (64, 64, 8)
    assert "blk.0.ffn_gate_inp_shexp.weight" in tensors and "blk.0.ffn_up_shexp.weight" in tensors

    path = assert_gguf_q8_close(qwen35_moe_bpe_dir, tmp_path, ref, "qwen3_5_moe_text",
                                broken="blk.0.attn_qkv.weight")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_gate_inp_shexp.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.ssm_conv1d.weight"] == gguf.GGMLQuantizationType.F32


# ------------------------------------------------ check, planner and advisor on real shapes

# config.json of Qwen/Qwen3.5-27B as released (vision-language; the text part abridged to the
# keys that matter) and the text-only form of the same decoder
QWEN35_27B_TEXT = {
    "model_type": "qwen3_5_text", "architectures": ["Qwen3_5ForCausalLM"],
    "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 64,
    "num_attention_heads": 24, "num_key_value_heads": 4, "head_dim": 256,
    "linear_num_key_heads": 16, "linear_num_value_heads": 48, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "vocab_size": 248320,
    "layer_types": ["linear_attention", "linear_attention", "linear_attention",
                    "full_attention"] * 16,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000,
                        "partial_rotary_factor": 0.25, "mrope_section": [11, 11, 10],
                        "mrope_interleaved": True},
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
QWEN35_27B_VLM = {
    "model_type": "qwen3_5", "architectures": ["Qwen3_5ForConditionalGeneration"],
    "text_config": {**QWEN35_27B_TEXT, "model_type": "qwen3_5_text"},
    "vision_config": {"model_type": "qwen3_5", "depth": 27, "hidden_size": 1152}}


def test_check_answers_from_config_alone():
    """What `quantdesk check` and the Hub search say from config.json alone, before any
    download: the text-only Qwen3.5 and the released vision-language checkpoints (dense and
    MoE: their text_config) work with every method; an irregular layer_types pattern is
    refused for GGUF only (llama.cpp stores one interval)."""
    from qtapp.engine.planning.compat import config_checks

    def answers(config: dict) -> dict[str, tuple[bool, str]]:
        return {m.method: (m.ok, m.reason) for m in config_checks(config)}

    text = answers(QWEN35_27B_TEXT)
    assert all(ok for ok, _ in text.values()), text
    assert set(text) == {"rtn", "gptq", "awq", "gguf"}
    vlm = answers(QWEN35_27B_VLM)
    assert all(ok for ok, _ in vlm.values()) and set(vlm) == set(text), vlm
    moe = answers({**QWEN35_27B_VLM, "model_type": "qwen3_5_moe",
                   "architectures": ["Qwen3_5MoeForConditionalGeneration"],
                   "text_config": {**QWEN35_27B_TEXT, "model_type": "qwen3_5_moe_text",
                                   "num_experts": 256, "num_experts_per_tok": 8,
                                   "moe_intermediate_size": 512,
                                   "shared_expert_intermediate_size": 512}})
    assert all(ok for ok, _ in moe.values()) and set(moe) == set(text), moe
    odd = answers({**QWEN35_27B_TEXT, "layer_types": ["full_attention", "linear_attention"] * 32})
    assert odd["gptq"][0] and not odd["gguf"][0], odd
    assert "full_attention_interval" in odd["gguf"][1]


def test_planner_counts_kv_cache_of_full_attention_layers_only():
    """Qwen3.5-27B: 16 of 64 blocks have full attention (4 key/value heads × 256): 32 KiB of
    16-bit keys and values a token, a quarter of what 64 such blocks would hold; the 48
    DeltaNet blocks add a fixed recurrent state (48 × 48 heads × 128 × 128 float32 plus the
    convolution's last 3 inputs)."""
    from qtapp.engine.planning.advisor import kv_cache_bytes
    from qtapp.engine.planning.shape import ModelShape

    for config in (QWEN35_27B_TEXT, QWEN35_27B_VLM):
        shape = ModelShape.from_config(config)
        assert shape.kv_values_per_token == 16 * 2 * 4 * 256
        state = 48 * (48 * 128 * 128 + 3 * (2 * 16 * 128 + 48 * 128)) * 4
        assert shape.state_bytes == state
        assert kv_cache_bytes(shape, 4096) == 16 * 2 * 4 * 256 * 4096 * 2 + state
    dense = ModelShape.from_config({**QWEN35_27B_TEXT, "layer_types": None})
    assert dense.kv_values_per_token == 64 * 2 * 4 * 256 and dense.state_bytes == 0


@pytest.mark.parametrize("model_type,extra", [
    ("qwen3_5_text", {"intermediate_size": 96}),
    ("qwen3_5_text", {"intermediate_size": 96, "tie_word_embeddings": True}),
    ("qwen3_5_moe_text", MOE),
    ("qwen3_5_moe_text", {**MOE, "num_hidden_layers": 4, "layer_types": KINDS,
                          "shared_expert_intermediate_size": 48}),
])
def test_planner_counts_parameters_of_the_blocks_transformers_builds(model_type, extra):
    """The planner's parameter count from config.json alone (ModelShape) equals that of the
    model transformers builds from the same config: the DeltaNet blocks' own projections,
    convolution and state parameters, the gated q_proj and q/k norms of the attention
    blocks, the routed and shared experts with their gates. Active parameters (time):
    everything but the experts a token is not routed to (E − top-k of them per block)."""
    from qtapp.engine.planning.shape import ModelShape

    config, model = _meta_model(model_type, **extra)
    total = sum(p.numel() for p in model.parameters())
    experts = [sum(p.numel() for p in block.mlp.experts.parameters())
               for block in model.model.layers if hasattr(block.mlp, "experts")]
    n, k = config.to_dict().get("num_experts") or 1, config.to_dict().get("num_experts_per_tok")
    active = total - sum(e // n * (n - k) for e in experts) if experts else total
    shape = ModelShape.from_config(config.to_dict())
    assert (shape.n_params, shape.active_params) == (total, active)
    assert shape.linear_attn_layers == config.layer_types.count("linear_attention")
