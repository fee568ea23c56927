"""Step 5: every finished run beside its original: size, perplexity, time; open the folder."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QT_TR_NOOP, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

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
from qtapp.gui.widgets.common import Card, KeyValues, PageHeader, button, label, page_layout
from qtapp.gui.widgets.size_plot import SizeQualityPlot

COLUMNS = (QT_TR_NOOP("Model"), QT_TR_NOOP("Method"), QT_TR_NOOP("Settings"),
           QT_TR_NOOP("Size"), QT_TR_NOOP("Perplexity"), QT_TR_NOOP("vs original"),
           QT_TR_NOOP("Verdict"), QT_TR_NOOP("Time"), QT_TR_NOOP("Finished"))
DETAIL_KEYS = [QT_TR_NOOP("Folder"), QT_TR_NOOP("Format"), QT_TR_NOOP("Files"),
               QT_TR_NOOP("Calibration"), QT_TR_NOOP("Compared with"), QT_TR_NOOP("Quality")]
ORIGINAL = "original"


class ResultsPage(QWidget):
    chat_requested = Signal(object)  # RunRecord

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        layout = page_layout(self)
        layout.addWidget(PageHeader(tr("Results"), tr(
            "Each finished run beside its original model. Lower perplexity is better; a "
            "few percent above the original is typical for 4-bit.")))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([tr(c) for c in COLUMNS])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        layout.addWidget(self.table, 1)
        self.empty = label(tr("No results yet. Finished runs appear here and stay across "
                              "restarts."), "Muted")
        layout.addWidget(self.empty)

        detail = Card(tr("Selected run"))
        self.detail = KeyValues([tr(k) for k in DETAIL_KEYS])
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
        layout.addWidget(detail)
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
        self.table.setColumnHidden(COLUMNS.index("Verdict"),
                                   not any(r.verdict for _, r in rows))
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
                     format_ppl(r.ppl_source), "", "", "", ""]
        else:
            cells = [r.model, r.method.upper(), r.settings,
                     format_size(r.size_bytes) + size_share(r.size_bytes, r.source_size_bytes),
                     format_ppl(r.ppl), ppl_change(r.ppl, r.ppl_source), r.verdict,
                     format_duration(r.seconds),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(r.finished))]
        for c, text in enumerate(cells):
            item = QTableWidgetItem(text)
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
        for b in (self.open_button, self.chat_button, self.remove_button):
            b.setEnabled(is_run)
        if chosen is None:
            for k in DETAIL_KEYS:
                self.detail.set(tr(k), "—")
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
                  r.source, quality_text(r.result.quality) if kind == "run" else "—"]
        for k, v in zip(DETAIL_KEYS, values):
            self.detail.set(tr(k), v)

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
