"""Size vs quality of the runs of one source model: uniform runs (one setting for every
layer) as points, runs planned for a size budget (--target-size) as a curve. x is the size
in the binary unit the results table writes it in (units.size_unit); y is the KL divergence
against the source when the runs measured it (log scale, labelled on decades), else the
perplexity. No axis folds a scale factor into its label or ticks (widgets/axes.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget

from qtapp.engine.units import MiB, size_unit
from qtapp.gui import theme
from qtapp.gui.i18n import tr
from qtapp.gui.widgets.axes import decade_ticks, plain_axes

UNIFORM_COLOR = theme.ACCENT
PLANNED_COLOR = "#f0a35a"


def quality_of(record: Any) -> tuple[str, float] | None:
    """("kld", value) or ("ppl", value) of a run, or None when nothing was measured."""
    kld = record.result.quality.kld_mean if record.result.quality is not None else None
    if kld is not None and kld > 0:
        return "kld", float(kld)
    return ("ppl", float(record.ppl)) if record.ppl is not None else None


class SizeQualityPlot(QWidget):
    """One scatter per kind of run; `show_runs` replaces what is drawn."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.plot = pg.PlotWidget(background=theme.CARD)
        self.plot.setMinimumHeight(180)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        plain_axes(self.plot)
        self.plot.setLabel("bottom", tr("size ({unit})").format(unit="MiB"))
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.unit = "MiB"
        layout.addWidget(self.plot)
        self.points: dict[str, list[tuple[float, float]]] = {"uniform": [], "planned": []}

    def show_runs(self, records: Sequence[Any]) -> None:
        """Draw `records` (RunRecords of one source model)."""
        self.plot.clear()
        self.legend.clear()
        measured = [(r, quality_of(r)) for r in records if r.size_bytes]
        measured = [(r, q) for r, q in measured if q is not None]
        kind = "kld" if any(q[0] == "kld" for _, q in measured) else "ppl"
        measured = [(r, q[1]) for r, q in measured if q[0] == kind]
        self.plot.setLogMode(x=False, y=kind == "kld")
        self.plot.getAxis("left").setTicks(None)
        self.plot.setLabel("left", tr("KL divergence vs original") if kind == "kld"
                           else tr("perplexity"))
        self.unit, scale = size_unit(max((r.size_bytes for r, _ in measured), default=MiB))
        self.plot.setLabel("bottom", tr("size ({unit})").format(unit=self.unit))
        self.points = {"uniform": [], "planned": []}
        for r, q in measured:
            group = "planned" if r.result.plan else "uniform"
            self.points[group].append((r.size_bytes / scale, q))
        uniform, planned = self.points["uniform"], sorted(self.points["planned"])
        if uniform:
            self.plot.plot([p[0] for p in uniform], [_y(p[1], kind) for p in uniform],
                           pen=None, symbol="s", symbolBrush=UNIFORM_COLOR,
                           name=tr("uniform: the same bits for every layer"))
        if planned:
            self.plot.plot([p[0] for p in planned], [_y(p[1], kind) for p in planned],
                           pen=pg.mkPen(PLANNED_COLOR, width=2), symbol="o",
                           symbolBrush=PLANNED_COLOR,
                           name=tr("size budget: the planner's bits per layer"))
        if kind == "kld":
            decade_ticks(self.plot, [_y(p[1], kind) for p in uniform + planned], padding=0.1)


def _y(value: float, kind: str) -> float:
    # setLogMode(y=True) takes the values themselves; keep them positive
    return max(value, 1e-6) if kind == "kld" else value
