"""The engine worker as a child process: JSON-line events in, Qt signals out.

`EngineProcess.start(job)` runs `python -m qtapp.engine.jobs.worker --job FILE` (a frozen app
runs its own executable as `<exe> worker --job FILE`). Every decoded event is emitted as
`event` and by type; when the process ends, `finished` carries one `Outcome`, whatever
happened: the worker's own final event, or a crash turned into a readable failure with the
tail of its stderr. `cancel()` writes `cancel` on the worker's stdin, sends SIGTERM after
`term_after_s` and kills it after another `kill_after_s`.
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.jobs.worker import worker_command
from qtapp.engine.outputs import discard_partial, make_job_dir, sweep_job_dirs
from qtapp.gui.i18n import tr

STDERR_TAIL_LINES = 40
LINES_PER_BATCH = 40


@dataclass(frozen=True)
class Outcome:
    """How a job ended. status: "result", "failed", "cancelled" or "crashed"."""

    status: str
    message: str
    out: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    stderr_tail: str = ""
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "result"


class EngineProcess(QObject):
    event = Signal(object)
    started = Signal(object)
    progress = Signal(object)
    layer = Signal(object)
    log = Signal(object)
    artifact = Signal(object)
    finished = Signal(object)

    def __init__(self, parent: QObject | None = None,
                 command: Callable[[str], list[str]] = worker_command,
                 term_after_s: float = 3.0, kill_after_s: float = 3.0) -> None:
        super().__init__(parent)
        self.command = command
        self.term_after_s = term_after_s
        self.kill_after_s = kill_after_s
        self.process: QProcess | None = None
        self._stdout = b""
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_partial = b""
        self._final: ev.Event | None = None
        self._cancel_requested = False
        self._job_dir: str | None = None
        self._out = ""
        self._pending: deque[bytes] = deque()
        self._drain_scheduled = False
        self._finished_args: tuple[int, QProcess.ExitStatus] | None = None
        self._timers: list[QTimer] = []

    def is_running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    def start(self, job: JobSpec | dict[str, Any]) -> None:
        """Start a job; raises RuntimeError when one is still running."""
        if self.is_running():
            raise RuntimeError("a job is already running")
        spec_job = job if isinstance(job, JobSpec) else JobSpec.from_dict(job)
        spec = spec_job.to_json()
        self._reset()
        self._out = spec_job.out
        sweep_job_dirs()  # those of windows or commands that were killed
        self._job_dir = str(make_job_dir())
        job_path = Path(self._job_dir) / "job.json"
        job_path.write_text(spec, encoding="utf-8")
        program, *args = self.command(str(job_path))
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PYTHONIOENCODING", "utf-8")
        proc.setProcessEnvironment(env)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_error)
        self.process = proc
        proc.start(program, args)

    def cancel(self) -> None:
        """Ask the worker to stop; it is terminated, then killed, if it does not."""
        if not self.is_running() or self._cancel_requested:
            return
        self._cancel_requested = True
        assert self.process is not None
        self.process.write(b"cancel\n")
        self._later(self.term_after_s, self._terminate)
        self._later(self.term_after_s + self.kill_after_s, self._kill)

    def stop_now(self) -> None:
        """Stop the worker before returning (at quit): cancel, terminate, then kill."""
        proc = self.process
        if proc is None or not self.is_running():
            return
        self._cancel_requested = True
        proc.write(b"cancel\n")
        for step, wait_s in ((None, self.term_after_s), (proc.terminate, self.kill_after_s),
                             (proc.kill, 5.0)):
            if step is not None:
                step()
            if proc.waitForFinished(int(wait_s * 1000)):
                return

    def stderr_tail(self) -> str:
        lines = list(self._stderr)
        if self._stderr_partial:
            lines.append(self._stderr_partial.decode("utf-8", "replace"))
        return "\n".join(lines)

    # -- internals ---------------------------------------------------------------------

    def _reset(self) -> None:
        self._stdout = b""
        self._stderr.clear()
        self._stderr_partial = b""
        self._final = None
        self._cancel_requested = False
        self._pending.clear()
        self._drain_scheduled = False
        self._finished_args = None
        self._stop_timers()

    def _later(self, seconds: float, fn: Callable[[], None]) -> None:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.timeout.connect(fn)
        timer.start(int(seconds * 1000))
        self._timers.append(timer)

    def _stop_timers(self) -> None:
        for t in self._timers:
            t.stop()
            t.deleteLater()
        self._timers = []

    def _terminate(self) -> None:
        if self.is_running():
            assert self.process is not None
            self.process.terminate()

    def _kill(self) -> None:
        if self.is_running():
            assert self.process is not None
            self.process.kill()

    def _read_stdout(self) -> None:
        assert self.process is not None
        self._stdout += bytes(self.process.readAllStandardOutput().data())
        *lines, self._stdout = self._stdout.split(b"\n")
        self._pending.extend(lines)
        self._drain()

    def _drain(self) -> None:
        """Handle queued lines a batch at a time, so a burst never blocks the window."""
        for _ in range(min(len(self._pending), LINES_PER_BATCH)):
            self._handle_line(self._pending.popleft())
        if self._pending and not self._drain_scheduled:
            self._drain_scheduled = True
            QTimer.singleShot(0, self, self._drain_later)

    def _drain_later(self) -> None:
        self._drain_scheduled = False
        self._drain()
        if not self._pending and self._finished_args is not None:
            self._on_finished(*self._finished_args)

    def _read_stderr(self) -> None:
        assert self.process is not None
        data = self._stderr_partial + bytes(self.process.readAllStandardError().data())
        *lines, self._stderr_partial = data.split(b"\n")
        self._stderr.extend(line.decode("utf-8", "replace").rstrip("\r") for line in lines)

    def _handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = ev.decode(line)
        except ev.EventDecodeError as e:
            text = line[:200].decode("utf-8", "replace")
            self.log.emit(ev.Log(level="warning",
                                 message=tr("The worker wrote a line that is not an event "
                                            "({reason}): {text}").format(reason=e, text=text)))
            return
        if event.type in ev.FINAL_TYPES:
            self._final = event
        self.event.emit(event)
        signal = {"started": self.started, "progress": self.progress, "layer": self.layer,
                  "log": self.log, "artifact": self.artifact}.get(event.type)
        if signal is not None:
            signal.emit(event)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart:
            return  # crashes also end in `finished`, which reports them
        assert self.process is not None
        message = tr("Could not start the engine worker ({program}): {error}").format(
            program=self.process.program(), error=self.process.errorString())
        self._finish(Outcome("failed", message))

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        if self._finished_args is None:
            self._read_stdout()
            self._read_stderr()
            if self._stdout.strip():
                self._pending.append(self._stdout)
                self._stdout = b""
        self._finished_args = (exit_code, exit_status)
        self._drain()
        if self._pending:  # _drain_later handles the rest, then calls this again
            return
        tail = self.stderr_tail()
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        code = None if crashed else exit_code
        final = self._final
        if isinstance(final, ev.Result):
            outcome = Outcome("result", tr("Finished"), final.out, final.summary,
                              exit_code=code, stderr_tail=tail)
        elif isinstance(final, ev.Failed):
            outcome = Outcome("failed", final.message, detail=final.detail, stderr_tail=tail,
                              exit_code=code)
        elif isinstance(final, ev.Cancelled) or self._cancel_requested:
            message = final.message if isinstance(final, ev.Cancelled) else tr(
                "Cancelled. The worker did not stop in time and was ended; no output was kept.")
            outcome = Outcome("cancelled", message, stderr_tail=tail, exit_code=code)
        else:
            how = (tr("it was killed or crashed (for example, out of memory)") if crashed
                   else tr("exit code {code}").format(code=exit_code))
            outcome = Outcome("crashed", tr("The engine worker stopped unexpectedly ({how}). "
                                            "Nothing was written to the output folder. You "
                                            "can start the job again.").format(how=how),
                              stderr_tail=tail, exit_code=code)
        self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        self._stop_timers()
        if outcome.status in ("crashed", "cancelled") and self._out:
            discard_partial(self._out)  # a killed worker could not remove its own
        if self._job_dir:
            shutil.rmtree(self._job_dir, ignore_errors=True)
            self._job_dir = None
        proc, self.process = self.process, None
        if proc is not None:
            proc.deleteLater()
        self.finished.emit(outcome)
