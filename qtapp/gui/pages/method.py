"""Step 3: method and settings. Start is enabled only for a job spec that validates; the
reason is shown otherwise, in JobSpec.validate()'s words.

The page composes the method choice, the settings form and the output folder with three
widgets: the size budget (widgets/size_budget.py) and the per-module rules
(widgets/rules_table.py) in the mixed-precision card, and the memory and time plan
(widgets/plan_card.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from PySide6.QtCore import QT_TR_NOOP, Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from qtapp.engine.config import (
    BITS,
    GGUF_TYPES,
    AWQOptions,
    CalibrationSpec,
    GGUFOptions,
    GPTQOptions,
    JobSpec,
    ModuleRule,
    QuantScheme,
)
from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import (
    auto_group_size,
    check_group_sizes,
    dividing_group_sizes,
    linear_input_widths,
)
from qtapp.engine.planning.advisor import Advice
from qtapp.gui.format import friendly_error, job_title
from qtapp.gui.i18n import tr
from qtapp.gui.paths import outputs_dir
from qtapp.gui.state import AppState
from qtapp.gui.widgets.common import Card, PageHeader, button, label, set_role
from qtapp.gui.widgets.plan_card import PlanCard
from qtapp.gui.widgets.rules_table import OFF, RulesTable
from qtapp.gui.widgets.size_budget import SizeBudget

METHODS = {
    "rtn": ("RTN", QT_TR_NOOP("Round to nearest. The fast baseline: no calibration data; "
                              "every other method should beat it.")),
    "gptq": ("GPTQ", QT_TR_NOOP("Corrects rounding errors column by column with second-order "
                                "information. The accuracy choice for GPU inference.")),
    "awq": ("AWQ", QT_TR_NOOP("Scales up the weights that matter most for real activations "
                              "before rounding. The speed choice for GPU inference.")),
    "gguf": ("GGUF", QT_TR_NOOP("llama.cpp's file format: runs on CPUs and Apple GPUs, and "
                                "opens in LM Studio and Ollama.")),
}
BIT_CHOICES = BITS  # the engine's one list of widths, which --bits accepts too
GROUP_CHOICES = ((32, "32"), (64, "64"), (128, "128"), (256, "256"),
                 (-1, QT_TR_NOOP("per channel")))
DEVICE_CHOICES = (("auto", QT_TR_NOOP("Automatic")), ("cpu", "CPU"),
                  ("cuda", QT_TR_NOOP("NVIDIA GPU (CUDA)")))


class MethodPage(QWidget):
    start_requested = Signal(object)  # JobSpec
    fills_height = True  # its body scrolls above a fixed footer with the Start button

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self._out_auto = True
        self._filling = False
        self._applied_for: Any = None
        self.recommended_method = ""

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        layout = self._build_scroll_body(outer)
        layout.addLayout(self._build_header())
        top = QHBoxLayout()
        top.setSpacing(12)
        top.addWidget(self._build_methods(), 5)
        top.addWidget(self._build_settings(), 6)
        layout.addLayout(top)
        layout.addWidget(self._build_mixed())
        self.plan_card = PlanCard(state.background)
        layout.addWidget(self.plan_card)
        layout.addWidget(self._build_output())
        layout.addStretch(1)
        outer.addLayout(self._build_footer())
        self._connect()
        self._set_defaults()

    # -- building ------------------------------------------------------------------------

    def _build_scroll_body(self, outer: QVBoxLayout) -> QVBoxLayout:
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        body = QWidget()
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(28, 22, 28, 12)
        layout.setSpacing(14)
        return layout

    def _build_header(self) -> QHBoxLayout:
        head = QHBoxLayout()
        head.addWidget(PageHeader(tr("Method and settings"), tr(
            "The defaults follow the recommendation for this machine; change what you need.")),
            1)
        self.use_recommended = button(tr("Use recommended settings"))
        self.use_recommended.clicked.connect(self.apply_recommendation)
        head.addWidget(self.use_recommended, 0, Qt.AlignmentFlag.AlignTop)
        return head

    def _build_methods(self) -> Card:
        methods = Card(tr("Method"))
        self.method_group = QButtonGroup(self)
        self.method_radio: dict[str, QRadioButton] = {}
        self.method_badge: dict[str, Any] = {}
        for key, (title, text) in METHODS.items():
            radio = QRadioButton(title)
            radio.setObjectName("MethodRadio")
            self.method_group.addButton(radio)
            self.method_radio[key] = radio
            badge = label("", "OkText")
            line = QHBoxLayout()
            line.addWidget(radio)
            line.addWidget(badge)
            line.addStretch(1)
            methods.body.addLayout(line)
            hint = label(tr(text), "Muted", wrap=True)
            hint.setContentsMargins(28, 0, 0, 6)
            methods.body.addWidget(hint)
            self.method_badge[key] = badge
        methods.body.addStretch(1)
        return methods

    def _build_settings(self) -> Card:
        self._build_scheme_fields()
        self._build_calibration_fields()
        self.device = QComboBox()
        for d, text in DEVICE_CHOICES:
            self.device.addItem(tr(text), d)
        self.evaluate = QCheckBox(tr("Check quality against the original when done"))
        self.evaluate.setToolTip(tr("Perplexity, KL divergence and a generation test"))
        self.evaluate.setChecked(True)
        form = QFormLayout()
        form.setHorizontalSpacing(14)
        form.setVerticalSpacing(9)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.form_rows: dict[str, QWidget] = {}
        for key, text, widget in (
            ("bits", QT_TR_NOOP("Bits"), self.bits),
            ("group", QT_TR_NOOP("Group size"), self.group),
            ("group_note", "", self.group_note),
            ("sym", QT_TR_NOOP("Zero point"), self.sym),
            ("gguf_type", QT_TR_NOOP("GGUF type"), self.gguf_type),
            ("imatrix", "", self.imatrix), ("act_order", "", self.act_order),
            ("clip", "", self.clip),
            ("calib_source", QT_TR_NOOP("Calibration"), self.calib_source),
            ("calib_file", "", self.calib_row),
            ("samples", QT_TR_NOOP("Samples"), self.samples),
            ("seq_len", QT_TR_NOOP("Tokens per sample"), self.seq_len),
            ("device", QT_TR_NOOP("Device"), self.device),
            ("evaluate", "", self.evaluate),
        ):
            form.addRow(tr(text) if text else "", widget)
            self.form_rows[key] = widget
        self.form = form
        options = Card(tr("Settings"))
        options.body.addLayout(form)
        options.body.addStretch(1)
        return options

    def _build_scheme_fields(self) -> None:
        """Bits, group size (with its note), zero point, GGUF type and the method options."""
        self.bits = QComboBox()
        for b in BIT_CHOICES:
            self.bits.addItem(tr("{b}-bit").format(b=b), b)
        self.group = QComboBox()
        for g, text in GROUP_CHOICES:
            self.group.addItem(tr(text), g)
        self.group_note = label("", "Muted", wrap=True)
        self.sym = QComboBox()
        self.sym.addItem(tr("Symmetric (no zero point)"), True)
        self.sym.addItem(tr("Asymmetric (with zero point)"), False)
        self.gguf_type = QComboBox()
        for t in GGUF_TYPES:
            self.gguf_type.addItem(t, t)
        self.imatrix = QCheckBox(tr("Importance matrix from calibration data"))
        self.act_order = QCheckBox(tr("Activation order (desc_act)"))
        self.clip = QCheckBox(tr("Search weight clipping"))

    def _build_calibration_fields(self) -> None:
        """Calibration source, its file row, samples and tokens per sample."""
        self.calib_source = QComboBox()
        self.calib_source.addItem(tr("Built-in text (offline)"), "builtin")
        self.calib_source.addItem(tr("A text file…"), "file")
        self.calib_file = QLineEdit()
        self.calib_file.setPlaceholderText(tr("path of a .txt or .jsonl file"))
        calib_browse = button(tr("Browse…"))
        calib_browse.clicked.connect(self._browse_calibration)
        self.calib_row = QWidget()
        calib_line = QHBoxLayout(self.calib_row)
        calib_line.setContentsMargins(0, 0, 0, 0)
        calib_line.addWidget(self.calib_file, 1)
        calib_line.addWidget(calib_browse)
        self.samples = QSpinBox()
        self.samples.setRange(1, 4096)
        self.samples.setValue(128)
        self.seq_len = QSpinBox()
        self.seq_len.setRange(16, 32768)
        self.seq_len.setSingleStep(128)
        self.seq_len.setValue(512)

    def _build_mixed(self) -> Card:
        mixed = Card(tr("Mixed precision"))
        self.budget = SizeBudget(self.state.background)
        mixed.body.addWidget(self.budget)
        self.rules_table = RulesTable(self.scheme)
        mixed.body.addWidget(self.rules_table)
        return mixed

    def _build_output(self) -> Card:
        out = Card(tr("Output"))
        out_line = QHBoxLayout()
        self.out_edit = QLineEdit()
        self.out_edit.textEdited.connect(self._out_edited)
        out_browse = button(tr("Browse…"))
        out_browse.clicked.connect(self._browse_out)
        out_line.addWidget(self.out_edit, 1)
        out_line.addWidget(out_browse)
        out.body.addLayout(out_line)
        out.body.addWidget(label(tr("A new folder; it must not exist yet. GGUF jobs put the "
                                    ".gguf file, an Ollama Modelfile and the model card "
                                    "in it."), "Muted", wrap=True))
        return out

    def _build_footer(self) -> QHBoxLayout:
        footer = QHBoxLayout()
        footer.setContentsMargins(28, 10, 28, 18)
        self.validation = label("", wrap=True)
        self.start_button = button(tr("Start quantizing"), "primary")
        self.start_button.setMinimumWidth(170)
        self.start_button.clicked.connect(self._start)
        footer.addWidget(self.validation, 1)
        footer.addWidget(self.start_button)
        return footer

    def _connect(self) -> None:
        for radio in self.method_radio.values():
            radio.toggled.connect(self._method_changed)
        for combo in (self.bits, self.group, self.sym, self.gguf_type, self.device):
            combo.currentIndexChanged.connect(self._changed)
        self.calib_source.currentIndexChanged.connect(self._method_changed)
        self.imatrix.toggled.connect(self._method_changed)
        for box in (self.act_order, self.clip, self.evaluate):
            box.toggled.connect(self._changed)
        for spin in (self.samples, self.seq_len):
            spin.valueChanged.connect(self._changed)
        self.calib_file.textChanged.connect(self._changed)
        self.out_edit.textChanged.connect(self.revalidate)
        self.rules_table.changed.connect(self._changed)
        self.budget.toggled.connect(self._budget_toggled)
        self.budget.value_changed.connect(self.revalidate)
        self.budget.rules_requested.connect(self._edit_plan_as_rules)
        self.plan_card.job_wanted.connect(self._plan_wanted)
        self.plan_card.planned.connect(self._planned)
        self.state.advice_changed.connect(self._advice_changed)
        self.state.model_changed.connect(lambda _info: self._offer_groups())
        self.state.model_changed.connect(lambda _info: self._offer_methods())
        self.state.model_changed.connect(lambda _info: self._changed())
        self.state.busy_changed.connect(lambda _busy: self.revalidate())

    def _set_defaults(self) -> None:
        self.method_radio["gptq"].setChecked(True)
        self.imatrix.setChecked(True)
        self.clip.setChecked(True)
        self.act_order.setChecked(GPTQOptions().act_order)
        self.bits.setCurrentIndex(BIT_CHOICES.index(4))
        self.group.setCurrentIndex(2)
        self._method_changed()

    # -- reading the form --------------------------------------------------------------

    def method(self) -> str:
        return next(k for k, r in self.method_radio.items() if r.isChecked())

    def scheme(self) -> QuantScheme:
        return QuantScheme(self.bits.currentData(), self.group.currentData(),
                           self.sym.currentData())

    def build_job(self) -> JobSpec:
        """The job spec the form describes; raises UserError (ConfigError) when invalid."""
        info = self.state.model
        if info is None:
            raise UserError(tr("Choose a model on the Model page first."))
        calibration = self._calibration()
        job = JobSpec(
            model=str(getattr(info, "source", "") or info.path), method=self.method(),
            out=self.out_edit.text().strip(), scheme=self.scheme(),
            rules=() if self.budget.is_on() else self.rules_table.rules(),
            target_bytes=self.budget.target_bytes(),
            gptq=GPTQOptions(act_order=self.act_order.isChecked()),
            awq=AWQOptions(clip=self.clip.isChecked()),
            gguf=GGUFOptions(type=self.gguf_type.currentData(),
                             imatrix="auto" if self.imatrix.isChecked() else "none"),
            calibration=calibration,
            device=self.device.currentData(), evaluate=self.evaluate.isChecked(),
        ).validate()
        check_group_sizes(job, getattr(info, "config", None) or {}, cli=False)
        out = Path(job.out).expanduser()
        if out.exists():
            raise UserError(tr("The output folder {path} already exists; choose a new "
                               "name.").format(path=out))
        if self.state.job_running:
            raise UserError(tr("A job is running; wait for it to finish or cancel it."))
        return job

    def _calibration(self) -> CalibrationSpec:
        if self.calib_source.currentData() != "file":
            calib = "builtin"
        else:
            calib = self.calib_file.text().strip()
            if not calib:
                raise UserError(tr("Choose a calibration text file, or use the built-in "
                                   "text."))
            if not Path(calib).expanduser().is_file():
                raise UserError(tr("The calibration file {path} does not exist.").format(
                    path=calib))
        return CalibrationSpec(source=calib, samples=self.samples.value(),
                               seq_len=self.seq_len.value())

    def revalidate(self) -> JobSpec | None:
        try:
            job = self.build_job()
        except UserError as e:
            self.start_button.setEnabled(False)
            set_role(self.validation, "ErrorText")
            self.validation.setText("⚠ " + friendly_error(str(e)))
            return None
        self.start_button.setEnabled(True)
        set_role(self.validation, "OkText")
        self.validation.setText(tr("✓ Ready: {title} → {out}").format(title=job_title(job),
                                                                     out=job.out))
        return job

    # -- reacting ----------------------------------------------------------------------

    def _changed(self) -> None:
        if self._filling:
            return
        self.rules_table.follow_scheme()
        self._update_default_out()
        self.revalidate()
        self._refresh_budget()
        self.plan_card.schedule()

    def _method_changed(self) -> None:
        m = self.method()
        linear = m != "gguf"
        calibrated = m in ("gptq", "awq") or (m == "gguf" and self.imatrix.isChecked())
        visible = {"bits": linear, "group": linear,
                   "group_note": linear and bool(self.group_note.text()),
                   "sym": linear, "gguf_type": not linear,
                   "imatrix": not linear, "act_order": m == "gptq", "clip": m == "awq",
                   "calib_source": calibrated, "calib_file": calibrated and
                   self.calib_source.currentData() == "file",
                   "samples": calibrated, "seq_len": calibrated}
        for key, show in visible.items():
            self.form.setRowVisible(self.form_rows[key], show)
        self._changed()

    def _offer_groups(self) -> None:
        """Offer only the group sizes that divide the input width of every quantized layer
        of the chosen model (GPTQ, AWQ and compressed-tensors need whole groups); a choice
        that does not moves to the one `--group-size auto` picks (64 for the demo)."""
        config = getattr(self.state.model, "config", None) or {}
        widths = sorted(set(linear_input_widths(config).values()))
        ok = set(dividing_group_sizes(widths, [g for g, _ in GROUP_CHOICES]))
        listed = ", ".join(map(str, widths))
        items = self.group.model()
        for i, (g, _) in enumerate(GROUP_CHOICES):
            items.item(i).setEnabled(g in ok)
            self.group.setItemData(i, None if g in ok else tr(
                "{g} does not divide the input width of every layer of this model "
                "({widths})").format(g=g, widths=listed), Qt.ItemDataRole.ToolTipRole)
        if self.group.currentData() not in ok:
            filling, self._filling = self._filling, True
            self.group.setCurrentIndex(next(i for i, (g, _) in enumerate(GROUP_CHOICES)
                                            if g == auto_group_size(widths)))
            self._filling = filling
        self.group_note.setText(tr(
            "Only group sizes that divide the input width of every layer ({widths}) are "
            "offered.").format(widths=listed) if len(ok) < len(GROUP_CHOICES) else "")
        self.form.setRowVisible(self.group_note, self.method() != "gguf"
                                and bool(self.group_note.text()))

    def _offer_methods(self) -> None:
        """Offer only the methods the chosen model's family takes (the FAMILIES table, as
        `quantdesk check` answers from config.json); a refused one is disabled with the
        reason as its tooltip, and a refused choice moves to the first one offered."""
        from qtapp.engine.planning.compat import refusals  # imports the gguf package

        refused = refusals(getattr(self.state.model, "config", None))
        for key, radio in self.method_radio.items():
            radio.setEnabled(key not in refused)
            radio.setToolTip(tr("Not for this model: {reason}").format(reason=refused[key])
                             if key in refused else "")
        if self.method() in refused:
            allowed = [k for k in self.method_radio if k not in refused]
            if allowed:
                self.method_radio[allowed[0]].setChecked(True)

    def _advice_changed(self, advice: Advice) -> None:
        rec = advice.recommendation
        self.recommended_method = rec.method
        for key, badge in self.method_badge.items():
            badge.setText(tr("recommended") if key == rec.method else "")
        if self.state.model is not None and self._applied_for is not self.state.model:
            self._applied_for = self.state.model
            self.apply_recommendation()

    def apply_recommendation(self) -> None:
        advice = self.state.advice
        if advice is None:
            return
        rec = advice.recommendation
        self._filling = True
        self.method_radio[rec.method].setChecked(True)
        self.bits.setCurrentIndex(BIT_CHOICES.index(rec.bits) if rec.bits in BIT_CHOICES else 2)
        self.group.setCurrentIndex(next(i for i, (g, _) in enumerate(GROUP_CHOICES)
                                        if g == rec.group_size))
        self.sym.setCurrentIndex(0 if rec.sym else 1)
        if rec.gguf_type:
            self.gguf_type.setCurrentIndex(GGUF_TYPES.index(rec.gguf_type))
        self.samples.setValue(rec.samples)
        self.device.setCurrentIndex({"auto": 0, "cpu": 1, "cuda": 2}[rec.device])
        self._filling = False
        self._method_changed()

    # -- size budget and rules -----------------------------------------------------------

    def _budget_toggled(self, on: bool) -> None:
        self.rules_table.set_editable(not on)
        self._changed()

    def _refresh_budget(self) -> None:
        info = self.state.model
        key = None if info is None or not self.budget.is_on() else (
            str(info.path), self.method(), self.scheme(), self.gguf_type.currentData(),
            self.imatrix.isChecked(), self.act_order.isChecked(), self.samples.value(),
            self.seq_len.value(), self.calib_file.text())
        self.budget.refresh(key, info,
                            lambda: dataclasses.replace(self.build_job(), target_bytes=0))

    def plan_finished(self, plan: dict[str, Any] | None) -> None:
        """A job finished; `plan` is its size budget's plan (JobResult.plan), None without a
        budget. A plan is offered as editable rules."""
        self.budget.plan_finished(plan)
        self._refresh_budget()

    def _edit_plan_as_rules(self, rules: tuple[ModuleRule, ...], bits: Any) -> None:
        self._filling = True
        self.budget.set_on(False)
        if bits in BIT_CHOICES:
            self.bits.setCurrentIndex(BIT_CHOICES.index(bits))
        self._filling = False
        self.rules_table.set_editable(True)
        self.rules_table.set_rules(rules)
        self._changed()

    # -- memory, disk and time plan ------------------------------------------------------

    def _plan_wanted(self, probe: bool) -> None:
        try:
            job = self.build_job()
        except UserError:
            return
        if probe:
            self.plan_card.probe(job)
        else:
            self.plan_card.refresh(job, self.state.model, self.state.hardware)

    def _planned(self, plan: Any) -> None:
        self.start_button.setText(tr("Start quantizing") if plan.fits
                                  else tr("Start anyway…"))

    # -- output and start ------------------------------------------------------------------

    def _update_default_out(self) -> None:
        if not self._out_auto or self.state.model is None:
            return
        m = self.method()
        if m == "gguf":
            tag = self.gguf_type.currentData().lower()
        else:
            g = self.group.currentData()
            tag = f"w{self.bits.currentData()}" + (f"g{g}" if g > 0 else "pc")
        if self.rules_table.choice() != OFF:
            tag += "-mixed"
        base = outputs_dir() / f"{self.state.model.name}-{m}-{tag}"
        path, n = base, 2
        while path.exists():
            path = base.with_name(f"{base.name}-{n}")
            n += 1
        self.out_edit.setText(str(path))

    def _out_edited(self) -> None:
        self._out_auto = not self.out_edit.text().strip()

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, tr("Folder to put the output in"),
                                                  str(outputs_dir()))
        if folder:
            name = Path(self.out_edit.text()).name or "quantized"
            self.out_edit.setText(str(Path(folder) / name))
            self._out_auto = False

    def _browse_calibration(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, tr("Calibration text"), "",
                                              tr("Text (*.txt *.jsonl);;All files (*)"))
        if file:
            self.calib_file.setText(file)

    def _start(self) -> None:
        job = self.revalidate()
        if job is None:
            return
        plan = self.plan_card.plan_for(job)
        if plan is not None and not plan.fits:
            answer = QMessageBox.warning(
                self, tr("The job does not fit"),
                tr("The plan says this job does not fit on this machine:\n\n{problems}\n\n"
                   "Fixes that fit: {fixes}\n\nStart anyway? It may run out of memory or "
                   "disk part of the way through.").format(
                    problems="\n".join("• " + p for p in plan.problems),
                    fixes="; ".join(plan.fixes) or tr("none found")),
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                return
            # the user overrode the plan: the job runner's own check (check_plan) honours it
            job = dataclasses.replace(job, ignore_plan=True)
        self.start_requested.emit(job)

    def refresh_output_name(self) -> None:
        """Pick a fresh default output name (after a run used the previous one)."""
        if self._out_auto:
            self._update_default_out()
        self.revalidate()
