"""Gemma 4 mixture of experts (the 26B-A4B block: config.json's enable_moe_block).

Every block runs transformers' dense MLP and E fused experts side by side on the attention's
output; a router (router.proj behind its own norm and scales) picks top-k experts per token
(modeling_gemma4.py). QuantDesk's table has the block as a variant of both Gemma 4 families
(gemma4_text, gemma4 multimodal: arch.GEMMA4_MOE_BLOCK) and unfuses the experts through the
one generic mechanism (model/moe.py). The release stores the experts fused
(``experts.gate_up_proj`` (E, 2·I, H), ``experts.down_proj`` (E, H, I)); the outputs hold them
per expert (``experts.{e}.gate_proj`` …).

Tiny models from Gemma4TextConfig / Gemma4Config, shaped as the release is (global layers with
wider heads, attention_k_eq_v, no per-layer inputs): 3 blocks (sliding, sliding, global),
8 experts, top-2, expert width 64, peaked outputs (family_helpers.sharpen). Expert RARE's router
row is zeroed in every block so that it gets few calibration tokens and takes the fallback.

Checked: the unfused experts compute what the fused ones do; every expert is quantized from
the Hessian of exactly the tokens the float router sends it, or reported and rounded with the
range search (a zeroed Hessian or an unquantized expert fails the check); AWQ's scale on the
experts' norm folds exactly (routing and output unchanged; the same scale folded into the
dense MLP's norm instead does not); RTN / GPTQ / AWQ W8 through the CLI opened with
load_dequantized below 1e-3 mean KLD, a zeroed expert above; W4 g32 GPTQ and AWQ below RTN on
held-out text; the planner's total and active parameters against transformers' module graph
of a 26B-A4B-shaped config; `quantdesk check`, the GGUF refusal and a wrong expert count.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from family_helpers import (
    GGUF_F32_KLD_MAX,
    GGUF_Q8_KLD_MAX,
    KLD_MAX,
    assert_expert_count_refused,
    assert_experts_counted,
    assert_router_excluded,
    assert_unquantized_caught,
    assert_w4_calibrated_beat_rtn,
    assert_w8_matches,
    assert_zeroed_hessian_caught,
    block0,
    build_family_model,
    check_awq_folds_exactly,
    check_every_expert,
    damage_gguf,
    gguf_file,
    gguf_logits,
    load_model,
    mean_kld,
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
from test_gemma_multimodal import (  # noqa: F401 (spm_tokenizer: a fixture)
    EMBED,
    GEMMA4_TYPES,
    GEMMA4_VISION,
    TINY_TEXT,
    build_multimodal,
    spm_tokenizer,
)

from qtapp.engine.config import QuantScheme
from qtapp.engine.model.arch import arch_for
from qtapp.engine.model.moe import UnfusedExperts, fuse_experts, min_expert_tokens, unfuse_experts

N_EXPERTS, TOP_K, RARE = 8, 2, 7
SCHEME = QuantScheme(8, 64, True)
MOE_TEXT = {**TINY_TEXT, "num_hidden_layers": 3, "layer_types": GEMMA4_TYPES[:3],
            "global_head_dim": 32, "attention_k_eq_v": True, "num_global_key_value_heads": 1,
            "hidden_size_per_layer_input": 0, "sliding_window": 32,
            "final_logit_softcapping": 30.0, "enable_moe_block": True,
            "num_experts": N_EXPERTS, "top_k_experts": TOP_K, "moe_intermediate_size": 64}
LAYERS = {"gemma4": "model.language_model.layers", "gemma4_text": "model.layers"}
KINDS = ("gate_proj", "up_proj", "down_proj")
PROBE = "experts.{}.gate_proj"  # an expert linear whose Hessian counts its tokens


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            folder = tmp_path_factory.mktemp(name) / name
            if name == "gemma4":
                build_multimodal(folder, "gemma4", MOE_TEXT)
            else:
                build_family_model(folder, "gemma4_text", embed_std=EMBED["gemma4"],
                                   vocab_size_per_layer_input=259, **MOE_TEXT)
            names = tensor_names(folder)  # fused on disk, as the release and save_pretrained have it
            assert f"{LAYERS[name]}.0.experts.gate_up_proj" in names
            assert not any(".experts.0." in n for n in names)
            zero_router_row(folder, "router.proj.weight", RARE)
            cache[name] = folder
        return cache[name]
    return get


@pytest.fixture(scope="module")
def gptq_block0(built):
    """quantize_block0 of the Gemma4ForCausalLM form (report, Hessians, events,
    mini-batches), run once for the tests that only read it."""
    return quantize_block0(built("gemma4_text"), SCHEME)


# ------------------------------------------------------------------------ the table


@pytest.mark.parametrize("model_type", ["gemma4", "gemma4_text"])
def test_table_matches_the_module_graph(model_type):
    """Every nn.Linear of every block is the table's (the router's proj kept 16-bit), the
    experts expand per expert, the dense MLP is quantized as usual, and the experts' norm
    scale needs no router compensation (the router does not read that norm)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    text = {**MOE_TEXT, "vocab_size": 300}
    if model_type == "gemma4":
        config = AutoConfig.for_model("gemma4", text_config=text, vision_config=GEMMA4_VISION,
                                      audio_config=None)
    else:
        config = AutoConfig.for_model("gemma4_text", **text)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    spec = arch_for(config.to_dict())
    assert spec.layers_prefix == LAYERS[model_type]
    assert spec.n_experts == N_EXPERTS and spec.experts == "experts"
    assert spec.keep == ("router.proj",) and "router.proj" not in spec.linears
    unfuse_experts(model)
    for i in range(3):
        block = model.get_submodule(spec.block(i))
        spec.check_block(block, i)
        groups, pairs = spec.present(i, block)
        names = [n for g in groups for n in g]
        assert {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} <= set(names)
        assert all(f"experts.{e}.{k}" in names for e in range(N_EXPERTS) for k in KINDS)
        assert ("self_attn.v_proj" in names) == (GEMMA4_TYPES[i] != "full_attention")
        experts_pair = next(p for p in pairs if p.prev == "pre_feedforward_layernorm_2")
        assert experts_pair.target == "experts" and experts_pair.also == ()
        assert len(experts_pair.linears) == 2 * N_EXPERTS
        dense_pair = next(p for p in pairs if p.prev == "pre_feedforward_layernorm")
        assert dense_pair.linears == ("mlp.gate_proj", "mlp.up_proj")
    settings = config.to_dict()
    (settings.get("text_config") or settings)["enable_moe_block"] = False
    dense = arch_for(settings)  # the same config without the MoE block: the dense layout
    assert dense.n_experts == 0 and not any("experts" in n for n in dense.linears)


def test_unfused_experts_compute_the_fused_ones(built):
    model = load_model(built("gemma4_text"))
    ids = torch.tensor([token_ids(259)] * 2)
    with torch.no_grad():
        ref = model(ids).logits
        assert unfuse_experts(model) == [f"model.layers.{i}.experts" for i in range(3)]
        got = model(ids).logits
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        for layer in model.model.layers:
            assert isinstance(layer.experts, UnfusedExperts)
            assert int(layer.experts.token_counts.sum()) == ids.numel() * TOP_K
        fuse_experts(model)
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=0)


# ------------------------------------------------------------------------ each expert


def _routed_hessians(folder: Path, report, batches: list):
    """Reference, per expert linear of block 0: H = 2/n Σ x xᵀ over exactly the tokens the
    float router sends that expert (from the residual stream after attention), x the
    experts' norm output, with the block's quantized attention and gate/up in place (as
    true-sequential GPTQ has them when it builds these Hessians)."""
    layer = quantized_layer0(folder, report)
    seen = run_capturing(layer, batches, h=(layer.router, "in"),
                         x=(layer.pre_feedforward_layernorm_2, "out"))
    with torch.no_grad():
        _, _, idx = layer.router(seen["h"])  # the router, in float

    def linear_inputs(e, xe):
        expert = layer.experts[e]
        mid = expert.act_fn(expert.gate_proj(xe)) * expert.up_proj(xe)
        return ("gate_proj", xe), ("up_proj", xe), ("down_proj", mid)
    return routed_hessians(seen["x"], idx, N_EXPERTS, "experts.", linear_inputs)


def _check_every_expert(folder, report, hessians, events, batches):
    source = load_model(folder).model.layers[0].experts
    inter = source.gate_up_proj.shape[1] // 2
    weights = {}
    for e in range(N_EXPERTS):
        for kind, W in zip(KINDS, (source.gate_up_proj[e, :inter],
                                   source.gate_up_proj[e, inter:], source.down_proj[e])):
            weights[f"experts.{e}.{kind}"] = (e, W)
    check_every_expert(report, hessians, events, _routed_hessians(folder, report, batches),
                       weights, SCHEME)


def test_every_expert_is_quantized_from_its_own_tokens(built, gptq_block0):
    folder = built("gemma4_text")
    report, hessians, events, batches = gptq_block0
    need = min_expert_tokens(SCHEME.group_size)  # both paths are exercised
    counts = assert_experts_counted(hessians, PROBE, N_EXPERTS, TOP_K, need)
    assert counts[RARE] < need, counts
    _check_every_expert(folder, report, hessians, events, batches)
    assert "router.proj" not in report.modules
    assert {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} <= set(report.modules)


def test_a_zeroed_expert_hessian_is_caught(built, gptq_block0):
    assert_zeroed_hessian_caught(built("gemma4_text"), SCHEME, gptq_block0[1], PROBE,
                                 N_EXPERTS, _check_every_expert)


def test_an_unquantized_expert_is_caught(built, gptq_block0):
    assert_unquantized_caught(built("gemma4_text"), gptq_block0, "experts.5.down_proj",
                              _check_every_expert)


# ------------------------------------------------------------------------ AWQ


def _check_awq_folds_exactly(info, block, inputs, fold_into: str = ""):
    """Search W4 g32 scales on block 0, fold them without clipping: the router picks the
    same experts and the block's output is unchanged. `fold_into` folds the experts' scale
    into another norm (a broken table) instead."""
    from qtapp.engine.config import AWQOptions

    check_awq_folds_exactly(info, block, inputs, "router", "pre_feedforward_layernorm_2",
                            AWQOptions(grid=5, clip=False), fold_into=fold_into)


def test_awq_scale_before_the_experts_leaves_routing_and_outputs_unchanged(built):
    _check_awq_folds_exactly(*block0(built("gemma4_text")))


def test_a_scale_folded_into_the_wrong_norm_is_caught(built):
    with pytest.raises(AssertionError):
        _check_awq_folds_exactly(*block0(built("gemma4_text")),
                                 fold_into="pre_feedforward_layernorm")


# ------------------------------------------------------------------------ end to end


def _damage_experts(out: Path, tmp: Path, head: str) -> Path:
    """A copy of `out` whose experts under `head` (one block's) all have zero scales, so
    the block's expert branch adds nothing. One expert zeroed (of 8, top-2; the branch is
    RMS-normalised after the experts, so the other expert's output takes its place) moved
    this tiny model's W8 output by 6.6e-4 only, below KLD_MAX."""
    bad = tmp / (out.name + "-experts-zeroed")
    shutil.copytree(out, bad)
    hit = rewrite_tensors(bad, lambda k, t: torch.zeros_like(t) if k.startswith(head)
                          and "scale" in k.rsplit(".", 1)[-1] else None)
    assert hit == 3 * N_EXPERTS, hit
    return bad


@pytest.mark.slow  # 23-56 s each on a shared 2-core machine
@pytest.mark.parametrize("name, method", [("gemma4", "gptq"), ("gemma4", "rtn"),
                                          ("gemma4", "awq"), ("gemma4_text", "gptq")])
def test_w8_end_to_end(built, name, method, tmp_path, capsys):
    """W8 through the CLI: per-expert tensors in the output (no fused ones), the router in
    float, the fallback expert named in the run's log; opened with load_dequantized (the
    experts fused back into transformers' model) within 1e-3 mean KLD of the source; a
    zeroed expert above it."""
    src = built(name)
    out = tmp_path / "out"
    quantize_cli(src, out, method)
    said = "".join(capsys.readouterr())
    if method != "rtn":
        assert f"experts {RARE} (" in said and f"not {method}" in said, said[-2000:]
    layers = LAYERS[name]
    names = tensor_names(out)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    packed = "weight_packed" if qc["quant_method"] == "compressed-tensors" else "qweight"
    for e in range(N_EXPERTS):
        for kind in KINDS:
            assert f"{layers}.2.experts.{e}.{kind}.{packed}" in names
    assert f"{layers}.0.mlp.down_proj.{packed}" in names
    assert f"{layers}.0.router.proj.weight" in names  # float
    assert not any("gate_up_proj" in n or f"router.proj.{packed}" in n for n in names)
    # a negative dynamic rule (GPTQ) or the ignore list keeps it out of the loaders
    assert_router_excluded(out, f"{layers}.0.router.proj", f"{layers}.0.experts.0.gate_proj")
    with capsys.disabled():
        assert_w8_matches(src, out, lambda: _damage_experts(
            out, tmp_path, f"{layers}.0.experts."),
            f"{name} MoE {method} W8 (damaged: block 0's experts zeroed)")


@pytest.mark.slow
def test_w4_gptq_and_awq_beat_rtn_on_held_out_text(built, tmp_path, capsys):
    """W4 g32: GPTQ and AWQ closer to the source than RTN at the same settings, on the
    built-in evaluation text (not the calibration windows); a zeroed expert fails."""
    with capsys.disabled():
        assert_w4_calibrated_beat_rtn(
            built("gemma4"), tmp_path,
            lambda out: _damage_experts(out, tmp_path, f"{LAYERS['gemma4']}.0.experts."),
            damaged=("gptq",))


def test_expert_count_mismatch_is_refused_before_any_work(built, tmp_path, capsys):
    assert_expert_count_refused(built("gemma4_text"), tmp_path, capsys, "num_experts",
                                N_EXPERTS * 2, N_EXPERTS)


# ------------------------------------------------------------------------ planning


def _released_shape() -> dict:
    """config.json of a 26B-A4B-shaped Gemma 4: 30 blocks (5 sliding : 1 global), hidden
    2816, dense MLP 2112 beside 128 experts of 704, top-8, global heads 512 wide with 2
    key/value heads and k = v (the numbers of public copies of the release's config.json;
    the test's reference is transformers' module graph of this same config, not them)."""
    types = (["sliding_attention"] * 5 + ["full_attention"]) * 5
    return {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
            "text_config": {"model_type": "gemma4_text", "hidden_size": 2816,
                            "intermediate_size": 2112, "num_hidden_layers": 30,
                            "num_attention_heads": 16, "num_key_value_heads": 8,
                            "head_dim": 256, "global_head_dim": 512,
                            "num_global_key_value_heads": 2, "attention_k_eq_v": True,
                            "layer_types": types, "hidden_size_per_layer_input": 0,
                            "vocab_size": 262144, "enable_moe_block": True,
                            "num_experts": 128, "top_k_experts": 8,
                            "moe_intermediate_size": 704, "sliding_window": 1024,
                            "tie_word_embeddings": True},
            "vision_config": {"model_type": "gemma4_vision"}, "tie_word_embeddings": True}


def _graph_counts(config: dict) -> tuple[int, int]:
    """(total, active) parameters of the language model from transformers' module graph:
    active counts top_k / E of the experts' tensors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    text = {k: v for k, v in config["text_config"].items() if k != "model_type"}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma4_text", **text))
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return total, total - experts * (text["num_experts"] - text["top_k_experts"]) \
        // text["num_experts"]


def test_planner_counts_total_and_active_parameters():
    """The shape's counts within 0.1 % of the module graph's (25.2 B total, 3.8 B active);
    without the dense MLP beside the experts, or with top_k_experts unread, they are not."""
    from qtapp.engine.planning.shape import ModelShape

    config = _released_shape()
    total, active = _graph_counts(config)
    shape = ModelShape.from_config(config)
    assert 25.0e9 < total < 25.5e9 and 3.7e9 < active < 3.9e9, (total, active)

    def close(shape) -> bool:
        return (abs(shape.n_params - total) < 1e-3 * total
                and abs(shape.active_params - active) < 1e-3 * active)

    assert close(shape), (shape.n_params, shape.active_params, total, active)
    assert not close(replace(shape, dense_mlp_size=0, n_params=0))
    assert not close(replace(shape, experts_per_token=2))


def test_check_says_what_works_before_any_download(tmp_path):
    """From config.json alone: the three linear methods work (on a machine with the RAM the
    planner's default mode asks for a 25 B model: 96 GiB), GGUF waits only for the
    tokenizer files (the architecture is converted), and the parameter count is the 25.2 B
    of the module graph."""
    from shapes import hardware

    from qtapp.engine.planning.compat import check_model
    from qtapp.engine.units import GiB

    (tmp_path / "config.json").write_text(json.dumps(_released_shape()))
    hw = replace(hardware(vram_gib=24), ram_total=256 * GiB, ram_available=240 * GiB)
    report = check_model(str(tmp_path), hw=hw)
    reasons = {m.method: m.reason for m in report.methods}
    assert {"rtn", "gptq", "awq"} <= set(report.works), reasons
    assert "gguf" not in report.works and "tokenizer" in reasons["gguf"], reasons
    assert 25.0e9 < report.n_params < 25.5e9, report.n_params


def test_gguf_takes_both_forms():
    """The released 26B-A4B config.json (multimodal) and its text decoder alone are written as
    llama.cpp's gemma4 architecture, with the router's scales among the family's GGUF
    facts (what the files hold: test_gguf_reproduces_the_model, test_gguf_metadata_...)."""
    from qtapp.engine.gguf.archs import arch_of

    for config in (_released_shape(), {**_released_shape()["text_config"],
                                       "model_type": "gemma4_text",
                                       "architectures": ["Gemma4ForCausalLM"]}):
        arch = arch_of(config)
        assert arch.name == "gemma4" and ("router.per_expert_scale", "FFN_DOWN_EXP") in \
            arch.facts.scales


# ------------------------------------------------------------------------ GGUF
# llama.cpp's gemma4 architecture reads the MoE block (src/models/gemma4.cpp) from the router
# (ffn_gate_inp) and its input scale (ffn_gate_inp.scale), the fused experts
# (ffn_gate_up_exps (E, 2·I, H), ffn_down_exps (E, H, I)), the per-expert output scales
# (ffn_down_exps.scale) and the experts' norms (pre_ffw_norm_2, post_ffw_norm_1/2). The
# tiny models here carry the SentencePiece-style tokenizer llama.cpp's "gemma4" vocabulary
# reads, and router scales drawn from [0.5, 1.5] (transformers initialises them to 1, where
# a writer that dropped them would go unnoticed).


def _draw_router_scales(folder: Path) -> None:
    g = torch.Generator().manual_seed(2)
    rewrite_tensors(folder, lambda name, t: 0.5 + torch.rand(t.shape, dtype=t.dtype,
                                                              generator=g)
                    if name.endswith(("router.scale", "router.per_expert_scale")) else None)


@pytest.fixture(scope="module")
def gguf_built(tmp_path_factory, spm_tokenizer):  # noqa: F811
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            folder = tmp_path_factory.mktemp(name + "_gguf") / name
            if name == "gemma4":
                build_multimodal(folder, "gemma4", MOE_TEXT, spm_tokenizer)
            else:
                vocab = json.loads((spm_tokenizer / "config.json").read_text())["vocab_size"]
                build_family_model(folder, "gemma4_text", spm_tokenizer,
                                   embed_std=EMBED["gemma4"],
                                   vocab_size_per_layer_input=vocab, **MOE_TEXT)
            _draw_router_scales(folder)
            cache[name] = folder
        return cache[name]
    return get


# Q8_0's bound: GGUF's 1e-2 for Gemma4ForCausalLM (measured 2.0e-3, its zeroed-expert file
# 6.5e-2); the 8-bit 1e-3 for the multimodal form (measured 4.1e-5), whose expert
# branch is small beside its dense MLP: one block's experts zeroed moved its Q8_0 file by
# 3.5e-3, every block's by 7.2e-3, both below 1e-2
Q8_MAX = {"gemma4": KLD_MAX, "gemma4_text": GGUF_Q8_KLD_MAX}


@pytest.mark.slow
@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", ["gemma4", "gemma4_text"])
def test_gguf_reproduces_the_model(gguf_built, name, tmp_path, capsys):
    """The MoE form's GGUF run by llama-cpp-python: F32 within 1e-5 mean KLD of transformers,
    rejected once block 1's per-expert scales are zeroed; Q8_0 through the CLI within
    Q8_MAX, rejected once block 0's gate/up experts are zeroed."""
    from qtapp.engine.gguf.convert import convert_to_gguf
    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = gguf_built(name)
    ids = token_ids(259)
    ref = source_logits(src, ids)
    f32 = convert_to_gguf(src, tmp_path / "f32.gguf", "F32").path
    exact = mean_kld(ref, gguf_logits(f32, ids))
    bad = mean_kld(ref, gguf_logits(damage_gguf(f32, tmp_path, "blk.1.ffn_down_exps.scale"),
                                    ids))
    path = gguf_file(quantize_cli(src, tmp_path / "out", "gguf"))
    q8 = mean_kld(ref, gguf_logits(path, ids))
    bad_q8 = mean_kld(ref, gguf_logits(damage_gguf(path, tmp_path,
                                                   "blk.0.ffn_gate_up_exps.weight"), ids))
    with capsys.disabled():
        print(f"{name} MoE gguf: F32 {exact:.2e} (per-expert scales zeroed {bad:.2e}), "
              f"Q8_0 {q8:.2e} (gate/up experts zeroed {bad_q8:.2e})")
    assert exact < GGUF_F32_KLD_MAX < bad, (exact, bad)
    assert q8 < Q8_MAX[name] < bad_q8, (q8, bad_q8)


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_gguf_metadata_tensors_and_k_quant(gguf_built, tmp_path, capsys):
    """What the file holds, read back with the gguf package against the checkpoint: expert
    count, top-k and expert width; the fused experts byte for byte in llama.cpp's layout
    (ffn_gate_up_exps = gate_up_proj, gate rows first), the router's scales under the names
    llama.cpp reads; then Q4_K_M through the CLI with the importance matrix of the
    per-expert calibration (one row per expert of each merged tensor) opens and runs, further
    from the source than Q8_0 yet within 1e-2."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    from qtapp.cli import main
    from qtapp.engine.gguf.convert import convert_to_gguf
    from qtapp.engine.gguf.imatrix import read_imatrix
    from qtapp.engine.gguf.llama_runtime import llama_cpp_available
    from qtapp.engine.gguf.output import IMATRIX_FILE

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = gguf_built("gemma4")
    f32 = convert_to_gguf(src, tmp_path / "f32.gguf", "F32").path
    reader = gguf.GGUFReader(f32)
    key = {k: reader.fields[f"gemma4.{k}"].contents()
           for k in ("expert_count", "expert_used_count", "expert_feed_forward_length")}
    assert key == {"expert_count": N_EXPERTS, "expert_used_count": TOP_K,
                   "expert_feed_forward_length": MOE_TEXT["moe_intermediate_size"]}, key
    tensors = {t.name: t for t in reader.tensors}
    layers = LAYERS["gemma4"]
    with safe_open(src / "model.safetensors", "np") as st:
        for i in range(3):
            for gguf_name, hf_name in (
                    (f"blk.{i}.ffn_gate_up_exps.weight", "experts.gate_up_proj"),
                    (f"blk.{i}.ffn_down_exps.weight", "experts.down_proj"),
                    (f"blk.{i}.ffn_gate_inp.weight", "router.proj.weight"),
                    (f"blk.{i}.ffn_gate_inp.scale", "router.scale"),
                    (f"blk.{i}.ffn_down_exps.scale", "router.per_expert_scale"),
                    (f"blk.{i}.pre_ffw_norm_2.weight", "pre_feedforward_layernorm_2.weight"),
                    (f"blk.{i}.post_ffw_norm_1.weight", "post_feedforward_layernorm_1.weight"),
                    (f"blk.{i}.post_ffw_norm_2.weight", "post_feedforward_layernorm_2.weight")):
                want = st.get_tensor(f"{layers}.{i}.{hf_name}")
                got = np.asarray(tensors[gguf_name].data).reshape(want.shape)
                assert tensors[gguf_name].tensor_type.name == "F32", gguf_name
                assert np.array_equal(got, want), gguf_name
    assert not any("ffn_gate_exps" in n or "ffn_up_exps" in n for n in tensors)

    ids = token_ids(259)
    ref = source_logits(src, ids)
    out = tmp_path / "q4"
    assert main(["quantize", "--model", str(src), "--method", "gguf", "--out", str(out),
                 "--type", "Q4_K_M", "--imatrix", "auto", "--samples", "16", "--seq-len",
                 "64", "--device", "cpu", "--no-eval"]) == 0
    path = gguf_file(out)
    q4_types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    # the tiny model's 64-wide rows do not fit a k-quant block (256): llama-quantize's
    # fallback from Q4_K / Q6_K is Q5_0 / Q8_0 (types.type_fallback), here as there
    assert q4_types["blk.0.ffn_gate_up_exps.weight"] == "Q5_0", q4_types
    assert q4_types["blk.0.ffn_gate_inp.weight"] == "F32", q4_types
    imatrix = read_imatrix(out / IMATRIX_FILE)
    for i in range(3):
        # each expert's tokens on its own row (experts put on one row leave 7 rows empty),
        # counted once for gate and up as llama-imatrix counts its one gate_up product
        # (gate and up each counted: twice the down_proj counts)
        counts = imatrix.counts[f"blk.{i}.ffn_gate_up_exps.weight"]
        assert (counts > 0).all() and (counts == imatrix.counts[
            f"blk.{i}.ffn_down_exps.weight"]).all(), counts
        assert imatrix.sums[f"blk.{i}.ffn_gate_up_exps.weight"].shape == \
            (N_EXPERTS, MOE_TEXT["hidden_size"])
    importance = imatrix.importance()
    assert importance["blk.0.ffn_down_exps.weight"].size == \
        N_EXPERTS * MOE_TEXT["moe_intermediate_size"]
    q4 = mean_kld(ref, gguf_logits(path, ids))
    q8 = mean_kld(ref, gguf_logits(gguf_file(quantize_cli(src, tmp_path / "q8", "gguf")), ids))
    with capsys.disabled():
        print(f"gemma4 MoE gguf Q4_K_M (imatrix): mean KLD {q4:.2e} (Q8_0 {q8:.2e})")
    assert q8 < q4 < GGUF_Q8_KLD_MAX, (q4, q8)
