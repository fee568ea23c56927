"""The one way to run work off the UI thread (as Anki's aqt does it).

    background.run(fn, on_success, on_failure, on_progress)

`fn(ctx)` runs on a QThreadPool thread; `ctx.report(x)` sends x to `on_progress` and
`ctx.cancelled` is a threading.Event the caller sets through `Task.cancel()`. The result
or the exception is delivered to `on_success` / `on_failure` on the UI thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal, Slot

log = logging.getLogger(__name__)


class TaskContext:
    def __init__(self, task: Task) -> None:
        self._task = task
        self.cancelled = threading.Event()

    def report(self, value: Any) -> None:
        self._task._deliver(self._task._progress, value)


class Task(QObject):
    """One background call; lives on the UI thread and relays the worker thread's signals."""

    _progress = Signal(object)
    _succeeded = Signal(object)
    _failed = Signal(object)
    done = Signal()

    def __init__(self, fn: Callable[[TaskContext], Any],
                 on_success: Callable[[Any], None] | None,
                 on_failure: Callable[[BaseException], None] | None,
                 on_progress: Callable[[Any], None] | None) -> None:
        super().__init__()
        self.fn = fn
        self.ctx = TaskContext(self)
        self.on_success, self.on_failure, self.on_progress = on_success, on_failure, on_progress
        self.finished = False
        self.abandoned = False  # its window closed: the callbacks' widgets may be gone
        self.owner: QObject | None = None
        queued = Qt.ConnectionType.QueuedConnection
        self._progress.connect(self._deliver_progress, queued)
        self._succeeded.connect(self._deliver_success, queued)
        self._failed.connect(self._deliver_failure, queued)

    def cancel(self) -> None:
        self.ctx.cancelled.set()

    def execute(self) -> None:  # on the pool thread
        try:
            result = self.fn(self.ctx)
        except BaseException as e:  # noqa: BLE001 - delivered to the UI thread
            self._deliver(self._failed, e)
        else:
            self._deliver(self._succeeded, result)

    def _deliver(self, signal: Any, value: Any) -> None:
        try:
            signal.emit(value)
        except RuntimeError:  # the window closed while this ran: nobody is left to tell
            log.info("background task finished after its receiver was deleted")

    @property
    def orphaned(self) -> bool:
        """Abandoned at shutdown, or its Background (a child of the window) was deleted."""
        return self.abandoned or (self.owner is not None and not shiboken6.isValid(self.owner))

    @Slot(object)
    def _deliver_progress(self, value: Any) -> None:
        if self.on_progress is not None and not self.finished and not self.orphaned:
            self.on_progress(value)

    @Slot(object)
    def _deliver_success(self, result: Any) -> None:
        self.finished = True
        try:
            if self.on_success is not None and not self.orphaned:
                self.on_success(result)
        finally:
            self.done.emit()

    @Slot(object)
    def _deliver_failure(self, error: BaseException) -> None:
        self.finished = True
        try:
            if self.orphaned:
                log.info("a background task of a closed window failed: %s", error)
            elif self.on_failure is not None:
                self.on_failure(error)
            else:
                log.error("background task failed", exc_info=error)
        finally:
            self.done.emit()


class _Runnable(QRunnable):
    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def run(self) -> None:
        self.task.execute()


class Background(QObject):
    """Starts tasks on a thread pool and keeps them alive until they report back."""

    def __init__(self, parent: QObject | None = None, pool: QThreadPool | None = None) -> None:
        super().__init__(parent)
        self.pool = pool or QThreadPool(self)
        self.pool.setMaxThreadCount(max(self.pool.maxThreadCount(), 4))
        self.tasks: set[Task] = set()

    def run(self, fn: Callable[[TaskContext], Any],
            on_success: Callable[[Any], None] | None = None,
            on_failure: Callable[[BaseException], None] | None = None,
            on_progress: Callable[[Any], None] | None = None) -> Task:
        task = Task(fn, on_success, on_failure, on_progress)
        task.owner = self
        self.tasks.add(task)
        task.done.connect(lambda: self.tasks.discard(task))
        self.pool.start(_Runnable(task))
        return task

    def shutdown(self, wait_ms: int = 3000) -> bool:
        """Ask every task to stop and wait for the pool; True when all ended in time. The
        window is closing: what the tasks deliver later is dropped, not handed to callbacks
        whose widgets may already be deleted."""
        for task in list(self.tasks):
            task.cancel()
            task.abandoned = True
        return self.pool.waitForDone(wait_ms)
