"""The engine worker as a child process: JSON-line events in, Qt signals out.

`EngineProcess.start(job)` runs the job in a worker through the engine's one worker client
(qtapp.engine.jobs.client.WorkerClient, as `quantdesk quantize --worker` and the plan probe
do), whose blocking reader runs on a thread here. Every event is emitted as `event` and by
type, a burst a batch at a time; when the worker ends, `finished` carries one `Outcome`,
whatever happened: the worker's own final event, or the client's ending of a worker that
crashed, turned into a readable failure with the tail of its stderr. `cancel()` writes
`cancel` on the worker's stdin, sends SIGTERM after `term_after_s` and kills it after
another `kill_after_s`.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.jobs.client import Ending, WorkerClient
from qtapp.engine.jobs.worker import worker_command
from qtapp.engine.results import JobResult, ResultDecodeError
from qtapp.gui.i18n import tr

logger = logging.getLogger(__name__)

LINES_PER_BATCH = 40


@dataclass(frozen=True)
class Outcome:
    """How a job ended. status: "result", "failed", "cancelled" or "crashed"."""

    status: str
    message: str
    out: str = ""
    result: JobResult | None = None  # the job's result, when status is "result"
    detail: str = ""
    stderr_tail: str = ""
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "result"


def outcome_of(ending: Ending) -> Outcome:
    """The window's words for how a worker run ended (the client's own final events are
    worded for the command line)."""
    final, tail, code = ending.final, ending.stderr_tail, ending.exit_code
    if ending.start_error:
        return Outcome("failed", tr("Could not start the engine worker ({program}): {error}")
                       .format(program=ending.program, error=ending.start_error))
    if isinstance(final, ev.Result):
        try:
            result = JobResult.from_dict(final.summary)
        except ResultDecodeError as e:
            return Outcome("failed", tr("The worker's result could not be read: {error}")
                           .format(error=e), out=final.out, stderr_tail=tail, exit_code=code)
        return Outcome("result", tr("Finished"), final.out, result, exit_code=code,
                       stderr_tail=tail)
    if isinstance(final, ev.Cancelled):
        message = final.message if ending.from_worker else tr(
            "Cancelled. The worker did not stop in time and was ended; no output was kept.")
        return Outcome("cancelled", message, stderr_tail=tail, exit_code=code)
    if ending.status == "crashed":
        how = (tr("it was killed or crashed (for example, out of memory)")
               if ending.signal is not None else tr("exit code {code}").format(code=code))
        return Outcome("crashed", tr("The engine worker stopped unexpectedly ({how}). "
                                     "Nothing was written to the output folder. You can "
                                     "start the job again.").format(how=how),
                       stderr_tail=tail, exit_code=code)
    assert isinstance(final, ev.Failed)
    return Outcome("failed", final.message, detail=final.detail, stderr_tail=tail,
                   exit_code=code)


class EngineProcess(QObject):
    event = Signal(object)
    started = Signal(object)
    progress = Signal(object)
    layer = Signal(object)
    log = Signal(object)
    artifact = Signal(object)
    finished = Signal(object)
    _arrived = Signal(object)  # from the reader thread: the client whose events are pending
    _ended = Signal(object)  # from the reader thread: the client whose worker has ended

    def __init__(self, parent: QObject | None = None,
                 command: Callable[..., list[str]] = worker_command,
                 term_after_s: float = 3.0, kill_after_s: float = 3.0) -> None:
        super().__init__(parent)
        self.command = command
        self.term_after_s = term_after_s
        self.kill_after_s = kill_after_s
        self.client: WorkerClient | None = None
        self._reader: threading.Thread | None = None
        self._pending: deque[ev.Event] = deque()
        self._drain_scheduled = False
        self._ending: Ending | None = None
        self._cancel_requested = False
        self._last_stderr = ""
        queued = Qt.ConnectionType.QueuedConnection
        self._arrived.connect(self._on_arrived, queued)
        self._ended.connect(self._on_ended, queued)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running worker's process (None between jobs)."""
        return self.client.process if self.client is not None else None

    def is_running(self) -> bool:
        """True from `start` until `finished` is emitted."""
        return self.client is not None

    def start(self, job: JobSpec | dict[str, Any]) -> None:
        """Start a job; raises RuntimeError when one is still running."""
        if self.is_running():
            raise RuntimeError("a job is already running")
        spec_job = job if isinstance(job, JobSpec) else JobSpec.from_dict(job)
        self._reset()
        client = WorkerClient(spec_job, command=self.command, capture_stderr=True,
                              term_after_s=self.term_after_s, kill_after_s=self.kill_after_s)
        client.start()  # a worker that cannot start is reported through `finished`
        self.client = client
        self._reader = threading.Thread(target=self._read, args=(client,), daemon=True,
                                        name="engine-worker-reader")
        self._reader.start()

    def cancel(self) -> None:
        """Ask the worker to stop; it is terminated, then killed, if it does not."""
        if self.client is None or self._cancel_requested:
            return
        self._cancel_requested = True
        self.client.cancel()

    def stop_now(self) -> None:
        """Stop the worker before returning (at quit): cancel, terminate, then kill; the
        outcome is emitted before this returns."""
        client = self.client
        if client is None:
            return
        self._cancel_requested = True
        client.stop(self.term_after_s, self.kill_after_s)
        if self._reader is not None:
            self._reader.join(10.0)
        if not self._reader or not self._reader.is_alive():
            while self._pending:
                self._handle(self._pending.popleft())
            self._on_ended(client)

    def stderr_tail(self) -> str:
        return self.client.stderr_tail() if self.client is not None else self._last_stderr

    # -- internals ---------------------------------------------------------------------

    def _reset(self) -> None:
        self._pending.clear()
        self._drain_scheduled = False
        self._ending = None
        self._cancel_requested = False
        self._last_stderr = ""

    def _read(self, client: WorkerClient) -> None:  # on the reader thread
        try:
            for batch in client.batches():
                self._pending.extend(batch)
                self._post(self._arrived, client)
        except Exception:  # reported as a crash by _on_ended
            logger.exception("reading the engine worker failed")
            client.close()
        self._post(self._ended, client)

    def _post(self, signal: Any, client: WorkerClient) -> None:
        try:
            signal.emit(client)
        except RuntimeError:  # the window closed meanwhile: nobody is left to tell
            logger.info("the engine worker ended after its window was closed")

    def _on_arrived(self, client: WorkerClient) -> None:
        if client is self.client:
            self._drain()

    def _drain(self) -> None:
        """Handle queued events a batch at a time, so a burst never blocks the window."""
        for _ in range(min(len(self._pending), LINES_PER_BATCH)):
            self._handle(self._pending.popleft())
        if self._pending and not self._drain_scheduled:
            self._drain_scheduled = True
            QTimer.singleShot(0, self, self._drain_later)

    def _drain_later(self) -> None:
        self._drain_scheduled = False
        self._drain()
        if not self._pending and self._ending is not None and self.client is not None:
            self._finish(self._ending)

    def _handle(self, event: ev.Event) -> None:
        self.event.emit(event)
        signal = {"started": self.started, "progress": self.progress, "layer": self.layer,
                  "log": self.log, "artifact": self.artifact}.get(event.type)
        if signal is not None:
            signal.emit(event)

    def _on_ended(self, client: WorkerClient) -> None:
        if client is not self.client or self._ending is not None:
            return
        self._ending = client.ending or Ending(
            final=ev.Failed(message="the worker's output could not be read", kind="internal"),
            from_worker=False, stderr_tail=client.stderr_tail())
        if self._pending:  # _drain_later handles the rest, then finishes
            self._drain()
            return
        self._finish(self._ending)

    def _finish(self, ending: Ending) -> None:
        self._last_stderr = ending.stderr_tail
        self.client = None
        self._reader = None
        self.finished.emit(outcome_of(ending))
