"""The window: a sidebar of six steps beside the page of the current step."""

from __future__ import annotations

import platform

from PySide6.QtCore import QT_TR_NOOP, QByteArray, QSettings, QSize, Qt, QTimer, QUrl
from PySide6.QtCore import __version__ as qt_version
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QDesktopServices
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from qtapp import __version__
from qtapp.engine.planning.hardware import Hardware
from qtapp.gui.engine_process import EngineProcess, Outcome
from qtapp.gui.format import format_size
from qtapp.gui.i18n import LANGUAGE_SETTING, LANGUAGES, tr
from qtapp.gui.pages.chat import ChatPage
from qtapp.gui.pages.hardware import HardwarePage
from qtapp.gui.pages.method import MethodPage
from qtapp.gui.pages.model import ModelPage
from qtapp.gui.pages.results import ResultsPage
from qtapp.gui.pages.run import RunPage
from qtapp.gui.paths import data_dir, results_file
from qtapp.gui.results_store import ResultsStore, RunRecord
from qtapp.gui.state import AppState
from qtapp.gui.tasks import Background
from qtapp.gui.welcome import WelcomeDialog
from qtapp.gui.widgets.common import label, vertical_scroll

PAGES = ("hardware", "model", "method", "run", "results", "chat")
PAGE_TITLES = (QT_TR_NOOP("Hardware"), QT_TR_NOOP("Model"), QT_TR_NOOP("Method"),
               QT_TR_NOOP("Run"), QT_TR_NOOP("Results"), QT_TR_NOOP("Chat"))


class MainWindow(QMainWindow):
    def __init__(self, engine: EngineProcess | None = None, scan: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("QuantDesk")
        self.setMinimumSize(1000, 680)
        self.background = Background(self)
        self.state = AppState(self.background, ResultsStore(results_file()), self)
        self.engine = engine or EngineProcess(self)

        self.pages = {
            "hardware": HardwarePage(self.state),
            "model": ModelPage(self.state),
            "method": MethodPage(self.state),
            "run": RunPage(self.state, self.engine),
            "results": ResultsPage(self.state),
            "chat": ChatPage(self.state),
        }
        self.stack = QStackedWidget()
        for page in self.pages.values():  # a short window scrolls a page up and down
            self.stack.addWidget(page if getattr(page, "fills_height", False)
                                 else vertical_scroll(page))

        sidebar = QWidget()
        sidebar.setObjectName("Sidebar")
        side = QVBoxLayout(sidebar)
        side.setContentsMargins(8, 20, 8, 14)
        side.setSpacing(2)
        name = label("QuantDesk", "AppName")
        name.setContentsMargins(14, 0, 0, 0)
        tagline = label(tr("Quantize LLMs locally"), "AppTagline")
        tagline.setContentsMargins(14, 0, 0, 14)
        side.addWidget(name)
        side.addWidget(tagline)
        self.nav = QListWidget()
        self.nav.setObjectName("NavList")
        self.nav.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.nav.setSpacing(2)
        for i, title in enumerate(PAGE_TITLES, 1):
            item = QListWidgetItem(f"{i}    {tr(title)}")
            item.setSizeHint(QSize(120, 38))
            self.nav.addItem(item)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        side.addWidget(self.nav, 1)
        self.footer = label("", "SidebarFooter", wrap=True)
        self.footer.setContentsMargins(14, 0, 8, 0)
        side.addWidget(self.footer)
        # as wide as its longest line (in this language), so that a small window leaves the
        # pages as much room as it can
        widest = max([tagline.sizeHint().width(), name.sizeHint().width()]
                     + [self.nav.fontMetrics().horizontalAdvance(self.nav.item(i).text()) + 40
                        for i in range(self.nav.count())])
        sidebar.setFixedWidth(min(max(widest + 16, 170), 220))

        central = QWidget()
        row = QHBoxLayout(central)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(sidebar)
        row.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self._menus()
        self._connect()
        self._restore()
        if scan:  # after the first frame: the scan imports torch, which takes seconds
            QTimer.singleShot(300, self, self.hardware_page.scan)
        # Build the chart (pyqtgraph) while the user reads the first page, not when a job starts.
        QTimer.singleShot(800, self, self._build_chart)

    def _build_chart(self) -> None:
        self.pages["run"].chart  # noqa: B018 - the property builds it

    @property
    def hardware_page(self) -> HardwarePage:
        return self.pages["hardware"]  # type: ignore[return-value]

    def page(self, name: str) -> QWidget:
        return self.pages[name]

    def go(self, name: str) -> None:
        self.nav.setCurrentRow(PAGES.index(name))

    def current_page(self) -> str:
        return PAGES[self.stack.currentIndex()]

    def _menus(self) -> None:
        file_menu = self.menuBar().addMenu(tr("&File"))
        open_data = QAction(tr("Open data folder"), self)
        open_data.triggered.connect(lambda: QDesktopServices.openUrl(
            QUrl.fromLocalFile(str(data_dir()))))
        quit_action = QAction(tr("&Quit"), self)
        quit_action.setShortcut("Ctrl+Q")
        quit_action.triggered.connect(self.close)
        file_menu.addAction(open_data)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        help_menu = self.menuBar().addMenu(tr("&Help"))
        welcome = QAction(tr("Welcome and steps"), self)
        welcome.triggered.connect(lambda: WelcomeDialog(self).exec())
        about = QAction(tr("About QuantDesk"), self)
        about.triggered.connect(self.about)
        help_menu.addAction(welcome)
        language = help_menu.addMenu(tr("Language"))
        group = QActionGroup(self)
        current = str(QSettings().value(LANGUAGE_SETTING, "system"))
        for code, name in LANGUAGES:
            action = QAction(tr(name) if code == "system" else name, self, checkable=True)
            action.setChecked(code == current)
            action.triggered.connect(lambda _checked, c=code: self._set_language(c))
            group.addAction(action)
            language.addAction(action)
        help_menu.addAction(about)

    def _set_language(self, code: str) -> None:
        QSettings().setValue(LANGUAGE_SETTING, code)
        QMessageBox.information(self, tr("Language"),
                                tr("The language changes the next time QuantDesk starts."))

    def _connect(self) -> None:
        model: ModelPage = self.pages["model"]  # type: ignore[assignment]
        method: MethodPage = self.pages["method"]  # type: ignore[assignment]
        run: RunPage = self.pages["run"]  # type: ignore[assignment]
        results: ResultsPage = self.pages["results"]  # type: ignore[assignment]
        model.next_button.clicked.connect(lambda: self.go("method"))
        method.start_requested.connect(self.start_job)
        run.finished.connect(self._job_finished)
        run.results_requested.connect(lambda: self.go("results"))
        run.settings_requested.connect(lambda: self.go("method"))
        results.chat_requested.connect(self._chat_with)
        self.state.hardware_changed.connect(self._update_footer)
        self.state.model_changed.connect(self._update_footer)
        self.state.busy_changed.connect(self._update_footer)

    def start_job(self, job) -> None:
        run: RunPage = self.pages["run"]  # type: ignore[assignment]
        run.start(job)
        self.go("run")

    def _job_finished(self, outcome: Outcome, job) -> None:
        if outcome.ok:
            record = self.state.results.add(RunRecord.from_result(outcome.result, job.to_dict()))
            self.state.results_changed.emit()
            results: ResultsPage = self.pages["results"]  # type: ignore[assignment]
            results.refresh(select_id=record.id)
        method: MethodPage = self.pages["method"]  # type: ignore[assignment]
        if outcome.ok:
            method.plan_finished(outcome.result.plan)
        method.refresh_output_name()

    def _chat_with(self, record: RunRecord) -> None:
        chat: ChatPage = self.pages["chat"]  # type: ignore[assignment]
        chat.open_record(record)
        self.go("chat")

    def _update_footer(self, *_args: object) -> None:
        lines = []
        hw: Hardware | None = self.state.hardware
        if hw is not None:
            gpu = hw.best_gpu
            lines.append(f"{gpu.name} · {format_size(gpu.vram_total)}" if gpu
                         else tr("CPU only · {ram} RAM").format(ram=format_size(hw.ram_total)))
        if self.state.model is not None:
            lines.append(tr("Model: {name}").format(name=self.state.model.name))
        if self.state.job_running:
            lines.append(tr("● A job is running"))
        self.footer.setText("\n".join(lines))

    def about(self) -> None:
        torch = self.state.hardware.torch_version if self.state.hardware else ""
        QMessageBox.about(self, tr("About QuantDesk"), tr(
            "<h3>QuantDesk {version}</h3><p>Quantize large language models on your own "
            "machine: GPTQ, AWQ, GGUF.</p><p>Python {py} · Qt {qt}{torch}<br>{os}</p>"
            "<p>Data: {data}</p>").format(
                version=__version__, py=platform.python_version(), qt=qt_version,
                torch=f" · torch {torch}" if torch else "", os=platform.platform(),
                data=data_dir()))

    def _restore(self) -> None:
        settings = QSettings()
        geometry = settings.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1240, 820)
        page = str(settings.value("window/page", "hardware"))
        self.go(page if page in PAGES and page != "run" else "hardware")

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.engine.is_running():
            answer = QMessageBox.question(
                self, tr("A job is running"),
                tr("Quantizing is still running. Stop it and quit? Nothing partial is kept."))
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.engine.stop_now()
        settings = QSettings()
        settings.setValue("window/geometry", self.saveGeometry())
        settings.setValue("window/page", self.current_page())
        chat: ChatPage = self.pages["chat"]  # type: ignore[assignment]
        chat.shutdown()
        self.background.shutdown()
        super().closeEvent(event)
