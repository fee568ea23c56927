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
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_families import (
    KLD_MAX,
    build_family_model,
    damage_hf,
    hf_logits,
    mean_kld,
    source_logits,
    token_ids,
)
from test_moe import SCHEME, _quantize_block_with_hessians

from qtapp.engine.model.moe import UnfusedExperts, fuse_experts, min_expert_tokens, unfuse_experts

N_EXPERTS, TOP_K = 8, 2
RARE = 7  # an expert the router seldom picks, so that it takes the fallback
GPT_OSS = {"num_local_experts": N_EXPERTS, "num_experts_per_tok": TOP_K, "head_dim": 16,
           "sliding_window": 32, "max_position_embeddings": 131072, "intermediate_size": 64}


def _with_expert_biases(folder: Path) -> Path:
    """The saved model with non-zero expert biases (transformers initialises them to 0)."""
    from safetensors.torch import load_file, save_file

    (f,) = folder.glob("*.safetensors")
    tensors = load_file(f)
    g = torch.Generator().manual_seed(7)
    for name, t in tensors.items():
        if name.endswith(("gate_up_proj_bias", "down_proj_bias")):
            tensors[name] = 0.1 * torch.randn(t.shape, generator=g)
    save_file(tensors, f, metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def gpt_oss_dir(tmp_path_factory):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = _with_expert_biases(build_family_model(
        tmp_path_factory.mktemp("gpt_oss") / "gpt_oss", "gpt_oss", **GPT_OSS))
    (f,) = folder.glob("*.safetensors")
    tensors = load_file(f)
    for name, t in tensors.items():
        if name.endswith(("mlp.router.weight", "mlp.router.bias")):
            t[RARE] = 0  # seldom routed to: its logit 0 is below most top-2 logits
    save_file(tensors, f, metadata={"format": "pt"})
    with safe_open(f, "pt") as st:  # the fused layout of the released checkpoints
        assert st.get_slice("model.layers.0.mlp.experts.gate_up_proj").get_shape() == \
            [N_EXPERTS, 64, 128]
        assert st.get_slice("model.layers.0.mlp.experts.down_proj").get_shape() == \
            [N_EXPERTS, 64, 64]
    return folder


def _model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _unfused_matches(folder: Path, interleaved: bool | None = None) -> None:
    model = _model(folder)
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

    model = _model(gpt_oss_dir)
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


def _routed_hessians(folder: Path, report, x: torch.Tensor, kwargs: dict):
    """Reference, per expert linear: H = 2/n Σ x xᵀ over exactly the tokens the float router
    of block 0 sends that expert (gate_up: the normed block input; down: the clamped SwiGLU
    of the quantized gate_up's output, as true-sequential GPTQ sees it), and n."""
    model = _model(folder)
    unfuse_experts(model)
    layer = model.model.layers[0]
    with torch.no_grad():
        for name, qw in report.modules.items():
            if not name.endswith("down_proj"):
                layer.get_submodule(name).weight.copy_(qw.dequantize())
    seen: list[torch.Tensor] = []
    hook = layer.mlp.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    out = {}
    with torch.no_grad():
        for chunk in x.split(8):  # the captured (eager) attention mask is for 8 samples
            layer(chunk, **kwargs)
        hook.remove()
        h = torch.cat(seen).reshape(-1, x.shape[-1])
        _, _, idx = layer.mlp.router(h)
        for e in range(N_EXPERTS):
            xe = h[(idx == e).any(-1)]
            expert = layer.mlp.experts[e]
            mid = expert.apply_gate(expert.gate_up_proj(xe))
            for kind, inp in (("gate_up_proj", xe), ("down_proj", mid)):
                inp = inp.double()
                out[f"mlp.experts.{e}.{kind}"] = (2 / max(len(inp), 1) * inp.T @ inp, len(inp))
    return out


def _check_every_expert(folder, report, hessians, events, x0, kwargs):
    from qtapp.engine.quant.methods.rtn import rtn_searched

    ref = _routed_hessians(folder, report, x0, kwargs)
    fallback = set(report.meta["experts"]["fallback"])
    logged = " ".join(e.message for e in events if getattr(e, "type", "") == "log")
    methods = {e.module: e.method for e in events if getattr(e, "type", "") == "layer"}
    source = _model(folder).model.layers[0].mlp.experts
    for e in range(N_EXPERTS):
        for kind in ("gate_up_proj", "down_proj"):
            name = f"mlp.experts.{e}.{kind}"
            assert name in report.modules, f"{name} left unquantized"
            H, n = hessians[name]
            H_ref, n_ref = ref[name]
            assert n == n_ref, (name, n, n_ref)
            torch.testing.assert_close(H.double(), H_ref, rtol=1e-4, atol=1e-6)
            if n < min_expert_tokens(64):
                assert name in fallback and methods["model.layers.0." + name] == "rtn"
                assert f"{e} ({n})" in logged
                W = getattr(source, kind)[e].T  # stored (in, out): the linear's (out, in)
                expect = rtn_searched(W.detach().float(), SCHEME).dequantize()
                torch.testing.assert_close(report.modules[name].dequantize(), expect)
            else:
                assert name not in fallback and methods["model.layers.0." + name] == "gptq"


def test_every_expert_is_quantized_from_its_own_tokens(gpt_oss_dir, monkeypatch):
    report, hessians, events, x0, kwargs = _quantize_block_with_hessians(gpt_oss_dir,
                                                                         monkeypatch)
    counts = [hessians[f"mlp.experts.{e}.gate_up_proj"][1] for e in range(N_EXPERTS)]
    assert sum(counts) == 16 * 64 * TOP_K
    assert any(c < min_expert_tokens(64) for c in counts), counts  # both paths run
    assert any(c >= min_expert_tokens(64) for c in counts), counts
    _check_every_expert(gpt_oss_dir, report, hessians, events, x0, kwargs)
    assert "mlp.router" not in report.modules


def test_a_zeroed_expert_hessian_is_caught(gpt_oss_dir, monkeypatch):
    _r, hessians, _e, _x, _k = _quantize_block_with_hessians(gpt_oss_dir, monkeypatch)
    big = next(e for e in range(N_EXPERTS)
               if hessians[f"mlp.experts.{e}.gate_up_proj"][1] >= min_expert_tokens(64))
    report, hessians, events, x0, kwargs = _quantize_block_with_hessians(
        gpt_oss_dir, monkeypatch, break_hessian=big)
    with pytest.raises(AssertionError):
        _check_every_expert(gpt_oss_dir, report, hessians, events, x0, kwargs)


def test_an_unquantized_expert_is_caught(gpt_oss_dir, monkeypatch):
    report, hessians, events, x0, kwargs = _quantize_block_with_hessians(gpt_oss_dir,
                                                                         monkeypatch)
    del report.modules["mlp.experts.5.down_proj"]
    with pytest.raises(AssertionError, match="left unquantized"):
        _check_every_expert(gpt_oss_dir, report, hessians, events, x0, kwargs)


# ------------------------------------------------------------------------------ AWQ


def _check_awq_folds_exactly(folder: Path, compensate_router: bool = True) -> None:
    from dataclasses import replace

    from test_moe import _block0

    from qtapp.engine.config import AWQOptions, QuantScheme
    from qtapp.engine.quant.methods.awq import awq_apply_block, awq_search_block

    info, block, inputs = _block0(folder)

    def routing():
        picked: list[torch.Tensor] = []
        hook = block.mlp.router.register_forward_hook(lambda _m, _a, out: picked.append(out[2]))
        ys = []
        try:
            with torch.no_grad():
                for chunk in inputs.x.split(8):  # the captured eager mask is for 8 samples
                    y = block(chunk, **inputs.kwargs)
                    ys.append(y[0] if isinstance(y, tuple) else y)
        finally:
            hook.remove()
        return torch.cat(ys), torch.cat(picked)

    y0, picked0 = routing()
    groups = info.arch.present(0, block)[1]
    if not compensate_router:
        groups = tuple(replace(g, also=()) for g in groups)
    scheme = QuantScheme(4, 32, True)
    result = awq_search_block(
        block, inputs.x, inputs.kwargs, groups, lambda _n: scheme, AWQOptions(), 8,
        min_tokens=lambda n: min_expert_tokens(32) if info.arch.expert_of(n) is not None
        else 0)
    norm = "post_attention_layernorm"
    assert norm in result.scales and not torch.allclose(result.scales[norm],
                                                       torch.ones_like(result.scales[norm]))
    result.clips.clear()  # the scales alone change nothing in real arithmetic
    awq_apply_block(block, result, groups)
    y1, picked1 = routing()
    assert torch.equal(picked0, picked1), "the router picks other experts after scaling"
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)


def test_awq_scale_before_the_experts_leaves_routing_and_outputs_unchanged(gpt_oss_dir):
    _check_awq_folds_exactly(gpt_oss_dir)


def test_an_uncompensated_router_is_caught(gpt_oss_dir):
    with pytest.raises(AssertionError):
        _check_awq_folds_exactly(gpt_oss_dir, compensate_router=False)


# ------------------------------------------------------------------------ end to end


def _names(folder: Path) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            names |= set(st.keys())
    return names


@pytest.mark.parametrize("method, fmt", [
    ("rtn", "gptq"), ("gptq", "gptq"),
    pytest.param("gptq", "compressed-tensors", marks=pytest.mark.slow),
    pytest.param("awq", "gptq", marks=pytest.mark.slow)])
def test_gpt_oss_w8_end_to_end_gptqmodel_names(gpt_oss_dir, tmp_path, method, fmt):
    from qtapp.cli import main

    out = tmp_path / "out"
    assert main(["quantize", "--model", str(gpt_oss_dir), "--method", method, "--out",
                 str(out), "--samples", "16", "--seq-len", "64", "--device", "cpu",
                 "--no-eval", "--bits", "8", "--format", fmt]) == 0
    names = _names(out)
    packed = "qweight" if fmt == "gptq" else "weight_packed"
    for i in range(2):
        for e in range(N_EXPERTS):
            for kind in ("gate_up", "down"):
                assert f"model.layers.{i}.mlp.experts.{kind}.{e}.{packed}" in names
                assert f"model.layers.{i}.mlp.experts.{kind}.{e}.bias" in names
        for t in ("mlp.router.weight", "mlp.router.bias", "self_attn.sinks"):
            assert f"model.layers.{i}.{t}" in names  # 16-bit, as in the source
    assert not any(n.endswith(("gate_up_proj", "down_proj", "_proj_bias")) for n in names)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    router = "model.layers.0.mlp.router"
    if fmt == "gptq":
        excluded = [k[2:] for k in qc.get("dynamic", {}) if k.startswith("-:")]
        assert any(re.match(x, router) for x in excluded), qc
        assert not any(re.match(x, "model.layers.0.mlp.experts.gate_up.0") for x in excluded)
    else:
        assert router in qc["ignore"], qc
    ids = token_ids(259)
    ref = source_logits(gpt_oss_dir, ids)
    kld = mean_kld(ref, hf_logits(out, ids))
    print(f"gpt_oss {method} {fmt} W8: mean KLD {kld:.2e}")
    assert kld < KLD_MAX, kld
    bad = damage_hf(out, tmp_path, "model.layers.0.mlp.experts.down.0")
    damaged = mean_kld(ref, hf_logits(bad, ids))
    print(f"gpt_oss {method} {fmt} expert 0 down zeroed: mean KLD {damaged:.2e}")
    assert damaged > KLD_MAX, damaged


@pytest.mark.slow
def test_gpt_oss_w4_gptq_and_awq_beat_rtn_on_held_out_text(gpt_oss_dir, tmp_path):
    """W4 g32 (16 × 64 calibration tokens): GPTQ and AWQ below RTN at the same settings on
    held-out text (test_families.held_out_ids); a damaged expert does not beat RTN."""
    from test_families import held_out_ids

    from qtapp.cli import main

    ids = held_out_ids(gpt_oss_dir)
    ref = source_logits(gpt_oss_dir, ids)
    kld = {}
    for method in ("rtn", "gptq", "awq"):
        out = tmp_path / method
        assert main(["quantize", "--model", str(gpt_oss_dir), "--method", method, "--out",
                     str(out), "--samples", "16", "--seq-len", "64", "--device", "cpu",
                     "--no-eval", "--bits", "4", "--group-size", "32", "--format",
                     "gptq"]) == 0
        kld[method] = mean_kld(ref, hf_logits(out, ids))
        print(f"gpt_oss {method} W4 g32, held-out text: mean KLD {kld[method]:.2e}")
    assert kld["gptq"] < kld["rtn"] and kld["awq"] < kld["rtn"], kld
    for method in ("gptq", "awq"):
        bad = damage_hf(tmp_path / method, tmp_path, "model.layers.0.mlp.experts.down.0")
        damaged = mean_kld(ref, hf_logits(bad, ids))
        print(f"gpt_oss {method} W4 expert 0 down zeroed: mean KLD {damaged:.2e}")
        assert damaged > kld["rtn"], (method, damaged, kld)


def test_expert_count_mismatch_is_refused_before_any_work(gpt_oss_dir, tmp_path, capsys):
    import shutil

    from qtapp.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(gpt_oss_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["num_local_experts"] = N_EXPERTS * 2
    (bad / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert main(["quantize", "--model", str(bad), "--method", "gptq", "--out", str(out),
                 "--bits", "8", "--device", "cpu", "--no-eval"]) != 0
    err = capsys.readouterr().err
    assert f"says {N_EXPERTS * 2} experts" in err and f"hold {N_EXPERTS}" in err, err
    assert not out.exists()


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
    from test_families import (
        GGUF_F32_KLD_MAX,
        GGUF_Q8_KLD_MAX,
        damage_gguf,
        gguf_file,
        gguf_logits,
        quantize_cli,
    )

    from qtapp.engine.gguf.convert import convert_to_gguf
    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = _with_expert_biases(build_family_model(tmp_path / "gpt_oss", "gpt_oss", demo_dir,
                                                 **GPT_OSS))
    ids = token_ids(259)
    config = json.loads((src / "config.json").read_text())
    assert config["rope_parameters"]["truncate"] is False
    ref = source_logits(src, ids)
    path = gguf_file(quantize_cli(src, tmp_path / "out", "gguf"))
    kld = mean_kld(ref, gguf_logits(path, ids))
    print(f"gpt_oss gguf Q8_0: mean KLD {kld:.2e}")
    assert kld < GGUF_Q8_KLD_MAX, kld

    config["rope_parameters"]["truncate"] = True  # as ggml computes yarn
    (src / "config.json").write_text(json.dumps(config))
    ref = source_logits(src, ids)
    f32 = convert_to_gguf(src, tmp_path / "f32.gguf", "F32").path
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
    exact = mean_kld(ref, gguf_logits(f32, ids))
    print(f"gpt_oss gguf F32 (truncate true): mean KLD {exact:.2e}")
    assert exact < GGUF_F32_KLD_MAX, exact
    for broken in ("blk.0.ffn_down_exps.weight", "blk.0.attn_sinks.weight",
                   "blk.1.ffn_gate_exps.bias"):
        damaged = mean_kld(ref, gguf_logits(damage_gguf(f32, tmp_path, broken), ids))
        print(f"gpt_oss gguf F32, {broken} zeroed: mean KLD {damaged:.2e}")
        assert damaged > GGUF_F32_KLD_MAX, (broken, damaged)


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

    from qtapp.engine.model.sources import SafetensorsReader

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
    from qtapp.cli import main

    mx = tmp_path / "mxfp4"
    _to_mxfp4(gpt_oss_dir, mx)
    out = tmp_path / "out"
    assert main(["quantize", "--model", str(mx), "--method", "rtn", "--out", str(out),
                 "--samples", "16", "--seq-len", "64", "--device", "cpu", "--no-eval",
                 "--bits", "8"]) == 0
    names = _names(out)
    assert "model.layers.1.mlp.experts.gate_up.7.qweight" in names
    assert not any(n.endswith(("_blocks", "_scales")) for n in names)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq"
    ids = token_ids(259)
    ref = source_logits(mx, ids)  # transformers dequantizes MXFP4 to bf16 on a CPU
    kld = mean_kld(ref, hf_logits(out, ids))
    print(f"gpt_oss MXFP4 source, rtn W8: mean KLD {kld:.2e}")
    assert kld < KLD_MAX, kld
    bad = damage_hf(out, tmp_path, "model.layers.0.mlp.experts.down.0")
    damaged = mean_kld(ref, hf_logits(bad, ids))
    print(f"gpt_oss MXFP4 source, rtn W8, expert 0 down zeroed: mean KLD {damaged:.2e}")
    assert damaged > KLD_MAX, damaged


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
    from qtapp.engine.gguf.hf_model import HfModel
    from qtapp.engine.gguf.imatrix import ImatrixCollector
    from qtapp.engine.model.sources import _model_info
    from qtapp.engine.quant.pipeline import collect_input_stats

    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, 259, (8, 64), generator=g)
    hf = HfModel(gpt_oss_dir)
    collector = ImatrixCollector()
    collect_input_stats(_model_info(gpt_oss_dir, str(gpt_oss_dir), "m"), tokens,
                        lambda name, x: collector.add_source(hf, name + ".weight", x),
                        lambda _e: None, lambda: False, torch.device("cpu"))
    imatrix = collector.to_imatrix()
    model = _model(gpt_oss_dir)
    unfuse_experts(model)
    with torch.no_grad():
        model(tokens)
    routed = model.model.layers[0].mlp.experts.token_counts.numpy()
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
