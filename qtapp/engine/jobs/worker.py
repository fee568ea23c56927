"""Child-process entry: a JobSpec in, JSON-line events out.

    python -m qtapp.engine.jobs.worker --job JOB.json      (or `quantdesk worker --job JOB.json`)
    python -m qtapp.engine.jobs.worker --job JOB.json --plan

With --plan the job does not run: the planner times its first block on this machine
(planner.plan_job with probe=True, as `quantdesk quantize --dry-run` does), and the worker
writes one `plan` event (Plan.to_dict()) followed by `result` with `out` "" (nothing was
written). A plan run does not watch for `cancel`: SIGTERM ends it at once.

fd 1 carries only events (one JSON object per line, events.encode); everything else any
library prints goes to stderr. A line `cancel` (or `cancel SIGTERM`, naming why) on stdin,
SIGTERM, SIGHUP or SIGINT asks the job to stop within a few seconds; it then cleans up and
emits `cancelled`. So does the parent's death (seen as this process being re-parented, or as
events that can no longer be written): an orphaned worker stops quietly, removes its
partial output and its job folder, and keeps its checkpoint.

The final-event rule: every run, with --plan or without, ends with exactly one final event
(events.FINAL_TYPES: `result`, `failed` or `cancelled`; a plan run `result` or `failed`) and
writes nothing after it. A worker that exits without one was killed or crashed; the client
that started it (jobs/client.py, for the window, the command line and the plan probe) then
reports that as one final event of its own. Exit codes: 0 result, 1 failed, 2 bad job file
(and, with --plan, a job the planner refuses), 3 cancelled, 4 another job is writing the
same output or checkpoint.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import psutil

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.errors import Busy, Cancelled, UserError
from qtapp.engine.events import Emit
from qtapp.engine.outputs import JOB_DIR_PREFIX
from qtapp.engine.planning.planner import plan_job

# The job runner (jobs.job) and model.sources import torch: they are imported inside the functions
# that run a job or a plan, so that the command line, which imports this module at start-up,
# starts without torch.

EXIT_BUSY = 4
SIGNAL_WORDS = {"SIGTERM": "SIGTERM (a request to stop)",
                "SIGHUP": "SIGHUP (the terminal was closed)"}


class CancelFlag:
    """A cancel request, callable as `should_cancel`. `set` is also a signal handler; the
    first reason given (a signal's name, "parent exited") is kept for the message."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, signum: object = None, _frame: object = None) -> None:
        if not self._event.is_set():
            if isinstance(signum, int):
                self.reason = signal.Signals(signum).name
            elif isinstance(signum, str):
                self.reason = signum
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


def cancel_message(reason: str) -> str:
    """What a cancelled job says, by why it was cancelled (see CancelFlag.reason)."""
    if reason in SIGNAL_WORDS:
        return f"cancelled by {SIGNAL_WORDS[reason]}; no output was written"
    return ev.Cancelled.message


class EventWriter:
    """Writes events to a private duplicate of fd 1, then points fd 1 at stderr.

    When the reader is gone (the parent died: EPIPE), `on_broken` is called once and later
    events are dropped, without a traceback."""

    def __init__(self, on_broken: Callable[[], None] | None = None) -> None:
        sys.stdout.flush()
        self._out: TextIO = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
        self._lock = threading.Lock()
        self.on_broken = on_broken
        self.broken = False

    def __call__(self, event: ev.Event) -> None:
        self.write_line(ev.encode(event))

    def write_line(self, line: str) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except OSError as e:
                if not isinstance(e, BrokenPipeError) and e.errno not in (errno.EPIPE,
                                                                          errno.EINVAL):
                    raise
                self._break()
        if self.broken and self.on_broken is not None:
            self.on_broken()

    def _break(self) -> None:
        self.broken = True
        old, self._out = self._out, open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        try:  # the buffered text can no longer be written: drop it, then close quietly
            os.dup2(self._out.fileno(), old.fileno())
            old.close()
        except OSError:
            pass


def _watch_stdin(flag: CancelFlag) -> None:
    try:
        for line in sys.stdin:
            words = line.split()
            if words and words[0].lower() == "cancel":
                flag.set(words[1] if len(words) > 1 else None)
                return
    except (OSError, ValueError):
        return


def _watch_parent(flag: CancelFlag, interval_s: float = 0.5) -> None:
    """Cancel when the process that started this one is gone (on POSIX an orphan is
    re-parented, so its parent id changes; elsewhere the parent's id stops existing)."""
    parent = os.getppid()
    while not flag():
        if os.name == "posix":
            gone = os.getppid() != parent
        else:
            gone = not psutil.pid_exists(parent)
        if gone:
            flag.set("parent exited")
            return
        threading.Event().wait(interval_s)


def execute(job: JobSpec, emit: Emit,
            should_cancel: Callable[[], bool]) -> int:
    """Run a job, turning every outcome into exactly one final event; returns the exit code."""
    from qtapp.engine.jobs.job import run_job

    try:
        result = run_job(job, emit, should_cancel)
    except Cancelled:
        emit(ev.Cancelled(message=cancel_message(getattr(should_cancel, "reason", ""))))
        return 3
    except Exception as e:  # noqa: BLE001 - every crash must become a failed event
        failed = failed_event(e)
        emit(failed)
        return EXIT_BUSY if failed.kind == "busy" else 1
    emit(ev.Result(out=result.out, seconds=result.seconds or 0.0, summary=result.to_dict()))
    return 0


def failed_event(e: BaseException) -> ev.Failed:
    """The `failed` event that ends a run which raised `e`: "busy" for Busy, "user" for a
    UserError or the machine running out of memory, else "internal" with the traceback."""
    if isinstance(e, Busy):
        return ev.Failed(message=str(e), kind="busy")
    if isinstance(e, UserError):
        return ev.Failed(message=str(e), kind="user")
    detail = "".join(traceback.format_exception(e))[-4000:]
    if isinstance(e, MemoryError):
        return ev.Failed(message="the machine ran out of memory; use fewer calibration samples "
                         "(--samples), a shorter --seq-len, or a machine with more memory",
                         kind="user", detail=detail)
    return ev.Failed(message=f"internal error: {type(e).__name__}: {e}", kind="internal",
                     detail=detail)


def plan_main(job: JobSpec, emit: Emit) -> int:
    """--plan: the probed plan of `job` as a `plan` event, then `result` (exit 0); or one
    `failed` event (exit 2 for a job the planner refuses, 1 for an internal error)."""
    from qtapp.engine.model.sources import resolve_model
    t0 = time.monotonic()
    try:
        plan = plan_job(job, resolve_model(job.model, allow_pickle=job.allow_pickle), probe=True)
    except Exception as e:  # noqa: BLE001 - every crash must become a failed event
        failed = failed_event(e)
        emit(failed)
        return 2 if isinstance(e, UserError) else 1
    emit(ev.Plan(plan=plan.to_dict()))
    emit(ev.Result(out="", seconds=time.monotonic() - t0))
    return 0


def worker_command(job_file: str | os.PathLike[str], plan: bool = False) -> list[str]:
    """The command line that runs a worker on `job_file`: `python -m qtapp.engine.jobs.worker`, or
    in a frozen app (PyInstaller sets sys.frozen) the app's own executable as `<exe> worker`,
    since there is no Python to run `-m` with."""
    extra = ["--plan"] if plan else []
    if getattr(sys, "frozen", False):
        return [sys.executable, "worker", "--job", str(job_file), *extra]
    return [sys.executable, "-m", "qtapp.engine.jobs.worker", "--job", str(job_file), *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qtapp.engine.jobs.worker")
    parser.add_argument("--job", required=True, help="path of a JobSpec JSON file")
    parser.add_argument("--plan", action="store_true",
                        help="print the job's plan (its first block timed) instead of running it")
    args = parser.parse_args(argv)
    writer = EventWriter()  # fd 1 carries events alone; prints go to stderr
    try:
        job = JobSpec.from_json(Path(args.job).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, UserError) as e:
        message = (f"the job file {args.job} is invalid: {e}" if isinstance(e, UserError)
                   else f"cannot read the job file {args.job}: {e}")
        writer(ev.Failed(message=message, kind="user"))
        return 2
    if args.plan:
        return plan_main(job, writer)
    flag = CancelFlag()
    writer.on_broken = lambda: flag.set("parent exited")
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), flag.set)
    threading.Thread(target=_watch_stdin, args=(flag,), daemon=True).start()
    threading.Thread(target=_watch_parent, args=(flag,), daemon=True).start()
    code = execute(job, writer, flag)
    if flag.reason == "parent exited":
        _remove_job_dir(Path(args.job))
    return code


def _remove_job_dir(job_file: Path) -> None:
    """An orphan's job folder (its parent could not remove it) goes with the worker."""
    folder = job_file.resolve().parent
    if folder.name.startswith(JOB_DIR_PREFIX) and \
            folder.parent == Path(tempfile.gettempdir()).resolve():
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
