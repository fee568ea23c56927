"""`quantdesk quantize`: build a JobSpec from flags and run it with a progress bar or JSON."""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from qtapp.engine import events as ev
from qtapp.engine.config import (
    BITS,
    GGUF_TYPES,
    METHODS,
    PRESETS,
    CalibrationSpec,
    ConfigError,
    GGUFOptions,
    GPTQOptions,
    JobSpec,
    QuantScheme,
    preset_rules,
    rules_from_json,
)
from qtapp.engine.errors import UserError
from qtapp.engine.jobs.client import WorkerClient
from qtapp.engine.jobs.worker import EXIT_BUSY, CancelFlag, execute
from qtapp.engine.model.arch import (
    auto_group_size,
    check_group_sizes,
    linear_input_widths,
    method_refusal,
)
from qtapp.engine.outputs import check_output_free, check_output_path, sweep_job_dirs
from qtapp.engine.planning.planner import plan_job
from qtapp.engine.results import JobResult
from qtapp.engine.units import format_duration, format_size, parse_size

# Engine modules that import torch are imported inside the functions that run the command: the
# command line imports every command module at start-up, to build its parser.


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a model (RTN, GPTQ, AWQ or GGUF)",
                       description="Quantize MODEL ('demo', a local folder or a Hub id) into "
                       "--out, a folder that does not exist yet.")
    p.add_argument("--model", required=True, help="'demo', a local folder or a Hub id")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, help="output folder (must not exist yet)")
    p.add_argument("--bits", type=int, default=4,
                   help=f"bits per weight: {', '.join(map(str, BITS))} (default 4)")
    p.add_argument("--group-size", type=_group_size, default="auto",
                   help="input columns per scale: 16, 32, 64, 128, 256, 512 or 1024; -1 one "
                   "scale per output channel, 0 per tensor. It must divide the input width of "
                   "every quantized layer. Default auto: 128 when it does, else the largest "
                   "of 64 and 32 that does (64 for the demo, which is 576 wide), else -1. "
                   "Rules and presets without a group size of their own use this one")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=None)
    sym.add_argument("--asym", dest="sym", action="store_false")
    p.add_argument("--type", default="Q4_K_M", choices=GGUF_TYPES, help="GGUF type")
    p.add_argument("--imatrix", default="auto", help="GGUF: auto, none or an imatrix file")
    p.add_argument("--preset", choices=tuple(PRESETS), help="mixed precision preset")
    p.add_argument("--rules", type=Path, help="JSON file of per-module rules")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-size", metavar="SIZE",
                        help="size budget of the written model (e.g. 90MiB, 4.5GB): every "
                        "module gets the scheme that minimises the predicted degradation; "
                        "the plan is shown before quantizing")
    budget.add_argument("--target-bpw", type=float, metavar="X",
                        help="the same budget as bits per parameter of the written model "
                        "(e.g. 4.5)")
    p.add_argument("--calibration", default="builtin", help="builtin, or a .txt/.jsonl file")
    p.add_argument("--samples", type=int, default=128,
                   help="calibration samples (512 is the usual choice on a GPU)")
    p.add_argument("--seq-len", type=int, default=512)
    defaults = GPTQOptions()
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction,
                   default=defaults.act_order, help="GPTQ: columns in order of activation "
                   "size (desc_act)")
    p.add_argument("--static-groups", action=argparse.BooleanOptionalAction,
                   default=defaults.static_groups,
                   help="GPTQ: group ranges fixed before the sweep (g_idx stays trivial)")
    p.add_argument("--mse", action=argparse.BooleanOptionalAction, default=defaults.mse,
                   help="GPTQ: search each group's range instead of min/max")
    p.add_argument("--percdamp", type=float, default=0.01, help="GPTQ dampening")
    p.add_argument("--format", dest="export_format", default="auto",
                   choices=("auto", "gptq", "awq", "compressed-tensors"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--max-vram", metavar="SIZE",
                   help="the most GPU memory the job may take (e.g. 8GiB); above what the "
                        "fast mode needs, calibration activations stay in host memory "
                        "(lean mode). Default: what the GPU allows")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the quality gate (perplexity, KL divergence against the source, "
                   "generation check)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept *.bin/*.pt pickle weights (read with weights_only=True); only "
                   "for models you trust")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let Python code shipped with the model run (custom tokenizers); "
                   "off by default, only for models you trust")
    p.add_argument("--worker", action="store_true",
                   help="run in a child worker process (as the window does)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the job spec, and the memory, disk and time plan (timed on one "
                   "block), and stop")
    p.add_argument("--ignore-plan", action="store_true",
                   help="start even when the plan says the job does not fit")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")


def _group_size(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a whole "
                                         "number") from None


SCHEME_FLAGS = {"bits": "--bits", "group_size": "--group-size", "sym": "--sym/--asym"}


def _check_scheme_flags(scheme: QuantScheme) -> None:
    """QuantScheme.validate, its error naming the flag the user typed (--bits, not
    scheme.bits)."""
    try:
        scheme.validate("scheme")
    except ConfigError as e:
        field = e.path.rsplit(".", 1)[-1]
        raise UserError(f"{SCHEME_FLAGS.get(field, e.path)}: "
                        f"{str(e).removeprefix(e.path + ': ')}") from None


def job_from_args(args: argparse.Namespace) -> JobSpec:
    """The job the flags describe, checked against the model before anything runs: the
    output folder must be writable, and each group size must divide the input width of every
    layer it quantizes (--group-size auto picks one that does). UserError otherwise."""
    out = Path(args.out).expanduser().resolve()
    # first, before torch loads and the model is read; a local source is named before an
    # existing output (--overwrite must never be the advice when the output is the source)
    local = Path(args.model).expanduser()
    if local.exists():
        check_output_path(out, local, args.overwrite, create=False)
    else:
        check_output_free(out, args.overwrite)
    from qtapp.engine.model.sources import resolve_model
    sym = args.sym if args.sym is not None else args.method != "awq"
    group = args.group_size
    _check_scheme_flags(QuantScheme(bits=args.bits, sym=sym,
                                    group_size=128 if group == "auto" else group))
    info = resolve_model(args.model, allow_pickle=args.allow_pickle)
    check_output_path(out, info.path, args.overwrite, create=False)
    if group == "auto":
        group = auto_group_size(linear_input_widths(info.config).values())
    scheme = QuantScheme(bits=args.bits, group_size=group, sym=sym)
    rules: tuple = ()
    if args.preset:
        rules += preset_rules(args.preset, scheme)
    if args.rules:
        try:
            text = args.rules.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the rules file {args.rules}: {e}") from None
        rules += rules_from_json(text, str(args.rules), base=scheme)
    job = JobSpec(
        model=args.model, method=args.method, out=args.out, scheme=scheme, rules=rules,
        gptq=GPTQOptions(percdamp=args.percdamp, act_order=args.act_order,
                         static_groups=args.static_groups, mse=args.mse),
        gguf=GGUFOptions(type=args.type, imatrix=args.imatrix),
        target_bytes=parse_size(args.target_size) if getattr(args, "target_size", None)
        else 0,
        target_bpw=getattr(args, "target_bpw", None) or 0.0,
        calibration=CalibrationSpec(source=args.calibration, samples=args.samples,
                                    seq_len=args.seq_len),
        export_format=args.export_format, device=args.device, evaluate=not args.no_eval,
        resume=not args.no_resume, overwrite=args.overwrite,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
        ignore_plan=args.ignore_plan,
        max_vram=parse_size(args.max_vram) if getattr(args, "max_vram", None) else 0,
    ).validate()
    check_group_sizes(job, info.config)
    refusal = method_refusal(job.method, info.config)
    if refusal:
        raise UserError(refusal)
    return job


class ProgressPrinter:
    """Renders events as a one-line progress bar with ETA, plus the final summary."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced
        self.tty = self.stream.isatty()
        self.last = ""

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            frac = event.step / max(event.total, 1)
            bar = "#" * int(frac * 30)
            eta = f" ETA {format_duration(event.eta_s)}" if event.eta_s else ""
            line = f"[{bar:<30}] {event.stage} {event.message}{eta}"
            self._line(line)
        elif isinstance(event, ev.Log) and event.level in ("warning", "error"):
            self._print(f"{event.level}: {event.message}")
        elif isinstance(event, ev.Log) and event.level == "notice":
            self._print(event.message)
        elif isinstance(event, ev.Started):
            self._print(f"quantizing {event.model} with {event.method} → {event.out}")
        elif isinstance(event, ev.Result):
            self._print(f"done in {format_duration(event.seconds)}: {event.out}")
            self._print_result(JobResult.from_dict(event.summary))
        elif isinstance(event, ev.Failed):
            self._print(f"error: {event.message}")
        elif isinstance(event, ev.Cancelled):
            self._print(event.message)

    def _print_result(self, r: JobResult) -> None:
        if r.sizes is not None:
            self._print(f"  size {format_size(r.sizes.bytes)}"
                        + (f" (source {format_size(r.sizes.source_bytes)})"
                           if r.sizes.source_bytes else ""))
        q = r.quality
        if q is not None and q.ppl is not None:
            self._print(f"  perplexity {q.ppl:.3f}"
                        + (f" (source {q.ppl_source:.3f})" if q.ppl_source is not None else ""))
        planned = (r.resources.predicted.get("seconds") if r.resources is not None
                   else None)
        if planned and r.seconds:
            self._print(f"  time {format_duration(r.seconds)} (planned "
                        f"{format_duration(planned)})")
        if q is not None and q.verdict:
            self._print(f"  quality {q.verdict}"
                        + (f": {'; '.join(q.reasons)}" if q.reasons else ""))

    def _line(self, line: str) -> None:
        if self.tty:
            self._write("\r" + line[:120].ljust(len(self.last)))
            self.last = line[:120]
        elif line != self.last:
            self._write(line + "\n")
            self.last = line

    def _print(self, text: str) -> None:
        if self.tty and self.last:
            self._write("\n")
            self.last = ""
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:  # the terminal was closed (SIGHUP) or the reader went away: the
            pass         # job still stops cleanly, with no one left to read about it


def run(args: argparse.Namespace) -> int:
    # Until the job starts, SIGTERM and SIGHUP (a closed terminal) stop it as Ctrl+C does.
    with _on_stop_signals(_interrupt, ("SIGTERM", "SIGHUP")):
        job = job_from_args(args)
        if job.target_bytes or job.target_bpw:
            job = _plan(job, args.json)
        _check_input_files(job)  # cheap, before the plan measures this machine
        if args.dry_run or not job.ignore_plan:
            _resource_plan(job, probe=args.dry_run, refuse=not args.dry_run)
    if args.dry_run:
        print(job.to_json())
        return 0
    if args.json:
        def render(e: ev.Event) -> None:
            try:
                print(ev.encode(e), flush=True)
            except OSError:  # no one is reading any more; the job still ends cleanly
                pass
    else:
        render = ProgressPrinter()
    sweep_job_dirs()  # job folders of earlier runs that were killed before removing theirs
    if args.worker:
        return _run_in_worker(job, render)
    return _run_in_process(job, render)


def _check_input_files(job: JobSpec) -> None:
    """Read the calibration text and the importance matrix the job names, so that a bad file
    is one clear error before any work (the job reads them again when it runs)."""
    from qtapp.engine.gguf.imatrix import read_imatrix
    from qtapp.engine.quant.calibration import load_text
    load_text(job.calibration.source)
    if job.method == "gguf" and job.gguf.imatrix not in ("auto", "none"):
        read_imatrix(Path(job.gguf.imatrix).expanduser())


def _resource_plan(job: JobSpec, probe: bool, refuse: bool) -> None:
    """Show the memory, disk and time plan on stderr (a dry run times one block); refuse a
    job that does not fit unless --ignore-plan (the job runner's check_plan makes the same
    check, with the same override, job.ignore_plan, before the job starts)."""
    from qtapp.engine.model.sources import resolve_model
    plan = plan_job(job, resolve_model(job.model, allow_pickle=job.allow_pickle), probe=probe)
    if probe or not plan.fits:
        print(plan.table(), file=sys.stderr)
    if refuse and not plan.fits:
        raise plan.refusal()


def _plan(job: JobSpec, as_json: bool) -> JobSpec:
    """Plan a budgeted job (refusing an impossible budget first) and show the plan; the job
    that runs carries the plan as ordinary per-module rules."""
    from qtapp.engine.planning.allocate import plan_before_running

    def show(e: ev.Event) -> None:
        if as_json:
            print(ev.encode(e), flush=True)
        elif isinstance(e, ev.Progress):
            printer(e)

    printer = ProgressPrinter()
    planned, plan = plan_before_running(job, show)
    if as_json:
        for line in plan.table().splitlines():
            show(ev.Log(level="info", message=f"plan: {line}"))
    else:
        printer._print(plan.table())
    return planned


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
CANCEL_GRACE_S = 30.0  # a worker asked to stop is killed if it has not stopped by then


@contextmanager
def _on_stop_signals(handler, names=STOP_SIGNALS):
    """Install `handler` for the named signals (those this platform has), then restore."""
    previous = {}
    for name in names:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def _cancelled_exit(reason: str) -> int:
    """128 + the signal that stopped the job (130 Ctrl+C, 143 SIGTERM, 129 SIGHUP)."""
    sig = getattr(signal, reason, None) if reason.startswith("SIG") else None
    return 128 + int(sig) if sig is not None else 130


def _run_in_process(job: JobSpec, render) -> int:
    """Run the job here. Ctrl+C, SIGTERM and SIGHUP cancel it: the job stops within a few
    seconds, removes its partial output, keeps its checkpoint and says so in one line."""
    flag = CancelFlag()
    with _on_stop_signals(flag.set):
        code = execute(job, render, flag)
    if code == 3:
        return _cancelled_exit(flag.reason)
    return {0: 0, EXIT_BUSY: 2}.get(code, 1)


def _run_in_worker(job: JobSpec, render) -> int:
    """Run the job in a worker process through the worker client, as the window does. A stop
    signal to this command reaches the worker as a cancel (`cancel SIGTERM`), and the worker
    is killed when it has not stopped CANCEL_GRACE_S later; the client removes the job folder
    whatever happens and ends the events with one final event (its own, printed like the
    worker's, when the worker stopped without one)."""
    client = WorkerClient(job, kill_after_s=CANCEL_GRACE_S)
    client.start()
    with _on_stop_signals(lambda signum, _frame: client.cancel(signal.Signals(signum).name)):
        for event in client.events():
            render(event)
    ending = client.ending
    assert ending is not None
    final = ending.final
    if isinstance(final, ev.Cancelled):
        return _cancelled_exit(ending.cancel_reason)
    if isinstance(final, ev.Failed) and final.kind == "busy":
        return 2
    return 0 if final.type == "result" else 1
