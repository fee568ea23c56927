"""File sizes before quantizing: each module's bytes under each candidate scheme and the
bytes that do not depend on the plan (`size_model`, for a size budget), and the size of a
job's output as its settings stand (`job_bytes`, the planner's final size).

The size a budget refers to is what the user downloads and loads:

- Hugging Face formats (GPTQ, AWQ, compressed-tensors): every file the exporter writes —
  the safetensors weights (quantized modules with their scales / zeros / g_idx, and the
  embeddings, lm_head, norms and any 16-bit linear in the source dtype, plus each
  tensor's header entry), config.json with its quantization_config, and the copied
  tokenizer, generation-config and licence files. The model card (README.md) written
  after the run is not counted.
- GGUF: the .gguf file (header, key/values with the vocabulary, tensor index, every tensor
  padded to the 32-byte alignment). The side files (imatrix/imatrix.gguf, Modelfile) are not.

Module bytes are computed from the layouts the writers use (export/gptq.py,
export/compressed_tensors.py, export/awq.py, gguf ggml row sizes). Where the exact
figure depends on data written later (safetensors header offsets, the JSON of
quantization_config), an upper bound is used, so a plan is never larger than predicted.
GGUF headers are exact: they are built with the converter's own key/value writers.

`job_bytes` counts the same way with every module at the scheme the job gives it (its
per-module rules and skips; for GGUF llama.cpp's per-tensor types with the rules as
overrides, as the writer plans them), so the plan, the budget and the written folder agree.
Sizes are read and written by qtapp/engine/units.py (binary units).
"""

from __future__ import annotations

import fnmatch
import json
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qtapp.engine.config import JobSpec, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.export import CHECKS, resolve_format
from qtapp.engine.export.common import COPIED_FILES, SHARD_BYTES, ModuleEntry
from qtapp.engine.model.safetensors_files import SafetensorsReader
from qtapp.engine.model.sources import ModelInfo
from qtapp.engine.units import format_size, size_at_least

# The gguf package and the GGUF modules are imported inside the GGUF functions: sizes of GPTQ, AWQ
# and compressed-tensors outputs are computed without them.

HF_BITS = (2, 3, 4, 8)
GGUF_CANDIDATES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16")
KEPT = "16-bit"
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1, "float64": 8}
_ST_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
             "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
             "float64": "F64"}
GGUF_ALIGN = 32


@dataclass(frozen=True)
class Candidate:
    """One way to store a module: a scheme, a GGUF tensor type, or kept in 16 bit."""

    key: str  # "W4", "16-bit", "Q4_K" …
    bits: float  # nominal bits per weight, for ordering and display
    scheme: QuantScheme | None = None
    gguf_type: str = ""

    @property
    def kept(self) -> bool:
        return self.scheme is None and self.gguf_type in ("", "F16", "BF16", "F32")


@dataclass(frozen=True)
class ModuleSlot:
    """A module the allocator chooses for: its candidates and their bytes in the file."""

    name: str  # full module name, e.g. model.layers.3.mlp.down_proj
    shape: tuple[int, int]  # (N, K) = (out, in)
    options: tuple[Candidate, ...]
    nbytes: tuple[int, ...]

    def bytes_of(self, key: str) -> int:
        return self.nbytes[[c.key for c in self.options].index(key)]


@dataclass
class SizeModel:
    """The written size as `fixed_bytes + Σ_module bytes(choice)`."""

    fmt: str
    fixed_bytes: int
    modules: list[ModuleSlot]
    n_params: int
    notes: list[str] = field(default_factory=list)

    def total(self, choice: dict[str, str]) -> int:
        return self.fixed_bytes + sum(m.bytes_of(choice[m.name]) for m in self.modules)

    def smallest(self) -> int:
        return self.fixed_bytes + sum(min(m.nbytes) for m in self.modules)

    def largest(self) -> int:
        return self.fixed_bytes + sum(max(m.nbytes) for m in self.modules)


def target_bytes(job: JobSpec, info: ModelInfo) -> int:
    """The job's budget in bytes: target_bytes, or target_bpw × parameters / 8."""
    if job.target_bytes:
        return int(job.target_bytes)
    return int(job.target_bpw * info.n_params / 8)


def check_budget(model: SizeModel, budget: int, what: str) -> None:
    """UserError when even the smallest plan exceeds `budget`, naming the smallest size."""
    low = model.smallest()
    if budget < low:
        raise UserError(
            f"{what}: a budget of {format_size(budget)} ({budget:,} bytes) is below the "
            f"smallest file this model can be written as with this method and format, "
            f"{format_size(low)} ({low:,} bytes, every module at its lowest scheme; the "
            f"embeddings, norms and other fixed parts alone take "
            f"{format_size(model.fixed_bytes)}). Ask for at least {size_at_least(low)}.")


# ------------------------------------------------------------------ Hugging Face formats

def _words(count: int, bits: int) -> int:
    """int32 words pack_int32 uses for `count` codes of `bits` (padded to whole words)."""
    per = 32 if bits == 3 else 32 // bits
    return -(-count // per) * (3 if bits == 3 else 1)


def _groups(k: int, group_size: int) -> int:
    return -(-k // group_size) if group_size > 0 else 1


def hf_module_tensors(fmt: str, name: str, shape: tuple[int, int], scheme: QuantScheme | None,
                      source_dtype: str, scale_dtype: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(tensor name, dtype, shape) of one module as the `fmt` writer stores it."""
    n, k = shape
    if scheme is None:
        return [(f"{name}.weight", source_dtype, (n, k))]
    b, gs, sym = scheme.bits, scheme.group_size, scheme.sym
    if fmt == "gptq":
        g = _groups(k, gs if gs > 0 else -1)
        return [(f"{name}.qweight", "int32", (_words(k, b), n)),
                (f"{name}.qzeros", "int32", (g, _words(n, b))),
                (f"{name}.scales", "float16", (g, n)),
                (f"{name}.g_idx", "int32", (k,))]
    if fmt == "awq":
        g = _groups(k, gs)
        return [(f"{name}.qweight", "int32", (k, n // 8)),
                (f"{name}.qzeros", "int32", (g, n // 8)),
                (f"{name}.scales", "float16", (g, n))]
    if fmt == "compressed-tensors":
        g = _groups(k, gs)
        scale_shape = (1,) if gs == 0 else (n, g)
        out = [(f"{name}.weight_scale", scale_dtype, scale_shape)]
        if b in (2, 4, 8):
            out += [(f"{name}.weight_packed", "int32", (n, _words(k, b))),
                    (f"{name}.weight_shape", "int64", (2,))]
            if not sym:
                out.append((f"{name}.weight_zero_point", *(("int8", (1,)) if gs == 0 else
                                                           ("int32", (_words(n, b), g)))))
        else:
            out.append((f"{name}.weight", "int8", (n, k)))
            if not sym:
                out.append((f"{name}.weight_zero_point", "int8", scale_shape))
        return out
    raise UserError(f"export format {fmt!r} is not known")


def _tensor_bytes(dtype: str, shape: Iterable[int]) -> int:
    return _ITEMSIZE[dtype] * math.prod(shape)


def _header_entry(name: str, dtype: str, shape: tuple[int, ...], digits: int) -> int:
    """Upper bound of one tensor's entry in a safetensors JSON header (offsets at most
    `digits` digits each, plus the separating comma)."""
    big = 10**digits - 1
    entry = {name: {"dtype": _ST_DTYPE[dtype], "shape": list(shape), "data_offsets": [big, big]}}
    return len(json.dumps(entry, separators=(",", ":"))) - 2 + 1


def _hf_bytes(tensors: list[tuple[str, str, tuple[int, ...]]], digits: int) -> int:
    return sum(_tensor_bytes(d, s) + _header_entry(n, d, s, digits) for n, d, s in tensors)


def _config_allowance(names: Iterable[str]) -> int:
    """Upper bound of the quantization_config JSON: per module an escaped anchored regex
    with its scheme (GPTQ `dynamic`, compressed-tensors targets / ignore), plus the rest."""
    return 4096 + sum(3 * len(n) + 160 for n in names)


def allocatable_modules(info: ModelInfo, reader: SafetensorsReader) -> list[str]:
    """Full names of the block linears the pipeline quantizes, in model order."""
    out = []
    i = 0
    arch = info.arch
    while reader.has(f"{arch.layers_prefix}.{i}.{arch.linears_of(i)[0]}.weight"):
        for rel in arch.linears_of(i):
            full = f"{arch.layers_prefix}.{i}.{rel}"
            if reader.has(full + ".weight"):
                out.append(full)
        i += 1
    return out


def hf_candidates(job: JobSpec) -> list[Candidate]:
    """W2/W3/W4/W8 at the job's group size and symmetry, and kept in 16 bit."""
    s = job.scheme
    return [Candidate(f"W{b}", b, QuantScheme(b, s.group_size, s.sym)) for b in HF_BITS] + \
        [Candidate(KEPT, 16)]


def _fits(fmt: str, name: str, shape: tuple[int, int], c: Candidate) -> bool:
    if c.scheme is None:
        return True
    s = c.scheme
    try:
        CHECKS[fmt](ModuleEntry(name, 0, name, s.bits, s.group_size, s.sym, shape, False))
    except UserError:
        return False
    return True


def _hf_parts(job: JobSpec, info: ModelInfo) -> tuple[SafetensorsReader, list[str], int, int,
                                                      str]:
    """(reader, the quantizable modules, the fixed bytes, the digits of a header offset, the
    scale dtype) of a GPTQ / AWQ / compressed-tensors folder of `info`."""
    reader = SafetensorsReader(info.path)
    names = allocatable_modules(info, reader)
    allocatable = set(names)
    scale_dtype = str(info.config.get("torch_dtype") or info.config.get("dtype") or "bfloat16")
    scale_dtype = scale_dtype if scale_dtype in ("float16", "bfloat16", "float32") else "bfloat16"
    total_upper = reader.numel() * 4 + 10**6
    digits = len(str(total_upper))
    fixed_tensors = [(t, reader.dtype(t), reader.shape(t)) for t in reader.names()
                     if not (t.endswith(".weight") and t[:-7] in allocatable)]
    fixed = _hf_bytes(fixed_tensors, digits)
    fixed += 8 + len('{"__metadata__":{"format":"pt"}}') + 7
    config = json.dumps(info.config, indent=2, sort_keys=True) + "\n"
    fixed += len(config.encode()) + _config_allowance(
        names + [t[:-7] for t, _, s in fixed_tensors if len(s) == 2 and t.endswith(".weight")])
    fixed += sum((info.path / f).stat().st_size for f in COPIED_FILES if (info.path / f).is_file())
    if reader.numel() * 2 > SHARD_BYTES:  # possibly sharded: per-shard headers and the index
        fixed += 64 * (reader.numel() * 2 // SHARD_BYTES + 2) + 200 + sum(
            len(t) + 48 for t in reader.names()) * 2
    return reader, names, fixed, digits, scale_dtype


def hf_size_model(job: JobSpec, info: ModelInfo, fmt: str) -> SizeModel:
    """Size model of a GPTQ / AWQ / compressed-tensors folder of `info` for `job`."""
    reader, names, fixed, digits, scale_dtype = _hf_parts(job, info)
    skipped = {n for n in names if fnmatch_any(n, job.skip)}
    slots = []
    cands = hf_candidates(job)
    for n in names:
        shape = reader.shape(n + ".weight")
        options = [c for c in cands if _fits(fmt, n, shape, c)]
        if n in skipped:
            options = [c for c in options if c.kept]
        nbytes = [_hf_bytes(hf_module_tensors(fmt, n, shape, c.scheme, reader.dtype(
            n + ".weight"), scale_dtype), digits) for c in options]
        slots.append(ModuleSlot(n, shape, tuple(options), tuple(nbytes)))
    return SizeModel(fmt, fixed, slots, info.n_params)


def hf_job_bytes(job: JobSpec, info: ModelInfo, fmt: str) -> int:
    """Bytes of the `fmt` folder `job` writes: the fixed part of `hf_size_model` plus every
    quantizable module at `job.scheme_for` (its rules and skips)."""
    reader, names, fixed, digits, scale_dtype = _hf_parts(job, info)
    return fixed + sum(_hf_bytes(hf_module_tensors(
        fmt, n, reader.shape(n + ".weight"), job.scheme_for(n), reader.dtype(n + ".weight"),
        scale_dtype), digits) for n in names)


# ------------------------------------------------------------------------------- GGUF

def gguf_candidates(k: int) -> list[Candidate]:
    """The GGUF tensor types a module with rows of `k` values can get: Q2_K … Q8_0 and F16,
    each replaced by llama.cpp's fallback when its block does not divide `k` (then Q4_0,
    Q5_0, Q5_1 or Q8_0), duplicates dropped."""
    from qtapp.engine.gguf.types import TENSOR_TYPES, type_fallback

    out: list[Candidate] = []
    for name in GGUF_CANDIDATES:
        t = type_fallback(TENSOR_TYPES[name], k)
        if all(c.gguf_type != t.name for c in out):
            out.append(Candidate(t.name, _gguf_bits(t.name), gguf_type=t.name))
    return out


def _gguf_bits(type_name: str) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return size * 8 / block


def _pad(n: int, align: int = GGUF_ALIGN) -> int:
    return -(-n // align) * align


def _gguf_plan(job: JobSpec, info: ModelInfo, has_imatrix: bool,
               overrides: dict[str, str] | None = None) -> tuple[list, int]:
    """(the writer's tensor plan, the padded bytes of the header) of the .gguf file of `info`
    for `job`: its file type sets each tensor's type by llama.cpp's rules, `overrides` (glob
    -> type) replace them."""
    import gguf

    from qtapp.engine.gguf.convert import plan_tensors
    from qtapp.engine.gguf.hf_model import HfModel
    from qtapp.engine.gguf.metadata import add_general, add_hparams
    from qtapp.engine.gguf.types import file_type
    from qtapp.engine.gguf.vocab import add_vocab

    ft = file_type(job.gguf.type)
    model = HfModel(info.path)
    plan = plan_tensors(model, ft, has_imatrix, overrides)
    writer = gguf.GGUFWriter(None, model.arch.name)
    for p in plan:
        writer.add_tensor_info(p.source.gguf_name, p.source.shape, np.dtype(np.float32),
                               p.nbytes, raw_dtype=p.type)
    add_general(writer, model.dir)
    add_hparams(writer, model, int(ft))
    add_vocab(writer, model.dir, model.arch, model.config)
    with tempfile.TemporaryDirectory(prefix="quantdesk-size-") as tmp:
        path = Path(tmp) / "header.gguf"
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        header = path.stat().st_size
    if has_imatrix:  # quantize.imatrix.{file,dataset,entries_count,chunks_count}
        header += 512 + len(job.calibration.source) + len(Path(job.gguf.imatrix).name)
    return plan, _pad(header)


def gguf_size_model(job: JobSpec, info: ModelInfo, has_imatrix: bool) -> SizeModel:
    """Size model of the .gguf file of `info` for `job` (its file type sets the fixed part:
    token_embd / output types follow llama.cpp's rules for that type)."""
    plan, fixed = _gguf_plan(job, info, has_imatrix)
    reader = SafetensorsReader(info.path)
    allocatable = set(allocatable_modules(info, reader))
    slots = []
    for p in plan:
        shape = p.source.shape
        if p.source.module in allocatable and p.source.hf_name.endswith(".weight"):
            n, k = int(np.prod(shape[:-1])), shape[-1]
            options = gguf_candidates(k)
            if fnmatch_any(p.source.module, job.skip):
                options = [c for c in options if c.kept]
            nbytes = [_pad(n * _row_bytes(c.gguf_type, k)) for c in options]
            slots.append(ModuleSlot(p.source.module, (n, k), tuple(options), tuple(nbytes)))
        else:
            fixed += _pad(p.nbytes)
    return SizeModel("gguf", fixed, slots, info.n_params)


def gguf_job_bytes(job: JobSpec, info: ModelInfo) -> int:
    """Bytes of the .gguf file `job` writes: the header and every tensor at the type the
    writer plans for it (the file type's rules, the job's rules as overrides), padded; with
    an importance matrix when the job computes or reads one."""
    from qtapp.engine.gguf.output import imatrix_is_useful, overrides_from_rules

    overrides = overrides_from_rules(job.rules)
    imatrix = job.gguf.imatrix
    has_imatrix = imatrix != "none" and (imatrix != "auto"
                                         or imatrix_is_useful(job.gguf.type, overrides))
    plan, header = _gguf_plan(job, info, has_imatrix, overrides or None)
    return header + sum(_pad(p.nbytes) for p in plan)


def _row_bytes(type_name: str, k: int) -> int:
    import gguf

    from qtapp.engine.gguf.ggml_quant import row_size

    return row_size(gguf.GGMLQuantizationType[type_name], k)


def fnmatch_any(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def job_bytes(job: JobSpec, info: ModelInfo) -> int:
    """Bytes of `job`'s output as its settings stand (see the module docstring): exact per
    tensor, per-module rules included. The format is the one the job will write
    (export.resolve_format); UserError when that format cannot hold the job's schemes."""
    if job.method == "gguf":
        return gguf_job_bytes(job, info)
    return hf_job_bytes(job, info, resolve_format(job))


def size_model(job: JobSpec, info: ModelInfo) -> SizeModel:
    """The size model of `job`'s output (format from `plan_format`)."""
    if job.method == "gguf":
        return gguf_size_model(job, info, job.gguf.imatrix != "none")
    return hf_size_model(job, info, plan_format(job))


def plan_format(job: JobSpec) -> str:
    """The export format an allocated (mixed-bit) job writes: the job's explicit format, or
    for "auto" what the exporter picks for mixed bits (compressed-tensors)."""
    if job.export_format == "awq":
        raise UserError("the AWQ format holds 4-bit weights only, but a size budget mixes bit "
                        "widths; use --format compressed-tensors (or auto) or --format gptq")
    if job.export_format != "auto":
        return job.export_format
    if job.method == "gptq" and job.gptq.act_order and not job.gptq.static_groups:
        return "gptq"  # only GPTQ stores act-order group indices
    return "compressed-tensors"
