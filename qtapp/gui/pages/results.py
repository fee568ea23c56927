"""Step 5: every finished run beside its original: size, perplexity, time; open the folder."""

from __future__ import annotations

import html
import shlex
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QT_TR_NOOP, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from qtapp.engine.errors import UserError
from qtapp.gui import theme
from qtapp.gui.format import (
    format_duration,
    format_ppl,
    format_size,
    ppl_change,
    quality_text,
    size_share,
)
from qtapp.gui.i18n import tr
from qtapp.gui.results_store import RunRecord
from qtapp.gui.state import AppState
from qtapp.gui.widgets.common import (
    Card,
    KeyValues,
    PageHeader,
    button,
    fit_columns,
    label,
    page_layout,
    set_role,
)
from qtapp.gui.widgets.hub_browser import linkify
from qtapp.gui.widgets.publish_dialog import PublishDialog
from qtapp.gui.widgets.remedies_card import RemediesCard
from qtapp.gui.widgets.size_plot import SizeQualityPlot

COLUMNS = (QT_TR_NOOP("Model"), QT_TR_NOOP("Method"), QT_TR_NOOP("Settings"),
           QT_TR_NOOP("Size"), QT_TR_NOOP("Perplexity"), QT_TR_NOOP("vs original"),
           QT_TR_NOOP("Verdict"), QT_TR_NOOP("Time"))
DETAIL_KEYS = [QT_TR_NOOP("Folder"), QT_TR_NOOP("Format"), QT_TR_NOOP("Files"),
               QT_TR_NOOP("Calibration"), QT_TR_NOOP("Compared with"), QT_TR_NOOP("Finished"),
               QT_TR_NOOP("Quality")]
TABLE_ROWS_SHOWN = 4  # the table keeps room for this many rows before it scrolls
ORIGINAL = "original"


class ResultsPage(QWidget):
    chat_requested = Signal(object)  # RunRecord

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        layout = page_layout(self)
        layout.addWidget(PageHeader(tr("Results"), tr(
            "Each finished run beside its original model. Lower perplexity is better; the "
            "verdict says whether a run still behaves like its original.")))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([tr(c) for c in COLUMNS])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        fit_columns(self.table, stretch=0)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        layout.addWidget(self.table, 1)
        self.empty = label(tr("No results yet. Finished runs appear here and stay across "
                              "restarts."), "Muted")
        layout.addWidget(self.empty)

        detail = Card(tr("Selected run"))
        self.detail = KeyValues(DETAIL_KEYS)
        detail.body.addWidget(self.detail)
        buttons = QHBoxLayout()
        self.open_button = button(tr("Open folder"))
        self.open_button.clicked.connect(self.open_folder)
        self.chat_button = button(tr("Chat with it"), "primary")
        self.chat_button.clicked.connect(self._chat)
        self.remove_button = button(tr("Remove from list"))
        self.remove_button.clicked.connect(self._remove)
        for b in (self.open_button, self.chat_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.remove_button)
        detail.body.addLayout(buttons)
        share = QHBoxLayout()
        self.publish_button = button(tr("Publish to Hugging Face…"))
        self.publish_button.clicked.connect(self.publish)
        self.lmstudio_button = button(tr("Open in LM Studio"), tooltip=tr(
            "Links the GGUF file into LM Studio's models folder (publisher/model), where it "
            "lists it under My Models."))
        self.lmstudio_button.clicked.connect(self.open_in_lmstudio)
        self.ollama_button = button(tr("Add to Ollama"), tooltip=tr(
            "Runs `ollama create` with the Modelfile beside the GGUF file."))
        self.ollama_button.clicked.connect(self.add_to_ollama)
        for b in (self.publish_button, self.lmstudio_button, self.ollama_button):
            share.addWidget(b)
        share.addStretch(1)
        detail.body.addLayout(share)
        self.share_status = label("", "Muted", wrap=True)
        self.share_status.setTextFormat(Qt.TextFormat.RichText)
        self.share_status.setOpenExternalLinks(True)
        self.share_status.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextBrowserInteraction)
        detail.body.addWidget(self.share_status)
        self.publish_dialog: PublishDialog | None = None
        layout.addWidget(detail)
        self.remedies = RemediesCard()
        layout.addWidget(self.remedies)
        self.size_plot = SizeQualityPlot()
        plot_card = Card(tr("Size vs quality of this model's runs"))
        plot_card.body.addWidget(self.size_plot)
        layout.addWidget(plot_card)
        self.row_records: list[tuple[str, RunRecord]] = []
        state.results_changed.connect(self.refresh)
        self.refresh()

    def refresh(self, select_id: str | None = None) -> None:
        records = self.state.results.records
        rows: list[tuple[str, RunRecord]] = []
        seen_sources: set[str] = set()
        by_source: dict[str, list[RunRecord]] = {}
        for r in records:
            by_source.setdefault(r.source, []).append(r)
        for source, runs in by_source.items():
            if source not in seen_sources and (runs[0].ppl_source is not None
                                               or runs[0].source_size_bytes):
                rows.append((ORIGINAL, runs[0]))
                seen_sources.add(source)
            rows.extend(("run", r) for r in runs)
        self.row_records = rows
        self.table.setRowCount(len(rows))
        for i, (kind, r) in enumerate(rows):
            self._fill(i, kind, r)
        self.table.resizeRowsToContents()
        shown = max(2, min(len(rows), TABLE_ROWS_SHOWN))  # the original row and its runs
        row_height = self.table.verticalHeader().defaultSectionSize()
        self.table.setMinimumHeight(self.table.horizontalHeader().sizeHint().height()
                                    + shown * row_height + 2 * self.table.frameWidth() + 2)
        self.table.setColumnHidden(COLUMNS.index("Verdict"),
                                   not any(r.verdict for _, r in rows))
        # one source model: the details name it ("Compared with") and the Settings column
        # takes the room; several: the Model column stretches (a cut name has its full text
        # in the tooltip)
        one_model = len({r.model for _, r in rows}) <= 1
        self.table.setColumnHidden(0, one_model)
        fit_columns(self.table, stretch=COLUMNS.index("Settings") if one_model else 0)
        self.empty.setVisible(not rows)
        if select_id is not None:
            for i, (kind, r) in enumerate(rows):
                if kind == "run" and r.id == select_id:
                    self.table.selectRow(i)
        self._selection_changed()

    def _fill(self, i: int, kind: str, r: RunRecord) -> None:
        muted = QColor(theme.MUTED)
        if kind == ORIGINAL:
            cells = [r.model, tr("original"), "16-bit", format_size(r.source_size_bytes),
                     format_ppl(r.ppl_source), "", "", ""]
        else:
            cells = [r.model, r.method.upper(), r.settings,
                     format_size(r.size_bytes) + size_share(r.size_bytes, r.source_size_bytes),
                     format_ppl(r.ppl), ppl_change(r.ppl, r.ppl_source), r.verdict,
                     format_duration(r.seconds)]
        for c, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(text)
            if kind == ORIGINAL:
                item.setForeground(muted)
            elif c == 6 and r.verdict in theme.VERDICT_COLORS:
                item.setForeground(QColor(theme.VERDICT_COLORS[r.verdict]))
            self.table.setItem(i, c, item)

    def selected(self) -> tuple[str, RunRecord] | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if not rows:
            return None
        return self.row_records[min(rows)]

    def _selection_changed(self) -> None:
        chosen = self.selected()
        is_run = chosen is not None and chosen[0] == "run"
        for b in (self.open_button, self.chat_button, self.remove_button, self.publish_button):
            b.setEnabled(is_run)
        self._update_local_apps(chosen[1] if is_run else None)
        self.remedies.show_record(chosen[1] if is_run else None, self._source_info(chosen))
        if chosen is None:
            for k in DETAIL_KEYS:
                self.detail.set(k, "—")
            return
        kind, r = chosen
        self.size_plot.show_runs([x for k, x in self.row_records
                                  if k == "run" and x.source == r.source])
        files = r.result.export.files
        calib = r.result.calibration
        values = [r.out if kind == "run" else r.source, r.format or "—",
                  ", ".join(map(str, files)) or "—",
                  tr("{n} samples × {L} tokens").format(n=calib[0], L=calib[1])
                  if isinstance(calib, list) and len(calib) == 2 else "—",
                  r.source,
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(r.finished))
                  if kind == "run" else "—",
                  quality_text(r.result.quality) if kind == "run" else "—"]
        for k, v in zip(DETAIL_KEYS, values):
            self.detail.set(k, v)

    def _source_info(self, chosen: tuple[str, RunRecord] | None) -> Any:
        """The loaded model's ModelInfo when it is the chosen run's source (the planner then
        predicts the sizes of what to try), else None."""
        model = self.state.model
        if chosen is None or model is None:
            return None
        return model if str(model.path) == chosen[1].source else None

    def gguf_file(self, r: RunRecord | None) -> Path | None:
        """The selected run's GGUF file, when it is a GGUF run whose file still exists."""
        gguf = r.result.gguf if r is not None else None
        if gguf is None or not gguf.file:
            return None
        file = Path(r.out) / gguf.file
        return file if file.is_file() else None

    def _update_local_apps(self, r: RunRecord | None) -> None:
        """LM Studio and Ollama take GGUF files; without `ollama` on the PATH the button is
        off and the command to run is shown."""
        from qtapp.engine.hub.local_apps import ollama_command, ollama_path

        file = self.gguf_file(r)
        ollama = file is not None and ollama_path() is not None
        self.lmstudio_button.setEnabled(file is not None)
        self.ollama_button.setEnabled(ollama)
        set_role(self.share_status, "Muted")
        self.share_status.setText("")
        if file is not None and not ollama:
            command = shlex.join(ollama_command(file, ollama_name(file)))
            self.share_status.setText(html.escape(tr(
                "Ollama is not on the PATH. Install it from ollama.com, then run: {command}")
                .format(command=command)))

    def publish(self) -> None:
        chosen = self.selected()
        if chosen is None or chosen[0] != "run":
            return
        self.publish_dialog = PublishDialog(self.state, Path(chosen[1].out), self)
        self.publish_dialog.open()

    def open_in_lmstudio(self) -> None:
        chosen = self.selected()
        file = self.gguf_file(chosen[1] if chosen else None)
        if file is None:
            return

        def work(_ctx: Any) -> Path:
            from qtapp.engine.hub.local_apps import open_in_lmstudio

            return open_in_lmstudio(file, "quantdesk", file.parent.name)

        self._share_started(tr("Placing {file} in LM Studio's models folder…").format(
            file=file.name))
        self.state.background.run(work, lambda placed: self._share_done(tr(
            "✓ In LM Studio's models folder: {path}. It lists it under My Models.").format(
                path=placed)), self._share_failed)

    def add_to_ollama(self) -> None:
        chosen = self.selected()
        file = self.gguf_file(chosen[1] if chosen else None)
        if file is None:
            return
        name = ollama_name(file)

        def work(_ctx: Any) -> str:
            from qtapp.engine.hub.local_apps import add_to_ollama

            return add_to_ollama(file, name)

        self._share_started(tr("Running ollama create {name}…").format(name=name))
        self.state.background.run(work, lambda _out: self._share_done(tr(
            "✓ Added to Ollama: ollama run {name}").format(name=name)), self._share_failed)

    def _share_started(self, text: str) -> None:
        set_role(self.share_status, "Muted")
        self.share_status.setText(html.escape(text))

    def _share_done(self, text: str) -> None:
        set_role(self.share_status, "OkText")
        self.share_status.setText(html.escape(text))

    def _share_failed(self, error: BaseException) -> None:
        set_role(self.share_status, "ErrorText")
        self.share_status.setText("⚠ " + linkify(str(error) if isinstance(error, UserError)
                                                 else f"{type(error).__name__}: {error}"))

    def open_folder(self) -> None:
        chosen = self.selected()
        if chosen is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(chosen[1].out))))

    def _chat(self) -> None:
        chosen = self.selected()
        if chosen is not None:
            self.chat_requested.emit(chosen[1])

    def _remove(self) -> None:
        chosen = self.selected()
        if chosen is not None and chosen[0] == "run":
            self.state.results.remove(chosen[1].id)
            self.state.results_changed.emit()

    def table_text(self) -> list[list[str]]:
        return [[self.table.item(r, c).text() for c in range(self.table.columnCount())]
                for r in range(self.table.rowCount())]


def ollama_name(gguf: Path) -> str:
    """The Ollama model name of a GGUF output: its folder's name in lower case (Ollama's
    names are lower case)."""
    return gguf.parent.name.lower()
