"""The layer-error chart plots what layer events say, throttled, with hover details."""

from __future__ import annotations

import math

import pytest

from qtapp.engine.events import Layer, module_kind
from qtapp.gui.widgets.layer_chart import LayerErrorChart


def layer(block: int, name: str, err: float, bits: int = 4) -> Layer:
    module = f"model.layers.{block}.{name}"
    return Layer(block=block, module=module, kind=module_kind(module), bits=bits,
                 group_size=128, rel_error=err, seconds=0.25)


@pytest.fixture
def chart(qtbot) -> LayerErrorChart:
    w = LayerErrorChart(refresh_ms=50)
    w.resize(800, 400)
    qtbot.addWidget(w)
    w.show()
    return w


def test_series_hold_the_events_data(chart: LayerErrorChart, qtbot) -> None:
    for b in range(3):
        chart.add_layer(layer(b, "self_attn.q_proj", 0.01 * (b + 1), bits=8))
        chart.add_layer(layer(b, "mlp.down_proj", 0.1 * (b + 1), bits=4))
    assert chart.series("q") == ([], [])  # queued, not drawn yet (throttled)
    qtbot.waitUntil(lambda: len(chart.series("q")[0]) == 3, timeout=2000)
    qx, qy = chart.series("q")
    dx, dy = chart.series("down")
    assert [round(x) for x in qx] == [0, 1, 2] and [round(x) for x in dx] == [0, 1, 2]
    assert qy == pytest.approx([0.01, 0.02, 0.03])
    assert dy == pytest.approx([0.1, 0.2, 0.3])
    assert all(abs(x - round(x)) < 0.5 for x in qx + dx)  # dodged, still on its block
    assert chart.symbols("q") == ["s", "s", "s"]  # 8-bit: square
    assert chart.symbols("down") == ["o", "o", "o"]  # 4-bit: circle
    assert {k for k in chart.items if chart.series(k)[0]} == {"q", "down"}
    assert chart.plot.getPlotItem().ctrl.logYCheck.isChecked()  # log scale


def test_bursts_are_drawn_in_one_update(chart: LayerErrorChart, qtbot) -> None:
    redraws = []
    original = chart._redraw
    chart._redraw = lambda kind: (redraws.append(kind), original(kind))
    for b in range(50):
        chart.add_layer(layer(b, "mlp.up_proj", 1e-3))
    qtbot.waitUntil(lambda: len(chart.series("up")[0]) == 50, timeout=2000)
    assert redraws == ["up"]


def test_zero_error_stays_plottable(chart: LayerErrorChart) -> None:
    chart.add_layer(layer(0, "self_attn.v_proj", 0.0))
    chart.flush()
    _, y = chart.series("v")
    assert y[0] > 0 and math.isfinite(math.log10(y[0]))


def test_hover_names_the_module(chart: LayerErrorChart, qtbot) -> None:
    chart.add_layer(layer(2, "self_attn.k_proj", 0.05, bits=8))
    chart.add_layer(layer(5, "mlp.gate_proj", 0.002))
    chart.flush()
    chart.plot.getPlotItem().vb.autoRange()
    qtbot.wait(50)
    point = chart.points["gate"][0]
    pos = chart.scene_pos_of(point)
    assert chart.nearest(pos) is point
    chart._on_mouse_moved(pos)
    assert chart.hover_text.startswith("model.layers.5.mlp.gate_proj")
    assert "block 5 · gate · 4-bit g128" in chart.hover_text
    assert "2.000e-03" in chart.hover_text
    far = pos + type(pos)(300, 300)
    chart._on_mouse_moved(far)
    assert chart.hover_text == ""


def test_clear_removes_everything(chart: LayerErrorChart) -> None:
    chart.add_layer(layer(0, "self_attn.o_proj", 0.1))
    chart.flush()
    chart.clear()
    assert chart.points == {} and chart.series("o") == ([], [])


def test_an_empty_chart_shows_a_note_not_axes(chart: LayerErrorChart) -> None:
    """Axes without data would show ticks that mean nothing (2 … 9, 0.1 … 0.9)."""
    assert not chart.plot.isVisible()
    assert chart.empty_label.isVisible() and "No layers quantized yet" in chart.empty_label.text()
    chart.add_layer(layer(0, "self_attn.o_proj", 0.1))
    chart.flush()
    assert chart.plot.isVisible() and not chart.empty_label.isVisible()
    chart.clear()
    assert not chart.plot.isVisible() and chart.empty_label.isVisible()
