"""Choosing the export format, the export plan (names, floats, 16-bit linears) and the
things every writer shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import job_for, logits, quantize_to_store, reference_model
from safetensors import safe_open

from qtapp.engine.config import GPTQOptions, ModuleRule, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.export import export_checkpoint, resolve_format
from qtapp.engine.model.loader import load_dequantized

ATTN8 = (ModuleRule("*.self_attn.*", QuantScheme(8, 32, True)),)


@pytest.fixture(scope="module")
def src(make_tiny_model, tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "src", dtype=torch.bfloat16)


@pytest.mark.parametrize(("job", "fmt"), [
    (job_for("rtn", 4, 32), "gptq"),
    (job_for("gptq", 3, 32), "gptq"),
    (job_for("awq", 4, 64, sym=False), "awq"),
    (job_for("rtn", 4, 32, rules=ATTN8), "compressed-tensors"),  # transformers ignores dynamic
    (job_for("awq", 4, 32, rules=ATTN8), "compressed-tensors"),
    (job_for("rtn", 6, 32), "compressed-tensors"),
    (job_for("gptq", 4, 32, rules=ATTN8, gptq=GPTQOptions(act_order=True, static_groups=False)), "gptq"),
    (job_for("rtn", 4, 32, export_format="compressed-tensors"), "compressed-tensors"),
    (job_for("rtn", 4, 32, rules=ATTN8, export_format="gptq"), "gptq"),
])
def test_resolve_format(job, fmt: str) -> None:
    assert resolve_format(job) == fmt


@pytest.mark.parametrize(("job", "message"), [
    (job_for("rtn", 8, 32, export_format="awq"), "AWQ format holds 4-bit"),
    (job_for("rtn", 5, 32, export_format="gptq"), "GPTQ format holds 2/3/4/8 bits"),
    (job_for("gptq", 4, 32, gptq=GPTQOptions(act_order=True, static_groups=False),
             export_format="compressed-tensors"), "act-order"),
    (job_for("gguf", 4, 32), "GGUF"),
])
def test_resolve_format_refuses_early(job, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_format(job)


def test_resolve_format_checks_shapes_against_the_source(src: Path) -> None:
    assert resolve_format(job_for("rtn", 4, 64), src) == "gptq"
    with pytest.raises(UserError, match=r"model.layers.0.self_attn.q_proj has 64 input "
                                        r"features, not a multiple of the group size 128"):
        resolve_format(job_for("rtn", 4, 128), src)
    skip_all = job_for("rtn", 4, 128, rules=(ModuleRule("model.layers.*", skip=True),))
    assert resolve_format(skip_all, src) == "gptq"  # nothing quantized, nothing to refuse


def test_auto_falls_back_to_compressed_tensors_for_mixed_bits(src: Path, tmp_path: Path) -> None:
    job = job_for("rtn", 4, 32, rules=ATTN8)
    store = quantize_to_store(src, tmp_path / "store", job)
    out = tmp_path / "out"
    exported = export_checkpoint("auto", src, store, job, out)
    assert exported.format == exported.checkpoint_format == "compressed-tensors"
    # the files it wrote, relative to the folder: what the job lists and keeps
    assert exported.files == sorted(str(p.relative_to(out)) for p in out.rglob("*")
                                    if p.is_file())
    assert "model.safetensors" in exported.files and "config.json" in exported.files
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"


def test_module_summary(src: Path, tmp_path: Path) -> None:
    job = job_for("rtn", 4, 32, rules=(*ATTN8, ModuleRule("*.mlp.down_proj", skip=True)))
    store = quantize_to_store(src, tmp_path / "store", job)
    m = export_checkpoint("gptq", src, store, job, tmp_path / "out").modules
    assert m["schemes"] == {
        "W4 g32 sym": {"bits": 4, "modules": 4, "params": 4 * 128 * 64,
                       "patterns": ["model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj"]},
        "W8 g32 sym": {"bits": 8, "modules": 8, "params": 2 * (2 * 64 * 64 + 2 * 32 * 64),
                       "patterns": ["model.layers.*.self_attn.k_proj",
                                    "model.layers.*.self_attn.o_proj",
                                    "model.layers.*.self_attn.q_proj",
                                    "model.layers.*.self_attn.v_proj"]},
    }
    assert m["float_linears"] == ["lm_head", "model.layers.0.mlp.down_proj",
                                  "model.layers.1.mlp.down_proj"]
    assert m["act_order"] is False


def test_float_tensors_from_the_store_replace_the_source(src: Path, tmp_path: Path) -> None:
    """AWQ folds scales into the norms: the store's float tensors win over the source's."""
    job = job_for("awq", 4, 32)
    store = quantize_to_store(src, tmp_path / "store", job)
    modules, meta, _ = store.load_block(1)
    norm = torch.linspace(0.5, 1.5, 64)
    store.save_block(1, modules, meta, {"model.layers.1.post_attention_layernorm.weight": norm})
    export_checkpoint("awq", src, store, job, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        t = f.get_tensor("model.layers.1.post_attention_layernorm.weight")
    assert t.dtype == torch.bfloat16 and torch.equal(t, norm.to(torch.bfloat16))
    ours, _ = load_dequantized(tmp_path / "out")
    assert torch.equal(ours.model.layers[1].post_attention_layernorm.weight,
                       norm.to(torch.bfloat16).float())


def test_tied_embeddings(make_tiny_model, tmp_path: Path) -> None:
    src = make_tiny_model(tmp_path / "tied", dtype=torch.bfloat16, tie_word_embeddings=True)
    job = job_for("rtn", 4, 32)
    store = quantize_to_store(src, tmp_path / "store", job)
    export_checkpoint("compressed-tensors", src, store, job, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    q = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert q["ignore"] == []
    ours, _ = load_dequantized(tmp_path / "out")
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    ref = reference_model(src, store, scale_dtype=torch.bfloat16)
    assert (logits(ours) - logits(ref)).abs().max().item() < 1e-5


def test_store_of_another_model_is_refused(src: Path, make_tiny_model,
                                            tmp_path: Path) -> None:
    other = make_tiny_model(tmp_path / "other", dtype=torch.bfloat16, intermediate_size=96)
    job = job_for("rtn", 4, 32)
    store = quantize_to_store(other, tmp_path / "store", job)
    with pytest.raises(UserError, match="belongs to another model"):
        export_checkpoint("gptq", src, store, job, tmp_path / "out")


def test_empty_store_is_refused(src: Path, tmp_path: Path) -> None:
    from qtapp.engine.quant.qstore import QuantStore

    with pytest.raises(UserError, match="holds no quantized blocks"):
        export_checkpoint("gptq", src, QuantStore(tmp_path / "s"), job_for(), tmp_path / "o")
