"""Live per-layer error chart: x = block index, y = relative output error (log scale).

One series per module kind (q, k, v, o, gate, up, down), the marker shows the bits, and
hovering a point names the module with its numbers. `add_layer` only queues the event; a
timer draws queued points at most every `refresh_ms`, so a fast worker cannot flood the UI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, QTimer
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import QLabel, QToolTip, QVBoxLayout, QWidget

from qtapp.engine.events import Layer
from qtapp.gui import theme
from qtapp.gui.i18n import tr
from qtapp.gui.widgets.axes import decade_ticks, plain_axes

KINDS = ("q", "k", "v", "o", "gate", "up", "down")
KIND_COLORS = {"q": "#7c93ff", "k": "#5aa9f5", "v": "#3fc1c9", "o": "#b48cff",
               "gate": "#f0a35a", "up": "#e6cf4a", "down": "#f0605a"}
EXTRA_COLORS = ("#9aa0ad", "#6fcf97", "#eb87c4", "#c7a27a")
BIT_SYMBOLS = {2: "t", 3: "d", 4: "o", 5: "p", 6: "h", 8: "s"}
BIT_GLYPHS = {2: "▲", 3: "◆", 4: "●", 5: "⬟", 6: "⬢", 8: "■"}
MIN_ERROR = 1e-9
HOVER_RADIUS_PX = 12.0


@dataclass(frozen=True)
class Point:
    block: int
    x: float
    rel_error: float
    event: Layer


def bits_symbol(bits: int) -> str:
    return BIT_SYMBOLS.get(bits, "x")


class LayerErrorChart(QWidget):
    def __init__(self, parent: QWidget | None = None, refresh_ms: int = 250) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=True)
        self.plot = pg.PlotWidget(background=theme.CARD)
        self.plot.setLogMode(x=False, y=True)
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        self.plot.setLabel("bottom", tr("block"), color=theme.MUTED)
        self.plot.setLabel("left", tr("relative output error"), color=theme.MUTED)
        plain_axes(self.plot)
        self.plot.setMenuEnabled(False)
        self.plot.getPlotItem().hideButtons()
        for axis in ("bottom", "left"):
            ax = self.plot.getAxis(axis)
            ax.setPen(pg.mkPen(theme.CARD_BORDER))
            ax.setTextPen(pg.mkPen(theme.MUTED))
        self.bits_label = QLabel()
        self.bits_label.setObjectName("Muted")
        self.bits_label.setWordWrap(True)
        # in place of empty axes (whose ticks would mean nothing) until the first layer
        self.empty_label = QLabel(tr("No layers quantized yet: each quantized module adds "
                                     "its error here as the job runs."))
        self.empty_label.setObjectName("Muted")
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.empty_label, 1)
        layout.addWidget(self.bits_label)
        self.points: dict[str, list[Point]] = {}
        self.items: dict[str, pg.PlotDataItem] = {}
        self.pending: list[Layer] = []
        self.hover_text = ""
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(refresh_ms)
        self._timer.timeout.connect(self.flush)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)
        for kind in KINDS:  # made now, while idle: the first points of a run then draw fast
            self._item(kind)
        self._update_bits_label()
        self._show_empty(True)

    def _show_empty(self, empty: bool) -> None:
        self.plot.setVisible(not empty)
        self.empty_label.setVisible(empty)

    # -- data in ------------------------------------------------------------------------

    def add_layer(self, event: Layer) -> None:
        self.pending.append(event)
        if not self._timer.isActive():
            self._timer.start()

    def clear(self) -> None:
        self.pending.clear()
        self.points.clear()
        for kind, item in list(self.items.items()):
            if kind in KINDS:
                item.setData([], [])
            else:
                self.plot.removeItem(item)
                del self.items[kind]
        self.plot.getAxis("left").setTicks(None)
        self.hover_text = ""
        self._update_bits_label()
        self._show_empty(True)

    def flush(self) -> None:
        """Draw every queued event (the timer calls this; tests may call it directly)."""
        if not self.pending:
            return
        touched = set()
        for e in self.pending:
            kind = e.kind or "other"
            x = e.block + self._dodge(kind)
            self.points.setdefault(kind, []).append(
                Point(e.block, x, max(float(e.rel_error), MIN_ERROR), e))
            touched.add(kind)
        self.pending.clear()
        for kind in touched:
            self._redraw(kind)
        self._fit_decades()
        self._update_bits_label()
        self._show_empty(False)

    # -- data out (also what tests read) -------------------------------------------------

    def series(self, kind: str) -> tuple[list[float], list[float]]:
        """(x, y) as given to the plot item of `kind` (y in data units, not log)."""
        item = self.items.get(kind)
        x, y = item.getOriginalDataset() if item is not None else (None, None)
        if x is None or y is None:
            return [], []
        return list(map(float, x)), list(map(float, y))

    def symbols(self, kind: str) -> list[str]:
        return [bits_symbol(p.event.bits) for p in self.points.get(kind, [])]

    def nearest(self, scene_pos: QPointF) -> Point | None:
        """The plotted point closest to a scene position, within HOVER_RADIUS_PX."""
        vb = self.plot.getViewBox()
        best, best_d = None, HOVER_RADIUS_PX
        for pts in self.points.values():
            for p in pts:
                s = vb.mapViewToScene(QPointF(p.x, math.log10(p.rel_error)))
                d = math.hypot(s.x() - scene_pos.x(), s.y() - scene_pos.y())
                if d <= best_d:
                    best, best_d = p, d
        return best

    def scene_pos_of(self, point: Point) -> QPointF:
        return self.plot.getViewBox().mapViewToScene(QPointF(point.x,
                                                             math.log10(point.rel_error)))

    @staticmethod
    def describe(point: Point) -> str:
        e = point.event
        group = {-1: tr("per-channel"), 0: tr("per-tensor")}.get(e.group_size,
                                                                   f"g{e.group_size}")
        return (f"{e.module}\n"
                + tr("block {block} · {kind} · {bits}-bit {group}").format(
                    block=e.block, kind=e.kind, bits=e.bits, group=group) + "\n"
                + tr("relative error {err:.3e} · {secs:.2f} s").format(err=e.rel_error,
                                                                        secs=e.seconds))

    # -- internals ---------------------------------------------------------------------

    def _dodge(self, kind: str) -> float:
        """Spread the kinds of one block a little apart so their markers do not overlap."""
        i = KINDS.index(kind) if kind in KINDS else len(KINDS)
        return (i - 3) * 0.08

    def _color(self, kind: str) -> str:
        if kind in KIND_COLORS:
            return KIND_COLORS[kind]
        extra = sorted(k for k in self.points if k not in KIND_COLORS)
        return EXTRA_COLORS[extra.index(kind) % len(EXTRA_COLORS)]

    def _redraw(self, kind: str) -> None:
        pts = sorted(self.points[kind], key=lambda p: p.x)
        self.points[kind] = pts
        x = [p.x for p in pts]
        y = [p.rel_error for p in pts]
        syms = [bits_symbol(p.event.bits) for p in pts]
        self._item(kind).setData(x, y, symbol=syms)

    def _item(self, kind: str) -> pg.PlotDataItem:
        item = self.items.get(kind)
        if item is None:
            color = self._color(kind)
            item = self.plot.plot([], [], pen=pg.mkPen(color, width=1.4), symbol="o",
                                  symbolBrush=pg.mkBrush(color), symbolPen=pg.mkPen(theme.CARD),
                                  symbolSize=8)
            self.items[kind] = item
        return item

    def _fit_decades(self) -> None:
        """Show whole decades around the data (so the log axis always has labels) and every
        block."""
        decade_ticks(self.plot, [p.rel_error for pts in self.points.values() for p in pts])
        blocks = [p.block for pts in self.points.values() for p in pts]
        self.plot.setXRange(min(blocks) - 0.6, max(blocks) + 0.6, padding=0)
        step = max(1, math.ceil((max(blocks) - min(blocks) + 1) / 12))  # whole blocks only
        self.plot.getAxis("bottom").setTickSpacing(major=step, minor=step)

    def _update_bits_label(self) -> None:
        kinds = sorted(self.points, key=lambda k: (KINDS.index(k) if k in KINDS else 99, k))
        series = "  ".join(f"<span style='color:{self._color(k)}'>●</span> {k}"
                           for k in kinds or KINDS)
        bits = sorted({p.event.bits for pts in self.points.values() for p in pts}) or [4, 8]
        markers = "  ".join(f"{BIT_GLYPHS.get(b, '✕')} {b}-bit" for b in bits)
        sep = " &nbsp;&nbsp;·&nbsp;&nbsp; "
        self.bits_label.setText(series + sep + tr("markers:") + f" {markers}" + sep
                                + tr("lower is better; hover a point for details"))

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        point = self.nearest(scene_pos)
        text = self.describe(point) if point else ""
        if text != self.hover_text:
            self.hover_text = text
            if text:
                QToolTip.showText(QCursor.pos(), text, self.plot)
            else:
                QToolTip.hideText()
