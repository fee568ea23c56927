"""GUI tests run headless: the offscreen Qt platform, app data and settings in tmp folders."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings


@pytest.fixture(scope="session")
def qapp_args() -> list[str]:
    return ["quantdesk-tests"]


@pytest.fixture(scope="session", autouse=True)
def themed_app(qapp):
    from PySide6.QtCore import QLocale

    from qtapp.gui.app import create_app

    QLocale.setDefault(QLocale(QLocale.Language.English, QLocale.Country.UnitedStates))
    return create_app()


@pytest.fixture(autouse=True)
def isolated_user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "user-data"
    monkeypatch.setenv("QUANTDESK_DATA_DIR", str(data))
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(tmp_path / "settings"))
    return data
