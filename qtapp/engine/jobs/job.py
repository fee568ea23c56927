"""One quantization job from start to finish: the function the worker and the CLI call.

resolve model → check output path → calibration tokens → quantize (layer streaming, with a
resumable checkpoint) → export into a hidden temporary folder beside the output →
evaluate → model card → atomic rename. Nothing is ever written into the source model, and
a failed or cancelled job leaves no output folder behind.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtapp.engine import events as ev
from qtapp.engine import export
from qtapp.engine.config import JobSpec
from qtapp.engine.errors import check_cancel
from qtapp.engine.events import Emit
from qtapp.engine.export.common import custom_code_warning
from qtapp.engine.export.model_card import write_model_card
from qtapp.engine.model.loader import load_tokenizer, remote_code_warning
from qtapp.engine.model.sources import ModelInfo, cache_root, resolve_model
from qtapp.engine.outputs import (
    check_output_path,
    drop_strays,
    is_disk_full,
    job_disk_full_error,
    lock_checkpoint,
    lock_output,
    partial_path,
    replace_output,
)
from qtapp.engine.planning.allocate import plan_for_job
from qtapp.engine.planning.compat import chat_warnings
from qtapp.engine.planning.planner import (
    Plan,
    StagePeaks,
    job_vram_mode,
    plan_job,
    track_stage_peaks,
)
from qtapp.engine.quality.evaluate import folder_size
from qtapp.engine.quality.gate import quality_report
from qtapp.engine.quant.calibration import calibration_tokens
from qtapp.engine.quant.pipeline import collect_input_stats, gather_awq_search, quantize_blocks
from qtapp.engine.quant.qstore import QuantStore, checkpoint_dir, job_fingerprint
from qtapp.engine.quant.streaming import pick_device
from qtapp.engine.results import (
    ExportResult,
    GGUFDetails,
    JobResult,
    Measured,
    Quality,
    Resources,
    Sizes,
)
from qtapp.engine.units import format_size


def check_plan(job: JobSpec, info: ModelInfo, out: Path) -> Plan | None:
    """The one check before a job starts: the planner's plan (memory against what this
    machine has now, disk, group sizes, the output folder); a job that does not fit is
    refused with the plan's problems and fixes, as `quantdesk quantize` and the window refuse
    it, unless the user overrode the plan (job.ignore_plan). Returns the plan (None when
    overridden: nothing was planned)."""
    if job.ignore_plan:
        return None
    plan = plan_job(job, info, out=out)
    if not plan.fits:
        raise plan.refusal()
    return plan


def run_job(job: JobSpec, emit: Emit, should_cancel: Callable[[], bool],
            tokens: Any = None) -> JobResult:
    """Run `job` and return its result (qtapp.engine.results.JobResult); `tokens` (n, L)
    replaces the calibration sampling (benchmarks use it)."""
    t0 = time.perf_counter()
    job.validate()
    emit, stage_peaks = track_stage_peaks(emit)
    out = Path(job.out).expanduser().resolve()
    info = resolve_model(job.model, allow_pickle=job.allow_pickle)
    check_output_path(out, info.path, job.overwrite)
    with lock_output(out):  # held until the job ends: a second job on `out` is refused
        check_output_path(out, info.path, job.overwrite)  # the last holder may have written it
        return _run_locked(job, info, out, emit, should_cancel, tokens, t0, stage_peaks)


def _run_locked(job: JobSpec, info: ModelInfo, out: Path, emit: Emit,
                should_cancel: Callable[[], bool], tokens: Any, t0: float,
                stage_peaks: StagePeaks) -> JobResult:
    checked = check_plan(job, info, out)
    emit(ev.Started(model=info.name, method=job.method, out=str(out),
                    total_steps=info.n_layers, job=job.to_dict()))
    _warn_unsafe_options(job, info, emit)
    for warning in chat_warnings(info.path):
        emit(ev.Log(level="warning", message=f"{info.name}: {warning}"))
    emit(ev.Log(level="info", message=f"{info.name}: {info.arch.name}, {info.n_layers} blocks, "
                f"{info.n_params / 1e6:.1f} M parameters, {format_size(info.size_bytes)}"))
    plan = None
    if job.target_bytes or job.target_bpw:
        job, tokens, plan = plan_for_job(job, info, tokens,
                                         lambda: calibration_tokens(job, info, emit),
                                         emit, should_cancel)
    predicted = _resource_plan(job, info, out, emit, checked if plan is None else None)
    partial = partial_path(out)
    if partial.exists():
        shutil.rmtree(partial)
    try:
        if job.method == "gguf":
            result = _run_gguf(job, info, partial, emit, should_cancel, tokens)
        else:
            result = _run_linear_method(job, info, partial, emit, should_cancel, tokens)
        check_cancel(should_cancel)
        drop_strays(partial, result.export.files, emit)
        replace_output(partial, out)
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        if is_disk_full(e):
            raise job_disk_full_error(e, out, cache_root() / "jobs") from None
        raise
    seconds = round(time.perf_counter() - t0, 2)
    from qtapp.engine.planning.planner import peak_rss  # of this process: the worker runs one job

    stage_peaks.finish()
    measured = Measured(peak_ram=peak_rss(), seconds=seconds,
                        stage_peak_ram=dict(stage_peaks.peaks),
                        stage_seconds=dict(stage_peaks.seconds))
    result = dataclasses.replace(result, plan=plan, out=str(out), seconds=seconds,
                                 resources=Resources(predicted=predicted, measured=measured))
    for f in result.export.files:
        p = out / f
        if p.exists():
            emit(ev.Artifact(path=str(p), kind=p.suffix.lstrip(".") or "file",
                             bytes=p.stat().st_size))
    return result


def _resource_plan(job: JobSpec, info: ModelInfo, out: Path, emit: Emit,
                   plan: Plan | None = None) -> dict[str, Any]:
    """The planner's prediction (`plan` when check_plan made it for this job): the figure
    the window and `--dry-run` show for the same job (the last probe of this job on this
    machine, else the formulas at this machine's recorded rate), logged and kept for the
    result beside the measured (JobResult.resources)."""
    plan = plan or plan_job(job, info, out=out)
    emit(ev.Log(level="info", message=plan.table()))
    return {k: v for k, v in plan.to_dict().items()
            if k in ("peak_ram", "peak_vram", "temp_disk", "final_disk", "seconds", "device",
                     "probed", "block_seconds")}


def _warn_unsafe_options(job: JobSpec, info: ModelInfo, emit: Emit) -> None:
    if job.allow_pickle:
        emit(ev.Log(level="warning", message="pickle weights are allowed (--allow-pickle): "
                    "*.bin/*.pt files are read with torch.load(weights_only=True), which loads "
                    "only tensors, but pickle is still a code-execution format; use it only "
                    "for models from authors you trust"))
    if job.trust_remote_code:
        emit(ev.Log(level="warning", message=remote_code_warning(info.path)))


def _run_linear_method(job: JobSpec, info: ModelInfo, partial: Path, emit: Emit,
                       should_cancel: Callable[[], bool], tokens: Any = None,
                       ) -> JobResult:
    device = pick_device(job.device)
    fmt = export.resolve_format(job, info.path)
    if tokens is None:  # RTN embeds only the few samples of its error chart
        c = job.calibration
        streamed = dataclasses.replace(c, samples=job.quantize_samples)
        tokens = calibration_tokens(dataclasses.replace(job, calibration=streamed), info, emit)
    work = checkpoint_dir(job, info)
    # held until the checkpoint is removed: a second job with the same settings would
    # corrupt it
    with lock_checkpoint(work):
        return _quantize_and_export(job, info, partial, emit, should_cancel, tokens, device,
                                    fmt, work)


def _quantize_and_export(job: JobSpec, info: ModelInfo, partial: Path, emit: Emit,
                         should_cancel: Callable[[], bool], tokens: Any, device: Any, fmt: str,
                         work: Path) -> JobResult:
    store = QuantStore(work / "blocks", fingerprint=job_fingerprint(job, info))
    emit(ev.Log(level="info", message=f"device {device}; checkpoint in {work}"))
    mode, resident = "", 0
    if device.type == "cuda":
        mode, why, resident = job_vram_mode(job, info)
        emit(ev.Log(level="info", message=f"VRAM mode {why}"))
    t_quantize = time.perf_counter()
    quantize_blocks(job, info, tokens, store, emit, should_cancel, device, lean=mode == "lean",
                    reuse_attention=mode != "fast-recompute", resident=resident)
    t_quantize = time.perf_counter() - t_quantize
    emit(ev.Progress(step=info.n_layers, total=info.n_layers, stage="export",
                     message=f"writing the {fmt} checkpoint"))
    exported = export.export_checkpoint(fmt, info.path, store, job, partial)
    files = exported.files
    dropped = custom_code_warning(info.config)
    if dropped is not None:
        emit(ev.Log(level="warning", message=f"{info.name}: {dropped}"))
    if job.method == "awq":
        search = gather_awq_search(store, info.n_layers,
                                   lambda i: f"{info.arch.layers_prefix}.{i}.",
                                   partial / "awq_search" / "search.safetensors")
        if search is not None:
            files = [*files, *(str(p.relative_to(partial))
                               for p in (search, search.with_suffix(".json")))]
    quality = _evaluate(job, info, partial, emit, should_cancel) if job.evaluate else None
    result = JobResult(
        model=info.name, source=str(info.path), method=job.method,
        export=dataclasses.replace(exported, files=sorted({*files, "README.md"})),
        scheme=job.scheme.label, mixed=job.is_mixed,
        calibration=[min(int(tokens.shape[0]), job.quantize_samples), int(tokens.shape[1])],
        quantize_seconds=round(t_quantize, 2),
        sizes=Sizes(bytes=folder_size(partial), source_bytes=info.size_bytes), quality=quality)
    write_model_card(partial, job, info, result)
    # keep the checkpoint: a cancelled job resumes without re-quantizing
    check_cancel(should_cancel)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _evaluate(job: JobSpec, info: ModelInfo, folder: Path, emit: Emit,
              should_cancel: Callable[[], bool] = lambda: False) -> Quality:
    return _quality(folder, info, emit, should_cancel, job.trust_remote_code)


def _quality(model: Path, info: ModelInfo, emit: Emit,
             should_cancel: Callable[[], bool] = lambda: False,
             trust_remote_code: bool = False) -> Quality:
    """The quality gate against the source (qtapp.engine.quality.gate), for the result. Its
    progress events count the gate's own windows and generation checks (not the blocks
    quantized before it), with the time left from their rate so far."""
    now = {"done": 0, "total": 0, "message": "", "t0": time.perf_counter()}

    def report() -> None:
        done, total = now["done"], now["total"]
        rate_known = done > 0 and total > done
        eta = (time.perf_counter() - now["t0"]) / done * (total - done) if rate_known else None
        emit(ev.Progress(step=done, total=total, stage="evaluate", message=now["message"],
                         eta_s=eta))

    def progress(message: str) -> None:
        now["message"] = message
        report()

    def steps(done: int, total: int) -> None:
        if done == 0:  # the count starts when the gate knows its total
            now["t0"] = time.perf_counter()
        now["done"], now["total"] = done, total
        report()

    progress("quality gate: perplexity, KL divergence and generation against the source")
    r = quality_report(model, info.path, progress=progress, should_cancel=should_cancel,
                       trust_remote_code=trust_remote_code, steps=steps)
    emit(ev.Log(level="info" if r.verdict == "good" else "warning",
                message=f"quality {r.summary()}" + "".join(f"; {x}" for x in r.reasons)))
    return Quality(ppl=round(r.ppl, 4), ppl_source=round(r.ppl_source, 4),
                   kld_mean=round(r.kld_mean, 5), kld_p99=round(r.kld_p99, 5),
                   top1_agree=round(r.top1_agree, 2), verdict=r.verdict,
                   reasons=list(r.reasons),
                   generation=[{"prompt": c.prompt, "text": c.text, "flags": c.flags}
                               for c in r.generation])


def _run_gguf(job: JobSpec, info: ModelInfo, partial: Path, emit: Emit,
              should_cancel: Callable[[], bool], tokens: Any = None) -> JobResult:
    # The GGUF modules are imported here: they load the gguf package, which only GGUF jobs need.
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
        IMATRIX_FILE,
        chat_template_of,
        imatrix_is_useful,
        overrides_from_rules,
    )
    from qtapp.engine.gguf.quantize import quantize_to_gguf

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
                            lambda name, x: collector.add_source(hf, name + ".weight", x),
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
        (partial / IMATRIX_FILE).parent.mkdir()
        write_imatrix(imatrix, partial / IMATRIX_FILE)
        files.append(IMATRIX_FILE)
    files.append(write_modelfile(partial, out_file.name, chat_template_of(info.path)).name)
    quality = _evaluate_gguf(info, out_file, emit, should_cancel) if job.evaluate else None
    result = JobResult(
        model=info.name, source=str(info.path), method="gguf",
        export=ExportResult(format="gguf", files=sorted({*files, "README.md"})),
        mixed=job.is_mixed, quantize_seconds=round(report.seconds, 2),
        calibration=([int(tokens.shape[0]), int(tokens.shape[1])]
                     if imatrix is not None and job.gguf.imatrix == "auto" else None),
        sizes=Sizes(bytes=report.size_bytes, source_bytes=info.size_bytes), quality=quality,
        gguf=GGUFDetails(type=ftype, file=out_file.name, tensor_types=report.types(),
                         imatrix=imatrix is not None, overrides=overrides))
    write_model_card(partial, job, info, result)
    return result


def _evaluate_gguf(info: ModelInfo, gguf_file: Path, emit: Emit,
                   should_cancel: Callable[[], bool] = lambda: False) -> Quality:
    return _quality(gguf_file, info, emit, should_cancel)
