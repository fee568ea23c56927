"""Hugging Face folder → GGUF file, streamed one tensor at a time.

The writer runs in two passes over the tensor list: the first adds every tensor's name,
shape, GGML type and byte size (gguf.GGUFWriter.add_tensor_info) so the header, the
key/values and the tensor index can be written up front; the second loads, transforms and
encodes one tensor at a time and appends it (GGUFWriter.write_tensor_data). At most one
tensor is in memory. The file is written under a temporary name in the target folder and
renamed at the end; on failure or cancel nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from qtapp.engine.errors import Cancelled, UserError
from qtapp.engine.events import ShouldCancel
from qtapp.engine.gguf import ggml_quant
from qtapp.engine.gguf.hf_model import HfModel, SourceTensor
from qtapp.engine.gguf.metadata import add_general, add_hparams
from qtapp.engine.gguf.types import (
    FLOAT_TYPES,
    FT,
    ModelFacts,
    Q,
    TensorSpec,
    choose_types,
    file_type,
)
from qtapp.engine.gguf.vocab import add_vocab
from qtapp.engine.units import format_size

StepCallback = Callable[[str, int, int], None]  # (tensor name, tensors done, tensors in all)
Encoder = Callable[["PlannedTensor", np.ndarray], np.ndarray]

# tensors llama.cpp's converter always keeps in F32 (ModelBase.prepare_tensors)
_F32_NAMES = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "position_embd.weight",
              "token_types.weight", "ssm_conv1d.weight")


@dataclass(frozen=True)
class PlannedTensor:
    source: SourceTensor
    type: Q
    reason: str

    @property
    def nbytes(self) -> int:
        shape = self.source.shape
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        return rows * ggml_quant.row_size(self.type, shape[-1])


@dataclass(frozen=True)
class TensorReport:
    """One tensor of a written file; `shape` in numpy order (rows, columns)."""

    name: str
    type: str
    shape: tuple[int, ...]
    nbytes: int
    reason: str


@dataclass
class GgufReport:
    path: Path
    file_type: str
    tensors: list[TensorReport] = field(default_factory=list)
    seconds: float = 0.0
    imatrix_entries: int = 0

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def types(self) -> dict[str, int]:
        """How many tensors got each type."""
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.type] = counts.get(t.type, 0) + 1
        return counts


def converter_float_type(name: str, n_dims: int, ftype: FT) -> Q:
    """The type llama.cpp's converter gives a tensor in an F32/F16/BF16 file."""
    if n_dims <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return Q.F32
    if any(name.endswith(n) for n in _F32_NAMES):
        return Q.F32
    return {FT.ALL_F32: Q.F32, FT.MOSTLY_BF16: Q.BF16}.get(ftype, Q.F16)


def model_facts(model: HfModel) -> ModelFacts:
    return ModelFacts(model.arch.name, model.n_layer, model.n_head, model.n_head_kv)


def plan_tensors(model: HfModel, ftype: FT, has_imatrix: bool = False,
                 overrides: Mapping[str, str] | None = None) -> list[PlannedTensor]:
    """Every tensor with its GGML type, in writing order."""
    sources = model.tensors()
    # tensors llama-quantize does not quantize keep the type of the F16 file it starts from
    float_ftype = ftype if ftype in (FT.ALL_F32, FT.MOSTLY_BF16) else FT.MOSTLY_F16
    specs = [TensorSpec(s.gguf_name, s.shape, s.module,
                        converter_float_type(s.gguf_name, len(s.shape), float_ftype))
             for s in sources]
    choices = choose_types(specs, ftype, model_facts(model), has_imatrix, overrides)
    return [PlannedTensor(s, choices[s.gguf_name].type, choices[s.gguf_name].reason)
            for s in sources]


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(f"{folder} has {format_size(free)} free but the GGUF file needs "
                        f"about {format_size(needed)}; free some space or pick another "
                        "folder.")


def write_gguf(model: HfModel, out_file: Path, ftype: FT, plan: list[PlannedTensor],
               encode: Encoder, extra_kv: Callable[[gguf.GGUFWriter], None] | None = None,
               progress: StepCallback | None = None, should_cancel: ShouldCancel | None = None
               ) -> GgufReport:
    """Write `plan` to `out_file` atomically; `encode` turns float32 data into stored bytes."""
    start = time.perf_counter()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(out_file.parent, sum(p.nbytes for p in plan) + 64 * 2**20)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(None, model.arch.name)
    report = GgufReport(out_file, ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_"))
    try:
        for p in plan:
            writer.add_tensor_info(p.source.gguf_name, p.source.shape, np.dtype(np.float32),
                                   p.nbytes, raw_dtype=p.type)
        add_general(writer, model.dir)
        add_hparams(writer, model, int(ftype))
        add_vocab(writer, model.dir, model.arch, model.config)
        if extra_kv is not None:
            extra_kv(writer)
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, p in enumerate(plan):
            if should_cancel is not None and should_cancel():
                raise Cancelled("GGUF writing cancelled")
            data = p.source.load()
            if not np.isfinite(data).all():
                raise UserError(f"The tensor {p.source.hf_name} of {model.dir.name} holds NaN "
                                "or infinite values; the checkpoint is damaged.")
            writer.write_tensor_data(encode(p, data))
            report.tensors.append(TensorReport(p.source.gguf_name, p.type.name, p.source.shape,
                                               p.nbytes, p.reason))
            if progress is not None:
                progress(p.source.gguf_name, i + 1, len(plan))
        writer.close()
        os.replace(tmp, out_file)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    report.seconds = time.perf_counter() - start
    return report


def convert_to_gguf(model_dir: Path, out_file: Path, out_type: str = "F16",
                    progress: StepCallback | None = None,
                    should_cancel: ShouldCancel | None = None) -> GgufReport:
    """Convert a Hugging Face folder to an F32, F16 or BF16 GGUF file."""
    ftype = file_type(out_type)
    if ftype not in (FT.ALL_F32, FT.MOSTLY_F16, FT.MOSTLY_BF16):
        raise UserError(f"convert writes F32, F16 or BF16; {out_type} is a quantized type, "
                        "use quantize (method gguf) for it.")
    model = HfModel(Path(model_dir))
    plan = plan_tensors(model, ftype)
    if any(p.type not in FLOAT_TYPES for p in plan):
        raise RuntimeError("float conversion planned a quantized tensor")
    return write_gguf(model, out_file, ftype, plan,
                      lambda p, w: ggml_quant.quantize(w, p.type), None, progress,
                      should_cancel)
