"""The method page's size budget: the field's range comes from the size model, the job
carries the budget, the prediction follows the slider once a profile exists, and a
finished plan can be edited as ordinary rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtapp.engine.planning.allocate import budget_preview
from qtapp.engine.planning.sensitivity import (
    ModuleSensitivity,
    SensitivityProfile,
    cache_file,
    profile_key,
)


@pytest.fixture
def page(tiny_method_page):
    return tiny_method_page


def _preview(method, qtbot, profiled: bool = False):
    budget = method.budget
    qtbot.waitUntil(lambda: budget.preview is not None
                    and (budget.preview[1] is not None or not profiled), timeout=20000)
    return budget.preview


def test_budget_field_spans_the_possible_sizes_and_goes_into_the_job(page, qtbot):
    method, _info = page
    budget, rules = method.budget, method.rules_table
    budget.budget_on.setChecked(True)
    model = _preview(method, qtbot)[0]
    assert budget.budget_mib.minimum() == pytest.approx(model.smallest() / 2**20, abs=0.1)
    assert budget.budget_mib.maximum() == pytest.approx(model.largest() / 2**20, abs=0.1)
    assert "measures each module's sensitivity" in budget.budget_info.text()
    budget.budget_slider.setValue(1000)
    assert budget.budget_mib.value() == pytest.approx(budget.budget_mib.maximum())
    job = method.build_job()
    assert job.target_bytes == int(budget.budget_mib.value() * 2**20) and job.rules == ()
    assert not rules.mixed.isEnabled() and not rules.table.isEnabled()
    budget.budget_on.setChecked(False)
    assert method.build_job().target_bytes == 0 and rules.mixed.isEnabled()


def test_prediction_follows_the_slider_once_a_profile_exists(page, qtbot):
    method, info = page
    budget = method.budget
    budget.budget_on.setChecked(True)
    _preview(method, qtbot)
    job = method.build_job()
    model, _ = budget_preview(job, info)
    # a made-up profile: errors fall with bits, the first module matters 100× more
    modules = {}
    for i, slot in enumerate(model.modules):
        err = {c.key: (0.0 if c.kept else 2.0 ** -c.bits) * (100 if i == 0 else 1)
               for c in slot.options}
        modules[slot.name] = ModuleSensitivity(slot.name, 1.0, err, fisher_gain=1.0)
    key = profile_key(job, info, model.modules)
    path = cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SensitivityProfile(key, "rtn", 1, modules).to_json())
    try:
        method.plan_finished({"rules": [
            {"pattern": model.modules[0].name, "scheme": None, "skip": True, "gguf_type": ""}],
            "scheme": {"bits": 3, "group_size": 64, "sym": True}})
        _preview(method, qtbot, profiled=True)
        budget.budget_slider.setValue(0)
        low = budget.budget_info.text()
        budget.budget_slider.setValue(600)
        high = budget.budget_info.text()
        assert "× the output error" in low and "× the output error" in high
        ratio = [float(t.split("Predicted: ")[1].split("×")[0]) for t in (low, high)]
        assert ratio[1] < ratio[0]
        # the finished plan becomes ordinary, editable rules
        assert budget.use_plan.isVisible() or not method.isVisible()
        budget.use_plan.click()
        assert not budget.budget_on.isChecked() and method.rules_table.mixed.currentIndex() == 2
        assert method.rules_table.table.isVisible() or not method.isVisible()
        rules = method.rules_table.rules()
        assert [r.pattern for r in rules] == [model.modules[0].name] and rules[0].skip
        assert method.bits.currentData() == 3
    finally:
        Path(path).unlink(missing_ok=True)


def test_size_plot_separates_budgeted_runs_and_uses_kld(qtbot):
    from qtapp.engine.results import ExportResult, JobResult, Quality, Sizes
    from qtapp.gui.results_store import RunRecord
    from qtapp.gui.widgets.size_plot import SizeQualityPlot

    def record(size_mib: float, kld: float | None, ppl: float, planned: bool) -> RunRecord:
        return RunRecord(JobResult(
            model="m", source="src", method="gptq", export=ExportResult(format="gptq"),
            out="out", sizes=Sizes(int(size_mib * 2**20), 0),
            quality=Quality(ppl=ppl, kld_mean=kld),
            plan={"budget_bytes": int(size_mib * 2**20)} if planned else None), settings="W4")

    plot = SizeQualityPlot()
    qtbot.addWidget(plot)
    plot.show_runs([record(100, 0.05, 13.0, False), record(90, 0.04, 12.9, True),
                    record(80, 0.07, 13.4, True), record(120, None, 12.5, False)])
    # the run without a KL divergence is left out rather than mixed with perplexities
    assert plot.points["uniform"] == [(100.0, 0.05)]
    assert sorted(plot.points["planned"]) == [(80.0, 0.07), (90.0, 0.04)]
    plot.show_runs([record(100, None, 13.0, False)])
    assert plot.points["uniform"] == [(100.0, 13.0)] and plot.points["planned"] == []
