"""Plot axes people can read: a log axis labelled on whole decades ("0.001", "0.01"), and
no scale factor folded into an axis label ("×0.001") or into its ticks ("4·10²")."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pyqtgraph as pg


def plain_axes(plot: pg.PlotWidget) -> None:
    """Ticks in the data's own units: pyqtgraph's automatic SI prefix off on both axes."""
    for name in ("left", "bottom"):
        plot.getAxis(name).enableAutoSIPrefix(False)


def decade_ticks(plot: pg.PlotWidget, values: Iterable[float], padding: float = 0.06) -> None:
    """Show whole decades around `values` (> 0) on the log-scale y axis of `plot`, labelled on
    the decades only, with unlabelled minor ticks at 2…9 of each decade."""
    ys = [v for v in values if v > 0]
    if not ys:
        return
    lo = math.floor(math.log10(min(ys)))
    hi = max(math.ceil(math.log10(max(ys))), lo + 1)
    plot.setYRange(lo, hi, padding=padding)
    decades = [(d, f"{10.0 ** d:g}") for d in range(lo, hi + 1)]
    minor = [(d + math.log10(k), "") for d in range(lo, hi) for k in range(2, 10)]
    plot.getAxis("left").setTicks([decades, minor])
