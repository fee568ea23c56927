"""The window's pages, driven headless: hardware table, advisor defaults, method validation,
a run with the fake worker through to the results table, a crash shown with its stderr."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import fake_command
from PySide6.QtCore import Qt
from shapes import hardware, model_info

from qtapp.gui.engine_process import EngineProcess
from qtapp.gui.main_window import PAGES, MainWindow
from qtapp.gui.results_store import ResultsStore


def test_every_page_builds_and_the_sidebar_switches(window: MainWindow) -> None:
    assert window.nav.count() == len(PAGES) == 6
    for name in PAGES:
        window.go(name)
        assert window.current_page() == name
        shown = window.stack.currentWidget()  # the page, or the scroll area around it
        assert shown is window.page(name) or shown.isAncestorOf(window.page(name))


def test_hardware_page_shows_facts_table_and_recommendation(window: MainWindow) -> None:
    page = window.page("hardware")
    window.state.set_hardware(hardware(None))
    assert page.cpu_value.text() == "Fake CPU 9000"
    assert page.gpu_value.text() == "No GPU"
    assert page.rec_title.text() == "Recommended: GGUF Q4_K_M"
    rows = page.table_text()
    assert [r[0] for r in rows] == ["7B", "13B", "70B"]
    assert rows[0][1:5] == ["6.7B", "12.55 GiB", "6.66 GiB", "3.62 GiB"]  # binary units
    assert rows[2][5] == "does not fit"  # 70B on 32 GiB of RAM and no GPU
    window.state.set_model(model_info(Path("/models")))
    rows = page.table_text()
    assert len(rows) == 4 and rows[3][0] == "Llama-7B-test (selected)"
    assert "CPU only" in window.footer.text() and "Llama-7B-test" in window.footer.text()


def test_goal_and_gpu_change_the_advice(window: MainWindow, tmp_path: Path) -> None:
    page = window.page("hardware")
    method = window.page("method")
    window.state.set_hardware(hardware(24))
    window.state.set_model(model_info(tmp_path))
    assert page.rec_title.text() == "Recommended: AWQ 4-bit, group 128"
    assert method.method() == "awq" and method.bits.currentData() == 4
    assert method.method_badge["awq"].text() == "recommended"
    page.goal_buttons["accuracy"].click()
    assert page.rec_title.text() == "Recommended: GPTQ 8-bit, group 128"
    assert "rows" not in page.rec_warnings.text()
    method.apply_recommendation()
    assert (method.method(), method.bits.currentData(), method.sym.currentData()) == (
        "gptq", 8, True)
    assert method.samples.value() == 512
    page.target.setCurrentIndex(3)  # an edge device
    assert page.rec_title.text() == "Recommended: GGUF Q4_K_M"


def test_method_page_explains_why_start_is_disabled(window: MainWindow, tmp_path) -> None:
    method = window.page("method")
    assert not method.start_button.isEnabled()
    assert "Choose a model on the Model page first" in method.validation.text()
    window.state.set_hardware(hardware(8))
    window.state.set_model(model_info(tmp_path))
    assert method.start_button.isEnabled(), method.validation.text()
    assert method.validation.text().startswith("✓ Ready: AWQ")
    assert Path(method.out_edit.text()).name == "Llama-7B-test-awq-w4g128"

    mixed, rules = method.rules_table.mixed, method.rules_table.table
    mixed.setCurrentIndex(1)  # the attention 8-bit / FFN 4-bit preset
    assert rules.rowCount() == 2
    assert [rules.item(r, 1).text() for r in range(2)] == ["8", "4"]
    assert mixed.currentIndex() == 1
    job = method.build_job()
    assert job.scheme_for("model.layers.0.self_attn.q_proj").bits == 8
    assert job.scheme_for("model.layers.0.mlp.down_proj").bits == 4
    assert method.out_edit.text().endswith("-mixed")

    rules.item(0, 0).setText("")  # an empty pattern
    assert mixed.currentIndex() == 2  # an edited preset becomes custom rules
    assert not method.start_button.isEnabled()
    assert "Mixed-precision rule 1" in method.validation.text()
    assert "non-empty glob" in method.validation.text()
    rules.item(0, 0).setText("*.self_attn.*")
    rules.item(1, 1).setText("9")
    assert not method.start_button.isEnabled()
    assert "Mixed-precision rule 2" in method.validation.text()
    assert "9 is not allowed" in method.validation.text()
    rules.item(1, 1).setText("4")
    assert method.start_button.isEnabled()

    method.calib_source.setCurrentIndex(1)
    assert not method.start_button.isEnabled()
    assert "calibration text file" in method.validation.text()
    assert method.form.isRowVisible(method.calib_row)
    method.calib_source.setCurrentIndex(0)

    existing = tmp_path / "already-here"
    existing.mkdir()
    method.out_edit.setText(str(existing))
    assert not method.start_button.isEnabled()
    assert "already exists" in method.validation.text()


def test_gguf_shows_its_own_options(window: MainWindow, tmp_path: Path) -> None:
    method = window.page("method")
    window.state.set_hardware(hardware(None))
    window.state.set_model(model_info(tmp_path))
    assert method.method() == "gguf"
    assert method.gguf_type.currentData() == "Q4_K_M"
    assert not method.form.isRowVisible(method.bits)
    assert method.form.isRowVisible(method.gguf_type)
    method.method_radio["rtn"].setChecked(True)
    assert method.form.isRowVisible(method.bits)
    assert not method.form.isRowVisible(method.samples)  # RTN needs no calibration


def start_fake_job(window: MainWindow, tmp_path: Path, qtbot) -> None:
    window.state.set_hardware(hardware(None))
    window.state.set_model(model_info(tmp_path))
    method = window.page("method")
    method.method_radio["gptq"].setChecked(True)
    method.out_edit.setText(str(tmp_path / "out-gptq"))
    assert method.start_button.isEnabled(), method.validation.text()
    qtbot.mouseClick(method.start_button, Qt.MouseButton.LeftButton)


def test_a_run_fills_the_chart_and_lands_in_results(window: MainWindow, tmp_path: Path,
                                                    qtbot) -> None:
    run = window.page("run")
    with qtbot.waitSignal(run.finished, timeout=20000):
        start_fake_job(window, tmp_path, qtbot)
        assert window.current_page() == "run"
        assert window.state.job_running
        assert not window.page("method").start_button.isEnabled()  # one job at a time
    assert not window.state.job_running
    assert run.outcome.ok
    x, y = run.chart.series("q")
    assert [round(v) for v in x] == [0, 1, 2]
    assert y == pytest.approx([1e-3, 2e-3, 3e-3])
    assert len(run.chart.series("down")[0]) == 3
    assert run.progress.value() == run.progress.maximum()
    assert "fake worker started" in run.log_view.toPlainText()
    assert run.results_button.isVisible() and not run.cancel_button.isVisible()
    assert "Finished: 85.8 MiB, perplexity 12.50" in run.stage.text()  # 90e6 bytes

    results = window.page("results")
    rows = results.table_text()
    assert rows[0][:5] == ["fake-model", "original", "16-bit", "257.5 MiB", "12.00"]
    assert rows[1][:6] == ["fake-model", "GPTQ", "W4 g128 sym", "85.8 MiB (33%)", "12.50",
                           "+4.2 %"]
    assert results.selected()[1].out == str(tmp_path / "out-gptq")
    assert "model.safetensors" in results.detail.text("Files")
    reloaded = ResultsStore(window.state.results.path)
    assert [r.ppl for r in reloaded.records] == [12.5]  # kept across restarts
    chat = window.page("chat")
    assert chat.choice.count() == 1 and "GPTQ" in chat.choice.currentText()


def test_cancel_from_the_run_page(window: MainWindow, tmp_path: Path, qtbot) -> None:
    window.engine.command = fake_command("hang", "--blocks", "1")
    window.engine.term_after_s = window.engine.kill_after_s = 0.3
    run = window.page("run")
    with qtbot.waitSignal(run.finished, timeout=20000):
        start_fake_job(window, tmp_path, qtbot)
        qtbot.waitUntil(lambda: run.progress.maximum() == 1 and run.total == 1, timeout=10000)
        qtbot.mouseClick(run.cancel_button, Qt.MouseButton.LeftButton)
    assert run.outcome.status == "cancelled"
    assert run.status_chip.text() == "cancelled"
    assert not run.error.isVisible()  # a cancel is not an error
    assert window.state.results.records == []


def test_a_crash_is_shown_with_the_stderr_tail_and_can_be_retried(window: MainWindow,
                                                                   tmp_path: Path,
                                                                   qtbot) -> None:
    window.engine.command = fake_command("crash", "--blocks", "3")
    run = window.page("run")
    with qtbot.waitSignal(run.finished, timeout=20000):
        start_fake_job(window, tmp_path, qtbot)
    assert run.outcome.status == "crashed"
    assert run.error.isVisible()
    assert run.error_title.text() == "The engine worker crashed"
    assert "stopped unexpectedly" in run.error_text.text()
    assert "MemoryError: boom in block 1" in run.details.toPlainText()
    assert not run.details.isVisible()
    run.details_button.click()
    assert run.details.isVisible()
    assert run.status_chip.text() == "worker crashed"

    window.engine.command = fake_command("ok", "--blocks", "2")
    method = window.page("method")
    assert method.start_button.isEnabled()  # the crash left nothing running or written
    with qtbot.waitSignal(run.finished, timeout=20000):
        qtbot.mouseClick(method.start_button, Qt.MouseButton.LeftButton)
    assert run.outcome.ok and not run.error.isVisible()


def test_results_survive_a_new_window(window: MainWindow, tmp_path: Path, qtbot) -> None:
    run = window.page("run")
    with qtbot.waitSignal(run.finished, timeout=20000):
        start_fake_job(window, tmp_path, qtbot)
    second = MainWindow(engine=EngineProcess(), scan=False)
    qtbot.addWidget(second)
    assert [r[1] for r in second.page("results").table_text()] == ["original", "GPTQ"]
    second.page("results").table.selectRow(1)
    second.page("results")._remove()
    assert second.page("results").table_text() == []


def test_a_failure_is_told_once_in_the_error_banner(window: MainWindow, tmp_path: Path,
                                                    qtbot) -> None:
    window.engine.command = fake_command("fail")
    run = window.page("run")
    with qtbot.waitSignal(run.finished, timeout=20000):
        start_fake_job(window, tmp_path, qtbot)
    message = "the model folder has no tokenizer; copy it in"
    assert run.outcome.status == "failed" and run.outcome.message == message
    assert run.error.isVisible() and run.error_text.text() == message
    assert message not in run.stage.text()  # not again, cut off, in the progress card
    assert run.stage.text().startswith("Stopped")


def test_the_quality_check_has_its_own_bar_and_time_left(window: MainWindow,
                                                         monkeypatch) -> None:
    from qtapp.engine import events as ev

    run = window.page("run")
    monkeypatch.setattr(run.engine, "is_running", lambda: True)
    try:
        _quality_check_progress(run, ev)
    finally:
        monkeypatch.undo()  # before the window closes (a running job would ask to stop it)


def _quality_check_progress(run, ev) -> None:
    run._on_progress(ev.Progress(step=30, total=30, stage="quantize", message="block 30/30",
                                 eta_s=0.0))
    assert run.progress.value() == run.progress.maximum() == 30
    run._on_progress(ev.Progress(step=0, total=0, stage="evaluate", message="quality gate"))
    assert run.progress.value() == 0  # not a full bar from the blocks before it
    assert "left" not in run.eta.text()  # not "about 0 s left" from the quantize stage
    run._on_progress(ev.Progress(step=6, total=42, stage="evaluate",
                                 message="quantized model: window 6 of 20", eta_s=300.0))
    assert (run.progress.value(), run.progress.maximum()) == (6, 42)
    assert "about 5 min 00 s left" in run.eta.text() or "about 4 min 59 s left" in run.eta.text()
    assert "Measuring perplexity: quantized model: window 6 of 20" == run.stage.text()
