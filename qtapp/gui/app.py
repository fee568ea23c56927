"""`quantdesk` with no arguments: the window."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from types import TracebackType

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from qtapp import __version__
from qtapp.gui import theme
from qtapp.gui.i18n import install_translator, tr
from qtapp.gui.paths import data_dir

# The main window and the welcome dialog are imported in main(), after logging is set up and the
# start clock runs: the start-up time it logs includes importing the window.

log = logging.getLogger("quantdesk")


def _setup_logging() -> None:
    folder = data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=folder / "quantdesk.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _install_excepthook() -> None:
    """Unhandled exceptions in Qt callbacks: logged, and shown in a dialog, not a silent exit."""

    def hook(kind: type[BaseException], error: BaseException,
             tb: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(kind, error, tb))
        log.error("unhandled exception\n%s", text)
        sys.__stderr__.write(text)
        if QApplication.instance() is not None:
            box = QMessageBox(QMessageBox.Icon.Critical, tr("Something went wrong"),
                              tr("QuantDesk hit an unexpected error: {kind}: {error}\n\nIt was "
                                 "written to the log in {folder}.").format(
                                     kind=kind.__name__, error=error, folder=data_dir()))
            box.setDetailedText(text)
            box.exec()

    sys.excepthook = hook


def create_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setOrganizationName("QuantDesk")
    app.setApplicationName("QuantDesk")
    app.setApplicationVersion(__version__)
    theme.apply(app)
    install_translator(app)
    return app  # type: ignore[return-value]


def main(smoke: bool = False) -> int:
    """Open the window. smoke: print when it is shown (and whether the welcome is) and quit."""
    t0 = time.perf_counter()
    _setup_logging()
    app = create_app()
    _install_excepthook()
    from qtapp.gui.main_window import MainWindow
    from qtapp.gui.welcome import WelcomeDialog, should_show

    window = MainWindow()
    window.show()
    app.processEvents()
    shown_s = time.perf_counter() - t0
    log.info("window shown in %.2f s", shown_s)
    welcome = should_show()
    if welcome:
        WelcomeDialog(window).open()
    if smoke:
        print(f"smoke: window shown in {shown_s:.2f} s, visible={window.isVisible()}, "
              f"welcome={welcome}, data={data_dir()}", flush=True)
        QTimer.singleShot(0, app.quit)
    return app.exec()
