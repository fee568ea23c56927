"""The chat page streams answers from two backends side by side, off the UI thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from qtapp.engine.quality import chat as chat_engine
from qtapp.engine.results import ExportResult, JobResult, Quality, Sizes
from qtapp.gui.main_window import MainWindow
from qtapp.gui.results_store import RunRecord


class StubBackend:
    """Streams a fixed answer slowly, or forever with endless=True; records its threads."""

    kind = "stub"
    template_note = "the model's own chat template"

    def __init__(self, spec: str, endless: bool = False) -> None:
        self.spec = spec
        self.endless = endless
        self.threads: set[int] = set()
        self.closed = False

    def stream(self, messages, settings, stop: threading.Event):
        self.threads.add(threading.get_ident())
        words = ["Hello", " from", f" {Path(self.spec).name}", f" ({len(messages)})"]
        i = 0
        while self.endless or i < len(words):
            if stop.is_set():
                return
            time.sleep(0.02)
            yield words[i % len(words)]
            i += 1

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def window(qtbot, tmp_path: Path, monkeypatch) -> MainWindow:
    backends: dict[str, StubBackend] = {}

    def fake_open(spec: str, device: str = "cpu", allow_download: bool = False) -> StubBackend:
        backends[spec] = StubBackend(spec, endless="endless" in spec)
        return backends[spec]

    monkeypatch.setattr(chat_engine, "open_chat", fake_open)
    w = MainWindow(scan=False)
    w.backends = backends
    qtbot.addWidget(w)
    w.show()
    return w


def record(tmp_path: Path, out: str = "tiny-rtn-w8") -> RunRecord:
    return RunRecord(JobResult(model="tiny", source=str(tmp_path / "tiny"), method="rtn",
                               export=ExportResult(format="gptq"), out=str(tmp_path / out),
                               sizes=Sizes(10, 20), quality=Quality(ppl=10.1, ppl_source=10.0)),
                     settings="W8 g128 sym")


def test_same_prompt_to_both_streamed(window: MainWindow, tmp_path: Path, qtbot) -> None:
    rec = window.state.results.add(record(tmp_path))
    window.state.results_changed.emit()
    page = window.page("chat")
    page.open_record(rec)
    qtbot.waitUntil(lambda: page.quantized.backend is not None
                    and page.original.backend is not None, timeout=5000)
    assert page.quantized.note.text() == "stub · template: the model's own chat template"
    assert page.send_button.isEnabled()
    page.prompt.setPlainText("hi there")
    page.send()
    assert page.prompt.toPlainText() == ""
    assert not page.send_button.isEnabled() and page.stop_button.isEnabled()
    qtbot.waitUntil(lambda: page.quantized.task is None and page.original.task is None,
                    timeout=5000)
    assert page.quantized.transcript() == "Hello from tiny-rtn-w8 (1)"
    assert page.original.transcript() == "Hello from tiny (1)"
    assert [m["role"] for m in page.quantized.messages] == ["user", "assistant"]
    assert "Hello from tiny-rtn-w8" in page.quantized.view.toPlainText()
    main = threading.get_ident()
    for b in window.backends.values():
        assert b.threads and main not in b.threads  # generation ran off the UI thread
    page.prompt.setPlainText("again")
    page.send()
    qtbot.waitUntil(lambda: page.quantized.task is None, timeout=5000)
    assert page.quantized.transcript().endswith("(3)")  # the history went along
    page.reset()
    assert page.quantized.messages == [] and page.quantized.transcript() == ""


def test_stop_ends_generation_and_keeps_the_partial_answer(window: MainWindow,
                                                           tmp_path: Path, qtbot) -> None:
    rec = window.state.results.add(record(tmp_path, out="endless-model"))
    window.state.results_changed.emit()
    page = window.page("chat")
    page.compare.setChecked(False)
    page.open_record(rec)
    qtbot.waitUntil(lambda: page.quantized.backend is not None, timeout=5000)
    assert page.original.backend is None and not page.original.isVisible()
    page.prompt.setPlainText("go on forever")
    page.send()
    qtbot.waitUntil(lambda: len(page.quantized.transcript()) > 20, timeout=5000)
    page.stop()
    qtbot.waitUntil(lambda: page.quantized.task is None, timeout=5000)
    assert page.quantized.status.text() == "Stopped"
    assert page.quantized.messages[-1]["content"].startswith("Hello from endless-model")
    assert page.send_button.isEnabled()


def test_a_model_that_fails_to_load_says_why(window: MainWindow, tmp_path: Path, qtbot,
                                             monkeypatch) -> None:
    def broken(spec: str, **_kw):
        raise chat_engine.UserError(f"{spec} has no config.json; give a model folder")

    monkeypatch.setattr(chat_engine, "open_chat", broken)
    rec = window.state.results.add(record(tmp_path))
    window.state.results_changed.emit()
    page = window.page("chat")
    page.open_record(rec)
    qtbot.waitUntil(lambda: not page.quantized.loading, timeout=5000)
    assert "has no config.json" in page.quantized.status.text()
    assert not page.send_button.isEnabled()
