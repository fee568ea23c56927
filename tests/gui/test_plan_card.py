"""The method page shows the planner's memory, disk and time plan before Start: the numbers
are the planner's own for the job the form describes, a job that does not fit is shown with
its fixes, and Start then asks before it goes ahead."""

from __future__ import annotations

import dataclasses

import pytest
from PySide6.QtWidgets import QMessageBox

from qtapp.engine.planning.hardware import detect
from qtapp.engine.planning.planner import plan_job
from qtapp.engine.units import format_size


@pytest.fixture
def page(tiny_method_page):
    method, info = tiny_method_page
    method.state.hardware = detect()
    method._changed()
    return method, info


def _planned(method, qtbot):
    card = method.plan_card
    qtbot.waitUntil(lambda: card.plan_for(method.build_job()) is not None, timeout=20000)
    return card.plan


def test_plan_shows_the_planners_numbers_for_the_form(page, qtbot):
    method, info = page
    plan = _planned(method, qtbot)
    expected = plan_job(method.build_job(), info, hw=method.state.hardware)
    assert plan.fits and plan.peak_ram == expected.peak_ram
    assert plan.final_disk == expected.final_disk
    text = method.plan_card.plan_text.text()
    assert "Fits on this machine" in text
    assert format_size(plan.peak_ram) in text and format_size(plan.final_disk) in text
    assert method.start_button.text() == "Start quantizing"
    # the plan follows the form: 8 bits make a bigger file than 4 bits
    method.bits.setCurrentIndex(method.bits.findData(8))
    assert _planned(method, qtbot).final_disk > plan.final_disk


def test_a_job_that_does_not_fit_is_shown_and_start_asks(page, qtbot, monkeypatch):
    method, _info = page
    _planned(method, qtbot)
    # a machine with 64 MiB of RAM: the same job no longer fits
    method.state.hardware = dataclasses.replace(method.state.hardware, ram_total=64 * 2**20)
    method.samples.setValue(method.samples.value() + 1)
    plan = _planned(method, qtbot)
    assert not plan.fits and plan.problems
    card = method.plan_card
    assert "Does not fit" in card.plan_text.text()
    assert "RAM" in card.plan_text.text()
    assert card.plan_fixes.isVisible() or not method.isVisible()
    assert card.plan_fixes.text().startswith("What would fit")
    assert method.start_button.text() == "Start anyway…"

    started = []
    method.start_requested.disconnect()  # the window would start a (fake) job; only count
    method.start_requested.connect(started.append)
    asked = []

    def answer(choice):
        def warning(*args, **_kw):
            asked.append(args[2])
            return choice
        return warning

    monkeypatch.setattr(QMessageBox, "warning", answer(QMessageBox.StandardButton.No))
    method.start_button.click()
    assert len(asked) == 1 and "does not fit" in asked[0] and started == []
    monkeypatch.setattr(QMessageBox, "warning", answer(QMessageBox.StandardButton.Yes))
    method.start_button.click()
    assert len(asked) == 2 and len(started) == 1
    # the user's override travels with the job: the job runner's own check honours it
    assert started[0].ignore_plan and not method.build_job().ignore_plan


@pytest.mark.slow
def test_time_one_block_runs_the_planner_probe_in_a_worker(page, qtbot):
    method, _info = page
    _planned(method, qtbot)
    card = method.plan_card
    card.probe_button.click()
    assert not card.probe_button.isEnabled()
    assert "Timing one block" in card.plan_text.text()
    qtbot.waitUntil(lambda: card.probe_button.isEnabled(), timeout=180000)
    plan = card.plan
    assert plan is not None and plan.probed, card.plan_text.text()
    assert plan.block_seconds > 0
    assert "one block timed on this machine" in card.plan_text.text()


def test_plan_card_says_how_many_samples_lean_mode_keeps_on_the_gpu():
    """The GPU-mode row of a lean plan gives the planner's resident and streamed sample
    counts (planner.resident_samples); with none resident it says all are streamed."""
    from qtapp.engine.planning.planner import Plan
    from qtapp.gui.widgets.plan_card import _plan_rows

    plan = Plan(model="m", method="gptq", device="cuda", peak_ram=6 * 2**30,
                peak_vram=6 * 2**30, temp_disk=1, final_disk=1, seconds=60.0,
                ram_total=16 * 2**30, vram_total=8 * 2**30, disk_free=2**40,
                vram_mode="lean", resident_samples=32, streamed_samples=96)
    rows = _plan_rows(plan)
    assert any("lean (32 calibration samples kept on the GPU, 96 in host memory" in r
               for r in rows), rows
    none = _plan_rows(dataclasses.replace(plan, resident_samples=0, streamed_samples=128))
    assert any("lean (calibration activations in host memory" in r for r in none), none


def test_plan_card_says_when_fast_mode_recomputes_the_attention():
    """fast keeps the attention output across GPTQ's passes; fast-recompute (only fast mode
    without it fits: planner.vram_mode) says the attention is recomputed."""
    from qtapp.engine.planning.planner import Plan
    from qtapp.gui.widgets.plan_card import _plan_rows

    plan = Plan(model="m", method="gptq", device="cuda", peak_ram=6 * 2**30,
                peak_vram=9 * 2**30, temp_disk=1, final_disk=1, seconds=60.0,
                ram_total=16 * 2**30, vram_total=12 * 2**30, disk_free=2**40,
                vram_mode="fast-recompute")
    rows = _plan_rows(plan)
    assert any("fast, the attention recomputed in each pass" in r for r in rows), rows
    rows = _plan_rows(dataclasses.replace(plan, vram_mode="fast"))
    assert any("fast (calibration activations on the GPU)" in r for r in rows), rows
    assert not any("recomputed" in r for r in rows), rows
