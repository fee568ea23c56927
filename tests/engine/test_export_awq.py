"""AWQ GEMM export: packing order against AutoAWQ's reference `from_linear` and
`dequantize_gemm` (awq/modules/linear/gemm.py, awq/utils/packing_utils.py, re-implemented
here), config keys, refusals, and logits against a float model with our weights. With
gptqmodel installed, transformers loads the folder for real."""

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

from qtapp.engine.config import ModuleRule, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.export import ExportResult, export_checkpoint
from qtapp.engine.model.loader import load_dequantized
from qtapp.engine.quant.qstore import QuantStore

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.fixture(scope="module")
def src(make_tiny_model, tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "src", dtype=torch.bfloat16)


def reference_from_linear(weight: torch.Tensor, w_bit: int, group_size: int,
                          scales: torch.Tensor, zeros: torch.Tensor,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AutoAWQ WQLinear_GEMM.from_linear, its packing part line by line.
    weight (N, K); scales, zeros (K/G, N) as AutoAWQ's quantizer passes them."""
    in_features = weight.shape[1]
    scale_zeros = zeros * scales
    scales_half = scales.clone().half()
    pack_num = 32 // w_bit
    intweight = []
    for idx in range(in_features):
        intweight.append(
            torch.round(
                (weight[:, idx] + scale_zeros[idx // group_size])
                / scales_half[idx // group_size]
            ).to(torch.int)[:, None]
        )
    intweight = torch.cat(intweight, dim=1)
    intweight = intweight.t().contiguous()
    intweight = intweight.to(dtype=torch.int32)
    qweight = torch.zeros((intweight.shape[0], intweight.shape[1] // 32 * w_bit),
                          dtype=torch.int32)
    for col in range(intweight.shape[1] // pack_num):
        order_map = [0, 2, 4, 6, 1, 3, 5, 7]
        for i in range(pack_num):
            qweight_col = intweight[:, col * pack_num + order_map[i]]
            qweight[:, col] |= qweight_col << (i * w_bit)
    zeros = zeros.to(dtype=torch.int32)
    qzeros = torch.zeros((zeros.shape[0], zeros.shape[1] // 32 * w_bit), dtype=torch.int32)
    for col in range(zeros.shape[1] // pack_num):
        order_map = [0, 2, 4, 6, 1, 3, 5, 7]
        for i in range(pack_num):
            qzero_col = zeros[:, col * pack_num + order_map[i]]
            qzeros[:, col] |= qzero_col << (i * w_bit)
    return qweight, qzeros, scales_half


def reference_dequantize_gemm(qweight, qzeros, scales, bits, group_size) -> torch.Tensor:
    """AutoAWQ packing_utils.dequantize_gemm (unpack_awq + reverse_awq_order), (K, N)."""
    shifts = torch.arange(0, 32, bits)
    iweights = torch.bitwise_right_shift(qweight[:, :, None],
                                         shifts[None, None, :]).to(torch.int8)
    iweights = iweights.view(iweights.shape[0], -1)
    izeros = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8)
    izeros = izeros.view(izeros.shape[0], -1)
    reverse_order_tensor = torch.arange(izeros.shape[-1], dtype=torch.int32)
    reverse_order_tensor = reverse_order_tensor.view(-1, 32 // bits)
    reverse_order_tensor = reverse_order_tensor[:, AWQ_REVERSE_ORDER]
    reverse_order_tensor = reverse_order_tensor.view(-1)
    izeros = izeros[:, reverse_order_tensor]
    iweights = iweights[:, reverse_order_tensor]
    iweight = torch.bitwise_and(iweights, (2**bits) - 1)
    izeros = torch.bitwise_and(izeros, (2**bits) - 1)
    scales = scales.repeat_interleave(group_size, dim=0)
    izeros = izeros.repeat_interleave(group_size, dim=0)
    return (iweight - izeros) * scales


def _export(src: Path, tmp: Path, job) -> tuple[Path, ExportResult, QuantStore]:
    store = quantize_to_store(src, tmp / "store", job)
    exported = export_checkpoint("awq", src, store, job, tmp / "out")
    return tmp / "out", exported, store


@pytest.mark.parametrize(("group_size", "sym"), [(32, False), (64, True), (-1, False)])
def test_packing_matches_autoawq(src: Path, tmp_path: Path, group_size: int, sym: bool) -> None:
    out, _, store = _export(src, tmp_path, job_for(bits=4, group_size=group_size, sym=sym))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for i in store.completed():
        for rel, qw in store.load_block(i)[0].items():
            name = f"model.layers.{i}.{rel}"
            n, k = qw.q.shape
            gs = group_size if group_size > 0 else k
            scales = qw.scale.T.half().float()  # (K/G, N), as AutoAWQ rounds them
            zeros = qw.zero.T.contiguous().float()
            g = torch.arange(k) // gs
            weight = (scales[g] * (qw.q.T.float() - zeros[g])).T
            ref_qweight, ref_qzeros, ref_scales = reference_from_linear(weight, 4, gs, scales,
                                                                        zeros)
            assert t[f"{name}.qweight"].shape == (k, n // 8)
            assert torch.equal(t[f"{name}.qweight"], ref_qweight), name
            assert torch.equal(t[f"{name}.qzeros"], ref_qzeros), name
            assert torch.equal(t[f"{name}.scales"], ref_scales), name
            if sym:
                assert bool((t[f"{name}.qzeros"] == 0x88888888 - 2**32).all())
            deq = reference_dequantize_gemm(t[f"{name}.qweight"], t[f"{name}.qzeros"],
                                            t[f"{name}.scales"].float(), 4, gs)
            assert torch.equal(deq.T, weight), name


def test_interleave_puts_column_2_in_nibble_1(src: Path, tmp_path: Path) -> None:
    """One word spelled out: columns 0..7 with codes 0..7 pack to nibbles 0,2,4,6,1,3,5,7."""
    from qtapp.engine.export.awq import pack_awq

    word = pack_awq(torch.arange(8).reshape(1, 8))[0, 0].item() & 0xFFFFFFFF
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == AWQ_ORDER
    assert word == 0x75316420


def test_config_and_logits(src: Path, tmp_path: Path) -> None:
    job = job_for(method="awq", bits=4, group_size=32, sym=False,
                  rules=(ModuleRule("*.mlp.down_proj", skip=True),))
    out, exported, store = _export(src, tmp_path, job)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q == {"quant_method": "awq", "zero_point": True, "group_size": 32, "bits": 4,
                 "version": "gemm", "modules_to_not_convert": [
                     "lm_head", "model.layers.0.mlp.down_proj",
                     "model.layers.1.mlp.down_proj"]}
    assert exported.format == "awq" and exported.notes == []
    ours, _ = load_dequantized(out)
    ref = reference_model(src, store, scale_dtype=torch.float16)
    assert (logits(ours) - logits(ref)).abs().max().item() < 1e-5


def test_symmetric_is_stored_with_explicit_zero_8(src: Path, tmp_path: Path) -> None:
    _, exported, _ = _export(src, tmp_path, job_for(method="awq", bits=4, group_size=32))
    assert any("zero point 8" in n for n in exported.notes)


@pytest.mark.parametrize(("job", "message"), [
    (job_for(method="awq", bits=8, group_size=32), "holds 4-bit weights only"),
    (job_for(method="awq", bits=4, group_size=32,
             rules=(ModuleRule("*.self_attn.*", QuantScheme(4, 64, True)),)),
     "one group size per model"),
])
def test_refuses_what_awq_cannot_hold(src: Path, tmp_path: Path, job, message: str) -> None:
    with pytest.raises(UserError, match=message):
        _export(src, tmp_path, job)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_refuses_act_order(src: Path, tmp_path: Path) -> None:
    job = job_for(bits=4, group_size=32)
    store = quantize_to_store(src, tmp_path / "store", job, act_order=True)
    with pytest.raises(UserError, match="act-order"):
        export_checkpoint("awq", src, store, job, tmp_path / "out")


def test_real_consumer_transformers_gptqmodel(src: Path, tmp_path: Path) -> None:
    """transformers 5 loads AWQ GEMM through gptqmodel on CPU: the kernel's effective weights
    (its output on the identity matrix) equal ours rounded to fp16."""
    pytest.importorskip("gptqmodel")
    from transformers import AutoModelForCausalLM

    for case, sym in (("asym", False), ("sym", True)):
        out, _, _ = _export(src, tmp_path / case, job_for(bits=4, group_size=32, sym=sym))
        ours, _ = load_dequantized(out)
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu")
        for i in range(2):
            for rel in LINEARS:
                lin = hf.get_submodule(f"model.layers.{i}.{rel}")
                with torch.no_grad():
                    theirs = lin(torch.eye(lin.in_features)).T
                mine = ours.get_submodule(f"model.layers.{i}.{rel}").weight.half().float()
                assert torch.equal(theirs, mine), (case, i, rel)
        diff = (logits(hf) - logits(ours)).abs().max().item()
        print(f"AWQ {case}: transformers+gptqmodel vs QuantDesk loader, max |Δlogit| = {diff:.2e}")
        assert diff < 5e-3
