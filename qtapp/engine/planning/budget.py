"""File sizes before quantizing: size strings, each module's bytes under each candidate
scheme, and the bytes that do not depend on the plan.

The size a budget refers to is what the user downloads and loads:

- Hugging Face formats (GPTQ, AWQ, compressed-tensors): every file the exporter writes —
  the safetensors weights (quantized modules with their scales / zeros / g_idx, and the
  embeddings, lm_head, norms and any 16-bit linear in the source dtype, plus each
  tensor's header entry), config.json with its quantization_config, and the copied
  tokenizer, generation-config and licence files. The model card (README.md) written
  after the run is not counted.
- GGUF: the .gguf file (header, key/values with the vocabulary, tensor index, every tensor
  padded to the 32-byte alignment). The side files (imatrix.gguf, Modelfile) are not.

Module bytes are computed from the layouts the writers use (export/gptq.py,
export/compressed_tensors.py, export/awq.py, gguf ggml row sizes). Where the exact
figure depends on data written later (safetensors header offsets, the JSON of
quantization_config), an upper bound is used, so a plan is never larger than predicted.
GGUF headers are exact: they are built with the converter's own key/value writers.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qtapp.engine.config import JobSpec, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.model.sources import ModelInfo, SafetensorsReader

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
HF_BITS = (2, 3, 4, 8)
GGUF_CANDIDATES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16")
KEPT = "16-bit"
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1, "float64": 8}
_ST_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
             "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
             "float64": "F64"}
GGUF_ALIGN = 32


def parse_size(text: str) -> int:
    """Bytes of a size such as '90MiB', '1.5 GB', '4096' (B, KB/MB/GB/TB, KiB/MiB/GiB/TiB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or (unit and unit not in UNITS):
        raise UserError(f"{text!r} is not a size; write a number and a unit such as 90MiB, "
                        "4.5GB or 700KB (units B, KB, MB, GB, KiB, MiB, GiB)")
    value = float(m.group(1)) * UNITS[unit or "b"]
    if value < 1:
        raise UserError(f"{text!r} is not a size a model can have; give a positive size")
    return int(value)


def format_size(n: float) -> str:
    """'88.4 MiB' style (binary units), the way sizes are shown everywhere in QuantDesk."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if scale == 2**30 else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


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


def size_at_least(n: int) -> str:
    """A size string (for --target-size) of at least `n` bytes, rounded up: '88.5MiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{math.ceil(n / scale * 10) / 10:g}{unit}"
    return f"{n}B"


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
    while reader.has(f"{arch.layers_prefix}.{i}.{arch.linears[0]}.weight"):
        for rel in arch.linears:
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
    from qtapp.engine.export import CHECKS
    from qtapp.engine.export.common import ModuleEntry

    if c.scheme is None:
        return True
    s = c.scheme
    try:
        CHECKS[fmt](ModuleEntry(name, 0, name, s.bits, s.group_size, s.sym, shape, False))
    except UserError:
        return False
    return True


def hf_size_model(job: JobSpec, info: ModelInfo, fmt: str) -> SizeModel:
    """Size model of a GPTQ / AWQ / compressed-tensors folder of `info` for `job`."""
    from qtapp.engine.export.common import COPIED_FILES, SHARD_BYTES

    reader = SafetensorsReader(info.path)
    names = allocatable_modules(info, reader)
    allocatable = set(names)
    skipped = {n for n in names if fnmatch_any(n, job.skip)}
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


# ------------------------------------------------------------------------------- GGUF

def gguf_candidates(k: int) -> list[Candidate]:
    """The GGUF tensor types a module with rows of `k` values can get: Q2_K … Q8_0 and F16,
    each replaced by llama.cpp's fallback when its block does not divide `k` (then Q4_0,
    Q5_0, Q5_1 or Q8_0), duplicates dropped."""
    from qtapp.engine.gguf.types import TENSOR_TYPES, _fallback

    out: list[Candidate] = []
    for name in GGUF_CANDIDATES:
        t = _fallback(TENSOR_TYPES[name], k)
        if all(c.gguf_type != t.name for c in out):
            out.append(Candidate(t.name, _gguf_bits(t.name), gguf_type=t.name))
    return out


def _gguf_bits(type_name: str) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return size * 8 / block


def _pad(n: int, align: int = GGUF_ALIGN) -> int:
    return -(-n // align) * align


def gguf_size_model(job: JobSpec, info: ModelInfo, has_imatrix: bool) -> SizeModel:
    """Size model of the .gguf file of `info` for `job` (its file type sets the fixed part:
    token_embd / output types follow llama.cpp's rules for that type)."""
    import gguf
    import numpy as np

    from qtapp.engine.gguf.convert import plan_tensors
    from qtapp.engine.gguf.hf_model import HfModel
    from qtapp.engine.gguf.metadata import add_general, add_hparams
    from qtapp.engine.gguf.types import file_type
    from qtapp.engine.gguf.vocab import add_vocab

    ft = file_type(job.gguf.type)
    model = HfModel(info.path)
    plan = plan_tensors(model, ft, has_imatrix)
    reader = SafetensorsReader(info.path)
    allocatable = set(allocatable_modules(info, reader))
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
    fixed = _pad(header)
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


def _row_bytes(type_name: str, k: int) -> int:
    import gguf

    from qtapp.engine.gguf.ggml_quant import row_size

    return row_size(gguf.GGMLQuantizationType[type_name], k)


def fnmatch_any(name: str, patterns: Iterable[str]) -> bool:
    import fnmatch

    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


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
