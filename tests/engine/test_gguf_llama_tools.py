"""Against llama.cpp's own tools (built from the llama-cpp-python sdist into
.cache/llama-build): llama-quantize writes the same bytes and keys as quantize_to_gguf,
reads our imatrix files, and llama-imatrix's statistics equal our collector's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf_helpers import build_model256, llama_tool, tensor_bytes

from qtapp.engine.gguf.convert import convert_to_gguf
from qtapp.engine.gguf.hf_model import HfModel
from qtapp.engine.gguf.imatrix import ImatrixCollector, compute_imatrix, read_imatrix, write_imatrix
from qtapp.engine.gguf.quantize import quantize_to_gguf

QUANTIZE = llama_tool("llama-quantize")
IMATRIX = llama_tool("llama-imatrix")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    QUANTIZE is None or IMATRIX is None, reason="llama.cpp tools are not built (.cache/llama-build)")]


def run(*args: object, cwd: Path) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def kv(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.fixture(scope="module")
def model256(tmp_path_factory, make_tiny_model, demo_dir) -> Path:
    return build_model256(tmp_path_factory.mktemp("gguf-tools") / "m", make_tiny_model,
                          demo_dir, n_layer=8)


@pytest.fixture(scope="module")
def f32_file(model256, tmp_path_factory) -> Path:
    return convert_to_gguf(model256, tmp_path_factory.mktemp("f32") / "m-f32.gguf", "F32").path


@pytest.fixture(scope="module")
def imatrix_file(model256, tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    c = ImatrixCollector()
    for t in HfModel(model256).tensors():
        if t.gguf_name.startswith("blk.") and len(t.shape) == 2:
            c.add(t.gguf_name, rng.lognormal(0, 1, (32, t.shape[1])).astype(np.float32))
    path = tmp_path_factory.mktemp("imatrix") / "imatrix.gguf"
    write_imatrix(c.to_imatrix("calibration.txt", chunk_size=16), path)
    return path


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_0", "Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M",
                                   "Q5_K_M", "Q6_K"])
def test_same_bytes_and_keys_as_llama_quantize(model256, f32_file, tmp_path, ftype):
    run(QUANTIZE, f32_file, tmp_path / "ref.gguf", ftype, 1, cwd=tmp_path)
    ours = quantize_to_gguf(model256, tmp_path / "ours.gguf", ftype).path
    assert tensor_bytes(ours) == tensor_bytes(tmp_path / "ref.gguf")
    assert kv(ours) == kv(tmp_path / "ref.gguf")


@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M", "Q5_K_S"])
def test_same_bytes_with_our_imatrix_file(model256, f32_file, imatrix_file, tmp_path, ftype):
    """llama-quantize reads the imatrix file we write and quantizes exactly as we do."""
    run(QUANTIZE, "--imatrix", imatrix_file.name, f32_file, tmp_path / "ref.gguf", ftype, 1,
        cwd=imatrix_file.parent)
    ours = quantize_to_gguf(model256, tmp_path / "ours.gguf", ftype,
                            read_imatrix(imatrix_file)).path
    assert tensor_bytes(ours) == tensor_bytes(tmp_path / "ref.gguf")
    assert kv(ours) == kv(tmp_path / "ref.gguf")


def with_bos_tokenizer(model_dir: Path, gguf_file: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the model whose tokenizer puts BOS (<|im_start|>, id 1) before every text:
    the HF folder (a TemplateProcessing post-processor) and the GGUF file
    (tokenizer.ggml.add_bos_token = true)."""
    folder = tmp_path / "bos-model"
    folder.mkdir()
    for f in model_dir.iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "tokenizer.json").unlink()
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}},
                 bos, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                            "tokens": ["<|im_start|>"]}}}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    path = tmp_path / "bos.gguf"
    shutil.copyfile(gguf_file, path)
    reader = gguf.GGUFReader(path, "r+")
    field = reader.fields["tokenizer.ggml.add_bos_token"]
    field.parts[field.data[0]][0] = True
    reader.data.flush()
    del reader
    assert kv(path)["tokenizer.ggml.add_bos_token"] is True
    return folder, path


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_llama_imatrix_equals_our_collector(model256, f32_file, tmp_path, bos):
    """Same text through llama-imatrix and through compute_imatrix: same windows (with the
    BOS llama.cpp puts first in each chunk when the vocabulary adds one), same E[x²]."""
    from llama_cpp import Llama

    from qtapp.engine.quant.calibration import builtin_calibration_text

    model_dir, gguf_file = (with_bos_tokenizer(model256, f32_file, tmp_path) if bos
                            else (model256, f32_file))
    text = builtin_calibration_text()[:6000]
    (tmp_path / "calib.txt").write_text(text, encoding="utf-8")
    llm = Llama(str(f32_file), vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    llm.close()
    n = len(ids) // 64
    run(IMATRIX, "-m", gguf_file, "-f", "calib.txt", "-c", 64, "-b", 64, "--chunks", n,
        "-o", "ref.gguf", "-t", 1, cwd=tmp_path)
    ref = read_imatrix(tmp_path / "ref.gguf")
    ours = compute_imatrix(model_dir, torch.tensor(ids[: n * 64]).reshape(n, 64))
    assert ref.chunk_size == 64 and ref.chunk_count == n
    assert set(ref.sums) == set(ours.sums)
    for name, values in ours.importance().items():
        assert ref.counts[name].tolist() == [n * 64]
        np.testing.assert_allclose(ref.importance()[name], values, rtol=2e-3, atol=1e-6)
