"""The background helper: results, errors and progress come back on the UI thread."""

from __future__ import annotations

import threading

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
    results = []

    def work(ctx) -> str:
        ctx.cancelled.wait(10)
        return "stopped" if ctx.cancelled.is_set() else "timeout"

    bg.run(work, results.append)
    assert bg.shutdown(wait_ms=5000)
    qtbot.waitUntil(lambda: bool(results), timeout=2000)
    assert results == ["stopped"]
