"""The engine worker as a child process, from the side that starts it: the one client of
`worker.py` for the window (gui/engine_process.py reads it on a thread), the command line
(`quantdesk quantize --worker`) and the plan probe (`plan_in_worker`).

    client = WorkerClient(job)            # or WorkerClient(job, plan=True)
    client.start()
    for event in client.events():         # blocking; `client.cancel()` from anywhere
        ...
    client.ending                         # how it ended: the final event, exit, stderr tail

The client writes the job file into a private job folder (outputs.make_job_dir, swept by
outputs.sweep_job_dirs once its owner is gone), starts `worker_command(...)`, and reads the
worker's fd 1 as JSON lines into events (a line that is not an event becomes a `log`
warning). `cancel(reason)` writes `cancel REASON` on the worker's stdin, then terminates it
after `term_after_s` (None: never) and kills it `kill_after_s` later; `timeout_s` kills a
worker that has not ended by then. Whatever happens, `events()` ends with exactly one final
event (see worker.py's final-event rule): the worker's own, or, when the worker exited
without one (killed, crashed, did not stop when cancelled, could not start), one the client
makes, with the partial output removed. The job folder is removed in every case.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.errors import UserError
from qtapp.engine.jobs.worker import worker_command
from qtapp.engine.outputs import discard_partial, make_job_dir, sweep_job_dirs
from qtapp.engine.planning.planner import Plan

STDERR_TAIL_LINES = 40
READ_BYTES = 1 << 16
PLAN_TIMEOUT_S = 1800.0

Command = Callable[..., list[str]]


@dataclass(frozen=True)
class Ending:
    """How one worker run ended.

    `final` is the last event `events()` yielded; `from_worker` is False when the client
    made it (the worker ended without a final event, or never started). `status`: "result",
    "failed", "cancelled", or "crashed" (exited without a final event, not cancelled).
    `exit_code` is None when the worker was ended by a signal (`signal` names it) or never
    started (`start_error` says why)."""

    final: ev.Event
    from_worker: bool
    exit_code: int | None = None
    signal: int | None = None
    cancel_reason: str = ""
    timed_out: bool = False
    start_error: str = ""
    program: str = ""
    stderr_tail: str = ""

    @property
    def status(self) -> str:
        if isinstance(self.final, ev.Result):
            return "result"
        if isinstance(self.final, ev.Cancelled):
            return "cancelled"
        return "failed" if self.from_worker or self.start_error or self.timed_out \
            else "crashed"


def not_an_event(line: bytes, error: ev.EventDecodeError) -> ev.Log:
    """What a line on the worker's fd 1 that is not an event becomes."""
    text = line[:200].decode("utf-8", "replace")
    return ev.Log(level="warning",
                  message=f"the worker wrote a line that is not an event ({error}): {text}")


def decode_lines(lines: list[bytes]) -> list[ev.Event]:
    """Complete lines of the worker's fd 1 as events (blank lines skipped)."""
    events = []
    for line in lines:
        if not line.strip():
            continue
        try:
            events.append(ev.decode(line))
        except ev.EventDecodeError as e:
            events.append(not_an_event(line, e))
    return events


def exit_words(exit_code: int | None, signum: int | None) -> str:
    """'killed by signal 9 (Killed)' or 'exit code 1'."""
    if signum is not None:
        return f"killed by signal {signum} ({signal.strsignal(signum) or 'unknown'})"
    return f"exit code {exit_code}"


class WorkerClient:
    """One run of the engine worker on `job` (see the module docstring). `command(job_file)`
    (with plan=True for a plan run) is the command line; `capture_stderr` keeps the last
    STDERR_TAIL_LINES lines of the worker's stderr for `Ending.stderr_tail` instead of
    passing them through to this process's stderr."""

    def __init__(self, job: JobSpec, *, plan: bool = False, command: Command = worker_command,
                 capture_stderr: bool = False, term_after_s: float | None = None,
                 kill_after_s: float = 30.0, timeout_s: float | None = None) -> None:
        self.job = job
        self.plan = plan
        self.command = command
        self.capture_stderr = capture_stderr
        self.term_after_s = term_after_s
        self.kill_after_s = kill_after_s
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.ending: Ending | None = None
        self.cancel_reason = ""
        self._cancelled = False
        self._timed_out = False
        self._start_error = ""
        self._program = ""
        self._final: ev.Event | None = None
        self._job_dir: Path | None = None
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_reader: threading.Thread | None = None
        self._timers: list[threading.Timer] = []
        self._lock = threading.RLock()  # cancel may run in a signal handler, inside cancel
        self._done = threading.Event()

    # -- control (any thread) --------------------------------------------------------------

    def start(self) -> None:
        """Write the job file and start the worker. A worker that cannot start is not an
        exception: `events()` then yields one `failed` event that says why."""
        if self.process is not None or self._start_error:
            raise RuntimeError("a WorkerClient runs one worker")
        sweep_job_dirs()  # those of windows or commands that were killed
        self._job_dir = make_job_dir()
        job_file = self._job_dir / "job.json"
        job_file.write_text(self.job.to_json(), encoding="utf-8")
        cmd = self.command(str(job_file), plan=True) if self.plan else \
            self.command(str(job_file))
        self._program = cmd[0]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.capture_stderr:
            env["PYTHONIOENCODING"] = "utf-8"
        try:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
                stderr=subprocess.PIPE if self.capture_stderr else None,
                creationflags=_creation_flags())
        except (OSError, ValueError) as e:
            self._start_error = e.strerror if isinstance(e, OSError) and e.strerror \
                else str(e)
            return
        if self.capture_stderr:
            self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
            self._stderr_reader.start()
        if self.timeout_s is not None:
            self._after(self.timeout_s, self._expire)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self, reason: str = "") -> None:
        """Ask the worker to stop (`reason`, e.g. "SIGTERM", names why); it is terminated
        `term_after_s` later and killed `kill_after_s` after that if it has not stopped."""
        with self._lock:
            self.cancel_reason = self.cancel_reason or reason
            if self._cancelled or not self.is_running():
                return
            self._cancelled = True
        self._write(f"cancel {reason}\n" if reason else "cancel\n")
        kill_at = self.kill_after_s
        if self.term_after_s is not None:
            self._after(self.term_after_s, self.terminate)
            kill_at += self.term_after_s
        self._after(kill_at, self.kill)

    def stop(self, term_after_s: float, kill_after_s: float, wait_s: float = 5.0) -> None:
        """Stop the worker before returning: cancel, terminate, then kill, each after the
        one before had its time (the window's quit)."""
        proc = self.process
        if proc is None:
            return
        with self._lock:
            self._cancelled = True
        self._write("cancel\n")
        for step, seconds in ((None, term_after_s), (self.terminate, kill_after_s),
                              (self.kill, wait_s)):
            if step is not None:
                step()
            try:
                proc.wait(seconds)
                return
            except subprocess.TimeoutExpired:
                continue

    def terminate(self) -> None:
        if self.is_running():
            assert self.process is not None
            with contextlib.suppress(OSError):
                self.process.terminate()

    def kill(self) -> None:
        if self.is_running():
            assert self.process is not None
            with contextlib.suppress(OSError):
                self.process.kill()

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    # -- reading (one thread) --------------------------------------------------------------

    def events(self) -> Iterator[ev.Event]:
        """The worker's events as they arrive, then, if it ended without a final event, the
        client's own; returns when the worker has ended and the job folder is removed."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[ev.Event]]:
        """`events()` a read at a time: a burst the worker wrote at once comes as one list."""
        if self.process is None and not self._start_error:
            raise RuntimeError("start() the worker before reading its events")
        try:
            if self.process is not None:
                assert self.process.stdout is not None
                fd = self.process.stdout.fileno()
                rest = b""
                while True:
                    data = os.read(fd, READ_BYTES)
                    if not data:
                        break
                    *lines, rest = (rest + data).split(b"\n")
                    batch = self._after_final(decode_lines(lines))
                    if batch:
                        yield batch
                tail = self._after_final(decode_lines([rest]))
                if tail:
                    yield tail
                self.process.wait()
            self._conclude()
            assert self.ending is not None
            if not self.ending.from_worker:
                yield [self.ending.final]
        finally:
            self.close()

    def close(self) -> None:
        """End the worker if it still runs (a reader that stopped early), stop the timers
        and remove the job folder."""
        self._done.set()
        for timer in self._timers:
            timer.cancel()
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            reader = self._stderr_reader
            stderr = self.process.stderr if reader is None or not reader.is_alive() else None
            for stream in (self.process.stdin, self.process.stdout, stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._job_dir is not None:
            shutil.rmtree(self._job_dir, ignore_errors=True)
            self._job_dir = None

    # -- internals -----------------------------------------------------------------------

    def _after_final(self, events: list[ev.Event]) -> list[ev.Event]:
        """Keep the first final event; nothing the worker writes after it counts."""
        kept = []
        for event in events:
            if self._final is not None:
                break
            if event.type in ev.FINAL_TYPES:
                self._final = event
            kept.append(event)
        return kept

    def _conclude(self) -> None:
        proc = self.process
        code = proc.returncode if proc is not None else None
        signum = -code if code is not None and code < 0 else None
        if self._stderr_reader is not None:
            self._stderr_reader.join(2.0)  # a grandchild may still hold stderr open
        for timer in self._timers:
            timer.cancel()
        final, from_worker = self._final, self._final is not None
        if final is None:
            final = self._own_final(code, signum)
        self.ending = Ending(final=final, from_worker=from_worker,
                             exit_code=None if signum is not None else code, signal=signum,
                             cancel_reason=self.cancel_reason, timed_out=self._timed_out,
                             start_error=self._start_error, program=self._program,
                             stderr_tail=self.stderr_tail())

    def _own_final(self, code: int | None, signum: int | None) -> ev.Event:
        """The final event of a worker that ended without one (the command line prints it)."""
        if self._start_error:
            return ev.Failed(message=f"could not start the engine worker ({self._program}): "
                             f"{self._start_error}", kind="internal")
        removed = False if self.plan else discard_partial(self.job.out)
        if self._cancelled or self.cancel_reason:
            grace = self.kill_after_s + (self.term_after_s or 0.0)
            return ev.Cancelled(message=f"cancelled by {self.cancel_reason or 'the user'}; "
                                f"the worker did not stop within {grace:.0f} s and was ended; "
                                "no output was written")
        if self._timed_out:
            return ev.Failed(message=f"the worker did not finish within {self.timeout_s:.0f} s "
                             "and was ended", kind="internal")
        how = exit_words(code, signum)
        if self.plan:
            return ev.Failed(message=f"the worker stopped without a plan ({how})",
                             kind="internal")
        kept = "; its partial output was removed" if removed else ""
        return ev.Failed(message=f"the worker stopped without a result ({how}){kept}. Nothing "
                         f"was written to {self.job.out}; start the job again (finished "
                         "blocks are resumed from the checkpoint)", kind="internal")

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for line in self.process.stderr:
                self._stderr.append(line.decode("utf-8", "replace").rstrip("\r\n"))

    def _write(self, text: str) -> None:
        proc = self.process
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(text.encode())
            proc.stdin.flush()
        except (OSError, ValueError):  # the worker has already ended
            pass

    def _after(self, seconds: float, fn: Callable[[], None]) -> None:
        if self._done.is_set():
            return
        timer = threading.Timer(seconds, fn)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _expire(self) -> None:
        if self.is_running():
            self._timed_out = True
            self.kill()


def _creation_flags() -> int:
    """On Windows a window-less app (the frozen window) starts the worker without a console
    window, as QProcess does; elsewhere nothing."""
    if sys.platform != "win32":
        return 0
    import ctypes  # here: windll exists on Windows only

    has_console = bool(ctypes.windll.kernel32.GetConsoleWindow())  # type: ignore[attr-defined]
    return 0 if has_console else subprocess.CREATE_NO_WINDOW  # type: ignore[attr-defined]


def plan_in_worker(job: JobSpec, *, stop: threading.Event | None = None,
                   timeout_s: float = PLAN_TIMEOUT_S,
                   command: Command = worker_command) -> Plan:
    """The plan of `job` with its first block timed, from `worker --plan` in its own process
    (the window does no model math). UserError with the worker's message when it fails;
    setting `stop` ends the worker."""
    client = WorkerClient(job, plan=True, command=command, capture_stderr=True,
                          term_after_s=0.0, kill_after_s=2.0, timeout_s=timeout_s)
    client.start()
    if stop is not None:
        def watch() -> None:
            while not client._done.wait(0.1):
                if stop.is_set():
                    client.cancel()
                    return

        threading.Thread(target=watch, daemon=True).start()
    plan = None
    for event in client.events():
        if isinstance(event, ev.Plan):
            plan = Plan.from_dict(event.plan)
    assert client.ending is not None
    final = client.ending.final
    if isinstance(final, ev.Result) and plan is not None:
        return plan
    message = getattr(final, "message", "") or "the worker wrote no plan"
    tail = client.ending.stderr_tail.strip().splitlines()
    if not client.ending.from_worker and tail:
        message += f"; its last words: {tail[-1]}"
    raise UserError(message)
