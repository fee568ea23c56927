"""GUI tests run headless: the offscreen Qt platform, app data and settings in tmp folders."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


import pytest
from gui_helpers import fake_command
from hub_fixture import hub_server  # noqa: F401 (the `hub` fixture: a local Hugging Face Hub)
from qt_isolation import isolated_user_data  # noqa: F401 (an autouse fixture)


@pytest.fixture(scope="session")
def qapp_args() -> list[str]:
    return ["quantdesk-tests"]


@pytest.fixture(scope="session", autouse=True)
def themed_app(qapp):
    from PySide6.QtCore import QLocale

    from qtapp.gui.app import create_app

    QLocale.setDefault(QLocale(QLocale.Language.English, QLocale.Country.UnitedStates))
    return create_app()




@pytest.fixture
def tiny_method_page(qtbot, tmp_path, make_tiny_model):
    """(method page, ModelInfo): a window on a tiny Llama, RTN W4 g64 chosen, the output in
    tmp_path/out, and a fake engine so that nothing real runs."""
    from gui_helpers import fake_command

    from qtapp.engine.model.sources import resolve_model
    from qtapp.gui.engine_process import EngineProcess
    from qtapp.gui.main_window import MainWindow

    folder = make_tiny_model(tmp_path / "tiny", "llama", hidden_size=128,
                             intermediate_size=256)
    w = MainWindow(engine=EngineProcess(command=fake_command("ok", "--blocks", "2")),
                   scan=False)
    qtbot.addWidget(w)
    info = resolve_model(str(folder))
    w.state.set_model(info)
    method = w.pages["method"]
    method.method_radio["rtn"].setChecked(True)
    method.group.setCurrentIndex(1)  # 64: divides the tiny model's 128 / 256 inputs
    method.out_edit.setText(str(tmp_path / "out"))
    method._out_auto = False
    return method, info


@pytest.fixture
def window(qtbot):
    """The main window with the scripted fake worker, no hardware scan."""
    from qtapp.gui.engine_process import EngineProcess
    from qtapp.gui.main_window import MainWindow

    w = MainWindow(engine=EngineProcess(command=fake_command("ok", "--blocks", "3")),
                   scan=False)
    qtbot.addWidget(w)
    w.show()
    return w
