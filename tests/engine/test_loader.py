"""The dequantizing loader: its own bit-stream unpacking, plain folders, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import job_for, logits, quantize_to_store
from safetensors import safe_open
from safetensors.torch import save_file

from qtapp.engine.errors import UserError
from qtapp.engine.export import export_checkpoint
from qtapp.engine.model.loader import load_dequantized, unpack_stream
from qtapp.engine.quant.primitives import pack_int32


@pytest.fixture(scope="module")
def src(make_tiny_model, tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "src", dtype=torch.bfloat16)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bit_stream_reads_what_the_packer_writes(bits: int) -> None:
    """Two independent implementations (shift loop vs bit stream) agree, padding included."""
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (5, 100), generator=g, dtype=torch.int64)
    words = pack_int32(codes, bits, dim=1)
    assert torch.equal(unpack_stream(words, bits, 100), codes)


def test_bit_stream_3bit_straddles_words() -> None:
    """GPTQ 3-bit: value 10 has its low 2 bits at the top of word 0 and its high bit in
    bit 0 of word 1 (AutoGPTQ `qweight[row] |= intweight[i] << 30; … (intweight[i] >> 2) & 1`)."""
    w0, w1, w2 = 0b11 << 30, 0b1, 0
    words = torch.tensor([[w0 - 2**32, w1, w2]], dtype=torch.int32)
    vals = unpack_stream(words, 3, 32)[0]
    assert vals[10].item() == 0b111 and vals.sum().item() == 7


def test_plain_folder(src: Path) -> None:
    from transformers import AutoModelForCausalLM

    ours, tok = load_dequantized(src)
    assert tok is not None
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    assert torch.equal(logits(ours), logits(ref))


def _gptq_out(src: Path, tmp: Path) -> Path:
    job = job_for(bits=4, group_size=32)
    store = quantize_to_store(src, tmp / "store", job)
    export_checkpoint("gptq", src, store, job, tmp / "out")
    return tmp / "out"


def test_folder_without_tokenizer(src: Path, tmp_path: Path) -> None:
    out = _gptq_out(src, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).unlink()
    model, tok = load_dequantized(out)
    assert tok is None and model.config.model_type == "llama"


def _edit_config(out: Path, **changes) -> None:
    c = json.loads((out / "config.json").read_text())
    c["quantization_config"].update(changes)
    (out / "config.json").write_text(json.dumps(c))


@pytest.mark.parametrize(("changes", "message"), [
    ({"quant_method": "bitnet"}, "quantization method 'bitnet'"),
    ({"checkpoint_format": "marlin", "format": "marlin"}, "checkpoint_format 'marlin'"),
    ({"bits": 8}, r"qweight \(\d+, \d+\) does not hold \d+ 8-bit columns"),
])
def test_config_that_does_not_fit_is_a_clear_error(src: Path, tmp_path: Path, changes,
                                                   message: str) -> None:
    out = _gptq_out(src, tmp_path)
    _edit_config(out, **changes)
    with pytest.raises(UserError, match=message):
        load_dequantized(out)


def test_missing_weights_are_named(src: Path, tmp_path: Path) -> None:
    out = _gptq_out(src, tmp_path)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys() if k != "model.norm.weight"}  # noqa: SIM118
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"lacks 1 weights, e.g. model.norm.weight"):
        load_dequantized(out)


def test_awq_gemv_is_refused(src: Path, tmp_path: Path) -> None:
    job = job_for(bits=4, group_size=32, sym=False)
    store = quantize_to_store(src, tmp_path / "store", job)
    export_checkpoint("awq", src, store, job, tmp_path / "out")
    _edit_config(tmp_path / "out", version="gemv")
    with pytest.raises(UserError, match="4-bit GEMM"):
        load_dequantized(tmp_path / "out")
