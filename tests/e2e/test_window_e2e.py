"""The real window runs the real worker: RTN W8 on a tiny model, chart, results, chat; and a
cancel right after the start leaves no output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from qtapp.gui.app import create_app
from qtapp.gui.main_window import MainWindow

pytestmark = pytest.mark.slow
KINDS = ("q", "k", "v", "o", "gate", "up", "down")


@pytest.fixture
def window(qtbot, tmp_path: Path, tiny_llama_dir: Path) -> MainWindow:
    create_app()
    w = MainWindow()  # the real hardware scan and the real engine worker
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.state.advice is not None, timeout=60000)
    model = w.page("model")
    w.go("model")
    model.radio["folder"].setChecked(True)
    model.folder_edit.setText(str(shutil.copytree(tiny_llama_dir, tmp_path / "tiny-llama")))
    assert model.folder_hint.text() == "✓ Looks like a model folder."
    qtbot.mouseClick(model.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.state.model is not None, timeout=60000)
    assert model.info.text("Architecture") == "llama"
    assert model.info.text("Blocks") == "2"
    return w


def choose_rtn_w8(w: MainWindow, out: Path, evaluate: bool = True) -> None:
    method = w.page("method")
    w.go("method")
    method.method_radio["rtn"].setChecked(True)
    method.bits.setCurrentIndex(method.bits.findData(8))
    method.group.setCurrentIndex(method.group.findData(32))
    method.samples.setValue(4)
    method.seq_len.setValue(32)
    method.evaluate.setChecked(evaluate)
    method.out_edit.setText(str(out))
    assert method.start_button.isEnabled(), method.validation.text()


def test_rtn_w8_through_the_window(window: MainWindow, tmp_path: Path, qtbot) -> None:
    out = tmp_path / "tiny-rtn-w8"
    choose_rtn_w8(window, out)
    run = window.page("run")
    with qtbot.waitSignal(run.finished, timeout=300000):
        qtbot.mouseClick(window.page("method").start_button, Qt.MouseButton.LeftButton)
    assert run.outcome.ok, (run.outcome.message, run.outcome.stderr_tail)
    for kind in KINDS:  # one point per block for each module kind
        x, y = run.chart.series(kind)
        assert [round(v) for v in x] == [0, 1]
        assert all(0 < e < 1e-2 for e in y)  # 8-bit RTN: tiny relative output errors
    assert run.chart.symbols("q") == ["s", "s"]  # 8-bit markers
    assert (out / "config.json").is_file()

    results = window.page("results")
    rows = results.table_text()
    assert [r[1] for r in rows] == ["original", "RTN"]
    assert rows[1][2] == "W8 g32 sym"
    ppl, ppl_source = (float(rows[i][4]) for i in (1, 0))
    assert ppl == pytest.approx(ppl_source, rel=0.01)  # W8 is near-lossless
    window.go("results")
    qtbot.mouseClick(results.chat_button, Qt.MouseButton.LeftButton)
    chat = window.page("chat")
    assert window.current_page() == "chat"
    qtbot.waitUntil(lambda: chat.quantized.backend is not None
                    and chat.original.backend is not None, timeout=120000)
    chat.max_tokens.setValue(8)
    chat.prompt.setPlainText("Hello")
    chat.send()
    qtbot.waitUntil(lambda: chat.quantized.task is None and chat.original.task is None,
                    timeout=120000)
    for pane in (chat.quantized, chat.original):
        assert [m["role"] for m in pane.messages] == ["user", "assistant"]
        assert pane.status.text() == "Ready"


def test_cancel_right_after_start_leaves_no_output(window: MainWindow, tmp_path: Path,
                                                  qtbot) -> None:
    out = tmp_path / "tiny-cancelled"
    choose_rtn_w8(window, out, evaluate=False)
    run = window.page("run")
    started = []
    window.engine.started.connect(started.append)
    with qtbot.waitSignal(run.finished, timeout=120000):
        qtbot.mouseClick(window.page("method").start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(started), timeout=60000)
        qtbot.mouseClick(run.cancel_button, Qt.MouseButton.LeftButton)
    assert run.outcome.status == "cancelled", run.outcome.message
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}") for p in tmp_path.iterdir())
    assert window.state.results.records == []


def test_cancel_while_evaluating_then_resume(window: MainWindow, tmp_path: Path, qtbot,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancel during the quality gate stops the worker itself within seconds (not the
    window's SIGTERM/kill fallback); the next start says it resumes from the checkpoint."""
    import time

    # an empty cache: the gate computes the source's distributions (over a minute here)
    monkeypatch.setenv("QUANTDESK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "tiny-eval-cancelled"
    choose_rtn_w8(window, out)
    run = window.page("run")
    evaluating: list[float] = []
    window.engine.progress.connect(
        lambda e: evaluating.append(time.monotonic()) if e.stage == "evaluate" else None)
    with qtbot.waitSignal(run.finished, timeout=300000):
        qtbot.mouseClick(window.page("method").start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(evaluating), timeout=120000)
        t0 = time.monotonic()
        qtbot.mouseClick(run.cancel_button, Qt.MouseButton.LeftButton)
    seconds = time.monotonic() - t0
    assert run.outcome.status == "cancelled", run.outcome.message
    assert run.outcome.message == "cancelled by the user; no output was written"
    assert seconds < 5
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}") for p in tmp_path.iterdir())
    with qtbot.waitSignal(run.finished, timeout=300000):
        qtbot.mouseClick(window.page("method").start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "resuming" in run.log_view.toPlainText(), timeout=120000)
        qtbot.mouseClick(run.cancel_button, Qt.MouseButton.LeftButton)  # seen: no need to wait
    assert "resuming: 2 of 2 blocks from the checkpoint" in run.log_view.toPlainText()
