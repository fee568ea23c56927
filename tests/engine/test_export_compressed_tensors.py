"""compressed-tensors export, loaded by the real consumer: transformers with the
compressed-tensors package (decompresses on CPU), logits compared with our loader's.

transformers 5.24 + compressed-tensors 0.20 load symmetric schemes (mixed bits too) and
naive-quantized ones in their default mode. Asymmetric group/channel schemes load only with
`dequantize=True`, and only when the whole model uses one scheme: the default mode builds
the zero point unpacked while the file holds it packed (the format compressed-tensors itself
writes; llm-compressor#1618), and `dequantize=True` decompresses every module with the first
config group's scheme. Those cases are checked here as far as the consumer reaches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import (
    LINEARS,
    job_for,
    logits,
    quantize_to_store,
    reference_model,
)
from safetensors import safe_open

from qtapp.engine.config import GPTQOptions, ModuleRule, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.export import export_checkpoint
from qtapp.engine.model.loader import load_dequantized

pytest.importorskip("compressed_tensors")

ATTN8_FFN4 = (ModuleRule("*.self_attn.*", QuantScheme(8, -1, True)),
              ModuleRule("*.mlp.*", QuantScheme(4, 32, True)))


@pytest.fixture(scope="module")
def src(make_tiny_model, tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "src", dtype=torch.bfloat16)


def _export(src: Path, tmp: Path, job, act_order: bool = False):
    store = quantize_to_store(src, tmp / "store", job, act_order=act_order)
    exported = export_checkpoint("compressed-tensors", src, store, job, tmp / "out")
    return tmp / "out", exported, store


def _consumer(out: Path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **kw).eval()


@pytest.mark.parametrize(("case", "job"), [
    ("attn8-ffn4 sym (mixed bits)", job_for(bits=4, group_size=32, rules=ATTN8_FFN4)),
    ("W4 g32 sym", job_for(bits=4, group_size=32, sym=True)),
    ("W8 per-tensor asym", job_for(bits=8, group_size=0, sym=False)),
    ("W3 g32 asym naive + attn W4 g64 sym (mixed formats)",
     job_for(bits=3, group_size=32, sym=False,
             rules=(ModuleRule("*.self_attn.*", QuantScheme(4, 64, True)),))),
])
def test_transformers_loads_and_logits_match(src: Path, tmp_path: Path, case: str,
                                             job) -> None:
    out, _, store = _export(src, tmp_path, job)
    ours, _ = load_dequantized(out)
    ref = reference_model(src, store, scale_dtype=torch.bfloat16)
    assert (logits(ours) - logits(ref)).abs().max().item() < 1e-5
    theirs = _consumer(out)
    diff = (logits(theirs) - logits(ours)).abs().max().item()
    print(f"{case}: transformers+compressed-tensors vs QuantDesk loader, max |Δlogit| = {diff:.2e}")
    assert diff < 1e-5


@pytest.mark.parametrize("group_size", [32, -1])
def test_asymmetric_loads_with_dequantize(src: Path, tmp_path: Path, group_size: int) -> None:
    from transformers import CompressedTensorsConfig

    out, _, _ = _export(src, tmp_path, job_for(bits=4, group_size=group_size, sym=False))
    ours, _ = load_dequantized(out)
    theirs = _consumer(out, quantization_config=CompressedTensorsConfig(dequantize=True))
    for i in range(2):
        for rel in LINEARS:
            mine = ours.get_submodule(f"model.layers.{i}.{rel}").weight
            # the consumer multiplies in the scale's dtype (bfloat16): same product, rounded
            assert torch.equal(theirs.get_submodule(f"model.layers.{i}.{rel}").weight,
                               mine.to(torch.bfloat16).float())
    diff = (logits(theirs) - logits(ours)).abs().max().item()
    print(f"W4 asym g{group_size}: transformers (dequantize=True) vs QuantDesk loader, "
          f"max |Δlogit| = {diff:.2e}")
    assert diff < 2e-2


def test_layout_and_config(src: Path, tmp_path: Path) -> None:
    rules = (ModuleRule("*.self_attn.*", QuantScheme(8, -1, True)),
             ModuleRule("*.mlp.down_proj", skip=True))
    out, exported, store = _export(src, tmp_path, job_for(bits=4, group_size=32, sym=False,
                                                         rules=rules))
    assert any("llm-compressor#1618" in n for n in exported.notes)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
    assert q["quantization_status"] == "compressed"
    assert q["ignore"] == ["lm_head", "model.layers.0.mlp.down_proj",
                           "model.layers.1.mlp.down_proj"]
    assert set(q["config_groups"]) == {"group_0", "group_1"}
    g8, g4 = sorted(q["config_groups"].values(), key=lambda g: -g["weights"]["num_bits"])
    assert g8["targets"] == [rf"re:^model\.layers\.{i}\.self_attn\.{m}_proj$"
                             for i in range(2) for m in "koqv"]
    assert g8["weights"] == {"num_bits": 8, "type": "int", "symmetric": True,
                             "group_size": None, "strategy": "channel", "dynamic": False}
    assert g4["weights"]["strategy"] == "group" and not g4["weights"]["symmetric"]
    assert len(g4["targets"]) == 4  # gate/up of both layers; disjoint from the 8-bit group
    from compressed_tensors.quantization import QuantizationConfig

    QuantizationConfig.model_validate(q)  # the package's own schema accepts it
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    qw = store.load_block(1)[0]["mlp.up_proj"]  # (128, 64) W4 g32 asym
    name = "model.layers.1.mlp.up_proj"
    assert t[f"{name}.weight_packed"].shape == (128, 8)
    assert t[f"{name}.weight_zero_point"].shape == (16, 2)  # packed along dim 0
    assert t[f"{name}.weight_scale"].dtype == torch.bfloat16
    assert t[f"{name}.weight_shape"].tolist() == [128, 64]
    from compressed_tensors.compressors.pack_quantized.helpers import (
        pack_to_int32,
        unpack_from_int32,
    )

    signed = (qw.q.to(torch.int16) - 8).to(torch.int8)
    assert torch.equal(t[f"{name}.weight_packed"], pack_to_int32(signed, 4))
    zp = unpack_from_int32(t[f"{name}.weight_zero_point"], 4, torch.Size([128, 2]),
                           packed_dim=0)
    assert torch.equal(zp.to(torch.int32), qw.zero - 8)
    assert "model.layers.0.self_attn.q_proj.weight_zero_point" not in t  # symmetric
    assert t["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16


def test_odd_bits_are_naive_quantized(src: Path, tmp_path: Path) -> None:
    out, exported, store = _export(src, tmp_path, job_for(bits=5, group_size=32, sym=False))
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["format"] == "naive-quantized"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        w = f.get_tensor("model.layers.0.mlp.up_proj.weight")
        zp = f.get_tensor("model.layers.0.mlp.up_proj.weight_zero_point")
    qw = store.load_block(0)[0]["mlp.up_proj"]
    assert w.dtype == torch.int8 and torch.equal(w.to(torch.int16), qw.q.to(torch.int16) - 16)
    assert zp.dtype == torch.int8 and torch.equal(zp.to(torch.int32), qw.zero - 16)
    assert any("naive-quantized" in n for n in exported.notes)
    theirs = _consumer(out, quantization_config=__import__(
        "transformers").CompressedTensorsConfig(dequantize=True))
    ours, _ = load_dequantized(out)
    assert (logits(theirs) - logits(ours)).abs().max().item() < 2e-2


def test_refuses_act_order_group_indices(src: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="act-order"):
        _export(src, tmp_path, job_for(bits=4, group_size=32), act_order=True)


def test_static_groups_are_marked_weight_actorder(src: Path, tmp_path: Path) -> None:
    job = job_for(method="gptq", bits=4, group_size=32,
                  gptq=GPTQOptions(act_order=True, static_groups=True))
    out, _, _ = _export(src, tmp_path, job)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["config_groups"]["group_0"]["weights"]["actorder"] == "weight"
