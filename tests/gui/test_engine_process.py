"""EngineProcess against scripted fake workers: signals, cancel, kill, crash, restart."""

from __future__ import annotations

import time

import pytest
from gui_helpers import fake_command

from qtapp.engine.config import JobSpec, QuantScheme
from qtapp.gui.engine_process import EngineProcess, Outcome

JOB = JobSpec(model="demo", method="gptq", out="/tmp/never-written", scheme=QuantScheme(4))


def run_to_end(qtbot, engine: EngineProcess, timeout_ms: int = 20000) -> Outcome:
    with qtbot.waitSignal(engine.finished, timeout=timeout_ms) as blocker:
        engine.start(JOB)
    return blocker.args[0]


def test_events_arrive_as_signals(qtbot) -> None:
    engine = EngineProcess(command=fake_command("ok", "--blocks", "3"))
    seen: dict[str, list] = {"started": [], "layer": [], "progress": [], "log": [],
                             "artifact": [], "event": []}
    for name, items in seen.items():
        getattr(engine, name).connect(items.append)
    outcome = run_to_end(qtbot, engine)
    assert outcome.status == "result" and outcome.ok
    assert outcome.result.quality.ppl == 12.5 and outcome.out == outcome.result.out == JOB.out
    assert outcome.exit_code == 0
    assert len(seen["started"]) == 1 and seen["started"][0].total_steps == 3
    assert len(seen["layer"]) == 3 * 7
    assert [e.step for e in seen["progress"]] == [1, 2, 3]
    assert seen["layer"][0].module == "model.layers.0.self_attn.q_proj"
    assert seen["layer"][-1].kind == "down"
    assert seen["artifact"][0].bytes == 1234
    assert seen["event"][-1].type == "result"
    assert not engine.is_running()


def test_cancel_stops_a_cooperative_worker(qtbot) -> None:
    engine = EngineProcess(command=fake_command("cooperative", "--blocks", "1"),
                           term_after_s=10, kill_after_s=10)
    progress = []
    engine.progress.connect(progress.append)
    with qtbot.waitSignal(engine.finished, timeout=15000) as blocker:
        engine.start(JOB)
        qtbot.waitUntil(lambda: bool(progress), timeout=10000)  # now waiting for cancel
        t0 = time.monotonic()
        engine.cancel()
    outcome = blocker.args[0]
    assert outcome.status == "cancelled"
    assert "no output was written" in outcome.message  # the worker's own cancelled event
    assert time.monotonic() - t0 < 5
    assert outcome.exit_code == 3


def test_cancel_kills_a_worker_that_ignores_it(qtbot) -> None:
    engine = EngineProcess(command=fake_command("hang", "--blocks", "1"),
                           term_after_s=0.5, kill_after_s=0.5)
    started = []
    engine.started.connect(started.append)
    with qtbot.waitSignal(engine.finished, timeout=15000) as blocker:
        engine.start(JOB)
        qtbot.waitUntil(lambda: bool(started), timeout=10000)
        t0 = time.monotonic()
        engine.cancel()
    outcome = blocker.args[0]
    elapsed = time.monotonic() - t0
    assert outcome.status == "cancelled"
    assert "did not stop in time" in outcome.message
    assert outcome.exit_code is None  # killed: a crash exit
    assert 0.9 <= elapsed < 5  # SIGTERM is ignored, so only the kill after 0.5 + 0.5 s ends it
    assert not engine.is_running()


def test_crash_becomes_a_readable_failure_with_stderr_tail(qtbot) -> None:
    engine = EngineProcess(command=fake_command("crash", "--blocks", "3"))
    outcome = run_to_end(qtbot, engine)
    assert outcome.status == "crashed" and not outcome.ok
    assert "stopped unexpectedly" in outcome.message
    assert "killed or crashed" in outcome.message
    assert "MemoryError: boom in block 1" in outcome.stderr_tail
    assert "Traceback" not in outcome.message  # the traceback is detail, not the message


def test_exit_without_final_event_names_the_exit_code(qtbot) -> None:
    outcome = run_to_end(qtbot, EngineProcess(command=fake_command("exit", "--blocks", "1")))
    assert outcome.status == "crashed"
    assert "exit code 1" in outcome.message
    assert outcome.stderr_tail.strip() == "something went wrong"


def test_start_again_after_a_crash(qtbot) -> None:
    engine = EngineProcess(command=fake_command("crash", "--blocks", "3"))
    assert run_to_end(qtbot, engine).status == "crashed"
    engine.command = fake_command("ok", "--blocks", "2")
    layers = []
    engine.layer.connect(layers.append)
    outcome = run_to_end(qtbot, engine)
    assert outcome.status == "result"
    assert len(layers) == 14
    assert outcome.stderr_tail == ""  # nothing left over from the crashed run


def test_failed_event_is_the_outcome(qtbot) -> None:
    outcome = run_to_end(qtbot, EngineProcess(command=fake_command("fail")))
    assert outcome.status == "failed"
    assert outcome.message == "the model folder has no tokenizer; copy it in"


def test_non_event_lines_are_logged_not_fatal(qtbot) -> None:
    engine = EngineProcess(command=fake_command("noise", "--blocks", "1"))
    logs = []
    engine.log.connect(logs.append)
    assert run_to_end(qtbot, engine).status == "result"
    warnings = [e for e in logs if e.level == "warning"]
    assert len(warnings) == 1 and "this line is not an event" in warnings[0].message


def test_a_worker_that_cannot_start(qtbot) -> None:
    engine = EngineProcess(command=lambda job: ["/nonexistent/quantdesk-worker", job])
    outcome = run_to_end(qtbot, engine, timeout_ms=5000)
    assert outcome.status == "failed"
    assert "Could not start the engine worker" in outcome.message


def test_one_job_at_a_time(qtbot) -> None:
    engine = EngineProcess(command=fake_command("hang"), term_after_s=0.2, kill_after_s=0.2)
    with qtbot.waitSignal(engine.finished, timeout=10000):
        engine.start(JOB)
        with pytest.raises(RuntimeError, match="already running"):
            engine.start(JOB)
        engine.cancel()


def test_a_burst_is_handled_in_batches_and_nothing_is_lost(qtbot) -> None:
    # 280 layer events written at once
    engine = EngineProcess(command=fake_command("ok", "--blocks", "40", "--burst"))
    layers = []
    engine.layer.connect(layers.append)
    batches = []
    original = engine._drain
    engine._drain = lambda: (batches.append(len(engine._pending)), original())
    outcome = run_to_end(qtbot, engine)
    assert outcome.status == "result"
    assert len(layers) == 280
    assert [e.block for e in layers[::7]] == list(range(40))
    assert max(batches) > 40  # a burst arrived, and was split into batches of 40
