"""Step 1: what this machine has, what fits, and which method the advisor recommends."""

from __future__ import annotations

from PySide6.QtCore import QT_TR_NOOP, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from qtapp.engine.planning.advisor import PRECISIONS, Advice, SizeRow
from qtapp.engine.planning.hardware import Hardware, detect
from qtapp.gui import theme
from qtapp.gui.format import format_params, format_size
from qtapp.gui.i18n import tr
from qtapp.gui.state import AppState
from qtapp.gui.widgets.common import (
    Card,
    PageHeader,
    button,
    fit_columns,
    label,
    page_layout,
)

TARGET_CHOICES = ((QT_TR_NOOP("this machine (automatic)"), None),
                  (QT_TR_NOOP("this machine's GPU"), "gpu"), (QT_TR_NOOP("the CPU"), "cpu"),
                  (QT_TR_NOOP("an edge device"), "edge"))
FIT_TEXT = {"gpu": "GPU", "ram": "RAM", "none": "—"}
FIT_WHERE = {"gpu": QT_TR_NOOP("on the GPU"), "ram": QT_TR_NOOP("in RAM")}


class HardwarePage(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        layout = page_layout(self)
        head = QHBoxLayout()
        head.addWidget(PageHeader(tr("Your hardware"), tr(
            "What this machine can run and quantize, and the method that suits it best.")), 1)
        self.rescan = button(tr("Scan again"))
        self.rescan.clicked.connect(self.scan)
        head.addWidget(self.rescan, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(head)

        cards = QHBoxLayout()
        cards.setSpacing(12)
        self.cpu_value, self.cpu_detail = self._fact_card(cards, tr("Processor"))
        self.ram_value, self.ram_detail = self._fact_card(cards, tr("Memory"))
        self.gpu_value, self.gpu_detail = self._fact_card(cards, tr("Graphics"))
        layout.addLayout(cards)

        prefs = QGridLayout()  # two lines: one would be wider than a 1000 px window
        prefs.setHorizontalSpacing(10)
        prefs.setVerticalSpacing(8)
        prefs.addWidget(label(tr("Optimise for"), "Muted"), 0, 0)
        goals = QHBoxLayout()
        goals.setSpacing(10)
        self.goal_group = QButtonGroup(self)
        self.goal_buttons: dict[str, QPushButton] = {}
        for goal, text in (("speed", tr("Speed")), ("accuracy", tr("Accuracy"))):
            b = button(text)
            b.setCheckable(True)
            self.goal_group.addButton(b)
            self.goal_buttons[goal] = b
            goals.addWidget(b)
            b.clicked.connect(self._preferences_changed)
        self.goal_buttons["speed"].setChecked(True)
        goals.addStretch(1)
        prefs.addLayout(goals, 0, 1)
        prefs.addWidget(label(tr("The model will run on"), "Muted"), 1, 0)
        self.target = QComboBox()
        for text, _ in TARGET_CHOICES:
            self.target.addItem(tr(text))
        self.target.currentIndexChanged.connect(self._preferences_changed)
        where = QHBoxLayout()
        where.setSpacing(10)
        where.addWidget(self.target)
        where.addSpacing(18)
        where.addWidget(label(tr("Context"), "Muted"))
        self.ctx = QSpinBox()
        self.ctx.setRange(256, 262144)
        self.ctx.setSingleStep(1024)
        self.ctx.setValue(state.ctx)
        self.ctx.setSuffix(tr(" tokens"))
        self.ctx.valueChanged.connect(self._preferences_changed)
        where.addWidget(self.ctx)
        where.addStretch(1)
        prefs.addLayout(where, 1, 1)
        prefs.setColumnStretch(1, 1)
        layout.addLayout(prefs)

        self.banner = Card()
        self.banner.setObjectName("Banner")
        self.rec_title = label(tr("Looking at this machine…"), "BannerTitle")
        self.rec_reason = label("", wrap=True)
        self.rec_warnings = label("", "WarnText", wrap=True)
        self.banner.body.addWidget(self.rec_title)
        self.banner.body.addWidget(self.rec_reason)
        self.banner.body.addWidget(self.rec_warnings)
        layout.addWidget(self.banner)

        self.table = QTableWidget(0, 7)
        self.table.setHorizontalHeaderLabels(
            [tr("Model"), tr("Parameters"), "FP16", "INT8", "INT4", tr("Runs here"),
             tr("Quantizing needs")])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.table.setShowGrid(False)
        fit_columns(self.table, stretch=0)
        # a narrow Model column wraps its names onto more lines: the rows grow with it
        self.table.horizontalHeader().sectionResized.connect(self._fit_table_height)
        layout.addWidget(self.table)
        self.table_note = label("", "Muted", wrap=True)
        layout.addWidget(self.table_note)
        layout.addStretch(1)

        state.hardware_changed.connect(self.show_hardware)
        state.advice_changed.connect(self.show_advice)

    def _fact_card(self, row: QHBoxLayout, title: str) -> tuple[QLabel, QLabel]:
        card = Card(title)
        value = label("…", "BigValue", wrap=True)
        detail = label("", "Muted", wrap=True)
        card.body.addWidget(value)
        card.body.addWidget(detail)
        card.body.addStretch(1)
        row.addWidget(card, 1)
        return value, detail

    def scan(self) -> None:
        self.rescan.setEnabled(False)
        self.rec_title.setText(tr("Looking at this machine…"))

        def done(hw: Hardware) -> None:
            self.rescan.setEnabled(True)
            self.state.set_hardware(hw)

        def failed(error: BaseException) -> None:
            self.rescan.setEnabled(True)
            self.rec_title.setText(tr("Could not read the hardware: {error}").format(
                error=error))

        self.state.background.run(lambda ctx: detect(), done, failed)

    def _preferences_changed(self) -> None:
        goal = "accuracy" if self.goal_buttons["accuracy"].isChecked() else "speed"
        target = TARGET_CHOICES[self.target.currentIndex()][1]
        self.state.set_preferences(goal, target, self.ctx.value())

    def show_hardware(self, hw: Hardware) -> None:
        self.cpu_value.setText(hw.cpu_name)
        self.cpu_detail.setText(tr("{cores} cores, {threads} threads · {os}").format(
            cores=hw.cpu_cores, threads=hw.cpu_threads, os=hw.os_name))
        self.ram_value.setText(tr("{total} RAM").format(total=format_size(hw.ram_total)))
        self.ram_detail.setText(tr("{free} available now").format(
            free=format_size(hw.ram_available)))
        if hw.gpus:
            self.gpu_value.setText("\n".join(g.name for g in hw.gpus))
            details = []
            for g in hw.gpus:
                text = tr("{total} {kind} memory, {free} free").format(
                    total=format_size(g.vram_total), free=format_size(g.vram_free),
                    kind="VRAM" if g.backend == "cuda" else tr("shared"))
                if not g.usable_by_torch:
                    text += tr(" (this torch build cannot use it)")
                details.append(text)
            self.gpu_detail.setText("\n".join(details + list(hw.notes)))
        else:
            self.gpu_value.setText(tr("No GPU"))
            self.gpu_detail.setText(tr("That is fine: quantizing runs on the CPU, and GGUF "
                                       "models run well on a CPU."))

    def show_advice(self, advice: Advice) -> None:
        rec = advice.recommendation
        self.rec_title.setText(tr("Recommended: {summary}").format(summary=rec.summary))
        self.rec_reason.setText(rec.reason)
        self.rec_warnings.setText("\n".join(f"⚠ {w}" for w in rec.warnings))
        self.rec_warnings.setVisible(bool(rec.warnings))
        self.table.setRowCount(len(advice.rows))
        for i, r in enumerate(advice.rows):
            self._fill_row(i, r, advice.ctx)
        self._fit_table_height()
        self.table_note.setText(tr(
            "Weights at each precision (GiB = 2³⁰ bytes; INT8/INT4 include group scales, "
            "embeddings stay 16-bit). “Runs here” adds a {ctx}-token KV cache and runtime "
            "overhead: green fits in GPU memory, blue in RAM. “Quantizing needs” is the "
            "planner's peak memory for quantizing with {method}, one block at a time: GPU "
            "memory where it fits there, else RAM.").format(
                ctx=advice.ctx, method=rec.method.upper()))

    def _fit_table_height(self, *_args: object) -> None:
        """Rows as tall as their wrapped cells, and the table as tall as its rows."""
        self.table.resizeRowsToContents()
        height = self.table.horizontalHeader().height() + 4 + sum(
            self.table.rowHeight(i) for i in range(self.table.rowCount()))
        self.table.setFixedHeight(height)

    def _fill_row(self, i: int, r: SizeRow, ctx: int) -> None:
        name = r.label if not r.selected else tr("{name} (selected)").format(name=r.label)
        cells = [name, format_params(r.n_params),
                 *(format_size(r.weights[p]) for p in PRECISIONS),
                 self._runs_here(r), (f"{format_size(r.quantize_peak)} · "
                 f"{FIT_TEXT[r.quantize_fit]}")]
        for col, text in enumerate(cells):
            item = QTableWidgetItem(text)
            if r.selected:
                font = item.font()
                font.setBold(True)
                item.setFont(font)
            if 2 <= col <= 4:
                p = list(PRECISIONS)[col - 2]
                item.setForeground(QColor(theme.FIT_COLORS[r.run_fit[p]]))
                item.setToolTip(tr("{p}: weights {w}; with a {ctx}-token context about {run} "
                                   "to run").format(p=p, w=format_size(r.weights[p]), ctx=ctx,
                                                    run=format_size(r.run[p])))
            if col == 0:  # a long name is cut at the window's minimum width
                item.setToolTip(text)
            if col == 5 and text == tr("does not fit"):
                item.setForeground(QColor(theme.BAD))
            if col == 6:
                item.setForeground(QColor(theme.FIT_COLORS[r.quantize_fit]))
            self.table.setItem(i, col, item)

    @staticmethod
    def _runs_here(r: SizeRow) -> str:
        for where in ("gpu", "ram"):  # the GPU first, then the best precision that fits
            for p in PRECISIONS:
                if r.run_fit[p] == where:
                    return f"{p} {tr(FIT_WHERE[where])}"
        return tr("does not fit")

    def table_text(self) -> list[list[str]]:
        """The table as text, row by row (for tests and screen readers)."""
        return [[self.table.item(r, c).text() for c in range(self.table.columnCount())]
                for r in range(self.table.rowCount())]
