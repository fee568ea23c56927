"""Quantized checkpoint export: GPTQ, AWQ (GEMM) and compressed-tensors Hugging Face folders.

    export_checkpoint(fmt, source_dir, store, job, out_dir) → ExportResult (what was written)

"auto" picks GPTQ for GPTQ/RTN jobs and AWQ for AWQ jobs, and compressed-tensors when the
quantized modules need something the preferred format cannot hold for transformers:
AWQ holds a single 4-bit group size; GPTQ holds 2/3/4/8 bits, and mixed bits only through
GPTQModel's `dynamic` overrides, which GPTQModel and vLLM read but transformers (optimum)
ignores. Act-order group indices (desc_act without static groups) keep GPTQ, the only
format that stores them. `resolve_format` makes the same choice from the job alone, before
any work, and refuses impossible explicit choices early.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qtapp.engine.config import JobSpec
from qtapp.engine.errors import UserError
from qtapp.engine.export import awq, compressed_tensors, gptq
from qtapp.engine.export.awq import AWQWriter
from qtapp.engine.export.common import (
    SHARD_BYTES,
    ExportPlan,
    ModuleEntry,
    write_checkpoint,
)
from qtapp.engine.export.compressed_tensors import CompressedTensorsWriter
from qtapp.engine.export.gptq import GPTQ_BITS, GPTQWriter
from qtapp.engine.model import arch as _arch
from qtapp.engine.model.safetensors_files import SafetensorsReader
from qtapp.engine.quant.qstore import QuantStore
from qtapp.engine.results import ExportResult

WRITERS = {"gptq": GPTQWriter, "awq": AWQWriter, "compressed-tensors": CompressedTensorsWriter}
CHECKS = {"gptq": gptq.check_module, "awq": awq.check_module,
          "compressed-tensors": compressed_tensors.check_module}
FORMATS = ("auto", *WRITERS)

__all__ = ["FORMATS", "ExportResult", "export_checkpoint", "resolve_format"]


def _job_schemes(job: JobSpec) -> list[tuple[int, int, bool]]:
    schemes = [job.scheme] + [r.scheme for r in job.rules if r.scheme is not None and not r.skip]
    return [(s.bits, s.group_size, s.sym) for s in schemes]


def _preferred(job: JobSpec) -> str:
    return "awq" if job.method == "awq" else "gptq"


def _problem(fmt: str, job: JobSpec) -> str | None:
    """Why `fmt` cannot hold the job's schemes, or None."""
    schemes = _job_schemes(job)
    bits = {b for b, _, _ in schemes}
    groups = {g if g > 0 else -1 for _, g, _ in schemes}
    act_order = job.method == "gptq" and job.gptq.act_order and not job.gptq.static_groups
    if fmt == "awq":
        if bits != {4} or len(groups) > 1:
            return (f"the AWQ format holds 4-bit weights with one group size, but this job "
                    f"uses {'/'.join(map(str, sorted(bits)))} bits and group sizes "
                    f"{'/'.join(map(str, sorted(groups)))}")
        if act_order:
            return "the AWQ format cannot store act-order group indices"
    if fmt == "gptq" and bits - set(GPTQ_BITS):
        return (f"the GPTQ format holds {'/'.join(map(str, GPTQ_BITS))} bits, but this job "
                f"uses {'/'.join(map(str, sorted(bits - set(GPTQ_BITS))))} bits")
    if fmt == "compressed-tensors" and act_order:
        return ("compressed-tensors cannot store act-order group indices (desc_act without "
                "static groups)")
    return None


def resolve_format(job: JobSpec, source_dir: Path | None = None) -> str:
    """The export format of `job` ("gptq" | "awq" | "compressed-tensors"), decided before
    quantizing; UserError when an explicitly chosen format cannot hold the job's schemes.
    With `source_dir`, module shapes are checked against the format too."""
    if job.method == "gguf":
        raise UserError("GGUF jobs write a .gguf file; --format applies to GPTQ, AWQ and RTN")
    fmt = job.export_format
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r} is not known; choose one of "
                        f"{', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = _preferred(job)
        mixed = len({b for b, _, _ in _job_schemes(job)}) > 1
        if _problem(fmt, job) is not None or (fmt == "gptq" and mixed):
            fmt = "compressed-tensors"
            if _problem(fmt, job) is not None:
                fmt = "gptq"
    problem = _problem(fmt, job)
    if problem is not None:
        raise UserError(f"{problem}; choose another --format (gptq, awq, "
                        "compressed-tensors) or change the scheme")
    if source_dir is not None:
        _check_shapes(fmt, Path(source_dir), job)
    return fmt


def _check_shapes(fmt: str, source_dir: Path, job: JobSpec) -> None:
    """Refuse before quantizing when a module's shape does not fit the format's packing."""
    arch = _arch.arch_for(json.loads((source_dir / "config.json").read_text()))
    source = SafetensorsReader(source_dir)
    check = CHECKS[fmt]
    i = 0
    while source.has(f"{arch.layers_prefix}.{i}.{arch.linears_of(i)[0]}.weight"):
        for rel in arch.linears_of(i):
            name = f"{arch.layers_prefix}.{i}.{rel}"
            scheme = job.scheme_for(name)
            if scheme is None or not source.has(name + ".weight"):
                continue
            shape = source.shape(name + ".weight")
            check(ModuleEntry(name, i, rel, scheme.bits, scheme.group_size, scheme.sym,
                              (shape[0], shape[1]), False))
        i += 1


def export_checkpoint(fmt: str, source_dir: Path, store: QuantStore, job: JobSpec,
                      out_dir: Path, *, max_shard_bytes: int = SHARD_BYTES) -> ExportResult:
    """Write a loadable Hugging Face folder of `store`'s quantized model into `out_dir`.

    Streams block by block (never the whole model in memory). Returns what it wrote: the
    format, the files (relative to `out_dir`), checkpoint_format (GPTQ v1/v2), modules
    (per-scheme counts and patterns, 16-bit linears) and the format's notes, which the
    model card shows.
    """
    if job.method == "gguf":
        raise UserError("GGUF jobs write a .gguf file, not a quantized Hugging Face folder")
    plan = ExportPlan(Path(source_dir), store, job)
    if fmt == "auto":
        writer = _auto_writer(plan, job)
    elif fmt in WRITERS:
        writer = WRITERS[fmt](plan)
    else:
        raise UserError(f"export format {fmt!r} is not known; choose one of {', '.join(FORMATS)}")
    files = write_checkpoint(plan, writer, Path(out_dir), max_shard_bytes)
    return ExportResult(format=writer.name,
                        files=sorted({str(Path(f).relative_to(out_dir)) for f in files}),
                        checkpoint_format=getattr(writer, "checkpoint_format", writer.name),
                        modules=plan.module_summary(), notes=writer.notes())


def _auto_writer(plan: ExportPlan, job: JobSpec) -> Any:
    """The preferred writer, or compressed-tensors when the preferred one refuses the modules
    (or, for GPTQ, when they mix bit widths and compressed-tensors can hold them)."""
    try:
        if _preferred(job) == "gptq" and len({s[0] for s in plan.schemes()}) > 1:
            try:
                return CompressedTensorsWriter(plan)
            except UserError:
                pass
        return WRITERS[_preferred(job)](plan)
    except UserError as first:
        try:
            return CompressedTensorsWriter(plan)
        except UserError:
            raise first from None
