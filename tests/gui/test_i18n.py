"""The shipped zh_CN translation loads, covers the strings, and switches the window."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from PySide6.QtCore import QCoreApplication

from qtapp.gui.i18n import TRANSLATIONS, install_translator, tr
from qtapp.gui.main_window import MainWindow


def test_ts_file_is_translated() -> None:
    root = ET.parse(TRANSLATIONS / "quantdesk_zh_CN.ts").getroot()
    messages = list(root.iter("message"))
    unfinished = [m.find("source").text for m in messages
                  if m.find("translation").get("type") == "unfinished"]
    assert len(messages) > 200
    assert unfinished == []
    for m in messages:  # placeholders survive translation
        src, dst = m.find("source").text, m.find("translation").text
        assert sorted(_fields(src)) == sorted(_fields(dst)), src


def _fields(text: str) -> list[str]:
    import string

    return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]


def test_window_in_chinese(qtbot) -> None:
    app = QCoreApplication.instance()
    assert install_translator(app, "en") is None
    assert tr("Hardware") == "Hardware"
    translator = install_translator(app, "zh_CN")
    assert translator is not None
    try:
        assert tr("Hardware") == "硬件"
        assert tr("{b}-bit").format(b=4) == "4 位"
        w = MainWindow(scan=False)
        qtbot.addWidget(w)
        assert w.nav.item(0).text().endswith("硬件")
        assert w.page("method").start_button.text() == "开始量化"
    finally:
        app.removeTranslator(translator)
    assert tr("Hardware") == "Hardware"
