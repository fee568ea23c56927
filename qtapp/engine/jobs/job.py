"""One quantization job from start to finish: the function the worker and the CLI call.

resolve model → check output path → calibration tokens → quantize (layer streaming, with a
resumable checkpoint) → export into a hidden temporary folder beside the output →
evaluate → model card → atomic rename. Nothing is ever written into the source model, and
a failed or cancelled job leaves no output folder behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.errors import UserError
from qtapp.engine.model.loader import load_tokenizer
from qtapp.engine.model.sources import ModelInfo, cache_root, resolve_model
from qtapp.engine.outputs import (
    check_output_path,
    free_bytes,
    is_disk_full,
    lock_checkpoint,
    lock_output,
    partial_path,
    stray_files,
)
from qtapp.engine.quant.calibration import calibration_tokens

Emit = Callable[[ev.Event], None]


def check_memory(job: JobSpec, info: ModelInfo, device: Any) -> None:
    """Refuse a job that the advisor predicts cannot fit in memory, before it starts."""
    from qtapp.engine.planning.advisor import ModelShape, format_size, quantize_peak_bytes

    c = job.calibration
    shape = ModelShape.from_config(info.config, info.name, info.n_params)
    need = quantize_peak_bytes(shape, job.method, c.samples, c.seq_len)
    if str(device).startswith("cuda"):
        import torch

        have, where = torch.cuda.mem_get_info(device)[0], "free GPU memory"
    else:
        import psutil

        have, where = psutil.virtual_memory().available, "available RAM"
    if need > have:
        raise UserError(
            f"{info.name} with {job.method} and {c.samples} calibration samples × {c.seq_len} "
            f"tokens needs about {format_size(need)} of working memory, but this machine has "
            f"{format_size(have)} of {where}. Use fewer samples (--samples) or a shorter "
            "--seq-len, close other programs, or use a machine with more memory."
        )


def _disk_full(e: BaseException, out: Path, work: Path) -> UserError:
    from qtapp.engine.planning.advisor import format_size

    def free(p: Path) -> str:
        n = free_bytes(p)
        return "unknown" if n is None else format_size(n)

    return UserError(
        f"The disk is full: writing the job's files failed ({e}). Free space after clean-up: "
        f"output folder "
        f"{out.parent} {free(out.parent)}, checkpoint folder {work} {free(work)}. Nothing was "
        f"kept in {out}; free some space or choose an output folder on another disk, then "
        "start the job again (finished blocks stay in the checkpoint)."
    )


def _drop_strays(partial: Path, files: list[str], emit: Emit) -> None:
    """Before the rename: the finished folder holds only the files the job wrote. Temporary
    files (a writer's `.tmp*`) are removed; anything else means another writer, a bug."""
    temp, other = stray_files(partial, files)
    for p in temp:
        p.unlink(missing_ok=True)
    if temp:
        emit(ev.Log(level="info", message="removed temporary files from the output: "
                    + ", ".join(str(p.relative_to(partial)) for p in temp)))
    if other:
        raise RuntimeError("the finished output holds files the job did not write: "
                           + ", ".join(str(p.relative_to(partial)) for p in other))


def _replace_output(partial: Path, out: Path) -> None:
    """Move the finished ``partial`` to ``out``; an old ``out`` is kept until that succeeds."""
    if not out.exists():
        os.replace(partial, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(partial, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def job_fingerprint(job: JobSpec, info: ModelInfo) -> str:
    """What makes two jobs' checkpoints interchangeable: model, method and its settings."""
    d = job.to_dict()
    for k in ("out", "evaluate", "resume", "overwrite", "export_format", "device"):
        d.pop(k, None)
    d["model_path"] = str(info.path.resolve())
    d["weights"] = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in info.weight_files]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_dir(job: JobSpec, info: ModelInfo) -> Path:
    """The folder of the job's resumable checkpoint (shared by jobs with the same settings)."""
    return cache_root() / "jobs" / job_fingerprint(job, info)


def run_job(job: JobSpec, emit: Emit, should_cancel: Callable[[], bool],
            tokens: Any = None) -> dict[str, Any]:
    """Run `job`; `tokens` (n, L) replaces the calibration sampling (benchmarks use it)."""
    t0 = time.perf_counter()
    job.validate()
    emit, stage_peaks = _tracking_stage_peaks(emit)
    out = Path(job.out).expanduser().resolve()
    info = resolve_model(job.model, allow_pickle=job.allow_pickle)
    check_output_path(out, info.path, job.overwrite)
    with lock_output(out):  # held until the job ends: a second job on `out` is refused
        check_output_path(out, info.path, job.overwrite)  # the last holder may have written it
        return _run_locked(job, info, out, emit, should_cancel, tokens, t0, stage_peaks)


def _run_locked(job: JobSpec, info: ModelInfo, out: Path, emit: Emit,
                should_cancel: Callable[[], bool], tokens: Any, t0: float,
                stage_peaks: _StagePeaks) -> dict[str, Any]:
    from qtapp.engine.quant.pipeline import pick_device

    check_memory(job, info, pick_device(job.device))
    emit(ev.Started(model=info.name, method=job.method, out=str(out),
                    total_steps=info.n_layers, job=job.to_dict()))
    _warn_unsafe_options(job, info, emit)
    from qtapp.engine.planning.compat import chat_warnings

    for warning in chat_warnings(info.path):
        emit(ev.Log(level="warning", message=f"{info.name}: {warning}"))
    emit(ev.Log(level="info", message=f"{info.name}: {info.arch.name}, {info.n_layers} blocks, "
                f"{info.n_params / 1e6:.1f} M parameters, {info.size_bytes / 2**20:.0f} MiB"))
    plan = None
    if job.target_bytes or job.target_bpw:
        from qtapp.engine.planning.allocate import plan_for_job

        job, tokens, plan = plan_for_job(job, info, tokens,
                                         lambda: calibration_tokens(job, info, emit),
                                         emit, should_cancel)
    predicted = _resource_plan(job, info, out, emit)
    partial = partial_path(out)
    if partial.exists():
        shutil.rmtree(partial)
    try:
        if job.method == "gguf":
            summary = _run_gguf(job, info, partial, emit, should_cancel, tokens)
        else:
            summary = _run_linear_method(job, info, partial, emit, should_cancel, tokens)
        if should_cancel():
            from qtapp.engine.errors import Cancelled

            raise Cancelled()
        _drop_strays(partial, summary.get("files", []), emit)
        _replace_output(partial, out)
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        if is_disk_full(e):
            raise _disk_full(e, out, cache_root() / "jobs") from None
        raise
    if plan is not None:
        summary["plan"] = plan
    summary["out"] = str(out)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    from qtapp.engine.planning.planner import peak_rss  # of this process: the worker runs one job

    stage_peaks.finish()
    summary["resources"] = {"predicted": predicted, "measured": {
        "peak_ram": peak_rss(), "seconds": summary["seconds"],
        "stage_peak_ram": dict(stage_peaks.peaks), "stage_seconds": dict(stage_peaks.seconds)}}
    for f in summary.get("files", []):
        p = out / f
        if p.exists():
            emit(ev.Artifact(path=str(p), kind=p.suffix.lstrip(".") or "file",
                             bytes=p.stat().st_size))
    return summary


class _StagePeaks:
    """Peak RSS of the process at the end of each progress stage (ru_maxrss only grows, so
    the first stage whose figure equals the job's peak is where the peak happened), and the
    seconds each stage took."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.stage: str | None = None
        self.t0 = time.perf_counter()

    def see(self, stage: str) -> None:
        if stage != self.stage:
            self.finish()
            self.stage = stage

    def finish(self) -> None:
        from qtapp.engine.planning.planner import peak_rss

        now = time.perf_counter()
        if self.stage is not None:
            self.peaks[self.stage] = peak_rss()
            self.seconds[self.stage] = round(self.seconds.get(self.stage, 0) + now - self.t0, 2)
        self.t0 = now


def _tracking_stage_peaks(emit: Emit) -> tuple[Emit, _StagePeaks]:
    peaks = _StagePeaks()

    def tracked(e: ev.Event) -> None:
        if isinstance(e, ev.Progress):
            peaks.see(e.stage)
        emit(e)

    return tracked, peaks


def _resource_plan(job: JobSpec, info: ModelInfo, out: Path, emit: Emit) -> dict[str, Any]:
    """The planner's prediction (formulas, no probe), logged and kept for the result."""
    from qtapp.engine.planning.planner import plan_job

    plan = plan_job(job, info, out=out)
    emit(ev.Log(level="info", message=plan.table()))
    return {k: v for k, v in plan.to_dict().items()
            if k in ("peak_ram", "peak_vram", "temp_disk", "final_disk", "seconds", "device")}


def _warn_unsafe_options(job: JobSpec, info: ModelInfo, emit: Emit) -> None:
    if job.allow_pickle:
        emit(ev.Log(level="warning", message="pickle weights are allowed (--allow-pickle): "
                    "*.bin/*.pt files are read with torch.load(weights_only=True), which loads "
                    "only tensors, but pickle is still a code-execution format; use it only "
                    "for models from authors you trust"))
    if job.trust_remote_code:
        from qtapp.engine.model.loader import remote_code_warning

        emit(ev.Log(level="warning", message=remote_code_warning(info.path)))


def _run_linear_method(job: JobSpec, info: ModelInfo, partial: Path, emit: Emit,
                       should_cancel: Callable[[], bool], tokens: Any = None,
                       ) -> dict[str, Any]:
    from qtapp.engine.export import resolve_format
    from qtapp.engine.quant.pipeline import pick_device

    device = pick_device(job.device)
    fmt = resolve_format(job, info.path)
    if tokens is None:
        tokens = calibration_tokens(job, info, emit)
    work = checkpoint_dir(job, info)
    # held until the checkpoint is removed: a second job with the same settings would
    # corrupt it
    with lock_checkpoint(work):
        return _quantize_and_export(job, info, partial, emit, should_cancel, tokens, device,
                                    fmt, work)


def _quantize_and_export(job: JobSpec, info: ModelInfo, partial: Path, emit: Emit,
                         should_cancel: Callable[[], bool], tokens: Any, device: Any, fmt: str,
                         work: Path) -> dict[str, Any]:
    from qtapp.engine.export import export_checkpoint
    from qtapp.engine.quant.pipeline import quantize_blocks
    from qtapp.engine.quant.qstore import QuantStore

    store = QuantStore(work / "blocks", fingerprint=job_fingerprint(job, info))
    emit(ev.Log(level="info", message=f"device {device}; checkpoint in {work}"))
    t_quantize = time.perf_counter()
    quantize_blocks(job, info, tokens, store, emit, should_cancel, device)
    t_quantize = time.perf_counter() - t_quantize
    emit(ev.Progress(step=info.n_layers, total=info.n_layers, stage="export",
                     message=f"writing the {fmt} checkpoint"))
    summary: dict[str, Any] = {"method": job.method, "format": fmt, "model": info.name,
                               "source": str(info.path), "scheme": job.scheme.label,
                               "mixed": job.is_mixed,
                               "quantize_seconds": round(t_quantize, 2),
                               "calibration": [int(tokens.shape[0]), int(tokens.shape[1])]}
    files = export_checkpoint(fmt, info.path, store, job, partial, summary)
    from qtapp.engine.export.common import custom_code_warning

    dropped = custom_code_warning(info.config)
    if dropped is not None:
        emit(ev.Log(level="warning", message=f"{info.name}: {dropped}"))
    if job.method == "awq":
        from qtapp.engine.quant.pipeline import gather_awq_search

        search = gather_awq_search(store, info.n_layers,
                                   lambda i: f"{info.arch.layers_prefix}.{i}.",
                                   partial / "awq_search" / "search.safetensors")
        if search is not None:
            files = [*files, search, search.with_suffix(".json")]
    summary["files"] = sorted({str(Path(f).relative_to(partial)) for f in files})
    if job.evaluate:
        summary.update(_evaluate(job, info, partial, emit, should_cancel))
    from qtapp.engine.export.model_card import write_model_card
    from qtapp.engine.quality.evaluate import folder_size

    summary["size_bytes"] = folder_size(partial)
    summary["source_size_bytes"] = info.size_bytes
    write_model_card(partial, job, info, summary)
    summary["files"] = sorted({*summary["files"], "README.md"})
    if should_cancel():  # keep the checkpoint: a cancelled job resumes without re-quantizing
        from qtapp.engine.errors import Cancelled

        raise Cancelled()
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _evaluate(job: JobSpec, info: ModelInfo, folder: Path, emit: Emit,
              should_cancel: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    return _quality(folder, info, emit, should_cancel, job.trust_remote_code)


def _quality(model: Path, info: ModelInfo, emit: Emit,
             should_cancel: Callable[[], bool] = lambda: False,
             trust_remote_code: bool = False) -> dict[str, Any]:
    """The quality gate against the source (qtapp.engine.quality.gate), as summary entries."""
    from qtapp.engine.quality.gate import quality_report

    def progress(message: str) -> None:
        emit(ev.Progress(step=info.n_layers, total=info.n_layers, stage="evaluate",
                         message=message))

    progress("quality gate: perplexity, KL divergence and generation against the source")
    r = quality_report(model, info.path, progress=progress, should_cancel=should_cancel,
                       trust_remote_code=trust_remote_code)
    emit(ev.Log(level="info" if r.verdict == "good" else "warning",
                message=f"quality {r.summary()}" + "".join(f"; {x}" for x in r.reasons)))
    return {"ppl": round(r.ppl, 4), "ppl_source": round(r.ppl_source, 4),
            "kld_mean": round(r.kld_mean, 5), "kld_p99": round(r.kld_p99, 5),
            "top1_agree": round(r.top1_agree, 2), "verdict": r.verdict,
            "verdict_reasons": r.reasons,
            "generation": [{"prompt": c.prompt, "text": c.text, "flags": c.flags}
                           for c in r.generation]}


def _run_gguf(job: JobSpec, info: ModelInfo, partial: Path, emit: Emit,
              should_cancel: Callable[[], bool], tokens: Any = None) -> dict[str, Any]:
    from qtapp.engine.gguf.hf_model import HfModel
    from qtapp.engine.gguf.imatrix import (
        ImatrixCollector,
        bos_token_id,
        read_imatrix,
        with_bos,
        write_imatrix,
    )
    from qtapp.engine.gguf.llama_runtime import write_modelfile
    from qtapp.engine.gguf.output import (
        chat_template_of,
        imatrix_is_useful,
        overrides_from_rules,
    )
    from qtapp.engine.gguf.quantize import quantize_to_gguf
    from qtapp.engine.quant.pipeline import collect_input_stats, pick_device

    ftype = job.gguf.type
    overrides = overrides_from_rules(job.rules)
    imatrix = None
    if job.gguf.imatrix not in ("auto", "none"):
        imatrix = read_imatrix(Path(job.gguf.imatrix).expanduser())
        emit(ev.Log(level="info", message=f"importance matrix from {job.gguf.imatrix} "
                    f"({len(imatrix)} entries)"))
    elif job.gguf.imatrix == "auto" and imatrix_is_useful(ftype, overrides):
        # Streamed through the layer pipeline: never the whole float model in memory.
        if tokens is None:
            tokens = calibration_tokens(job, info, emit)
        tokenizer = load_tokenizer(info.path, job.trust_remote_code)
        tokens = with_bos(tokens, bos_token_id(tokenizer))
        hf = HfModel(info.path)
        collector = ImatrixCollector()
        collect_input_stats(info, tokens,
                            lambda name, x: collector.add(hf.gguf_name(name + ".weight"), x),
                            emit, should_cancel, pick_device(job.device))
        imatrix = collector.to_imatrix(f"quantdesk:{job.calibration.source}",
                                       int(tokens.shape[1]))
    partial.mkdir(parents=True)
    stem = f"{info.name}-{ftype}".replace("/", "_")
    out_file = partial / f"{stem}.gguf"
    def progress(tensor: str, done: int, n: int) -> None:
        if done % 8 == 0 or done == n:
            emit(ev.Progress(step=done, total=n, stage="gguf", message=tensor))

    report = quantize_to_gguf(info.path, out_file, ftype, imatrix, overrides or None,
                              progress, should_cancel)
    files = [out_file.name]
    if imatrix is not None:
        write_imatrix(imatrix, partial / "imatrix.gguf")
        files.append("imatrix.gguf")
    summary: dict[str, Any] = {
        "method": "gguf", "format": "gguf", "model": info.name, "source": str(info.path),
        "gguf_type": ftype, "gguf_file": out_file.name, "tensor_types": report.types(),
        "imatrix": imatrix is not None, "overrides": overrides,
        "quantize_seconds": round(report.seconds, 2),
        "mixed": job.is_mixed, "size_bytes": report.size_bytes,
        "source_size_bytes": info.size_bytes,
    }
    files.append(write_modelfile(partial, out_file.name, chat_template_of(info.path)).name)
    if job.evaluate:
        summary.update(_evaluate_gguf(info, out_file, emit, should_cancel))
    from qtapp.engine.export.model_card import write_model_card

    write_model_card(partial, job, info, summary)
    summary["files"] = sorted({*files, "README.md"})
    return summary


def _evaluate_gguf(info: ModelInfo, gguf_file: Path, emit: Emit,
                   should_cancel: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    return _quality(gguf_file, info, emit, should_cancel)
