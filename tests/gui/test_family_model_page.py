"""The window with a family's local folder (issue 18, item 4): the model page reads the folder
through its own Load button, names the family (Architecture) and the methods the table lets
it take, each refused one with the reason; the method page disables what the table refuses
(GGUF for Phi-3, nothing for Llama or Gemma 4's mixture of experts) before Start, and
its recommended choice is one the family takes.

The tiny models are those of tests/engine/test_families_everywhere.py (its CASES builders,
which import the family test modules' own)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from family_helpers import folder_cache
from shapes import hardware

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from test_families_everywhere import CASES, table_methods

from qtapp.gui.i18n import tr

SHOWN = ("llama", "phi3", "qwen3_moe", "qwen3_5", "gemma4+moe")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return folder_cache(tmp_path_factory, CASES)


def load_folder(window, qtbot, folder: Path) -> None:
    page = window.pages["model"]
    page.radio["folder"].setChecked(True)
    page.folder_edit.setText(str(folder))
    page.load()
    qtbot.waitUntil(lambda: page.load_button.isEnabled(), timeout=60000)
    assert page.status.text().startswith("✓"), page.status.text()


def assert_page_follows_the_table(window, config: dict) -> None:
    from qtapp.engine.model.arch import FAMILIES, arch_for

    allowed = table_methods(config)
    info = window.pages["model"].info
    assert info.text("Architecture") == arch_for(config).name
    shown = info.text("Methods")
    offered, *refused = shown.splitlines()
    assert {m.lower() for m in offered.split(", ") if m} == allowed, shown
    assert len(refused) == len({"rtn", "gptq", "awq", "gguf"} - allowed), shown
    for m in {"rtn", "gptq", "awq", "gguf"} - allowed:  # a line each: the family's reason
        line = next(x for x in refused if x.startswith(tr("not {method}: {reason}").format(
            method=m.upper(), reason="")))
        assert len(line) < 200, line  # not the converter's list of every architecture
        assert m != "gguf" or FAMILIES[config["model_type"]].gguf_reason in line, line
    method = window.pages["method"]
    enabled = {k for k, radio in method.method_radio.items() if radio.isEnabled()}
    assert enabled == allowed, enabled
    for k, radio in method.method_radio.items():
        assert bool(radio.toolTip()) == (k not in allowed), (k, radio.toolTip())
    assert method.method() in allowed
    assert method.recommended_method in allowed


@pytest.mark.parametrize("case", SHOWN)
def test_model_page_shows_the_family_and_its_methods(window, qtbot, folders, case):
    import json

    window.state.set_hardware(hardware())  # CPU only: the advisor's first pick is GGUF
    folder = folders(case)
    load_folder(window, qtbot, folder)
    assert_page_follows_the_table(window, json.loads((folder / "config.json").read_text()))


def test_a_page_offering_a_refused_method_is_caught(window, qtbot, folders):
    """Phi-3 read as if the table let it take GGUF: the check above fails."""
    import json

    window.state.set_hardware(hardware())
    folder = folders("phi3")
    load_folder(window, qtbot, folder)
    config = json.loads((folder / "config.json").read_text())
    window.pages["method"].method_radio["gguf"].setEnabled(True)
    with pytest.raises(AssertionError):
        assert_page_follows_the_table(window, config)
