"""The quality gate's verdict travels from the worker's result event to the results page,
coloured, with the KL divergence and the reasons in the run's details."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from gui_helpers import fake_command
from PySide6.QtGui import QColor

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.results import ExportResult, JobResult, Quality, Sizes
from qtapp.gui import theme
from qtapp.gui.engine_process import EngineProcess, Outcome
from qtapp.gui.main_window import MainWindow
from qtapp.gui.pages.results import COLUMNS


def _result(tmp_path: Path, verdict: str, reasons: list[str]) -> JobResult:
    return JobResult(model="tiny", source="/models/tiny", method="rtn",
                     export=ExportResult(format="gptq"), scheme="W2 per-tensor sym",
                     sizes=Sizes(bytes=1_000, source_bytes=4_000),
                     quality=Quality(ppl=812.0, ppl_source=20.0, kld_mean=3.21, kld_p99=7.5,
                                     top1_agree=12.3, verdict=verdict, reasons=reasons),
                     out=str(tmp_path / "out"), seconds=2.0)


@pytest.mark.parametrize("verdict", ["good", "degraded", "broken"])
def test_verdict_reaches_the_results_page_coloured(qtbot, tmp_path, verdict):
    window = MainWindow(engine=EngineProcess(command=fake_command("ok")), scan=False)
    qtbot.addWidget(window)
    reasons = [] if verdict == "good" else ["mean KL divergence 3.210 nat > 1.0"]
    # through the JSON-lines codec, as the worker's result event arrives
    line = ev.encode(ev.Result(out=str(tmp_path / "out"), seconds=2.0,
                               summary=_result(tmp_path, verdict, reasons).to_dict()))
    event = ev.decode(line)
    job = JobSpec(model="/models/tiny", method="rtn", out=str(tmp_path / "out"))
    window._job_finished(Outcome("result", "done", event.out,
                                 JobResult.from_dict(event.summary)), job)

    page = window.page("results")
    column = COLUMNS.index("Verdict")
    assert not page.table.isColumnHidden(column)
    assert page.table_text()[1][column] == verdict
    colour = page.table.item(1, column).foreground().color()
    assert colour == QColor(theme.VERDICT_COLORS[verdict])
    quality = page.detail.text("Quality")
    assert "3.2100" in quality and "12.3 %" in quality
    assert ("3.210 nat > 1.0" in quality) == (verdict != "good")


def _finish(window: MainWindow, result: JobResult, job: JobSpec) -> None:
    window._job_finished(Outcome("result", "done", result.out, result), job)


def test_a_degraded_run_says_what_to_try_with_predicted_sizes(qtbot, tmp_path,
                                                              make_tiny_model) -> None:
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.planning.budget import job_bytes
    from qtapp.gui.format import format_size

    folder = make_tiny_model(tmp_path / "tiny", "llama", hidden_size=128,
                             intermediate_size=256)
    window = MainWindow(engine=EngineProcess(command=fake_command("ok")), scan=False)
    qtbot.addWidget(window)
    window.show()
    info = resolve_model(str(folder))
    window.state.set_model(info)
    job = JobSpec(model=str(folder), method="gptq", out=str(tmp_path / "out"))
    size = job_bytes(job, info)
    result = dataclasses.replace(
        _result(tmp_path, "degraded", ["perplexity 1.16× the source's > 1.1"]),
        source=str(folder), method="gptq", scheme="W4 g128 sym",
        sizes=Sizes(bytes=size, source_bytes=4 * size))
    _finish(window, result, job)
    page = window.page("results")
    window.go("results")
    assert "typical for 4-bit" not in page.findChild(type(page.empty), "PageSubtitle").text()
    card = page.remedies
    assert card.isVisible() and card.title.text() == "This run is degraded. What to try:"
    text = card.text.text()
    assert "A smaller group: group size 64 instead of 128" in text
    assert "AWQ instead of GPTQ" in text and "Attention at 8 bits" in text
    assert f"A size budget of {format_size(size)}" in text and "More calibration" in text
    smaller = job_bytes(dataclasses.replace(
        job, scheme=dataclasses.replace(job.scheme, group_size=64)), info)
    assert f"Predicted size {format_size(smaller)} (+" in text  # the planner's figure

    good = dataclasses.replace(result, quality=dataclasses.replace(result.quality,
                                                                   verdict="good", reasons=[]))
    _finish(window, good, job)
    assert not card.isVisible()  # the newest run (good) is selected: nothing to try


def test_size_plot_axes_read_in_the_tables_units(qtbot, tmp_path) -> None:
    from qtapp.gui.results_store import RunRecord
    from qtapp.gui.widgets.size_plot import SizeQualityPlot

    plot = SizeQualityPlot()
    qtbot.addWidget(plot)
    runs = []
    for i, (size, kld) in enumerate(((3.2 * 2**30, 0.004), (4.1 * 2**30, 0.0021),
                                     (5.0 * 2**30, 0.0012))):
        r = dataclasses.replace(_result(tmp_path, "good", []), sizes=Sizes(
            bytes=int(size), source_bytes=16 * 2**30), quality=Quality(
            ppl=10.0 + i, ppl_source=10.0, kld_mean=kld, verdict="good"))
        runs.append(RunRecord(result=r))
    plot.show_runs(runs)
    assert plot.unit == "GiB"  # as the table writes 3.20 GiB, not 3277 MiB
    assert [round(x, 2) for x, _ in plot.points["uniform"]] == [3.2, 4.1, 5.0]
    bottom, left = plot.plot.getAxis("bottom"), plot.plot.getAxis("left")
    assert bottom.labelText == "size (GiB)"
    assert not bottom.autoSIPrefix and not left.autoSIPrefix  # no "×0.001" in a label
    decades = [label for _, label in left._tickLevels[0]]
    assert decades == ["0.001", "0.01"]  # whole decades, not "4·10²"
    names = [item.text for _, item in plot.legend.items]
    assert names == ["uniform: the same bits for every layer"]
