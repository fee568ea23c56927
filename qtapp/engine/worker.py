"""Child-process entry: a JobSpec in, JSON-line events out.

    python -m qtapp.engine.worker --job JOB.json      (or `quantdesk worker --job JOB.json`)
    python -m qtapp.engine.worker --job JOB.json --plan

With --plan the job does not run: the planner times its first block on this machine
(planner.plan_job with probe=True, as `quantdesk quantize --dry-run` does) and one JSON
object, {"plan": Plan.to_dict()} or {"error": message}, is written to fd 1 (exit 0 / 2).

fd 1 carries only events (one JSON object per line); everything else any library prints
goes to stderr. A line `cancel` on stdin, SIGTERM or SIGINT asks the job to stop at the
next module; it then cleans up and emits `cancelled`. Exactly one `result`, `failed` or
`cancelled` event ends every run. Exit codes: 0 result, 1 failed, 2 bad job file, 3
cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.errors import Cancelled, UserError


class CancelFlag:
    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self, *_args: object) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


class EventWriter:
    """Writes events to a private duplicate of fd 1, then points fd 1 at stderr."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out: TextIO = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
        self._lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        self.write_line(ev.encode(event))

    def write_line(self, line: str) -> None:
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def _watch_stdin(flag: CancelFlag) -> None:
    try:
        for line in sys.stdin:
            if line.strip().lower() == "cancel":
                flag.set()
                return
    except (OSError, ValueError):
        return


def execute(job: JobSpec, emit: Callable[[ev.Event], None],
            should_cancel: Callable[[], bool]) -> int:
    """Run a job, turning every outcome into exactly one final event; returns the exit code."""
    from qtapp.engine.job import run_job

    try:
        summary = run_job(job, emit, should_cancel)
    except Cancelled:
        emit(ev.Cancelled())
        return 3
    except UserError as e:
        emit(ev.Failed(message=str(e), kind="user"))
        return 1
    except MemoryError:
        emit(ev.Failed(message="the machine ran out of memory; use fewer calibration samples "
                       "(--samples), a shorter --seq-len, or a machine with more memory",
                       kind="user", detail=traceback.format_exc()[-4000:]))
        return 1
    except Exception as e:  # noqa: BLE001 - every crash must become a failed event
        emit(ev.Failed(message=f"internal error: {type(e).__name__}: {e}", kind="internal",
                       detail=traceback.format_exc()[-4000:]))
        return 1
    emit(ev.Result(out=summary["out"], seconds=summary["seconds"], summary=summary))
    return 0


def plan_main(job: JobSpec, write_line: Callable[[str], None]) -> int:
    """--plan: the probed plan of `job` as one JSON line through `write_line`."""
    from qtapp.engine.planner import plan_job
    from qtapp.engine.sources import resolve_model

    try:
        plan = plan_job(job, resolve_model(job.model, allow_pickle=job.allow_pickle), probe=True)
    except UserError as e:
        write_line(json.dumps({"error": str(e)}))
        return 2
    write_line(json.dumps({"plan": plan.to_dict()}))
    return 0


def worker_command(job_file: str | os.PathLike[str], plan: bool = False) -> list[str]:
    """The command line that runs a worker on `job_file`: `python -m qtapp.engine.worker`, or
    in a frozen app (PyInstaller sets sys.frozen) the app's own executable as `<exe> worker`,
    since there is no Python to run `-m` with."""
    extra = ["--plan"] if plan else []
    if getattr(sys, "frozen", False):
        return [sys.executable, "worker", "--job", str(job_file), *extra]
    return [sys.executable, "-m", "qtapp.engine.worker", "--job", str(job_file), *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qtapp.engine.worker")
    parser.add_argument("--job", required=True, help="path of a JobSpec JSON file")
    parser.add_argument("--plan", action="store_true",
                        help="print the job's plan (its first block timed) instead of running it")
    args = parser.parse_args(argv)
    writer = EventWriter()  # fd 1 carries events (or the plan) alone; prints go to stderr
    try:
        job = JobSpec.from_json(Path(args.job).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, UserError) as e:
        message = (f"the job file {args.job} is invalid: {e}" if isinstance(e, UserError)
                   else f"cannot read the job file {args.job}: {e}")
        if args.plan:
            writer.write_line(json.dumps({"error": message}))
        else:
            writer(ev.Failed(message=message, kind="user"))
        return 2
    if args.plan:
        return plan_main(job, writer.write_line)
    emit = writer
    flag = CancelFlag()
    signal.signal(signal.SIGTERM, flag.set)
    signal.signal(signal.SIGINT, flag.set)
    threading.Thread(target=_watch_stdin, args=(flag,), daemon=True).start()
    return execute(job, emit, flag)


if __name__ == "__main__":
    sys.exit(main())
