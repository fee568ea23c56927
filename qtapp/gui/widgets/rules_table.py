"""Per-module precision rules of the method page: off, the attention 8-bit / FFN 4-bit preset,
or custom rules edited in a table (pattern, bits, group, symmetric, GGUF type, keep 16-bit).

    rules = RulesTable(base_scheme)      # base_scheme() -> the form's QuantScheme
    rules.changed.connect(...)           # the user changed the choice or a rule
    rules.rules()                        # the ModuleRules the table describes, () when off
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QT_TR_NOOP, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from qtapp.engine.config import ModuleRule, QuantScheme, preset_rules
from qtapp.gui.i18n import tr
from qtapp.gui.widgets.common import button, fit_columns, label

OFF, PRESET, CUSTOM = 0, 1, 2
MIXED_CHOICES = (QT_TR_NOOP("Off"), QT_TR_NOOP("Attention 8-bit, FFN 4-bit (preset)"),
                 QT_TR_NOOP("Custom rules"))
RULE_COLUMNS = (QT_TR_NOOP("Module pattern"), QT_TR_NOOP("Bits"), QT_TR_NOOP("Group"),
                QT_TR_NOOP("Symmetric"), QT_TR_NOOP("GGUF type"), QT_TR_NOOP("Keep 16-bit"))
SYM_COLUMN, SKIP_COLUMN = 3, 5
PRESET_NAME = "attn8-ffn4"


class RulesTable(QWidget):
    """The choice of rules (`mixed`: off / preset / custom) above the table of rules (`table`).
    The preset follows the form's group size and symmetry; editing it makes it custom rules.
    Cells left empty take the form's bits and group size."""

    changed = Signal()  # the user changed the choice, a rule, or added / removed one

    def __init__(self, base_scheme: Callable[[], QuantScheme],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._base_scheme = base_scheme
        self._filling = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(8)
        layout.addLayout(self._build_choice())
        layout.addWidget(label(tr(
            "A rule gives every module whose full name matches the pattern (a glob such as "
            "*.self_attn.* or *.mlp.down_proj) its own precision; later rules win. Modules no "
            "rule matches use the settings above; lm_head stays 16-bit."), "Muted", wrap=True))
        layout.addWidget(self._build_table())
        self._show_table(False)

    def _build_choice(self) -> QHBoxLayout:
        line = QHBoxLayout()
        line.addWidget(label(tr("Per-module rules"), "Muted"))
        self.mixed = QComboBox()
        for text in MIXED_CHOICES:
            self.mixed.addItem(tr(text))
        line.addWidget(self.mixed)
        line.addStretch(1)
        self.add_rule = button(tr("Add rule"))
        self.remove_rule = button(tr("Remove rule"))
        line.addWidget(self.add_rule)
        line.addWidget(self.remove_rule)
        self.mixed.currentIndexChanged.connect(self._choice_changed)
        self.add_rule.clicked.connect(self._add)
        self.remove_rule.clicked.connect(self._remove)
        return line

    def _build_table(self) -> QTableWidget:
        self.table = QTableWidget(0, len(RULE_COLUMNS))
        self.table.setHorizontalHeaderLabels([tr(c) for c in RULE_COLUMNS])
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        fit_columns(self.table, stretch=0)
        self.table.setMinimumHeight(130)
        self.table.itemChanged.connect(self._edited)
        return self.table

    # -- reading -------------------------------------------------------------------------

    def choice(self) -> int:
        """OFF, PRESET or CUSTOM."""
        return self.mixed.currentIndex()

    def rules(self) -> tuple[ModuleRule, ...]:
        """The rules the table describes (none when off); empty cells take the form's bits and
        group size, and text that is not a number goes through for JobSpec.validate() to
        explain."""
        if self.choice() == OFF:
            return ()
        base = self._base_scheme()
        rules = []
        for r in range(self.table.rowCount()):
            skip = self.table.item(r, SKIP_COLUMN).checkState() == Qt.CheckState.Checked
            scheme = None if skip else QuantScheme(
                _number(self._cell(r, 1), base.bits), _group(self._cell(r, 2), base.group_size),
                self.table.item(r, SYM_COLUMN).checkState() == Qt.CheckState.Checked)
            rules.append(ModuleRule(self._cell(r, 0), scheme, skip, self._cell(r, 4).upper()))
        return tuple(rules)

    def _cell(self, r: int, c: int) -> str:
        item = self.table.item(r, c)
        return item.text().strip() if item else ""

    # -- changing ------------------------------------------------------------------------

    def follow_scheme(self) -> None:
        """The form's scheme changed: the preset follows its group size and symmetry."""
        if self.choice() == PRESET:
            self._fill(preset_rules(PRESET_NAME, self._base_scheme()))

    def set_rules(self, rules: tuple[ModuleRule, ...]) -> None:
        """Show `rules` as custom rules (without signalling a change)."""
        self._filling = True
        self.mixed.setCurrentIndex(CUSTOM)
        self._filling = False
        self._show_table(True)
        self._fill(rules)

    def set_editable(self, on: bool) -> None:
        """Off while a size budget chooses the precisions."""
        for w in (self.mixed, self.table, self.add_rule, self.remove_rule):
            w.setEnabled(on)

    def _choice_changed(self, index: int) -> None:
        if self._filling:
            return
        if index == PRESET:
            self._fill(preset_rules(PRESET_NAME, self._base_scheme()))
        self._show_table(index != OFF)
        self.changed.emit()

    def _show_table(self, on: bool) -> None:
        for w in (self.table, self.add_rule, self.remove_rule):
            w.setVisible(on)

    def _fill(self, rules: tuple[ModuleRule, ...]) -> None:
        self._filling = True
        self.table.setRowCount(0)
        for rule in rules:
            self._append(rule)
        self._filling = False

    def _append(self, rule: ModuleRule) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        s = rule.scheme
        texts = [rule.pattern, str(s.bits) if s else "", str(s.group_size) if s else "",
                 None, rule.gguf_type, None]
        for c, text in enumerate(texts):
            item = QTableWidgetItem(text or "")
            if c in (SYM_COLUMN, SKIP_COLUMN):
                item.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
                on = (s.sym if s else True) if c == SYM_COLUMN else rule.skip
                item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.table.setItem(r, c, item)

    def _edited(self) -> None:
        if self._filling:
            return
        if self.choice() == PRESET:  # an edited preset becomes custom rules
            self._filling = True
            self.mixed.setCurrentIndex(CUSTOM)
            self._filling = False
        self.changed.emit()

    def _add(self) -> None:
        self._filling = True
        self._append(ModuleRule("*.mlp.down_proj", QuantScheme(
            8, self._base_scheme().group_size, True), gguf_type="Q8_0"))
        self._filling = False
        self._edited()

    def _remove(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True)
        for r in rows or [self.table.rowCount() - 1]:
            if r >= 0:
                self.table.removeRow(r)
        self._edited()


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
