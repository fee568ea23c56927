"""'Fit a size budget' on the method page: the size field and slider span what the chosen model
can be (from the size model, read off the UI thread), the quality of the plan at the field's
size is predicted once a sensitivity profile of the model exists, and the plan a finished job
logged can be taken over as ordinary rules.

    budget = SizeBudget(state.background)
    budget.toggled.connect(...)          # switched on or off
    budget.value_changed.connect(...)    # the size changed
    budget.rules_requested.connect(...)  # (rules, bits or None): the last plan, as rules
    budget.refresh(key, info, make_job)  # the settings the budget depends on, after a change
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QHBoxLayout, QSlider, QVBoxLayout, QWidget

from qtapp.engine.config import JobSpec, ModuleRule, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.gui.format import format_size
from qtapp.gui.i18n import tr
from qtapp.gui.tasks import Background
from qtapp.gui.widgets.common import button, label

# planning.allocate (which imports torch) is imported inside the methods that preview a budget:
# the window opens without torch.

MIB = 2**20
SLIDER_STEPS = 1000


class SizeBudget(QWidget):
    toggled = Signal(bool)  # the budget was switched on or off
    value_changed = Signal()  # the size in the field changed (typed, or the slider moved)
    rules_requested = Signal(object, object)  # (tuple of ModuleRule, bits or None)

    def __init__(self, background: Background, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.background = background
        self.preview: tuple[Any, Any] | None = None  # (SizeModel, profile or None)
        self._preview_for: Any = None
        self._last_plan: dict[str, Any] | None = None
        self._filling = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(8)
        layout.addLayout(self._build_field())
        self.budget_info = label(tr(
            "Give the size of the file you want: each module then gets the precision that "
            "hurts the model least, measured on the calibration data."), "Muted", wrap=True)
        layout.addWidget(self.budget_info)
        self.use_plan = button(tr("Edit the last plan as rules"))
        self.use_plan.setVisible(False)
        self.use_plan.clicked.connect(self._use_plan)
        layout.addWidget(self.use_plan, 0, Qt.AlignmentFlag.AlignLeft)

    def _build_field(self) -> QHBoxLayout:
        line = QHBoxLayout()
        self.budget_on = QCheckBox(tr("Fit a size budget"))
        self.budget_mib = QDoubleSpinBox()
        self.budget_mib.setDecimals(1)
        self.budget_mib.setRange(0.1, 10**7)
        self.budget_mib.setSuffix(" MiB")
        self.budget_mib.setValue(100.0)
        self.budget_slider = QSlider(Qt.Orientation.Horizontal)
        self.budget_slider.setRange(0, SLIDER_STEPS)
        line.addWidget(self.budget_on)
        line.addWidget(self.budget_mib)
        line.addWidget(self.budget_slider, 1)
        self.budget_on.toggled.connect(self._toggled)
        self.budget_mib.valueChanged.connect(self._value)
        self.budget_slider.valueChanged.connect(self._slid)
        self.budget_mib.setEnabled(False)
        self.budget_slider.setEnabled(False)
        return line

    # -- reading -------------------------------------------------------------------------

    def is_on(self) -> bool:
        return self.budget_on.isChecked()

    def target_bytes(self) -> int:
        """The budget for the job, 0 when off."""
        return int(self.budget_mib.value() * MIB) if self.is_on() else 0

    # -- following the form ----------------------------------------------------------------

    def set_on(self, on: bool) -> None:
        self.budget_on.setChecked(on)

    def refresh(self, key: Any, info: Any, make_job: Callable[[], JobSpec]) -> None:
        """The settings the budget depends on are `key` (None: no model, or the budget is
        off). New settings read the model's size model off the UI thread (`make_job` gives
        the job without a budget, or raises UserError); the same ones predict again."""
        if key is None or key == self._preview_for:
            self._predict()
            return
        from qtapp.engine.planning.allocate import budget_preview

        self._preview_for, self.preview = key, None
        try:
            job = make_job()
        except UserError:
            return
        self.budget_info.setText(tr("Reading the model's tensor sizes…"))
        self.background.run(lambda _ctx: budget_preview(job, info),
                            lambda result, key=key: self._preview_ready(key, result),
                            lambda e: self.budget_info.setText("⚠ " + str(e)))

    def plan_finished(self, plan: dict[str, Any] | None) -> None:
        """A job finished (`plan`: its size budget's plan, JobResult.plan, or None): offer a
        plan as editable rules, and predict from the sensitivity profile the job cached (the
        next refresh reads it)."""
        self._last_plan = plan
        self.use_plan.setVisible(self._last_plan is not None)
        self._preview_for = None

    # -- reacting ------------------------------------------------------------------------

    def _toggled(self, on: bool) -> None:
        for w in (self.budget_mib, self.budget_slider):
            w.setEnabled(on)
        self.toggled.emit(on)

    def _preview_ready(self, key: Any, result: tuple[Any, Any]) -> None:
        if key != self._preview_for:
            return  # the settings changed meanwhile; a newer request is on its way
        from qtapp.engine.planning.allocate import uniform_four_bytes

        self.preview = result
        model = result[0]
        low, high = model.smallest() / MIB, model.largest() / MIB
        self._filling = True
        self.budget_mib.setRange(round(low + 0.05, 1), round(high, 1))
        self.budget_mib.setValue(uniform_four_bytes(model) / MIB)
        self._filling = False
        self._value(self.budget_mib.value())

    def _value(self, mib: float) -> None:
        if self.preview is not None:
            low, high = self.budget_mib.minimum(), self.budget_mib.maximum()
            self.budget_slider.blockSignals(True)
            self.budget_slider.setValue(round((mib - low) / max(high - low, 1e-9)
                                              * SLIDER_STEPS))
            self.budget_slider.blockSignals(False)
        if not self._filling:
            self.value_changed.emit()
            self._predict()

    def _slid(self, value: int) -> None:
        low, high = self.budget_mib.minimum(), self.budget_mib.maximum()
        self.budget_mib.setValue(low + (high - low) * value / SLIDER_STEPS)

    def _predict(self) -> None:
        """The predicted plan at the field's size, when a profile of this model exists."""
        if self.preview is None or not self.is_on():
            return
        from qtapp.engine.planning.allocate import allocate

        model, profile = self.preview
        span = tr("Possible: {low} (every module at its lowest precision) to {high} (all "
                  "16-bit).").format(low=format_size(model.smallest()),
                                     high=format_size(model.largest()))
        if profile is None:
            self.budget_info.setText(span + " " + tr(
                "Predicted quality: the job measures each module's sensitivity first (one "
                "calibration pass, kept for later runs) and logs the plan; after that it is "
                "predicted here as you move the slider."))
            return
        try:
            plan = allocate(model, profile, int(self.budget_mib.value() * MIB), max_cells=4000,
                            fill=False)
        except UserError as e:
            self.budget_info.setText("⚠ " + str(e))
            return
        counts = ", ".join(f"{k} × {n}" for k, n in sorted(
            Counter(plan.choice.values()).items()))
        self.budget_info.setText(span + " " + tr(
            "Predicted: {ratio:.2f}× the output error of every module at 4 bits (KL "
            "divergence ≈ {kld:.3g}); {size}: {counts}.").format(
                ratio=plan.predicted / max(plan.uniform4, 1e-30), kld=plan.predicted,
                size=format_size(plan.total_bytes), counts=counts))

    def _use_plan(self) -> None:
        plan = self._last_plan
        if not plan:
            return
        rules = tuple(ModuleRule(r["pattern"], QuantScheme(**r["scheme"]) if r["scheme"]
                                 else None, r["skip"], r["gguf_type"]) for r in plan["rules"])
        self.rules_requested.emit(rules, plan.get("scheme", {}).get("bits"))
