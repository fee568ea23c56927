"""The memory, disk and time plan of the method page: the planner's prediction for the job the
form describes, refreshed (off the UI thread, debounced) whenever the form changes; a job that
does not fit is shown in red with its fixes. "Time one block" replaces the formula's time
with one measured by `worker --plan` in its own process (the window does no model math).

    card = PlanCard(state.background)
    card.job_wanted.connect(...)   # (probe): the card needs the form's job; answer with
                                   # card.refresh(job, info, hw) or card.probe(job)
    card.planned.connect(...)      # a plan for the form's latest job is shown
    card.schedule()                # the form changed: plan again after a short pause
    card.plan_for(job)             # the plan shown, if it is this job's
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QWidget

from qtapp.engine.config import JobSpec
from qtapp.engine.jobs.client import plan_in_worker
from qtapp.engine.planning.planner import plan_job
from qtapp.gui.format import format_duration, format_size
from qtapp.gui.i18n import tr
from qtapp.gui.tasks import Background
from qtapp.gui.widgets.common import Card, button, label, set_role

DEBOUNCE_MS = 250


class PlanCard(Card):
    job_wanted = Signal(bool)  # True: to time one block; False: to plan by the formula
    planned = Signal(object)  # the Plan now shown

    def __init__(self, background: Background, parent: QWidget | None = None) -> None:
        super().__init__(tr("Memory and time plan"), parent)
        self.background = background
        self.plan: Any = None  # the Plan shown
        self._plan_for: Any = None  # the key of the job it is for
        self._wanted: Any = None  # the key of the job being planned
        self.plan_text = label(tr("Choose a model to see what the job needs."), "Muted",
                               wrap=True)
        self.plan_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plan_fixes = label("", "Muted", wrap=True)
        self.plan_fixes.setVisible(False)
        self.body.addWidget(self.plan_text)
        self.body.addWidget(self.plan_fixes)
        self.probe_button = button(tr("Time one block"))
        self.probe_button.setToolTip(tr(
            "Runs the job's first block on this machine (in a separate process) and "
            "extrapolates: a better time estimate than the formula, in seconds to minutes."))
        self.probe_button.clicked.connect(lambda: self.job_wanted.emit(True))
        self.body.addWidget(self.probe_button, 0, Qt.AlignmentFlag.AlignLeft)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(lambda: self.job_wanted.emit(False))

    @staticmethod
    def key(job: JobSpec) -> Any:
        return job.to_json()

    def plan_for(self, job: JobSpec) -> Any:
        """The plan shown, when it is `job`'s; else None."""
        return self.plan if self._plan_for == self.key(job) else None

    def schedule(self) -> None:
        """The form changed: ask for its job after a short pause (typing restarts it)."""
        self._timer.start()

    def refresh(self, job: JobSpec, info: Any, hw: Any) -> None:
        """Plan `job` by the planner's formulas, off the UI thread; nothing to do when it is
        planned already or on its way."""
        key = self.key(job)
        if key in (self._plan_for, self._wanted):
            return
        self._wanted = key
        self.plan_text.setText(tr("Planning memory, disk and time…"))
        self.background.run(lambda _ctx: plan_job(job, info, hw=hw),
                            lambda plan, key=key: self._ready(key, plan),
                            lambda e, key=key: self._failed(key, e))

    def probe(self, job: JobSpec) -> None:
        """The plan with the first block timed, from `worker --plan` in its own process."""
        key = self.key(job)
        self._wanted = key
        self.probe_button.setEnabled(False)
        self.plan_text.setText(tr("Timing one block of the job on this machine…"))

        def done(plan: Any) -> None:
            self.probe_button.setEnabled(True)
            self._ready(key, plan)

        def failed(error: BaseException) -> None:
            self.probe_button.setEnabled(True)
            self._failed(key, error)

        self.background.run(lambda ctx: _probed_plan(job, ctx.cancelled), done, failed)

    def _failed(self, key: Any, error: BaseException) -> None:
        if key == self._wanted:
            self._wanted = None
            set_role(self.plan_text, "ErrorText")
            self.plan_text.setText("⚠ " + tr("Could not plan this job: {error}").format(
                error=error))

    def _ready(self, key: Any, plan: Any) -> None:
        if key != self._wanted:
            return  # the form changed meanwhile; a newer plan is on its way
        self._wanted, self._plan_for, self.plan = None, key, plan
        rows = _plan_rows(plan)
        if plan.fits:
            set_role(self.plan_text, "OkText")
            self.plan_text.setText("✓ " + tr("Fits on this machine.") + "\n" + "\n".join(rows))
            self.plan_fixes.setVisible(False)
        else:
            set_role(self.plan_text, "ErrorText")
            self.plan_text.setText("⚠ " + tr("Does not fit: {problems}").format(
                problems="; ".join(plan.problems)) + "\n" + "\n".join(rows))
            self.plan_fixes.setText(tr("What would fit: {fixes}").format(
                fixes="; ".join(plan.fixes) or tr("none found")))
            self.plan_fixes.setVisible(True)
        self.planned.emit(plan)


def _plan_rows(plan: Any) -> list[str]:
    """Memory, GPU memory, disk and time of a plan, one line each."""
    rows = [tr("Peak memory: {ram} of {total} RAM").format(
        ram=format_size(plan.peak_ram), total=format_size(plan.ram_total))]
    if plan.device != "cpu":
        rows.append(tr("Peak GPU memory: {vram} of {total}").format(
            vram=format_size(plan.peak_vram), total=format_size(plan.vram_total)))
        mode = getattr(plan, "vram_mode", "")  # planner.vram_mode
        kept = getattr(plan, "resident_samples", 0)  # planner.resident_samples
        if mode == "lean" and kept:
            rows.append(tr("GPU mode: lean ({kept} calibration samples kept on the GPU, "
                           "{streamed} in host memory and streamed to it: fast mode needs "
                           "more GPU memory than allowed)").format(
                kept=kept, streamed=getattr(plan, "streamed_samples", 0)))
        elif mode == "lean":
            rows.append(tr("GPU mode: lean (calibration activations in host memory, streamed "
                           "to the GPU: fast mode needs more GPU memory than allowed)"))
        elif mode == "fast-recompute":  # fast mode without the kept attention output
            rows.append(tr("GPU mode: fast, the attention recomputed in each pass (keeping "
                           "its output between passes needs more GPU memory than allowed)"))
        elif mode == "fast":
            rows.append(tr("GPU mode: fast (calibration activations on the GPU)"))
    rows.append(tr("Disk: {temp} while running, {final} at the end ({free} free)").format(
        temp=format_size(plan.temp_disk), final=format_size(plan.final_disk),
        free=format_size(plan.disk_free)))
    time = format_duration(max(plan.seconds, 1))  # an estimate is never "0 s"
    if plan.probed:
        rows.append(tr("Time: about {time} on {device} (one block timed on this "
                       "machine: {block} per block)").format(
            time=time, device=plan.device.upper(),
            block=format_duration(max(plan.block_seconds, 1))))
    else:
        rows.append(tr("Time: about {time} on {device} (estimated from this machine's "
                       "speed; “Time one block” measures it)").format(
            time=time, device=plan.device.upper()))
    return rows


def _probed_plan(job: JobSpec, stop: Any = None) -> Any:
    """Run `worker --plan` on `job` through the engine's worker client (on a background
    thread; setting the threading.Event `stop` ends the worker) and return its Plan;
    UserError with the worker's message when it fails."""
    return plan_in_worker(job, stop=stop)
