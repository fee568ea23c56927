"""The run page says which mixture-of-experts experts were calibrated on their own routed
tokens and which took the fallback (too few tokens: rounded to nearest), from the method of
each layer event (the quantizer reports a fallback expert's layers with method "rtn")."""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.gui.i18n import install_translator
from qtapp.gui.main_window import MainWindow


def _layer(module: str, method: str) -> ev.Layer:
    return ev.Layer(block=0, module=module, kind="mlp", bits=4, group_size=32,
                    rel_error=1e-3, seconds=0.01, method=method)


def _feed(run, method: str) -> None:
    run.job = JobSpec(model="m", method=method, out="o")
    run.expert_methods.clear()
    run._on_layer(_layer("model.layers.0.self_attn.q_proj", method))
    for e in range(4):
        for kind in ("gate_proj", "up_proj", "down_proj"):
            run._on_layer(_layer(f"model.layers.0.mlp.experts.{e}.{kind}",
                                 "rtn" if e == 3 else method))


def test_run_page_counts_calibrated_and_fallback_experts(window: MainWindow) -> None:
    run = window.page("run")
    assert not run.experts.isVisibleTo(run)  # dense models: no line
    _feed(run, "gptq")
    assert run.experts.isVisibleTo(run)
    assert run.experts.text().startswith("Experts: 9 linears calibrated on their own tokens")
    assert "3 fallback" in run.experts.text()
    tip = run.experts.toolTip()
    assert "model.layers.0.mlp.experts.3.down_proj" in tip
    assert "experts.2." not in tip and "q_proj" not in tip


def test_rtn_jobs_have_no_fallback_line(window: MainWindow) -> None:
    run = window.page("run")
    _feed(run, "rtn")  # every expert is rounded to nearest by choice: nothing to report
    assert not run.expert_methods and not run.experts.toolTip()


def test_expert_line_in_chinese(window: MainWindow) -> None:
    app = QCoreApplication.instance()
    translator = install_translator(app, "zh_CN")
    assert translator is not None
    try:
        run = window.page("run")
        _feed(run, "awq")
        assert "专家" in run.experts.text() and "9" in run.experts.text()
        assert "3" in run.experts.text()
    finally:
        app.removeTranslator(translator)
