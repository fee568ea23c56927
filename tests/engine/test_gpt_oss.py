"""gpt-oss: fused experts with biases, gate and up interleaved in alternate columns and a
clamped SwiGLU, a router with a bias, attention with per-head sinks and alternating
sliding / full layers (docs/models.md, gpt_oss row and footnote 6).

The tiny model (8 experts, top-2, 2 blocks: one sliding-window, one full; the family's own
yarn rope) is saved by transformers with the fused tensors, as the bf16 releases of gpt-oss
hold them; its expert biases are made non-zero (transformers initialises them to zero) and
expert RARE's router row and bias zeroed, so that it gets too few calibration tokens.

- model/moe.py unfuses the experts into per-expert linears with biases that route exactly
  as the fused module, and fuses them back bit for bit; a wrong layout (gate/up read as
  concatenated) is caught;
- every expert is quantized from the tokens its router sends it (or reported as the
  range-search RTN fallback);
- AWQ's scale before the experts, folded, leaves routing and the block output unchanged
  (the router's weight columns compensated), and fails without the compensation;
- RTN / GPTQ / AWQ W8 through the CLI, written with GPTQModel's per-expert names
  (mlp.experts.gate_up.{e} / mlp.experts.down.{e}, biases beside them), opened by
  load_dequantized (fused back into transformers' module): mean KLD < 1e-3; a zeroed
  expert fails; W4 g32 GPTQ and AWQ beat RTN on held-out text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_helpers import (
    assert_expert_count_refused,
    assert_experts_counted,
    assert_gguf_f32_reproduces,
    assert_gguf_q8_close,
    assert_router_excluded,
    assert_unquantized_caught,
    assert_w4_calibrated_beat_rtn,
    assert_w8_matches,
    assert_zeroed_hessian_caught,
    block0,
    build_family_model,
    check_awq_folds_exactly,
    check_every_expert,
    damage_hf,
    imatrix_and_routed,
    load_model,
    quantize_block0,
    quantize_cli,
    quantized_layer0,
    rewrite_tensors,
    routed_hessians,
    run_capturing,
    source_logits,
    tensor_names,
    token_ids,
    zero_router_row,
)

from qtapp.engine.config import QuantScheme
from qtapp.engine.model.moe import UnfusedExperts, fuse_experts, min_expert_tokens, unfuse_experts

N_EXPERTS, TOP_K = 8, 2
RARE = 7  # an expert the router seldom picks, so that it takes the fallback
GPT_OSS = {"num_local_experts": N_EXPERTS, "num_experts_per_tok": TOP_K, "head_dim": 16,
           "sliding_window": 32, "max_position_embeddings": 131072, "intermediate_size": 64}
SCHEME = QuantScheme(8, 64, True)
PROBE = "mlp.experts.{}.gate_up_proj"  # an expert linear whose Hessian counts its tokens


def _with_expert_biases(folder: Path) -> Path:
    """The saved model with non-zero expert biases (transformers initialises them to 0)."""
    g = torch.Generator().manual_seed(7)
    rewrite_tensors(folder, lambda name, t: 0.1 * torch.randn(t.shape, generator=g)
                    if name.endswith(("gate_up_proj_bias", "down_proj_bias")) else None)
    return folder


@pytest.fixture(scope="module")
def gpt_oss_dir(tmp_path_factory):
    from safetensors import safe_open

    folder = _with_expert_biases(build_family_model(
        tmp_path_factory.mktemp("gpt_oss") / "gpt_oss", "gpt_oss", **GPT_OSS))
    zero_router_row(folder, ("mlp.router.weight", "mlp.router.bias"), RARE)
    (f,) = folder.glob("*.safetensors")
    with safe_open(f, "pt") as st:  # the fused layout of the released checkpoints
        assert st.get_slice("model.layers.0.mlp.experts.gate_up_proj").get_shape() == \
            [N_EXPERTS, 64, 128]
        assert st.get_slice("model.layers.0.mlp.experts.down_proj").get_shape() == \
            [N_EXPERTS, 64, 64]
    return folder


@pytest.fixture(scope="module")
def gptq_block0(gpt_oss_dir):
    """quantize_block0 of the model (report, Hessians, events, mini-batches), run once for
    the tests that only read it."""
    return quantize_block0(gpt_oss_dir, SCHEME)


def _unfused_matches(folder: Path, interleaved: bool | None = None) -> None:
    model = load_model(folder)
    block = model.model.layers[0].mlp
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 40, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = block(x)[0]
        assert unfuse_experts(model) == [f"model.layers.{i}.mlp.experts" for i in range(2)]
        unfused = block.experts
        assert isinstance(unfused, UnfusedExperts) and unfused.bias and unfused.interleaved
        if interleaved is not None:  # a deliberately wrong reading of the layout
            unfused.interleaved = interleaved
            unfused.load_state_dict(unfused.split_state(
                {k: getattr(unfused.fused, k) for k in ("gate_up_proj", "down_proj",
                                                        "gate_up_proj_bias", "down_proj_bias")}),
                strict=False)
        e0 = unfused[0]
        assert e0.gate_up_proj.bias is not None and e0.down_proj.bias is not None
        got = block(x)[0]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        assert int(unfused.token_counts.sum()) == 3 * 40 * TOP_K
        fuse_experts(model)
        assert not any(isinstance(m, UnfusedExperts) for m in model.modules())
        after = model.state_dict()
        assert set(after) == set(before)
        for k, v in after.items():
            assert torch.equal(v, before[k]), k


def test_unfused_experts_route_exactly_and_fuse_back_bit_for_bit(gpt_oss_dir):
    _unfused_matches(gpt_oss_dir)


def test_a_wrong_expert_layout_is_caught(gpt_oss_dir):
    """Reading the interleaved gate/up columns as concatenated halves (the Qwen/Mixtral
    layout) gives other expert outputs: the comparison above fails."""
    from qtapp.engine.model import moe

    class Concatenated(moe.ExpertMLP):  # gate = first half, up = second half
        def forward(self, x):
            gu = self.gate_up_proj(x)
            half = gu.shape[-1] // 2
            inter = torch.stack([gu[..., :half], gu[..., half:]], -1).flatten(-2)
            return self.down_proj(self.apply_gate(inter))

    model = load_model(gpt_oss_dir)
    block = model.model.layers[0].mlp
    x = torch.randn(3, 40, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = block(x)[0]
        unfuse_experts(model)
        for expert in block.experts:
            expert.__class__ = Concatenated
        with pytest.raises(AssertionError):
            torch.testing.assert_close(block(x)[0], ref, rtol=1e-5, atol=1e-6)


def test_table_entry():
    from qtapp.engine.model.arch import FAMILIES, arch_for

    assert FAMILIES["gpt_oss"].supported
    spec = arch_for({"model_type": "gpt_oss", "num_local_experts": 4, "hidden_size": 64,
                     "num_attention_heads": 4})
    assert spec.n_experts == 4
    assert spec.sequential[2] == tuple(f"mlp.experts.{e}.gate_up_proj" for e in range(4))
    assert spec.sequential[3] == tuple(f"mlp.experts.{e}.down_proj" for e in range(4))
    assert "mlp.router" not in spec.linears
    norm_pair = next(g for g in spec.awq_groups if g.prev == "post_attention_layernorm")
    assert norm_pair.also == ("mlp.router",) and norm_pair.stat == "mlp"
    # no up→down pair: up goes through a clamp and + 1 before it meets the gate
    assert not any(g.prev.startswith("mlp.experts.") for g in spec.awq_groups)


# ----------------------------------------------------------- every expert, own statistics


def _routed_hessians(folder: Path, report, batches: list):
    """Reference, per expert linear: H = 2/n Σ x xᵀ over exactly the tokens the float router
    of block 0 sends that expert (gate_up: the normed block input; down: the clamped SwiGLU
    of the quantized gate_up's output, as true-sequential GPTQ sees it), and n."""
    layer = quantized_layer0(folder, report)
    h = run_capturing(layer, batches, h=(layer.mlp, "in"))["h"].reshape(-1, 64)
    with torch.no_grad():
        _, _, idx = layer.mlp.router(h)

    def linear_inputs(e, xe):
        expert = layer.mlp.experts[e]
        return ("gate_up_proj", xe), ("down_proj", expert.apply_gate(expert.gate_up_proj(xe)))
    return routed_hessians(h, idx, N_EXPERTS, "mlp.experts.", linear_inputs)


def _check_every_expert(folder, report, hessians, events, batches):
    source = load_model(folder).model.layers[0].mlp.experts
    weights = {f"mlp.experts.{e}.{kind}": (e, getattr(source, kind)[e].T)  # stored (in, out)
               for e in range(N_EXPERTS) for kind in ("gate_up_proj", "down_proj")}
    check_every_expert(report, hessians, events, _routed_hessians(folder, report, batches),
                       weights, SCHEME)


def test_every_expert_is_quantized_from_its_own_tokens(gpt_oss_dir, gptq_block0):
    report, hessians, events, batches = gptq_block0
    assert_experts_counted(hessians, PROBE, N_EXPERTS, TOP_K, min_expert_tokens(64))
    _check_every_expert(gpt_oss_dir, report, hessians, events, batches)
    assert "mlp.router" not in report.modules


def test_a_zeroed_expert_hessian_is_caught(gpt_oss_dir, gptq_block0):
    assert_zeroed_hessian_caught(gpt_oss_dir, SCHEME, gptq_block0[1], PROBE, N_EXPERTS,
                                 _check_every_expert)


def test_an_unquantized_expert_is_caught(gpt_oss_dir, gptq_block0):
    assert_unquantized_caught(gpt_oss_dir, gptq_block0, "mlp.experts.5.down_proj",
                              _check_every_expert)


# ------------------------------------------------------------------------------ AWQ


def _check_awq_folds_exactly(folder: Path, compensate_router: bool = True) -> None:
    check_awq_folds_exactly(*block0(folder), "mlp.router", "post_attention_layernorm",
                            compensate_router=compensate_router)


def test_awq_scale_before_the_experts_leaves_routing_and_outputs_unchanged(gpt_oss_dir):
    _check_awq_folds_exactly(gpt_oss_dir)


def test_an_uncompensated_router_is_caught(gpt_oss_dir):
    with pytest.raises(AssertionError):
        _check_awq_folds_exactly(gpt_oss_dir, compensate_router=False)


# ------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("method, fmt", [
    ("rtn", "gptq"), ("gptq", "gptq"),
    pytest.param("gptq", "compressed-tensors", marks=pytest.mark.slow),
    pytest.param("awq", "gptq", marks=pytest.mark.slow)])
def test_gpt_oss_w8_end_to_end_gptqmodel_names(gpt_oss_dir, tmp_path, method, fmt):
    out = quantize_cli(gpt_oss_dir, tmp_path / "out", method, "--bits", "8", "--format", fmt)
    names = tensor_names(out)
    packed = "qweight" if fmt == "gptq" else "weight_packed"
    for i in range(2):
        for e in range(N_EXPERTS):
            for kind in ("gate_up", "down"):
                assert f"model.layers.{i}.mlp.experts.{kind}.{e}.{packed}" in names
                assert f"model.layers.{i}.mlp.experts.{kind}.{e}.bias" in names
        for t in ("mlp.router.weight", "mlp.router.bias", "self_attn.sinks"):
            assert f"model.layers.{i}.{t}" in names  # 16-bit, as in the source
    assert not any(n.endswith(("gate_up_proj", "down_proj", "_proj_bias")) for n in names)
    assert_router_excluded(out, "model.layers.0.mlp.router",
                           "model.layers.0.mlp.experts.gate_up.0")
    assert_w8_matches(gpt_oss_dir, out, lambda: damage_hf(
        out, tmp_path, "model.layers.0.mlp.experts.down.0"),
        f"gpt_oss {method} {fmt} W8 (damaged: expert 0 down zeroed)")


@pytest.mark.slow
def test_gpt_oss_w4_gptq_and_awq_beat_rtn_on_held_out_text(gpt_oss_dir, tmp_path):
    """W4 g32 (16 × 64 calibration tokens): GPTQ and AWQ below RTN at the same settings on
    held-out text (family_helpers.held_out_ids); a damaged expert does not beat RTN."""
    assert_w4_calibrated_beat_rtn(  # damaged: expert 0's down zeroed
        gpt_oss_dir, tmp_path,
        lambda out: damage_hf(out, tmp_path, "model.layers.0.mlp.experts.down.0"),
        args=lambda _m: ("--format", "gptq"))


def test_expert_count_mismatch_is_refused_before_any_work(gpt_oss_dir, tmp_path, capsys):
    assert_expert_count_refused(gpt_oss_dir, tmp_path, capsys, "num_local_experts",
                                N_EXPERTS * 2, N_EXPERTS)


# --------------------------------------------------------------------------------- GGUF


@pytest.mark.llama_cpp
def test_gpt_oss_gguf(demo_dir, tmp_path):
    """llama.cpp's gpt-oss architecture: experts merged with gate and up taken from
    gate_up_proj's even / odd columns, their biases, the router's bias, attention sinks,
    sliding window, expert feed-forward length; read by llama-cpp-python.

    transformers computes gpt-oss's yarn rope without truncating the correction range
    (config.json's rope_parameters.truncate false); ggml's rope always truncates it
    (ggml_rope_yarn_corr_dims: floor / ceil). The F32 file proves the conversion on the
    same model with truncate true (what ggml computes): within GGUF_F32_KLD_MAX; with the
    family's own truncate false it measures 3.2e-5 (docs/models.md, footnote 10). Q8_0
    of the real configuration is within GGUF_Q8_KLD_MAX."""
    import gguf

    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = _with_expert_biases(build_family_model(tmp_path / "gpt_oss", "gpt_oss", demo_dir,
                                                 **GPT_OSS))
    config = json.loads((src / "config.json").read_text())
    assert config["rope_parameters"]["truncate"] is False
    assert_gguf_q8_close(src, tmp_path, source_logits(src, token_ids(259)), "gpt_oss")

    config["rope_parameters"]["truncate"] = True  # as ggml computes yarn
    (src / "config.json").write_text(json.dumps(config))
    f32, _ref = assert_gguf_f32_reproduces(
        src, tmp_path, ["blk.0.ffn_down_exps.weight", "blk.0.attn_sinks.weight",
                        "blk.1.ffn_gate_exps.bias"], "gpt_oss (truncate true)")
    reader = gguf.GGUFReader(f32)
    tensors = {t.name: t for t in reader.tensors}
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "gpt-oss"
    assert int(fields["gpt-oss.expert_count"].parts[-1][0]) == N_EXPERTS
    assert int(fields["gpt-oss.expert_used_count"].parts[-1][0]) == TOP_K
    assert int(fields["gpt-oss.attention.sliding_window"].parts[-1][0]) == 32
    assert int(fields["gpt-oss.expert_feed_forward_length"].parts[-1][0]) == 64
    for kind in ("gate", "up", "down"):
        for part in ("weight", "bias"):
            assert f"blk.1.ffn_{kind}_exps.{part}" in tensors
    for name in ("attn_sinks.weight", "ffn_gate_inp.bias", "post_attention_norm.weight"):
        assert f"blk.0.{name}" in tensors


# -------------------------------------------------------------------------------- MXFP4


def _to_mxfp4(folder: Path, out: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A copy of `folder` with its experts as the released gpt-oss stores them: MXFP4
    `*_blocks` (E, out, in/32, 16) and `*_scales` (E, out, in/32), uint8, random (exponents
    2^-7 … 2^-4, weights of the size the float model has), quantization_config mxfp4."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, out)
    (f,) = out.glob("*.safetensors")
    tensors = load_file(f)
    g = torch.Generator().manual_seed(11)
    packed = {}
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        E, k, n = tensors.pop(name).shape  # stored (E, in, out)
        blocks = torch.randint(0, 256, (E, n, k // 32, 16), generator=g, dtype=torch.uint8)
        scales = torch.randint(120, 124, (E, n, k // 32), generator=g, dtype=torch.uint8)
        tensors[name + "_blocks"], tensors[name + "_scales"] = blocks, scales
        packed[name] = (blocks, scales)
    save_file(tensors, f, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
            "lm_head"]}
    (out / "config.json").write_text(json.dumps(config))
    return packed


def test_mxfp4_experts_are_read_as_transformers_dequantizes_them(gpt_oss_dir, tmp_path):
    """The reader shows each *_blocks / *_scales pair as the bf16 tensor transformers'
    own dequantization gives (integrations.mxfp4.convert_moe_packed_tensors), bit for bit,
    and the per-expert views the exports read are that tensor's slices; a changed exponent
    byte in the file is seen."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from qtapp.engine.model.safetensors_files import SafetensorsReader

    mx = tmp_path / "mxfp4"
    packed = _to_mxfp4(gpt_oss_dir, mx)
    reader = SafetensorsReader(mx)
    assert not any(n.endswith(("_blocks", "_scales")) for n in reader.names())
    for name, (blocks, scales) in packed.items():
        expect = convert_moe_packed_tensors(blocks, scales)
        assert reader.shape(name) == tuple(expect.shape) and reader.dtype(name) == "bfloat16"
        assert torch.equal(reader.get(name), expect), name
    views = SafetensorsReader(mx, module_names=False)
    head = "model.layers.1.mlp.experts."
    assert views.split_fused_experts(head)
    gate_up = convert_moe_packed_tensors(*packed[head + "gate_up_proj"])
    down = convert_moe_packed_tensors(*packed[head + "down_proj"])
    for e in range(N_EXPERTS):
        assert torch.equal(views.get(f"{head}gate_up.{e}.weight"), gate_up[e].T)
        assert torch.equal(views.get(f"{head}down.{e}.weight"), down[e].T)
    # a deliberately changed exponent in the file: the comparison above fails
    (f,) = mx.glob("*.safetensors")
    entry = SafetensorsReader(mx, module_names=False)._entries[head + "gate_up_proj"].mxfp4
    data = np.memmap(f, dtype=np.uint8, mode="r+")
    data[entry.start] += 1
    data.flush()
    del data
    assert not torch.equal(SafetensorsReader(mx).get(head + "gate_up_proj"), gate_up)


def test_mxfp4_source_end_to_end(gpt_oss_dir, tmp_path):
    """An MXFP4 checkpoint quantized through the CLI (RTN W8, GPTQ format): the output has
    the per-expert names and no MXFP4 tensors, and matches transformers' own (dequantizing)
    load of the MXFP4 folder within 1e-3; a zeroed expert does not."""
    mx = tmp_path / "mxfp4"
    _to_mxfp4(gpt_oss_dir, mx)
    out = quantize_cli(mx, tmp_path / "out", "rtn")
    names = tensor_names(out)
    assert "model.layers.1.mlp.experts.gate_up.7.qweight" in names
    assert not any(n.endswith(("_blocks", "_scales")) for n in names)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq"
    # the reference: transformers' own load of the MXFP4 folder (dequantized to bf16 on a CPU)
    assert_w8_matches(mx, out, lambda: damage_hf(
        out, tmp_path, "model.layers.0.mlp.experts.down.0"),
        "gpt_oss MXFP4 source, rtn W8 (damaged: expert 0 down zeroed)")


def test_planner_counts_gpt_oss_total_and_active():
    """gpt-oss-20b's config: 20.9 B parameters in total (its model card: 21 B), 4.19 B
    active with the token embeddings, 3.61 B without them (the model card's 3.6 B leaves
    out the embedding lookup, 201088 × 2880 = 0.58 B; Qwen's and Mixtral's cards count it,
    as ModelShape does)."""
    from qtapp.engine.planning.shape import ModelShape

    shape = ModelShape.from_config({
        "model_type": "gpt_oss", "hidden_size": 2880, "num_hidden_layers": 24,
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
        "intermediate_size": 2880, "num_local_experts": 32, "num_experts_per_tok": 4,
        "vocab_size": 201088, "tie_word_embeddings": False})
    assert 20.8e9 < shape.n_params < 21.0e9, shape.n_params
    assert 3.55e9 < shape.active_params - 201088 * 2880 < 3.65e9, shape.active_params


def test_gguf_imatrix_has_one_row_per_expert_for_gate_and_up(gpt_oss_dir):
    """The per-expert gate_up linear's inputs (the tokens routed to that expert) are row e
    of both ffn_gate_exps' and ffn_up_exps' importance matrices (one input, two GGUF
    tensors), down_proj's of ffn_down_exps; counts are the float router's."""
    imatrix, routed = imatrix_and_routed(gpt_oss_dir,
                                         lambda m: m.model.layers[0].mlp.experts)
    assert routed[RARE] < routed.max()
    for kind in ("gate", "up", "down"):
        name = f"blk.0.ffn_{kind}_exps.weight"
        assert imatrix.sums[name].shape[0] == N_EXPERTS
        assert imatrix.counts[name].tolist() == routed.tolist(), kind
    assert np.array_equal(imatrix.sums["blk.0.ffn_gate_exps.weight"],
                          imatrix.sums["blk.0.ffn_up_exps.weight"])


def test_gpu_forwards_keep_the_familys_own_attention(gpt_oss_dir):
    """The pipeline asks for its GPU attention (quant/attention.py, sdpa with repeated
    key/value heads) only where transformers' class runs sdpa: gpt-oss's does not (no sink
    term in sdpa) and transformers refuses the request, so a gpt-oss job on a GPU would
    stop before its first block; it keeps its own eager attention there."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from qtapp.engine.quant.attention import gpu_attention, supports_sdpa

    config = AutoConfig.from_pretrained(gpt_oss_dir)
    assert not supports_sdpa(config)
    assert supports_sdpa(AutoConfig.for_model("qwen3_moe"))
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        AutoModelForCausalLM.from_config(config, attn_implementation=gpu_attention())
