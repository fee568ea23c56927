"""Every page lays out at the window's minimum, a laptop's and a desktop's size, in English
and Chinese: no label or button text cut off, no table header cut, no page wider than the
window (see layout_check.py for what counts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import fake_command
from layout_check import problems
from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtWidgets import QApplication, QLabel, QPushButton, QTableWidget, QVBoxLayout, QWidget
from shapes import hardware, model_info

from qtapp.gui.engine_process import EngineProcess
from qtapp.gui.i18n import install_translator
from qtapp.gui.main_window import PAGES, MainWindow

SIZES = ((1000, 680), (1366, 768), (1920, 1080))


def settle(window: MainWindow) -> None:
    for _ in range(3):
        QApplication.processEvents()
    window.centralWidget().layout().activate()
    for _ in range(3):
        QApplication.processEvents()


def filled_window(qtbot, tmp_path: Path) -> MainWindow:
    """A window with every page showing content: a GPU machine, a model, GPTQ with mixed
    precision, a finished (fake) run in the results and the chat list."""
    w = MainWindow(engine=EngineProcess(command=fake_command("ok", "--blocks", "3")),
                   scan=False)
    qtbot.addWidget(w)
    w.show()
    w.state.set_hardware(hardware(8))
    w.state.set_model(model_info(tmp_path))
    method = w.page("method")
    method.method_radio["gptq"].setChecked(True)
    method.out_edit.setText(str(tmp_path / "out-gptq"))
    run = w.page("run")
    with qtbot.waitSignal(run.finished, timeout=20000):
        method.start_button.click()
    assert run.outcome.ok
    method.rules_table.mixed.setCurrentIndex(1)  # mixed precision on: the widest method page
    return w


def page_problems(window: MainWindow) -> list[str]:
    found = []
    for width, height in SIZES:
        window.resize(width, height)
        for name in PAGES:
            window.go(name)
            settle(window)
            found += [f"{width}×{height} {name}: {p}"
                      for p in problems(window.page(name), window)]
    return found


@pytest.mark.parametrize("language", ["en", "zh_CN"])
def test_every_page_fits_at_every_size(qtbot, tmp_path: Path, language: str) -> None:
    app = QCoreApplication.instance()
    translator = install_translator(app, language) if language != "en" else None
    try:
        window = filled_window(qtbot, tmp_path)
        found = page_problems(window)
    finally:
        if translator is not None:
            app.removeTranslator(translator)
    assert found == [], f"{len(found)} layout problems:\n" + "\n".join(found)


def test_the_check_sees_cut_text_headers_and_horizontal_scrolling(qtbot) -> None:
    """The checks themselves, on a deliberately broken page."""
    window = QWidget()
    qtbot.addWidget(window)
    window.resize(400, 400)
    page = QWidget(window)
    wide = QWidget()
    wide.setMinimumWidth(5000)
    QVBoxLayout(page).addWidget(wide)
    page.setGeometry(0, 0, 300, 300)
    fixed = QLabel("A label much longer than the forty pixels it is given", page)
    fixed.setGeometry(0, 0, 40, 20)
    b = QPushButton("Use recommended settings", page)
    b.setGeometry(0, 30, 50, 30)
    table = QTableWidget(1, 2, page)
    table.setHorizontalHeaderLabels(["Quantizing needs", "x"])
    table.horizontalHeader().resizeSection(0, 30)
    table.setGeometry(0, 70, 60, 80)
    table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
    window.show()
    QApplication.processEvents()
    found = "\n".join(problems(page, window))
    assert "A label much longer" in found
    assert "'Use recommended settings' needs" in found
    assert "table header 'Quantizing needs'" in found
    assert "scrolls horizontally" in found
    assert "the page needs 5" in found
