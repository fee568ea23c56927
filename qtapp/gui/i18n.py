"""Translatable strings: every user-visible string goes through `tr` (lupdate finds the
calls; constants are marked with QT_TR_NOOP). Translations live in
qtapp/resources/translations/quantdesk_<locale>.qm; the language follows the system locale
unless the user picked one (Help → Language)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QT_TR_NOOP, QCoreApplication, QLocale, QSettings, QTranslator

TRANSLATIONS = Path(__file__).resolve().parent.parent / "resources" / "translations"
LANGUAGE_SETTING = "ui/language"
LANGUAGES = (("system", QT_TR_NOOP("System default")), ("en", "English"), ("zh_CN", "简体中文"))


def tr(text: str) -> str:
    return QCoreApplication.translate("", text)


def install_translator(app: QCoreApplication, language: str | None = None) -> QTranslator | None:
    """Load the translation for `language` ("system", "en", "zh_CN"; default: the saved
    choice). Returns the installed translator, or None for English."""
    code = language or str(QSettings().value(LANGUAGE_SETTING, "system"))
    if code == "en":
        return None
    locale = QLocale() if code == "system" else QLocale(code)
    translator = QTranslator(app)
    if not translator.load(locale, "quantdesk", "_", str(TRANSLATIONS)):
        return None
    app.installTranslator(translator)
    return translator
