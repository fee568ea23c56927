"""Hugging Face folder → quantized GGUF in one streaming pass.

Each tensor is read as float32, permuted for llama.cpp (hf_model.py), given the type
llama-quantize would give it (types.py), quantized by ggml (ggml_quant.py) with the
importance matrix entry of that tensor, and appended to the file (convert.py). This skips
the F16 intermediate file of llama.cpp's convert → llama-quantize route, so F32 and BF16
sources are quantized from their exact values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np

from qtapp.engine.errors import UserError
from qtapp.engine.events import ShouldCancel
from qtapp.engine.gguf import ggml_quant
from qtapp.engine.gguf.convert import (
    GgufReport,
    PlannedTensor,
    StepCallback,
    plan_tensors,
    write_gguf,
)
from qtapp.engine.gguf.hf_model import HfModel
from qtapp.engine.gguf.imatrix import Imatrix
from qtapp.engine.gguf.types import FLOAT_TYPES, file_type

# KV keys llama-quantize records (tools/quantize/quantize.cpp)
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"


def _importance_for(plan: list[PlannedTensor], importance: Mapping[str, np.ndarray],
                    source: str) -> dict[str, np.ndarray]:
    """The imatrix row of each quantized tensor, checked as llama-quant.cpp checks it."""
    used = {}
    for p in plan:
        name = p.source.gguf_name
        if p.type in FLOAT_TYPES or name not in importance:
            continue
        values = np.asarray(importance[name], dtype=np.float32).reshape(-1)
        ne0 = p.source.shape[-1]
        n_mat = p.source.shape[0] if len(p.source.shape) == 3 else 1  # merged MoE experts
        if values.size != ne0 * n_mat:
            if name == "token_embd.weight":
                continue  # llama-quant.cpp ignores a mismatched token_embd entry
            raise UserError(f"The importance matrix {source} has {values.size} values for "
                            f"{name}, whose rows have {ne0}; it was computed for another "
                            "model. Compute it for this model or quantize without it.")
        if not np.isfinite(values).all():
            raise UserError(f"The importance matrix {source} has non-finite values for {name}.")
        used[name] = values
    return used


def quantize_to_gguf(model_dir: Path, out_file: Path, ftype: str = "Q4_K_M",
                     imatrix: Imatrix | Mapping[str, np.ndarray] | None = None,
                     overrides: Mapping[str, str] | None = None,
                     progress: StepCallback | None = None,
                     should_cancel: ShouldCancel | None = None) -> GgufReport:
    """Write `model_dir` as a GGUF file of llama.cpp file type `ftype` ("Q4_K_M", "F16"...).

    imatrix: an Imatrix (from a file or the calibration pass) or a mapping GGUF tensor name
    -> mean x² per input column. overrides: fnmatch glob on HF module names -> tensor
    type, e.g. {"*.self_attn.*": "Q8_0", "*.mlp.*": "Q4_K"}. progress(tensor, done, total)
    is called after each tensor; should_cancel() is polled before each. The file appears
    only when complete.
    """
    ft = file_type(ftype)
    model = HfModel(Path(model_dir))
    source = imatrix.source if isinstance(imatrix, Imatrix) and imatrix.source else "quantdesk"
    importance = imatrix.importance() if isinstance(imatrix, Imatrix) else imatrix
    plan = plan_tensors(model, ft, importance is not None, overrides)
    for p in plan:
        ggml_quant.check_supported(p.type, importance is not None)
    used = _importance_for(plan, importance, source) if importance is not None else {}

    def add_imatrix_keys(writer: gguf.GGUFWriter) -> None:
        if importance is None:
            return
        writer.add_string(KEY_IMATRIX_FILE, source)
        if isinstance(imatrix, Imatrix) and imatrix.datasets:
            writer.add_string(KEY_IMATRIX_DATASET, imatrix.datasets[0])
        writer.add_uint32(KEY_IMATRIX_ENTRIES, len(importance))
        if isinstance(imatrix, Imatrix) and imatrix.chunk_count > 0:
            writer.add_uint32(KEY_IMATRIX_CHUNKS, imatrix.chunk_count)

    report = write_gguf(
        model, Path(out_file), ft, plan,
        lambda p, w: ggml_quant.quantize(w, p.type, used.get(p.source.gguf_name)),
        add_imatrix_keys, progress, should_cancel)
    report.imatrix_entries = len(used)
    return report
