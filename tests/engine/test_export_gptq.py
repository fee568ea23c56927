"""GPTQ export: packing against a literal re-implementation of GPTQModel's / AutoGPTQ's
`pack` loop, v1/v2 zero points, act-order g_idx, config keys, and logits of the loaded
folder against a float model with our dequantized weights. With gptqmodel + optimum
installed (not in the project venv: gptqmodel pins another torch), transformers loads the
folder for real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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

from qtapp.engine.config import ModuleRule, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.export import ExportResult, export_checkpoint
from qtapp.engine.model.loader import load_dequantized
from qtapp.engine.quant.primitives import quantize_weight


@pytest.fixture(scope="module")
def src(make_tiny_model, tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "src", dtype=torch.bfloat16)


def reference_pack(W: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   g_idx: torch.Tensor, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """GPTQModel `pack_original` (gptqmodel/nn_modules/qlinear/__init__.py) line by line,
    with AutoGPTQ's v1 `zeros -= 1` (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py).
    W (N, K) float; scales, zeros (N, G)."""
    maxq = 2**bits - 1
    pack_factor = 32 // bits
    scales = scales.T.contiguous()
    zeros = zeros.T.contiguous()
    scale_zeros = zeros * scales
    int_weight = torch.round((W + scale_zeros[g_idx].T) / scales[g_idx].T)
    int_weight.clamp_(0, maxq)
    int_weight = int_weight.to(torch.int32).T.contiguous().numpy().astype(np.uint32)

    qweight = np.zeros((int(np.ceil(int_weight.shape[0] * bits / 32)), int_weight.shape[1]),
                       dtype=np.uint32)
    if bits in [2, 4, 8]:
        for row in range(qweight.shape[0]):
            for j in range(min(pack_factor, int_weight.shape[0] - row * pack_factor)):
                qweight[row] |= int_weight[row * pack_factor + j] << (bits * j)
    elif bits == 3:
        i = 0
        row = 0
        while row < qweight.shape[0]:
            for j in range(i, i + 10):
                qweight[row] |= int_weight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= int_weight[i] << 30
            row += 1
            qweight[row] |= (int_weight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= int_weight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= int_weight[i] << 31
            row += 1
            qweight[row] |= (int_weight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= int_weight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1

    zeros = zeros - 1  # AutoGPTQ v1
    zeros = zeros.numpy().astype(np.uint32)
    qzeros = np.zeros((zeros.shape[0], int(np.ceil(zeros.shape[1] * bits / 32))),
                      dtype=np.uint32)
    if bits in [2, 4, 8]:
        for col in range(qzeros.shape[1]):
            for j in range(min(pack_factor, zeros.shape[1] - col * pack_factor)):
                qzeros[:, col] |= zeros[:, col * pack_factor + j] << (bits * j)
    elif bits == 3:
        i = 0
        col = 0
        while col < qzeros.shape[1]:
            for j in range(i, i + 10):
                qzeros[:, col] |= zeros[:, j] << (3 * (j - i))
            i += 10
            qzeros[:, col] |= zeros[:, i] << 30
            col += 1
            qzeros[:, col] |= (zeros[:, i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qzeros[:, col] |= zeros[:, j] << (3 * (j - i) + 1)
            i += 10
            qzeros[:, col] |= zeros[:, i] << 31
            col += 1
            qzeros[:, col] |= (zeros[:, i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qzeros[:, col] |= zeros[:, j] << (3 * (j - i) + 2)
            i += 10
            col += 1
    return qweight.astype(np.int32), qzeros.astype(np.int32)


def _export(src: Path, tmp: Path, job, act_order: bool = False, **kw,
            ) -> tuple[Path, ExportResult]:
    store = quantize_to_store(src, tmp / "store", job, act_order=act_order)
    exported = export_checkpoint("gptq", src, store, job, tmp / "out", **kw)
    return tmp / "out", exported


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize(("bits", "group_size", "sym", "act_order"), [
    (4, 32, True, False), (4, 32, False, False), (8, 0, True, False), (2, 32, False, False),
    (3, 32, True, True),
])
def test_packing_matches_gptqmodel_pack_loop(src: Path, tmp_path: Path, bits: int,
                                             group_size: int, sym: bool,
                                             act_order: bool) -> None:
    job = job_for(bits=bits, group_size=group_size, sym=sym)
    out, exported = _export(src, tmp_path, job, act_order=act_order)
    assert exported.checkpoint_format == "gptq"
    store_mods = {}
    from qtapp.engine.quant.qstore import QuantStore

    store = QuantStore(tmp_path / "store")
    for i in store.completed():
        for rel, qw in store.load_block(i)[0].items():
            store_mods[f"model.layers.{i}.{rel}"] = qw
    t = _tensors(out)
    for name, qw in store_mods.items():
        W = qw.dequantize()  # what the reference re-quantizes
        ref_qweight, ref_qzeros = reference_pack(W, qw.scale, qw.zero.to(torch.int64),
                                                 qw.g_idx.long(), bits)
        assert np.array_equal(t[f"{name}.qweight"].numpy(), ref_qweight), name
        assert np.array_equal(t[f"{name}.qzeros"].numpy(), ref_qzeros), name
        assert torch.equal(t[f"{name}.scales"], qw.scale.T.half())
        assert torch.equal(t[f"{name}.g_idx"], qw.g_idx)
        assert t[f"{name}.g_idx"].dtype == torch.int32
        assert f"{name}.weight" not in t
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["desc_act"] is act_order
    assert config["group_size"] == (group_size if group_size > 0 else -1)


def test_symmetric_4bit_qzeros_are_0x77777777(src: Path, tmp_path: Path) -> None:
    out, _ = _export(src, tmp_path, job_for(bits=4, group_size=32, sym=True))
    t = _tensors(out)
    qzeros = [v for k, v in t.items() if k.endswith(".qzeros")]
    assert len(qzeros) == 2 * len(LINEARS)
    assert all(bool((z == 0x77777777).all()) for z in qzeros)


def test_act_order_g_idx_is_preserved(src: Path, tmp_path: Path) -> None:
    out, _ = _export(src, tmp_path, job_for(bits=4, group_size=32), act_order=True)
    g = _tensors(out)["model.layers.0.mlp.down_proj.g_idx"]
    assert not bool((g[1:] >= g[:-1]).all())  # not monotonic: act-order kept as is
    assert sorted(torch.bincount(g.long()).tolist()) == [32] * 4


@pytest.mark.parametrize(("bits", "group_size", "sym", "act_order"), [
    (4, 32, True, False), (3, 32, False, True), (8, -1, False, False),
])
def test_loaded_logits_equal_float_model_with_dequantized_weights(
        src: Path, tmp_path: Path, bits: int, group_size: int, sym: bool, act_order: bool,
) -> None:
    out, _ = _export(src, tmp_path, job_for(bits=bits, group_size=group_size, sym=sym),
                     act_order=act_order)
    from qtapp.engine.quant.qstore import QuantStore

    ours, tok = load_dequantized(out)
    assert tok is not None and tok("hello world")["input_ids"]
    ref = reference_model(src, QuantStore(tmp_path / "store"), scale_dtype=torch.float16)
    assert (logits(ours) - logits(ref)).abs().max().item() < 1e-5
    unrounded = reference_model(src, QuantStore(tmp_path / "store"), scale_dtype=None)
    assert (logits(ours) - logits(unrounded)).abs().max().item() < 1e-2  # fp16 scales only


def _store_with_zero_point_zero(src: Path, tmp: Path):
    job = job_for(bits=4, group_size=32, sym=False)
    store = quantize_to_store(src, tmp / "store", job)
    modules, meta, floats = store.load_block(0)
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        w = f.get_tensor("model.layers.0.mlp.up_proj.weight").float()
    w[:, :32] = w[:, :32].abs() + 0.01  # a group with min > 0 → zero point 0
    modules["mlp.up_proj"] = quantize_weight(w, 4, 32, False)
    assert int((modules["mlp.up_proj"].zero == 0).sum()) == 128
    store.save_block(0, modules, meta, floats)
    return job, store


def test_asymmetric_zero_point_zero_switches_to_gptq_v2(src: Path, tmp_path: Path) -> None:
    job, store = _store_with_zero_point_zero(src, tmp_path)
    exported = export_checkpoint("gptq", src, store, job, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert config["checkpoint_format"] == config["format"] == "gptq_v2"
    assert exported.checkpoint_format == "gptq_v2"
    assert any("gptq_v2" in n for n in exported.notes)
    qw = store.load_block(0)[0]["mlp.up_proj"]
    qzeros = _tensors(tmp_path / "out")["model.layers.0.mlp.up_proj.qzeros"]
    # v2: zeros as they are; the first nibble of row 0 is z[0, 0] = 0
    from qtapp.engine.quant.primitives import pack_int32

    assert torch.equal(qzeros, pack_int32(qw.zero.T.contiguous(), 4, dim=1))
    ours, _ = load_dequantized(tmp_path / "out")
    ref = reference_model(src, store, scale_dtype=torch.float16)
    assert (logits(ours) - logits(ref)).abs().max().item() < 1e-5


def test_config_keys_and_side_files(src: Path, tmp_path: Path) -> None:
    out, _ = _export(src, tmp_path, job_for(method="gptq", bits=4, group_size=32))
    c = json.loads((out / "config.json").read_text())
    q = c["quantization_config"]
    assert q == {
        # the defaults: act order with static groups (AutoGPTQ's desc_act + static_groups;
        # g_idx stays trivial)
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": True,
        "static_groups": True, "true_sequential": True, "damp_percent": 0.01,
        "checkpoint_format": "gptq", "format": "gptq", "pack_dtype": "int32",
        "lm_head": False,
        "meta": {"quantizer": ["quantdesk:0.1.0"], "method": "gptq", "damp_percent": 0.01,
                 "static_groups": True, "true_sequential": True},
    }
    assert c["model_type"] == "llama" and c.get("dtype", c.get("torch_dtype")) == "bfloat16"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert not (out / "model.safetensors.index.json").exists()


def test_mixed_bits_and_skipped_modules_use_dynamic(src: Path, tmp_path: Path) -> None:
    rules = (ModuleRule("*.self_attn.*", QuantScheme(8, 32, True)),
             ModuleRule("*.mlp.down_proj", skip=True),
             ModuleRule("model.layers.1.mlp.up_proj", QuantScheme(2, 64, False)))
    out, exported = _export(src, tmp_path, job_for(bits=4, group_size=32, rules=rules))
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (q["bits"], q["group_size"], q["sym"]) == (8, 32, True)  # the most common scheme
    assert q["dynamic"] == {
        r"-:^model\.layers\.\d+\.mlp\.down_proj$": {},
        r"+:^model\.layers\.\d+\.mlp\.gate_proj$": {"bits": 4, "group_size": 32, "sym": True},
        r"+:^model\.layers\.0\.mlp\.up_proj$": {"bits": 4, "group_size": 32, "sym": True},
        r"+:^model\.layers\.1\.mlp\.up_proj$": {"bits": 2, "group_size": 64, "sym": False},
    }
    assert q["modules_in_block_to_quantize"] == [[
        "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
        "self_attn.q_proj", "self_attn.v_proj"]]
    assert any("dynamic" in n for n in exported.notes)
    t = _tensors(out)
    assert t["model.layers.1.mlp.up_proj.qweight"].shape == (64 * 2 // 32, 128)
    assert t["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    from qtapp.engine.quant.qstore import QuantStore

    ours, _ = load_dequantized(out)
    ref = reference_model(src, QuantStore(tmp_path / "store"), scale_dtype=torch.float16)
    assert (logits(ours) - logits(ref)).abs().max().item() < 1e-5


def test_refuses_what_gptq_cannot_hold(src: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds 2, 3, 4, 8 bits only"):
        _export(src, tmp_path / "a", job_for(bits=5, group_size=32))
    assert not (tmp_path / "a" / "out" / "model.safetensors").exists()
    with pytest.raises(UserError, match="not a multiple of the group size 128"):
        _export(src, tmp_path / "b", job_for(bits=4, group_size=128))


def test_sharded_output_loads_the_same(src: Path, tmp_path: Path) -> None:
    job = job_for(bits=4, group_size=32)
    single, _ = _export(src, tmp_path / "one", job)
    sharded, _ = _export(src, tmp_path / "many", job, max_shard_bytes=20_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"].values()) == set(shards)
    assert set(index["weight_map"]) == set(_tensors(single))
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in _tensors(single).values())
    a, _ = load_dequantized(single)
    b, _ = load_dequantized(sharded)
    assert torch.equal(logits(a), logits(b))


def test_real_consumer_transformers_gptqmodel(src: Path, tmp_path: Path) -> None:
    """transformers + optimum + gptqmodel load the folder on CPU: weights bit-equal to ours
    in fp16, logits close (the kernel computes in fp16)."""
    pytest.importorskip("gptqmodel")
    pytest.importorskip("optimum")
    from transformers import AutoModelForCausalLM

    for case, (job, act_order) in {
        "w4g32sym": (job_for(bits=4, group_size=32, sym=True), False),
        "w4g32asym": (job_for(bits=4, group_size=32, sym=False), False),
        "w3g32act": (job_for(bits=3, group_size=32, sym=True), True),
        "w8chan": (job_for(bits=8, group_size=-1, sym=True), False),
    }.items():
        out, _ = _export(src, tmp_path / case, job, act_order=act_order)
        ours, _ = load_dequantized(out)
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu")
        for i in range(2):
            for rel in LINEARS:
                theirs = hf.get_submodule(f"model.layers.{i}.{rel}").dequantize_weight().T
                mine = ours.get_submodule(f"model.layers.{i}.{rel}").weight.half()
                assert torch.equal(theirs.half(), mine), (case, i, rel)
        diff = (logits(hf) - logits(ours)).abs().max().item()
        print(f"{case}: transformers+gptqmodel vs QuantDesk loader, max |Δlogit| = {diff:.2e}")
        assert diff < 5e-3


def test_real_consumer_gptqmodel_reads_v2_and_dynamic(src: Path, tmp_path: Path) -> None:
    """GPTQModel's own loader honours gptq_v2 and per-module `dynamic` bits / skips."""
    pytest.importorskip("gptqmodel")
    from gptqmodel import GPTQModel

    job, store = _store_with_zero_point_zero(src, tmp_path / "v2")
    export_checkpoint("gptq", src, store, job, tmp_path / "v2" / "out")
    rules = (ModuleRule("*.self_attn.*", QuantScheme(8, 32, True)),
             ModuleRule("*.mlp.down_proj", skip=True))
    mixed, _ = _export(src, tmp_path / "mixed", job_for(bits=4, group_size=32, rules=rules))
    for out in (tmp_path / "v2" / "out", mixed):
        ours, _ = load_dequantized(out)
        model = GPTQModel.load(str(out), device="cpu", dtype=torch.float16).model
        for i in range(2):
            for rel in LINEARS:
                mod = model.get_submodule(f"model.layers.{i}.{rel}")
                mine = ours.get_submodule(f"model.layers.{i}.{rel}").weight.half()
                theirs = mod.weight if rel == "mlp.down_proj" and out == mixed else \
                    mod.dequantize_weight().T
                assert torch.equal(theirs.half(), mine), (out, i, rel)
