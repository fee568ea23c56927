"""Step 3: method and settings. Start is enabled only for a job spec that validates; the
reason is shown otherwise, in JobSpec.validate()'s words."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any

from PySide6.QtCore import QT_TR_NOOP, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QMessageBox,
    QRadioButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from qtapp.engine.config import (
    GGUF_TYPES,
    AWQOptions,
    CalibrationSpec,
    GGUFOptions,
    GPTQOptions,
    JobSpec,
    ModuleRule,
    QuantScheme,
    preset_rules,
)
from qtapp.engine.errors import UserError
from qtapp.engine.planning.advisor import Advice
from qtapp.gui.i18n import tr
from qtapp.gui.pages.run import job_title
from qtapp.gui.paths import outputs_dir
from qtapp.gui.state import AppState
from qtapp.gui.widgets.common import Card, PageHeader, button, label, set_role

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
BIT_CHOICES = (2, 3, 4, 5, 6, 8)
GROUP_CHOICES = ((32, "32"), (64, "64"), (128, "128"), (256, "256"),
                 (-1, QT_TR_NOOP("per channel")))
MIXED_CHOICES = (QT_TR_NOOP("Off"), QT_TR_NOOP("Attention 8-bit, FFN 4-bit (preset)"),
                 QT_TR_NOOP("Custom rules"))
RULE_COLUMNS = (QT_TR_NOOP("Module pattern"), QT_TR_NOOP("Bits"), QT_TR_NOOP("Group"),
                QT_TR_NOOP("Symmetric"), QT_TR_NOOP("GGUF type"), QT_TR_NOOP("Keep 16-bit"))


def friendly(message: str) -> str:
    """ConfigError paths in words a user knows from this page."""
    message = re.sub(r"job\.rules\[(\d+)\]\.?", lambda m: tr("Mixed-precision rule {n}").format(
        n=int(m.group(1)) + 1) + " ", message)
    message = message.replace("job.scheme.", "").replace("job.calibration.", "calibration ")
    return message.replace("job.", "").replace(" :", ":").replace(" scheme.", " ")


class MethodPage(QWidget):
    start_requested = Signal(object)  # JobSpec

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self._out_auto = True
        self._filling = False
        self._applied_for: Any = None
        self.recommended_method = ""

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        body = QWidget()
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(28, 22, 28, 12)
        layout.setSpacing(14)
        head = QHBoxLayout()
        head.addWidget(PageHeader(tr("Method and settings"), tr(
            "The defaults follow the recommendation for this machine; change what you need.")),
            1)
        self.use_recommended = button(tr("Use recommended settings"))
        self.use_recommended.clicked.connect(self.apply_recommendation)
        head.addWidget(self.use_recommended, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(head)

        top = QHBoxLayout()
        top.setSpacing(12)
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
            radio.toggled.connect(self._method_changed)
        methods.body.addStretch(1)
        top.addWidget(methods, 5)

        options = Card(tr("Settings"))
        form = QFormLayout()
        form.setHorizontalSpacing(14)
        form.setVerticalSpacing(9)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
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
        self.device = QComboBox()
        for d, text in (("auto", QT_TR_NOOP("Automatic")), ("cpu", "CPU"),
                        ("cuda", QT_TR_NOOP("NVIDIA GPU (CUDA)"))):
            self.device.addItem(tr(text), d)
        self.evaluate = QCheckBox(tr("Check quality against the original when done "
                                     "(perplexity, KL divergence, a generation test)"))
        self.evaluate.setChecked(True)
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
        options.body.addLayout(form)
        options.body.addStretch(1)
        top.addWidget(options, 6)
        layout.addLayout(top)

        mixed = Card(tr("Mixed precision"))
        self._build_budget(mixed)
        mixed_line = QHBoxLayout()
        mixed_line.addWidget(label(tr("Per-module rules"), "Muted"))
        self.mixed = QComboBox()
        for text in MIXED_CHOICES:
            self.mixed.addItem(tr(text))
        mixed_line.addWidget(self.mixed)
        mixed_line.addStretch(1)
        self.add_rule = button(tr("Add rule"))
        self.remove_rule = button(tr("Remove rule"))
        mixed_line.addWidget(self.add_rule)
        mixed_line.addWidget(self.remove_rule)
        mixed.body.addLayout(mixed_line)
        mixed.body.addWidget(label(tr(
            "A rule gives every module whose full name matches the pattern (a glob such as "
            "*.self_attn.* or *.mlp.down_proj) its own precision; later rules win. Modules no "
            "rule matches use the settings above; lm_head stays 16-bit."), "Muted", wrap=True))
        self.rules = QTableWidget(0, len(RULE_COLUMNS))
        self.rules.setHorizontalHeaderLabels([tr(c) for c in RULE_COLUMNS])
        self.rules.verticalHeader().hide()
        self.rules.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.rules.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.rules.setMinimumHeight(130)
        mixed.body.addWidget(self.rules)
        layout.addWidget(mixed)

        layout.addWidget(self._build_plan())

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
        layout.addWidget(out)
        layout.addStretch(1)

        footer = QHBoxLayout()
        footer.setContentsMargins(28, 10, 28, 18)
        self.validation = label("", wrap=True)
        self.start_button = button(tr("Start quantizing"), "primary")
        self.start_button.setMinimumWidth(170)
        self.start_button.clicked.connect(self._start)
        footer.addWidget(self.validation, 1)
        footer.addWidget(self.start_button)
        outer.addLayout(footer)

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
        self.mixed.currentIndexChanged.connect(self._mixed_changed)
        self.rules.itemChanged.connect(self._rule_edited)
        self.add_rule.clicked.connect(self._add_rule)
        self.remove_rule.clicked.connect(self._remove_rule)
        state.advice_changed.connect(self._advice_changed)
        state.model_changed.connect(lambda _info: self._offer_groups())
        state.model_changed.connect(lambda _info: self._changed())
        state.busy_changed.connect(lambda _busy: self.revalidate())

        self._mixed_changed(0)
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

    def rules_from_table(self) -> tuple[ModuleRule, ...]:
        if self.mixed.currentIndex() == 0:
            return ()
        base = self.scheme()
        rules = []
        for r in range(self.rules.rowCount()):
            pattern = self._cell(r, 0)
            skip = self.rules.item(r, 5).checkState() == Qt.CheckState.Checked
            scheme = None if skip else QuantScheme(
                _number(self._cell(r, 1), base.bits), _group(self._cell(r, 2), base.group_size),
                self.rules.item(r, 3).checkState() == Qt.CheckState.Checked)
            rules.append(ModuleRule(pattern, scheme, skip, self._cell(r, 4).upper()))
        return tuple(rules)

    def _cell(self, r: int, c: int) -> str:
        item = self.rules.item(r, c)
        return item.text().strip() if item else ""

    def build_job(self) -> JobSpec:
        """The job spec the form describes; raises UserError (ConfigError) when invalid."""
        info = self.state.model
        if info is None:
            raise UserError(tr("Choose a model on the Model page first."))
        calib = self.calib_file.text().strip() if self.calib_source.currentData() == "file" \
            else "builtin"
        if self.calib_source.currentData() == "file":
            if not calib:
                raise UserError(tr("Choose a calibration text file, or use the built-in "
                                   "text."))
            if not Path(calib).expanduser().is_file():
                raise UserError(tr("The calibration file {path} does not exist.").format(
                    path=calib))
        method = self.method()
        job = JobSpec(
            model=str(getattr(info, "source", "") or info.path), method=method,
            out=self.out_edit.text().strip(), scheme=self.scheme(),
            rules=() if self.budget_on.isChecked() else self.rules_from_table(),
            target_bytes=int(self.budget_mib.value() * 2**20) if self.budget_on.isChecked()
            else 0,
            gptq=GPTQOptions(act_order=self.act_order.isChecked()),
            awq=AWQOptions(clip=self.clip.isChecked()),
            gguf=GGUFOptions(type=self.gguf_type.currentData(),
                             imatrix="auto" if self.imatrix.isChecked() else "none"),
            calibration=CalibrationSpec(source=calib, samples=self.samples.value(),
                                        seq_len=self.seq_len.value()),
            device=self.device.currentData(), evaluate=self.evaluate.isChecked(),
        ).validate()
        from qtapp.engine.model.arch import check_group_sizes

        check_group_sizes(job, getattr(info, "config", None) or {}, cli=False)
        out = Path(job.out).expanduser()
        if out.exists():
            raise UserError(tr("The output folder {path} already exists; choose a new "
                               "name.").format(path=out))
        if self.state.job_running:
            raise UserError(tr("A job is running; wait for it to finish or cancel it."))
        return job

    def revalidate(self) -> JobSpec | None:
        try:
            job = self.build_job()
        except UserError as e:
            self.start_button.setEnabled(False)
            set_role(self.validation, "ErrorText")
            self.validation.setText("⚠ " + friendly(str(e)))
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
        if self.mixed.currentIndex() == 1:  # the preset follows the group size and symmetry
            self._fill_rules(preset_rules("attn8-ffn4", self.scheme()))
        self._update_default_out()
        self.revalidate()
        self._refresh_budget()
        self._plan_timer.start()

    # -- size budget -------------------------------------------------------------------

    def _build_budget(self, card: Card) -> None:
        self._budget: tuple[Any, Any] | None = None  # (SizeModel, profile or None)
        self._budget_for: Any = None
        self._last_plan: dict[str, Any] | None = None
        line = QHBoxLayout()
        self.budget_on = QCheckBox(tr("Fit a size budget"))
        self.budget_mib = QDoubleSpinBox()
        self.budget_mib.setDecimals(1)
        self.budget_mib.setRange(0.1, 10**7)
        self.budget_mib.setSuffix(" MiB")
        self.budget_mib.setValue(100.0)
        self.budget_slider = QSlider(Qt.Orientation.Horizontal)
        self.budget_slider.setRange(0, 1000)
        line.addWidget(self.budget_on)
        line.addWidget(self.budget_mib)
        line.addWidget(self.budget_slider, 1)
        card.body.addLayout(line)
        self.budget_info = label(tr(
            "Give the size of the file you want: each module then gets the precision that "
            "hurts the model least, measured on the calibration data."), "Muted", wrap=True)
        card.body.addWidget(self.budget_info)
        self.use_plan = button(tr("Edit the last plan as rules"))
        self.use_plan.setVisible(False)
        self.use_plan.clicked.connect(self._plan_to_rules)
        card.body.addWidget(self.use_plan, 0, Qt.AlignmentFlag.AlignLeft)
        self.budget_on.toggled.connect(self._budget_toggled)
        self.budget_mib.valueChanged.connect(self._budget_value)
        self.budget_slider.valueChanged.connect(self._budget_slid)
        self.budget_mib.setEnabled(False)
        self.budget_slider.setEnabled(False)

    def _budget_toggled(self, on: bool) -> None:
        for w in (self.budget_mib, self.budget_slider):
            w.setEnabled(on)
        for w in (self.mixed, self.rules, self.add_rule, self.remove_rule):
            w.setEnabled(not on)
        self._changed()

    def _budget_key(self) -> Any:
        info = self.state.model
        if info is None or not self.budget_on.isChecked():
            return None
        return (str(info.path), self.method(), self.scheme(), self.gguf_type.currentData(),
                self.imatrix.isChecked(), self.act_order.isChecked(), self.samples.value(),
                self.seq_len.value(), self.calib_file.text())

    def _refresh_budget(self) -> None:
        key = self._budget_key()
        if key is None or key == self._budget_for:
            self._predict()
            return
        from qtapp.engine.planning.allocate import budget_preview

        self._budget_for, self._budget = key, None
        try:
            job = dataclasses.replace(self.build_job(), target_bytes=0)
        except UserError:
            return
        info = self.state.model
        self.budget_info.setText(tr("Reading the model's tensor sizes…"))
        self.state.background.run(lambda _ctx: budget_preview(job, info),
                                  lambda result, key=key: self._budget_ready(key, result),
                                  lambda e: self.budget_info.setText("⚠ " + str(e)))

    def _budget_ready(self, key: Any, result: tuple[Any, Any]) -> None:
        if key != self._budget_for:
            return  # the settings changed meanwhile; a newer request is on its way
        from qtapp.engine.planning.allocate import uniform_four_bytes

        self._budget = result
        model = result[0]
        low, high = model.smallest() / 2**20, model.largest() / 2**20
        self._filling = True
        self.budget_mib.setRange(round(low + 0.05, 1), round(high, 1))
        self.budget_mib.setValue(uniform_four_bytes(model) / 2**20)
        self._filling = False
        self._budget_value(self.budget_mib.value())

    def _budget_value(self, mib: float) -> None:
        if self._budget is not None:
            low, high = self.budget_mib.minimum(), self.budget_mib.maximum()
            self.budget_slider.blockSignals(True)
            self.budget_slider.setValue(round((mib - low) / max(high - low, 1e-9) * 1000))
            self.budget_slider.blockSignals(False)
        if not self._filling:
            self.revalidate()
            self._predict()

    def _budget_slid(self, value: int) -> None:
        low, high = self.budget_mib.minimum(), self.budget_mib.maximum()
        self.budget_mib.setValue(low + (high - low) * value / 1000)

    def _predict(self) -> None:
        """The predicted plan at the field's size, when a profile of this model exists."""
        if self._budget is None or not self.budget_on.isChecked():
            return
        from qtapp.engine.planning.allocate import allocate
        from qtapp.engine.planning.budget import format_size

        model, profile = self._budget
        budget = int(self.budget_mib.value() * 2**20)
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
            plan = allocate(model, profile, budget, max_cells=4000, fill=False)
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

    def plan_finished(self, summary: dict[str, Any]) -> None:
        """A job planned for a size budget finished: offer its plan as editable rules."""
        self._last_plan = summary.get("plan")
        self.use_plan.setVisible(self._last_plan is not None)
        self._budget_for = None  # the job cached a sensitivity profile: predict from it
        self._refresh_budget()

    def _plan_to_rules(self) -> None:
        if not self._last_plan:
            return
        plan = self._last_plan
        rules = tuple(ModuleRule(r["pattern"], QuantScheme(**r["scheme"]) if r["scheme"]
                                 else None, r["skip"], r["gguf_type"]) for r in plan["rules"])
        self._filling = True
        self.budget_on.setChecked(False)
        bits = plan.get("scheme", {}).get("bits")
        if bits in BIT_CHOICES:
            self.bits.setCurrentIndex(BIT_CHOICES.index(bits))
        self.mixed.setCurrentIndex(2)
        self._filling = False
        self._budget_toggled(False)
        self.rules.setVisible(True)
        self.add_rule.setVisible(True)
        self.remove_rule.setVisible(True)
        self._fill_rules(rules)
        self._changed()

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
        from qtapp.engine.model.arch import (
            auto_group_size,
            dividing_group_sizes,
            linear_input_widths,
        )

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

    def _mixed_changed(self, index: int) -> None:
        if self._filling:
            return
        if index == 1:
            self._fill_rules(preset_rules("attn8-ffn4", self.scheme()))
        for w in (self.rules, self.add_rule, self.remove_rule):
            w.setVisible(index != 0)
        self._changed()

    def _fill_rules(self, rules: tuple[ModuleRule, ...]) -> None:
        self._filling = True
        self.rules.setRowCount(0)
        for rule in rules:
            self._append_rule(rule)
        self._filling = False

    def _append_rule(self, rule: ModuleRule) -> None:
        r = self.rules.rowCount()
        self.rules.insertRow(r)
        s = rule.scheme
        texts = [rule.pattern, str(s.bits) if s else "", str(s.group_size) if s else "",
                 None, rule.gguf_type, None]
        for c, text in enumerate(texts):
            item = QTableWidgetItem(text or "")
            if c in (3, 5):
                item.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
                on = (s.sym if s else True) if c == 3 else rule.skip
                item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.rules.setItem(r, c, item)

    def _rule_edited(self) -> None:
        if self._filling:
            return
        if self.mixed.currentIndex() == 1:
            self._filling = True
            self.mixed.setCurrentIndex(2)
            self._filling = False
        self._changed()

    def _add_rule(self) -> None:
        self._filling = True
        self._append_rule(ModuleRule("*.mlp.down_proj", QuantScheme(8, self.group.currentData(),
                                                                    True), gguf_type="Q8_0"))
        self._filling = False
        self._rule_edited()

    def _remove_rule(self) -> None:
        rows = sorted({i.row() for i in self.rules.selectedIndexes()}, reverse=True)
        for r in rows or [self.rules.rowCount() - 1]:
            if r >= 0:
                self.rules.removeRow(r)
        self._rule_edited()

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

    def _update_default_out(self) -> None:
        if not self._out_auto or self.state.model is None:
            return
        m = self.method()
        if m == "gguf":
            tag = self.gguf_type.currentData().lower()
        else:
            g = self.group.currentData()
            tag = f"w{self.bits.currentData()}" + (f"g{g}" if g > 0 else "pc")
        if self.mixed.currentIndex() != 0:
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
        plan = self._plan if self._plan_for == self._plan_key(job) else None
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
        self.start_requested.emit(job)

    # -- memory, disk and time plan ------------------------------------------------------

    def _build_plan(self) -> Card:
        """The planner's prediction for the job the form describes, refreshed (off the UI
        thread, debounced) whenever the form changes; a job that does not fit is shown in
        red with its fixes, and Start then asks before it goes ahead."""
        card = Card(tr("Memory and time plan"))
        self._plan: Any = None
        self._plan_for: Any = None
        self._plan_wanted: Any = None
        self.plan_text = label(tr("Choose a model to see what the job needs."), "Muted",
                               wrap=True)
        self.plan_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plan_fixes = label("", "Muted", wrap=True)
        self.plan_fixes.setVisible(False)
        card.body.addWidget(self.plan_text)
        card.body.addWidget(self.plan_fixes)
        self.probe_button = button(tr("Time one block"))
        self.probe_button.setToolTip(tr(
            "Runs the job's first block on this machine (in a separate process) and "
            "extrapolates: a better time estimate than the formula, in seconds to minutes."))
        self.probe_button.clicked.connect(self._probe_plan)
        card.body.addWidget(self.probe_button, 0, Qt.AlignmentFlag.AlignLeft)
        self._plan_timer = QTimer(self)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.setInterval(250)
        self._plan_timer.timeout.connect(self._refresh_plan)
        return card

    def _plan_key(self, job: JobSpec) -> Any:
        return job.to_json()

    def _refresh_plan(self) -> None:
        try:
            job = self.build_job()
        except UserError:
            return
        key = self._plan_key(job)
        if key in (self._plan_for, self._plan_wanted):
            return
        from qtapp.engine.planning.planner import plan_job

        self._plan_wanted = key
        info, hw = self.state.model, self.state.hardware
        self.plan_text.setText(tr("Planning memory, disk and time…"))
        self.state.background.run(lambda _ctx: plan_job(job, info, hw=hw),
                                  lambda plan, key=key: self._plan_ready(key, plan),
                                  lambda e, key=key: self._plan_failed(key, e))

    def _probe_plan(self) -> None:
        """The plan with the first block timed, from `worker --plan` in its own process (the
        window does no model math)."""
        try:
            job = self.build_job()
        except UserError:
            return
        key = self._plan_key(job)
        self._plan_wanted = key
        self.probe_button.setEnabled(False)
        self.plan_text.setText(tr("Timing one block of the job on this machine…"))

        def run(_ctx: Any) -> Any:
            import json
            import subprocess
            import tempfile

            from qtapp.engine.jobs.worker import worker_command
            from qtapp.engine.planning.planner import Plan

            with tempfile.TemporaryDirectory(prefix="quantdesk-plan-") as tmp:
                job_file = Path(tmp) / "job.json"
                job_file.write_text(job.to_json(), encoding="utf-8")
                r = subprocess.run(worker_command(job_file, plan=True), capture_output=True,
                                   text=True, timeout=1800, check=False)
            lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
            if not lines:
                raise UserError(r.stderr.strip().splitlines()[-1] if r.stderr.strip()
                                else f"the planner exited with code {r.returncode}")
            answer = json.loads(lines[-1])
            if "error" in answer:
                raise UserError(answer["error"])
            fields = {k: v for k, v in answer["plan"].items() if k != "fits"}
            return Plan(**fields)

        def done(plan: Any) -> None:
            self.probe_button.setEnabled(True)
            self._plan_ready(key, plan)

        def failed(error: BaseException) -> None:
            self.probe_button.setEnabled(True)
            self._plan_failed(key, error)

        self.state.background.run(run, done, failed)

    def _plan_failed(self, key: Any, error: BaseException) -> None:
        if key == self._plan_wanted:
            self._plan_wanted = None
            set_role(self.plan_text, "ErrorText")
            self.plan_text.setText("⚠ " + tr("Could not plan this job: {error}").format(
                error=error))

    def _plan_ready(self, key: Any, plan: Any) -> None:
        if key != self._plan_wanted:
            return  # the form changed meanwhile; a newer plan is on its way
        from qtapp.engine.planning.budget import format_size

        self._plan_wanted, self._plan_for, self._plan = None, key, plan
        rows = [tr("Peak memory: {ram} of {total} RAM").format(
            ram=format_size(plan.peak_ram), total=format_size(plan.ram_total))]
        if plan.device != "cpu":
            rows.append(tr("Peak GPU memory: {vram} of {total}").format(
                vram=format_size(plan.peak_vram), total=format_size(plan.vram_total)))
        rows.append(tr("Disk: {temp} while running, {final} at the end ({free} free)").format(
            temp=format_size(plan.temp_disk), final=format_size(plan.final_disk),
            free=format_size(plan.disk_free)))
        if plan.probed:
            rows.append(tr("Time: about {time} on {device} (one block timed on this "
                           "machine: {block} per block)").format(
                time=_duration(plan.seconds), device=plan.device.upper(),
                block=_duration(plan.block_seconds)))
        else:
            rows.append(tr("Time: about {time} on {device} (estimated from this machine's "
                           "speed; “Time one block” measures it)").format(
                time=_duration(plan.seconds), device=plan.device.upper()))
        if plan.fits:
            set_role(self.plan_text, "OkText")
            self.plan_text.setText("✓ " + tr("Fits on this machine.") + "\n" + "\n".join(rows))
            self.plan_fixes.setVisible(False)
            self.start_button.setText(tr("Start quantizing"))
        else:
            set_role(self.plan_text, "ErrorText")
            self.plan_text.setText("⚠ " + tr("Does not fit: {problems}").format(
                problems="; ".join(plan.problems)) + "\n" + "\n".join(rows))
            self.plan_fixes.setText(tr("What would fit: {fixes}").format(
                fixes="; ".join(plan.fixes) or tr("none found")))
            self.plan_fixes.setVisible(True)
            self.start_button.setText(tr("Start anyway…"))

    def refresh_output_name(self) -> None:
        """Pick a fresh default output name (after a run used the previous one)."""
        if self._out_auto:
            self._update_default_out()
        self.revalidate()


def _duration(seconds: float) -> str:
    s = max(round(seconds), 1)
    if s >= 3600:
        return tr("{h} h {m} min").format(h=s // 3600, m=s % 3600 // 60)
    if s >= 60:
        return tr("{m} min").format(m=round(s / 60))
    return tr("{s} s").format(s=s)


def _number(text: str, default: int) -> Any:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        return text  # validate() explains what is allowed


def _group(text: str, default: int) -> Any:
    if text.lower() in ("per channel", "per-channel", "channel"):
        return -1
    return _number(text, default)
