"""The quality gate's verdict travels from the worker's result event to the results page,
coloured, with the KL divergence and the reasons in the run's details."""

from __future__ import annotations

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
