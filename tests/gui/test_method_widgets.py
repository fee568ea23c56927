"""The method page's parts on their own (issue 19, item 9): the rules table's signal API, and
gui/format.py, where the window's text helpers live (durations are units.py's, translated)."""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication

from qtapp.engine.config import JobSpec, ModuleRule, QuantScheme
from qtapp.engine.results import Quality
from qtapp.gui.format import (
    format_duration,
    friendly_error,
    job_title,
    ppl_change,
    quality_text,
    size_share,
)
from qtapp.gui.i18n import install_translator
from qtapp.gui.widgets.rules_table import CUSTOM, OFF, PRESET, RulesTable


def test_rules_table_preset_follows_the_scheme_and_edits_make_custom_rules(qtbot):
    scheme = [QuantScheme(4, 64, True)]
    table = RulesTable(lambda: scheme[0])
    qtbot.addWidget(table)
    changes = []
    table.changed.connect(lambda: changes.append(table.choice()))
    assert table.choice() == OFF and table.rules() == () and table.table.isHidden()

    table.mixed.setCurrentIndex(PRESET)
    assert changes == [PRESET] and not table.table.isHidden()
    assert [(r.pattern, r.scheme) for r in table.rules()] == [
        ("*.self_attn.*", QuantScheme(8, 64, True)), ("*.mlp.*", QuantScheme(4, 64, True))]
    scheme[0] = QuantScheme(4, 32, False)
    table.follow_scheme()
    assert [r.scheme for r in table.rules()] == [QuantScheme(8, 32, False),
                                                 QuantScheme(4, 32, False)]
    assert len(changes) == 1  # following the form is not a user change

    table.table.item(1, 1).setText("")  # an empty cell takes the form's bits
    assert table.choice() == CUSTOM and changes[-1] == CUSTOM
    assert table.rules()[1].scheme == QuantScheme(4, 32, False)
    table.table.item(1, 2).setText("per channel")
    assert table.rules()[1].scheme.group_size == -1
    table.table.item(1, 1).setText("nine")  # passed through for validate() to explain
    assert table.rules()[1].scheme.bits == "nine"

    table.add_rule.click()
    assert table.rules()[-1] == ModuleRule("*.mlp.down_proj", QuantScheme(8, 32, True),
                                           gguf_type="Q8_0")
    n = len(changes)
    table.set_rules((ModuleRule("*.mlp.*", None, skip=True),))
    assert len(changes) == n and [r.skip for r in table.rules()] == [True]
    table.set_editable(False)
    assert not table.mixed.isEnabled() and not table.add_rule.isEnabled()


def test_format_helpers():
    assert ppl_change(12.5, 12.0) == "+4.2 %" and ppl_change(None, 12.0) == ""
    assert ppl_change(12.5, None) == ""
    assert size_share(90, 270) == " (33%)" and size_share(90, 0) == ""
    assert quality_text(None) == quality_text(Quality(ppl=12.0)) == "—"
    assert quality_text(Quality(kld_mean=0.01234, kld_p99=0.2, top1_agree=91.25,
                                reasons=["a", "b"])) == (
        "KL divergence 0.0123 (99th percentile 0.200), top-1 agreement 91.2 %\n• a\n• b")
    assert friendly_error("job.rules[1].scheme.bits: 9 is not allowed") == (
        "Mixed-precision rule 2 bits: 9 is not allowed")
    job = JobSpec(model="m", method="gptq", out="o", scheme=QuantScheme(4, 128, True),
                  rules=(ModuleRule("*.mlp.*", QuantScheme(8, 128, True)),))
    assert job_title(job) == "GPTQ W4 g128 sym + mixed precision"


def test_durations_follow_units_in_the_windows_language():
    assert [format_duration(s) for s in (-3, 45, 187, 3900)] == [
        "0 s", "45 s", "3 min 07 s", "1 h 05 min"]
    app = QCoreApplication.instance()
    translator = install_translator(app, "zh_CN")
    assert translator is not None
    try:
        assert format_duration(187) == "3 分 07 秒"
        assert format_duration(3900) == "1 小时 05 分"
    finally:
        app.removeTranslator(translator)
