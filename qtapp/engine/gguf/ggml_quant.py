"""Quantize float32 rows to GGML block types with the ggml library llama-cpp-python ships.

The bytes come from ggml's own `ggml_quantize_chunk` (ggml-org/ggml src/ggml.c), the
function llama-quantize calls (llama.cpp src/llama-quant.cpp, llama_tensor_quantize_impl),
so llama.cpp reads them exactly as it reads its own files. It is loaded with ctypes from
`llama_cpp/lib/libggml-base` without importing llama_cpp. Rows are split over threads;
ctypes releases the GIL during each call. Each row is quantized on its own, so the split
does not change the result.

Without llama-cpp-python, the `gguf` package's numpy reference quantizers cover Q4_0, Q4_1,
Q5_0, Q5_1 and Q8_0 without an importance matrix (the same bytes as ggml's reference path).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import gguf
import numpy as np

from qtapp.engine.errors import UserError

Q = gguf.GGMLQuantizationType

_NUMPY_REFERENCE = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)
_F32P = ctypes.POINTER(ctypes.c_float)
_MIN_ROWS_PER_TASK = 16


def _library_name() -> str:
    if sys.platform == "win32":
        return "ggml-base.dll"
    return "libggml-base.dylib" if sys.platform == "darwin" else "libggml-base.so"


def library_path() -> Path | None:
    """Where llama-cpp-python keeps libggml-base, or None when it is not installed."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "lib" / _library_name()
        if path.is_file():
            return path
    return None


@cache
def _lib() -> ctypes.CDLL | None:
    path = library_path()
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, _F32P, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, _F32P]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_validate_row_data.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    return lib


def has_ggml() -> bool:
    """True when llama-cpp-python's ggml library can be loaded."""
    return _lib() is not None


def row_size(qtype: Q, n_per_row: int) -> int:
    """Bytes of one row of `n_per_row` values (ggml_row_size)."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if n_per_row % block:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {block} values, "
                         f"got {n_per_row}")
    return n_per_row // block * type_size


def check_supported(qtype: Q, with_imatrix: bool = False) -> None:
    """Raise a UserError when this installation cannot write `qtype`."""
    if qtype in (Q.F32, Q.F16, Q.BF16) or _lib() is not None:
        return
    if with_imatrix and qtype in _NUMPY_REFERENCE and qtype != Q.Q8_0:
        raise UserError(f"GGUF {qtype.name} with an importance matrix needs llama-cpp-python, "
                        "whose ggml library does the quantization. Install it (pip install "
                        "llama-cpp-python) or quantize without the importance matrix.")
    if qtype not in _NUMPY_REFERENCE:
        raise UserError(f"GGUF {qtype.name} needs llama-cpp-python, whose ggml library does "
                        "the quantization. Install it (pip install llama-cpp-python) or "
                        "choose Q8_0, Q4_0 or F16.")


def quantize(w: np.ndarray, qtype: Q, imatrix: np.ndarray | None = None,
             threads: int | None = None) -> np.ndarray:
    """Encode `w` (..., n_per_row) as `qtype`; returns the bytes GGUF stores.

    F32/F16 give float arrays of the same shape, the other types uint8 of shape
    (..., row_size). `imatrix` holds one importance weight per column (mean x² of the
    layer's inputs); ggml uses it for the K types and Q4_0/Q4_1/Q5_0/Q5_1. For merged MoE
    experts (E, rows, n_per_row) it may hold E · n_per_row values, one row per expert, each
    expert's matrix quantized with its own row (llama-quant.cpp).
    """
    if (imatrix is not None and w.ndim == 3 and w.shape[0] > 1
            and np.size(imatrix) == w.shape[0] * w.shape[-1]):
        rows = np.asarray(imatrix, dtype=np.float32).reshape(w.shape[0], w.shape[-1])
        return np.stack([quantize(w[e], qtype, rows[e], threads) for e in range(w.shape[0])])
    if qtype == Q.F32:
        return np.ascontiguousarray(w, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(w, dtype=np.float32).astype(np.float16)
    if qtype == Q.BF16:
        return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)
    lib = _lib()
    if lib is None:
        check_supported(qtype, imatrix is not None and qtype != Q.Q8_0)
        return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)
    return _quantize_ggml(lib, w, qtype, imatrix, threads or os.cpu_count() or 1)


def _quantize_ggml(lib: ctypes.CDLL, w: np.ndarray, qtype: Q, imatrix: np.ndarray | None,
                   threads: int) -> np.ndarray:
    n_per_row = w.shape[-1]
    src = np.ascontiguousarray(w.reshape(-1, n_per_row), dtype=np.float32)
    nrows = src.shape[0]
    rsize = row_size(qtype, n_per_row)
    if lib.ggml_row_size(int(qtype), n_per_row) != rsize:
        raise RuntimeError(f"ggml and gguf-py disagree on the row size of {qtype.name}")
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        if qw.shape != (n_per_row,):
            raise ValueError(f"imatrix has {qw.size} values for rows of {n_per_row}")
    elif lib.ggml_quantize_requires_imatrix(int(qtype)):
        raise UserError(f"GGUF {qtype.name} needs an importance matrix.")
    dst = np.empty((nrows, rsize), dtype=np.uint8)
    qw_ptr = qw.ctypes.data_as(_F32P) if qw is not None else None

    def run(first: int, count: int) -> int:
        return lib.ggml_quantize_chunk(
            int(qtype), src[first:].ctypes.data_as(_F32P), dst[first:].ctypes.data, 0,
            count, n_per_row, qw_ptr)

    step = max(_MIN_ROWS_PER_TASK, -(-nrows // (4 * threads)))
    spans = [(r, min(step, nrows - r)) for r in range(0, nrows, step)]
    if threads > 1 and len(spans) > 1:
        with ThreadPoolExecutor(threads) as pool:
            written = sum(pool.map(lambda s: run(*s), spans))
    else:
        written = sum(run(*s) for s in spans)
    if written != dst.nbytes or not lib.ggml_validate_row_data(int(qtype), dst.ctypes.data,
                                                               dst.nbytes):
        raise RuntimeError(f"ggml produced invalid {qtype.name} data")
    return dst.reshape(*w.shape[:-1], rsize)
