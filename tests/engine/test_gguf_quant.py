"""ggml quantization through ctypes: bytes equal to the reference, error bounds, imatrix."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from qtapp.engine.errors import UserError
from qtapp.engine.gguf import ggml_quant

Q = gguf.GGMLQuantizationType
needs_ggml = pytest.mark.skipif(not ggml_quant.has_ggml(),
                                reason="llama-cpp-python (libggml-base) is not installed")


def gaussian(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)


def rel_rms_error(w: np.ndarray, qtype: Q, imatrix: np.ndarray | None = None) -> float:
    q = ggml_quant.quantize(w, qtype, imatrix)
    back = gguf.quants.dequantize(q, qtype).reshape(w.shape)
    return float(np.sqrt(((back - w) ** 2).mean() / (w ** 2).mean()))


def weighted_error(w: np.ndarray, qtype: Q, importance: np.ndarray,
                   imatrix: np.ndarray | None) -> float:
    """Σ_j imp_j Σ_i (w_ij − Q(w)_ij)²: the expected output error for inputs with E[x_j²]."""
    back = gguf.quants.dequantize(ggml_quant.quantize(w, qtype, imatrix), qtype)
    return float((((back.reshape(w.shape) - w) ** 2) * importance).sum())


@pytest.mark.llama_cpp
@needs_ggml
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_bytes_equal_gguf_py_reference(qtype):
    w = gaussian(96, 256) * np.linspace(0.01, 3, 256, dtype=np.float32)
    assert np.array_equal(ggml_quant.quantize(w, qtype), gguf.quants.quantize(w, qtype))


@pytest.mark.llama_cpp
@needs_ggml
@pytest.mark.parametrize("qtype, expected", [
    (Q.Q8_0, 0.0054), (Q.Q6_K, 0.018), (Q.Q5_K, 0.036), (Q.Q4_K, 0.072), (Q.Q3_K, 0.15),
    (Q.Q2_K, 0.30), (Q.Q5_0, 0.043), (Q.Q4_0, 0.086)])
def test_relative_rms_error_on_gaussian_weights(qtype, expected):
    """Each type's error on N(0, 1) weights (about halving per extra bit)."""
    w = gaussian(64, 512, seed=1)
    q = ggml_quant.quantize(w, qtype)
    assert q.shape == (64, ggml_quant.row_size(qtype, 512)) and q.dtype == np.uint8
    assert rel_rms_error(w, qtype) == pytest.approx(expected, rel=0.1)


@pytest.mark.llama_cpp
@needs_ggml
def test_thread_split_does_not_change_bytes():
    w = gaussian(333, 512, seed=2)
    imatrix = np.random.default_rng(3).lognormal(size=512).astype(np.float32)
    one = ggml_quant.quantize(w, Q.Q4_K, imatrix, threads=1)
    many = ggml_quant.quantize(w, Q.Q4_K, imatrix, threads=3)
    assert np.array_equal(one, many)


@pytest.mark.llama_cpp
@needs_ggml
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q4_0])
def test_imatrix_lowers_weighted_error_on_degridded_demo_weight(demo_dir, qtype):
    """The demo's weights sit on a Q4_1 grid; a seeded column permutation scatters it.
    With importances E[x_j²] that vary as real activations do, quantizing with the imatrix
    lowers Σ_j E[x_j²]·‖ΔW_:j‖² against quantizing without it."""
    from qtapp.engine.model.safetensors_files import SafetensorsReader

    w = SafetensorsReader(demo_dir).get("model.layers.3.mlp.down_proj.weight",
                                        torch.float32).numpy()
    w = w[:, np.random.default_rng(0).permutation(w.shape[1])]  # (576, 1536)
    importance = np.random.default_rng(1).lognormal(0, 1.5, w.shape[1]).astype(np.float32)
    with_imatrix = weighted_error(w, qtype, importance, importance)
    without = weighted_error(w, qtype, importance, None)
    assert with_imatrix < 0.9 * without


@pytest.mark.llama_cpp
@needs_ggml
def test_imatrix_of_wrong_length_is_refused():
    with pytest.raises(ValueError, match="imatrix"):
        ggml_quant.quantize(gaussian(4, 256), Q.Q4_K, np.ones(128, dtype=np.float32))


def test_float_types_and_row_sizes():
    w = gaussian(3, 64)
    assert ggml_quant.quantize(w, Q.F16).dtype == np.float16
    assert ggml_quant.quantize(w, Q.F32).dtype == np.float32
    assert ggml_quant.quantize(w, Q.BF16).nbytes == w.size * 2
    assert ggml_quant.row_size(Q.Q4_K, 512) == 288
    assert ggml_quant.row_size(Q.Q8_0, 64) == 68
    with pytest.raises(ValueError, match="multiple of 256"):
        ggml_quant.row_size(Q.Q6_K, 576)


def test_without_ggml_reference_types_still_work(monkeypatch):
    monkeypatch.setattr(ggml_quant, "_lib", lambda: None)
    w = gaussian(8, 64)
    assert np.array_equal(ggml_quant.quantize(w, Q.Q8_0), gguf.quants.quantize(w, Q.Q8_0))
    with pytest.raises(UserError, match="llama-cpp-python"):
        ggml_quant.quantize(w, Q.Q4_K)
    with pytest.raises(UserError, match="importance matrix"):
        ggml_quant.quantize(w, Q.Q4_0, np.ones(64, dtype=np.float32))
