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
8 experts, top-2, expert width 64, peaked outputs (test_families._sharpen). Expert RARE's router
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
from test_families import (
    GGUF_F32_KLD_MAX,
    GGUF_Q8_KLD_MAX,
    KLD_MAX,
    build_family_model,
    damage_gguf,
    gguf_file,
    gguf_logits,
    held_out_ids,
    hf_logits,
    mean_kld,
    quantize_cli,
    source_logits,
    token_ids,
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


def _names(folder: Path) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            names |= set(st.keys())
    return names


def _zero_router_row(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    for f in folder.glob("*.safetensors"):
        tensors = load_file(f)
        for name, t in tensors.items():
            if name.endswith("router.proj.weight"):
                t[RARE] = 0
        save_file(tensors, f, metadata={"format": "pt"})


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
            names = _names(folder)  # fused on disk, as the release and save_pretrained have it
            assert f"{LAYERS[name]}.0.experts.gate_up_proj" in names
            assert not any(".experts.0." in n for n in names)
            _zero_router_row(folder)
            cache[name] = folder
        return cache[name]
    return get


def _model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


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
    model = _model(built("gemma4_text"))
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


def _quantize_block0(folder: Path, monkeypatch, break_hessian: int | None = None):
    """The CLI's GPTQ W8 pipeline on block 0, recording every Hessian it builds and the
    events; `break_hessian` zeroes that expert's Hessians before they are used."""
    from qtapp.engine.config import CalibrationSpec, JobSpec
    from qtapp.engine.model.sources import _model_info
    from qtapp.engine.quant import pipeline

    info = _model_info(folder, str(folder), folder.name)
    job = JobSpec(model=str(folder), method="gptq", out=str(folder) + "-out", scheme=SCHEME,
                  calibration=CalibrationSpec(samples=16, seq_len=64), device="cpu")
    events: list = []
    hessians: dict[str, tuple[torch.Tensor, int]] = {}
    collect = pipeline.collect_hessians

    def spy(block, names, inputs, should_cancel=None):
        acc = collect(block, names, inputs, should_cancel)
        for n, a in acc.items():
            if break_hessian is not None and info.arch.expert_of(n) == break_hessian:
                a.H.zero_()
            hessians[n] = (a.H.clone(), a.n_samples)
        return acc

    monkeypatch.setattr(pipeline, "collect_hessians", spy)
    streamer = pipeline.LayerStreamer(info, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    inputs = streamer.capture_inputs(torch.randint(3, 259, (16, 64), generator=g), 8)
    inputs.use_block(0)
    batches = [(xb.clone(), dict(kw)) for xb, kw in inputs.batches()]
    quantizer = pipeline.BlockQuantizer(job, info, events.append, lambda: False)
    block = streamer.materialize(streamer.blocks[0], streamer.block_prefix(0))
    report = quantizer.quantize(0, block, streamer.block_prefix(0), inputs)
    streamer.close()
    return report, hessians, events, batches


def _routed_hessians(folder: Path, report, batches: list):
    """Reference, per expert linear of block 0: H = 2/n Σ x xᵀ over exactly the tokens the
    float router sends that expert (from the residual stream after attention), x the
    experts' norm output, with the block's quantized attention and gate/up in place (as
    true-sequential GPTQ has them when it builds these Hessians)."""
    model = _model(folder)
    unfuse_experts(model)
    layer = model.model.layers[0]
    with torch.no_grad():
        for name, qw in report.modules.items():
            if not name.endswith("down_proj"):
                layer.get_submodule(name).weight.copy_(qw.dequantize())
    seen: dict[str, list[torch.Tensor]] = {"h": [], "x": []}
    hooks = [layer.router.register_forward_pre_hook(lambda _m, a: seen["h"].append(a[0])),
             layer.pre_feedforward_layernorm_2.register_forward_hook(
                 lambda _m, _a, out: seen["x"].append(out))]
    out = {}
    with torch.no_grad():
        for xb, kw in batches:  # the calibration mini-batches, each with its own mask
            layer(xb, **kw)
        for h in hooks:
            h.remove()
        _, _, idx = layer.router(torch.cat(seen["h"]))  # the router, in float
        xn = torch.cat(seen["x"])
        for e in range(N_EXPERTS):
            xe = xn[(idx == e).any(-1)]
            expert = layer.experts[e]
            mid = expert.act_fn(expert.gate_proj(xe)) * expert.up_proj(xe)
            for kind, inp in (("gate_proj", xe), ("up_proj", xe), ("down_proj", mid)):
                inp = inp.double()
                out[f"experts.{e}.{kind}"] = (2 / max(len(inp), 1) * inp.T @ inp, len(inp))
    return out


def _check_every_expert(folder, report, hessians, events, batches):
    from qtapp.engine.quant.methods.rtn import rtn_searched

    ref = _routed_hessians(folder, report, batches)
    fallback = set(report.meta["experts"]["fallback"])
    logged = " ".join(e.message for e in events if getattr(e, "type", "") == "log")
    methods = {e.module: e.method for e in events if getattr(e, "type", "") == "layer"}
    source = _model(folder).model.layers[0].experts
    inter = source.gate_up_proj.shape[1] // 2
    for e in range(N_EXPERTS):
        for kind in KINDS:
            name = f"experts.{e}.{kind}"
            assert name in report.modules, f"{name} left unquantized"
            H, n = hessians[name]
            H_ref, n_ref = ref[name]
            assert n == n_ref, (name, n, n_ref)
            torch.testing.assert_close(H.double(), H_ref, rtol=1e-4, atol=1e-6)
            if n < min_expert_tokens(SCHEME.group_size):
                assert name in fallback and methods["model.layers.0." + name] == "rtn"
                assert f"{e} ({n})" in logged
                W = {"gate_proj": source.gate_up_proj[e, :inter],
                     "up_proj": source.gate_up_proj[e, inter:],
                     "down_proj": source.down_proj[e]}[kind]
                expect = rtn_searched(W.detach().float(), SCHEME).dequantize()
                torch.testing.assert_close(report.modules[name].dequantize(), expect)
            else:
                assert name not in fallback and methods["model.layers.0." + name] == "gptq"


def test_every_expert_is_quantized_from_its_own_tokens(built, monkeypatch):
    folder = built("gemma4_text")
    report, hessians, events, batches = _quantize_block0(folder, monkeypatch)
    counts = [hessians[f"experts.{e}.gate_proj"][1] for e in range(N_EXPERTS)]
    assert sum(counts) == 16 * 64 * TOP_K
    need = min_expert_tokens(SCHEME.group_size)  # both paths are exercised
    assert counts[RARE] < need and any(c >= need for c in counts), counts
    _check_every_expert(folder, report, hessians, events, batches)
    assert "router.proj" not in report.modules
    assert {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} <= set(report.modules)


def test_a_zeroed_expert_hessian_is_caught(built, monkeypatch):
    folder = built("gemma4_text")
    _report, hessians, *_ = _quantize_block0(folder, monkeypatch)
    big = next(e for e in range(N_EXPERTS) if hessians[f"experts.{e}.gate_proj"][1]
               >= min_expert_tokens(SCHEME.group_size))
    broken = _quantize_block0(folder, monkeypatch, break_hessian=big)
    with pytest.raises(AssertionError):
        _check_every_expert(folder, *broken)


def test_an_unquantized_expert_is_caught(built, monkeypatch):
    folder = built("gemma4_text")
    report, hessians, events, batches = _quantize_block0(folder, monkeypatch)
    del report.modules["experts.5.down_proj"]
    with pytest.raises(AssertionError, match="left unquantized"):
        _check_every_expert(folder, report, hessians, events, batches)


# ------------------------------------------------------------------------ AWQ


def _block0(folder: Path):
    from qtapp.engine.model.sources import _model_info
    from qtapp.engine.quant import pipeline

    info = _model_info(folder, str(folder), folder.name)
    streamer = pipeline.LayerStreamer(info, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    inputs = streamer.capture_inputs(torch.randint(3, 259, (16, 64), generator=g), 8)
    inputs.use_block(0)
    block = streamer.materialize(streamer.blocks[0], streamer.block_prefix(0))
    streamer.close()
    return info, block, inputs


def _routing(block, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    picked: list[torch.Tensor] = []
    hook = block.router.register_forward_hook(lambda _m, _a, out: picked.append(out[2]))
    ys = []
    try:
        with torch.no_grad():
            for xb, kw in inputs.batches():
                y = block(xb, **kw)
                ys.append(y[0] if isinstance(y, tuple) else y)
    finally:
        hook.remove()
    return torch.cat(ys), torch.cat(picked)


def _check_awq_folds_exactly(info, block, inputs, fold_into: str = ""):
    """Search W4 g32 scales on block 0, fold them without clipping: the router picks the
    same experts and the block's output is unchanged. `fold_into` folds the experts' scale
    into another norm (a broken table) instead."""
    from qtapp.engine.config import AWQOptions
    from qtapp.engine.quant.methods.awq import awq_apply_block, awq_search_block

    y0, picked0 = _routing(block, inputs)
    groups = info.arch.present(0, block)[1]
    scheme = QuantScheme(4, 32, True)
    result = awq_search_block(
        block, inputs.x, inputs.kwargs, groups, lambda _n: scheme,
        AWQOptions(grid=5, clip=False), 8,
        batches=inputs.batches(), min_tokens=lambda n: min_expert_tokens(32) if info.arch.expert_of(n) is not None
        else 0)
    norm = "pre_feedforward_layernorm_2"
    assert norm in result.scales
    assert not torch.allclose(result.scales[norm], torch.ones_like(result.scales[norm]))
    result.clips.clear()  # the scales alone change nothing in real arithmetic
    if fold_into:
        result.scales[fold_into] = result.scales.pop(norm)
        groups = tuple(replace(g, prev=fold_into) if g.prev == norm else g
                       for g in groups if g.prev != fold_into)
    awq_apply_block(block, result, groups)
    y1, picked1 = _routing(block, inputs)
    assert torch.equal(picked0, picked1), "the router picks other experts after scaling"
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)


def test_awq_scale_before_the_experts_leaves_routing_and_outputs_unchanged(built):
    _check_awq_folds_exactly(*_block0(built("gemma4_text")))


def test_a_scale_folded_into_the_wrong_norm_is_caught(built):
    with pytest.raises(AssertionError):
        _check_awq_folds_exactly(*_block0(built("gemma4_text")),
                                 fold_into="pre_feedforward_layernorm")


# ------------------------------------------------------------------------ end to end


def _damage_experts(out: Path, tmp: Path, head: str) -> Path:
    """A copy of `out` whose experts under `head` (one block's) all have zero scales, so
    the block's expert branch adds nothing. One expert zeroed (of 8, top-2; the branch is
    RMS-normalised after the experts, so the other expert's output takes its place) moved
    this tiny model's W8 output by 6.6e-4 only, below KLD_MAX."""
    from safetensors.torch import load_file, save_file

    bad = tmp / (out.name + "-experts-zeroed")
    shutil.copytree(out, bad)
    hit = 0
    for f in bad.glob("*.safetensors"):
        tensors = load_file(f)
        keys = [k for k in tensors if k.startswith(head) and "scale" in k.rsplit(".", 1)[-1]]
        for k in keys:
            tensors[k] = torch.zeros_like(tensors[k])
        if keys:
            save_file(tensors, f, metadata={"format": "pt"})
        hit += len(keys)
    assert hit == 3 * N_EXPERTS, hit
    return bad


def _quantize(src: Path, out: Path, method: str, *args: str) -> None:
    from qtapp.cli import main

    assert main(["quantize", "--model", str(src), "--method", method, "--out", str(out),
                 "--samples", "16", "--seq-len", "64", "--device", "cpu", "--no-eval",
                 *(args or ("--bits", "8"))]) == 0


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
    _quantize(src, out, method)
    said = "".join(capsys.readouterr())
    if method != "rtn":
        assert f"experts {RARE} (" in said and f"not {method}" in said, said[-2000:]
    layers = LAYERS[name]
    names = _names(out)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    packed = "weight_packed" if qc["quant_method"] == "compressed-tensors" else "qweight"
    for e in range(N_EXPERTS):
        for kind in KINDS:
            assert f"{layers}.2.experts.{e}.{kind}.{packed}" in names
    assert f"{layers}.0.mlp.down_proj.{packed}" in names
    assert f"{layers}.0.router.proj.weight" in names  # float
    assert not any("gate_up_proj" in n or f"router.proj.{packed}" in n for n in names)
    router = f"{layers}.0.router.proj"
    if qc["quant_method"] == "gptq":  # a negative dynamic rule keeps it out of the loaders
        import re

        assert any(re.match(k[2:], router) for k in qc.get("dynamic", {})
                   if k.startswith("-:")), qc
    else:
        assert router in qc["ignore"], qc
    ids = token_ids(259)
    ref = source_logits(src, ids)
    kld = mean_kld(ref, hf_logits(out, ids))
    with capsys.disabled():
        print(f"{name} MoE {method} W8: mean KLD {kld:.2e}")
    assert kld < KLD_MAX, kld
    bad = _damage_experts(out, tmp_path, f"{layers}.0.experts.")
    damaged = mean_kld(ref, hf_logits(bad, ids))
    with capsys.disabled():
        print(f"{name} MoE {method} W8, block 0's experts zeroed: mean KLD {damaged:.2e}")
    assert damaged > KLD_MAX, damaged


@pytest.mark.slow
def test_w4_gptq_and_awq_beat_rtn_on_held_out_text(built, tmp_path, capsys):
    """W4 g32: GPTQ and AWQ closer to the source than RTN at the same settings, on the
    built-in evaluation text (not the calibration windows); a zeroed expert fails."""
    src = built("gemma4")
    ids = held_out_ids(src)
    ref = source_logits(src, ids)
    kld = {}
    for method in ("rtn", "gptq", "awq"):
        _quantize(src, tmp_path / method, method, "--bits", "4", "--group-size", "32")
        kld[method] = mean_kld(ref, hf_logits(tmp_path / method, ids))
    with capsys.disabled():
        print("gemma4 MoE W4 g32, held-out text: "
              + ", ".join(f"{m} {v:.2e}" for m, v in kld.items()))
    assert kld["gptq"] < kld["rtn"] and kld["awq"] < kld["rtn"], kld
    bad = _damage_experts(tmp_path / "gptq", tmp_path, f"{LAYERS['gemma4']}.0.experts.")
    damaged = mean_kld(ref, hf_logits(bad, ids))
    assert damaged > kld["rtn"], (damaged, kld)


def test_expert_count_mismatch_is_refused_before_any_work(built, tmp_path, capsys):
    from qtapp.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(built("gemma4_text"), bad)
    config = json.loads((bad / "config.json").read_text())
    config["num_experts"] = N_EXPERTS * 2
    (bad / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert main(["quantize", "--model", str(bad), "--method", "gptq", "--out", str(out),
                 "--bits", "8", "--device", "cpu", "--no-eval"]) != 0
    err = capsys.readouterr().err
    assert f"says {N_EXPERTS * 2} experts" in err and f"hold {N_EXPERTS}" in err, err
    assert not out.exists()


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
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(2)
    for f in folder.glob("*.safetensors"):
        tensors = load_file(f)
        for name, t in tensors.items():
            if name.endswith(("router.scale", "router.per_expert_scale")):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
        save_file(tensors, f, metadata={"format": "pt"})


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
