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


def _code_strings() -> dict[str, str]:
    """Every literal first argument of tr(...) / QT_TR_NOOP(...) under qtapp/gui, mapped to
    the first place it occurs (ast joins implicit concatenation; non-literals are skipped)."""
    import ast
    from pathlib import Path

    gui = Path(TRANSLATIONS).parent.parent / "gui"
    found: dict[str, str] = {}
    for path in sorted(gui.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            arg = node.args[0]
            if (name in ("tr", "QT_TR_NOOP") and isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)):
                found.setdefault(arg.value, f"{path.relative_to(gui)}:{node.lineno}")
    return found


def test_every_code_string_is_translated() -> None:
    strings = _code_strings()
    assert len(strings) > 200  # the walk finds the calls
    assert "Hardware" in strings and "{b}-bit" in strings
    root = ET.parse(TRANSLATIONS / "quantdesk_zh_CN.ts").getroot()
    translated = {}
    for context in root.iter("context"):
        if (context.findtext("name") or "") != "":  # i18n.tr looks strings up in context ""
            continue
        for m in context.iter("message"):
            t = m.find("translation")
            if t.get("type") not in ("unfinished", "obsolete", "vanished") and t.text:
                translated[m.findtext("source")] = t.text
    missing = sorted(f"{where}: {text!r}" for text, where in strings.items()
                     if text not in translated)
    assert missing == [], f"{len(missing)} strings without a zh_CN translation:\n" + "\n".join(missing)
    # the shipped .qm is compiled from this .ts (run scripts/update_translations.py)
    from PySide6.QtCore import QTranslator

    qm = QTranslator()
    assert qm.load(str(TRANSLATIONS / "quantdesk_zh_CN.qm"))
    stale = sorted(text for text in strings if qm.translate("", text) != translated[text])
    assert stale == [], f"{len(stale)} strings differ in the .qm; recompile it: {stale}"


def test_switching_the_language_with_the_window_open(window, tmp_path, monkeypatch) -> None:
    """The results page's details are looked up by a stable key: a translator installed while
    the window is open (Help → Language saves the choice; install_translator reads it) used to
    raise KeyError on the next selection, since the keys were translated once at
    construction. The key labels follow the language."""
    from PySide6.QtWidgets import QMessageBox

    from qtapp.engine.config import JobSpec
    from qtapp.engine.results import ExportResult, JobResult, Quality, Sizes
    from qtapp.gui.engine_process import Outcome

    result = JobResult(model="tiny", source="/models/tiny", method="rtn",
                       export=ExportResult(format="gptq", files=["model.safetensors"]),
                       scheme="W4 g128", sizes=Sizes(bytes=1_000, source_bytes=4_000),
                       quality=Quality(ppl=21.0, ppl_source=20.0, verdict="good"),
                       out=str(tmp_path / "out"), seconds=2.0)
    job = JobSpec(model="/models/tiny", method="rtn", out=str(tmp_path / "out"))
    window._job_finished(Outcome("result", "done", result.out, result), job)
    page = window.page("results")
    assert page.detail.text("Files") == "model.safetensors"
    told = []
    monkeypatch.setattr(QMessageBox, "information", lambda *a: told.append(a[2]))
    app = QCoreApplication.instance()
    window._set_language("zh_CN")  # the menu's action
    assert told == ["The language changes the next time QuantDesk starts."]
    translator = install_translator(app)  # the saved choice, while the window is open
    assert translator is not None
    try:
        app.processEvents()  # the posted LanguageChange reaches every widget
        page.table.clearSelection()
        page.refresh(select_id=page.row_records[-1][1].id)
        assert page.detail.text("Files") == "model.safetensors"
        assert page.detail.text("Folder") == str(tmp_path / "out")
        assert page.detail.key_label("Folder").text() == tr("Folder") != "Folder"
    finally:
        app.removeTranslator(translator)
    app.processEvents()
    page.refresh()
    assert page.detail.key_label("Folder").text() == "Folder"
    assert page.detail.text("Files") == "model.safetensors"
    page.table.clearSelection()
    assert page.detail.text("Files") == "—"
