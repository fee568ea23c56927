"""HF -> quantized GGUF in one pass: types per tensor, llama.cpp loads and generates, imatrix."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_helpers import build_model256, fields

from qtapp.engine.errors import UserError
from qtapp.engine.gguf import ggml_quant
from qtapp.engine.gguf.convert import plan_tensors
from qtapp.engine.gguf.hf_model import HfModel
from qtapp.engine.gguf.imatrix import ImatrixCollector, write_imatrix
from qtapp.engine.gguf.llama_runtime import (
    chat_stream,
    llama_cpp_available,
    load_llama,
    write_modelfile,
)
from qtapp.engine.gguf.quantize import quantize_to_gguf
from qtapp.engine.gguf.types import file_type

needs_llama = pytest.mark.skipif(not (llama_cpp_available() and ggml_quant.has_ggml()),
                                 reason="llama-cpp-python is not installed")
TYPES = ("F16", "BF16", "Q8_0", "Q4_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")


@pytest.fixture(scope="module")
def model256(tmp_path_factory, make_tiny_model, demo_dir) -> Path:
    return build_model256(tmp_path_factory.mktemp("gguf-q") / "m", make_tiny_model, demo_dir)


@pytest.fixture(scope="module")
def synthetic_imatrix(model256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    c = ImatrixCollector()
    for t in HfModel(model256).tensors():
        if t.gguf_name.startswith("blk.") and len(t.shape) == 2:
            c.add(t.gguf_name, rng.lognormal(0, 1, (64, t.shape[1])).astype(np.float32))
    return c.result()


@needs_llama
@pytest.mark.llama_cpp
@pytest.mark.parametrize("ftype", TYPES)
def test_every_type_loads_and_generates(model256, tmp_path, ftype):
    report = quantize_to_gguf(model256, tmp_path / "m.gguf", ftype)
    planned = {p.source.gguf_name: p.type.name
               for p in plan_tensors(HfModel(model256), file_type(ftype))}
    reader = gguf.GGUFReader(report.path)
    assert {t.name: t.tensor_type.name for t in reader.tensors} == planned
    assert {t.name: t.type for t in report.tensors} == planned
    nbytes = {r.name: r.nbytes for r in report.tensors}
    assert {t.name: int(t.n_bytes) for t in reader.tensors} == nbytes
    assert reader.fields["general.file_type"].contents() == file_type(ftype)
    assert report.size_bytes == report.path.stat().st_size
    llm = load_llama(report.path, n_ctx=128, n_threads=1)
    out = llm.create_completion("Hello", max_tokens=4, temperature=0)
    llm.close()
    assert out["usage"]["completion_tokens"] >= 1


def test_q4_k_m_types_on_aligned_rows(model256, tmp_path):
    """use_more_bits(i, 4) (i >= 3, or i % 3 == 2) holds for layers 2 and 3: attn_v and
    ffn_down get Q6_K there."""
    report = quantize_to_gguf(model256, tmp_path / "m.gguf", "Q4_K_M")
    types = {t.name: t.type for t in report.tensors}
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(4)] == ["Q4_K", "Q4_K", "Q6_K",
                                                                      "Q6_K"]
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(4)] == ["Q4_K", "Q4_K", "Q6_K",
                                                                     "Q6_K"]
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert types["blk.2.attn_norm.weight"] == "F32"
    assert report.imatrix_entries == 0
    assert "quantize.imatrix.file" not in fields(report.path)


@pytest.mark.slow
def test_imatrix_changes_the_bytes_and_is_recorded(model256, synthetic_imatrix, tmp_path):
    plain = quantize_to_gguf(model256, tmp_path / "plain.gguf", "Q4_K_M")
    with_im = quantize_to_gguf(model256, tmp_path / "im.gguf", "Q4_K_M", synthetic_imatrix)
    assert with_im.imatrix_entries == 28  # 7 linears x 4 blocks
    kv = fields(with_im.path)
    assert kv["quantize.imatrix.entries_count"] == 28
    assert kv["quantize.imatrix.file"] == "quantdesk"
    a = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(plain.path).tensors}
    b = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(with_im.path).tensors}
    assert not np.array_equal(a["blk.1.ffn_up.weight"], b["blk.1.ffn_up.weight"])
    assert np.array_equal(a["output.weight"], b["output.weight"])  # no entry: no change


def test_imatrix_file_keys(model256, synthetic_imatrix, tmp_path):
    c = ImatrixCollector()
    for name, v in synthetic_imatrix.items():
        c.add(name, np.sqrt(v)[None, :])
    write_imatrix(c.to_imatrix("wiki.txt", chunk_size=1), tmp_path / "imatrix.gguf")
    from qtapp.engine.gguf.imatrix import read_imatrix

    report = quantize_to_gguf(model256, tmp_path / "m.gguf", "Q5_K_S",
                              read_imatrix(tmp_path / "imatrix.gguf"))
    kv = fields(report.path)
    assert kv["quantize.imatrix.file"] == "imatrix.gguf"
    assert kv["quantize.imatrix.dataset"] == "wiki.txt"
    assert kv["quantize.imatrix.chunks_count"] == 1


def test_imatrix_for_another_model_is_refused(model256, tmp_path):
    bad = {"blk.0.ffn_down.weight": np.ones(100, dtype=np.float32)}
    with pytest.raises(UserError, match="another model"):
        quantize_to_gguf(model256, tmp_path / "m.gguf", "Q4_K_M", bad)
    assert list(tmp_path.iterdir()) == []


def test_overrides_reach_the_file(model256, tmp_path):
    report = quantize_to_gguf(model256, tmp_path / "m.gguf", "Q4_K_M",
                              overrides={"*.self_attn.*": "Q8_0", "*.mlp.*": "Q4_K"})
    types = {t.name: (t.type, t.reason) for t in report.tensors}
    assert types["blk.0.attn_v.weight"] == ("Q8_0", "override")
    assert types["blk.0.ffn_down.weight"] == ("Q4_K", "override")
    reader_types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(report.path).tensors}
    assert reader_types["blk.3.attn_q.weight"] == "Q8_0"


def test_nan_weights_are_refused(model256, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan"
    shutil.copytree(model256, folder)
    state = load_file(folder / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="NaN"):
        quantize_to_gguf(folder, tmp_path / "out" / "m.gguf", "Q8_0")
    assert list((tmp_path / "out").iterdir()) == []


@needs_llama
@pytest.mark.llama_cpp
def test_truncated_gguf_is_refused_by_the_runtime(model256, tmp_path):
    path = quantize_to_gguf(model256, tmp_path / "m.gguf", "Q8_0").path
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged|truncated"):
        load_llama(tmp_path / "cut.gguf")


def test_modelfile_for_chatml(tmp_path):
    path = write_modelfile(tmp_path, "model-Q4_K_M.gguf", "{{'<|im_start|>' + m}}")
    text = path.read_text()
    assert text.startswith("FROM ./model-Q4_K_M.gguf\n")
    assert "<|im_start|>{{ .Role }}" in text and 'PARAMETER stop "<|im_end|>"' in text
    other = write_modelfile(tmp_path, "m.gguf", "[INST] {{ x }}", stop=["</s>"])
    assert "TEMPLATE" not in other.read_text() and 'stop "</s>"' in other.read_text()


@pytest.mark.slow
@needs_llama
@pytest.mark.llama_cpp
def test_demo_perplexity_and_chat(demo_dir, tmp_path):
    """F16 through llama.cpp scores the evaluation text as transformers does (the quality
    gate's protocol, both on the source's tokens); Q4_K_M stays close (the demo's weights
    are Q4_1 already); the chat template works."""
    from qtapp.engine.quality.gate import quality_report
    from qtapp.engine.quant.calibration import builtin_eval_text

    text = builtin_eval_text()[:3000]  # about 1 200 tokens: 2 windows of 512
    f16 = quantize_to_gguf(demo_dir, tmp_path / "f16.gguf", "F16").path
    q4 = quantize_to_gguf(demo_dir, tmp_path / "q4km.gguf", "Q4_K_M").path
    r16 = quality_report(f16, demo_dir, ctx=512, text=text, generation=False)
    r4 = quality_report(q4, demo_dir, ctx=512, text=text, generation=False)
    assert r16.positions == r4.positions == 2 * 255
    assert r16.ppl == pytest.approx(r16.ppl_source, rel=0.01)
    assert r16.ppl < r4.ppl < 1.1 * r16.ppl
    assert math.isfinite(r4.ppl)

    llm = load_llama(f16, n_ctx=512, n_threads=1)
    reply = "".join(chat_stream(llm, [{"role": "user", "content": "What is the capital of "
                                       "France?"}], max_tokens=12, temperature=0))
    llm.close()
    assert "Paris" in reply
