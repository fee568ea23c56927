"""The background helper: results, errors and progress come back on the UI thread."""

from __future__ import annotations

import threading

import pytest

from qtapp.gui.tasks import Background


def test_result_and_progress_arrive_on_the_ui_thread(qtbot) -> None:
    bg = Background()
    main = threading.get_ident()
    seen: dict[str, list] = {"progress": [], "threads": [], "result": []}

    def work(ctx) -> int:
        seen["threads"].append(threading.get_ident())
        for i in range(5):
            ctx.report(i)
        return 42

    def progress(value: int) -> None:
        seen["progress"].append((value, threading.get_ident()))

    bg.run(work, lambda r: seen["result"].append((r, threading.get_ident())), None, progress)
    qtbot.waitUntil(lambda: bool(seen["result"]), timeout=5000)
    assert seen["result"] == [(42, main)]
    assert seen["threads"][0] != main
    assert [v for v, _ in seen["progress"]] == [0, 1, 2, 3, 4]
    assert {t for _, t in seen["progress"]} == {main}
    qtbot.waitUntil(lambda: not bg.tasks, timeout=2000)


def test_errors_are_delivered_not_raised(qtbot) -> None:
    bg = Background()
    errors = []
    bg.run(lambda ctx: 1 / 0, lambda r: None, errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert isinstance(errors[0], ZeroDivisionError)


def test_cancel_reaches_the_task_and_shutdown_waits(qtbot) -> None:
    bg = Background()
    seen, delivered = [], []

    def work(ctx) -> str:
        ctx.cancelled.wait(10)
        seen.append("stopped" if ctx.cancelled.is_set() else "timeout")
        return seen[-1]

    bg.run(work, delivered.append, delivered.append)
    assert bg.shutdown(wait_ms=5000)
    assert seen == ["stopped"]
    # the window is closing: what the task returns is not handed to its callbacks
    qtbot.waitUntil(lambda: not bg.tasks, timeout=2000)
    assert delivered == []


def test_a_task_that_ends_after_shutdown_does_not_reach_deleted_widgets(qtbot) -> None:
    from PySide6.QtWidgets import QLabel

    bg = Background()
    label = QLabel()
    release = threading.Event()

    def work(_ctx) -> str:
        release.wait(10)
        return "late"

    def show(text: str) -> None:
        label.setText(text)  # raises RuntimeError once the label is deleted

    task = bg.run(work, show)
    assert not bg.shutdown(wait_ms=50)  # still running when the window goes away
    label.deleteLater()
    qtbot.waitUntil(lambda: not _alive(label), timeout=2000)
    release.set()
    qtbot.waitUntil(lambda: task.finished, timeout=5000)  # delivered, dropped, no error


def _alive(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


@pytest.mark.slow
def test_a_task_whose_window_was_deleted_without_closing_delivers_nothing(qtbot) -> None:
    from PySide6.QtWidgets import QLabel, QWidget

    window = QWidget()
    bg = Background(window)
    label = QLabel(window)
    release = threading.Event()
    task = bg.run(lambda _ctx: release.wait(10) and "late", label.setText)
    window.deleteLater()  # as a test's teardown does: no closeEvent, no shutdown
    qtbot.waitUntil(lambda: not _alive(label), timeout=2000)
    release.set()
    qtbot.waitUntil(lambda: task.finished, timeout=5000)  # dropped: no RuntimeError raised
