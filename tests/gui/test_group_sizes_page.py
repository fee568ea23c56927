"""The method page offers only group sizes that divide the chosen model's layer widths
(issue 17, item 7): the demo is 576 wide, so 128 and 256 are not offered, 64 is chosen and
recommended, and a custom rule with group 128 keeps Start disabled with the fix."""

from __future__ import annotations

from pathlib import Path

from shapes import DEMO, LLAMA_7B, GiB, model_info

from qtapp.engine.planning.hardware import GPU, Hardware
from qtapp.gui.pages.method import GROUP_CHOICES


def offered(method) -> list[int]:
    items = method.group.model()
    return [g for i, (g, _) in enumerate(GROUP_CHOICES) if items.item(i).isEnabled()]


def test_only_dividing_group_sizes_are_offered_and_64_is_chosen_for_the_demo(window, tmp_path):
    method = window.page("method")
    assert method.group.currentData() == 128
    window.state.set_model(model_info(tmp_path, "SmolLM2-135M-test", DEMO, 134_515_008))
    assert offered(method) == [32, 64, -1]
    assert method.group.currentData() == 64  # 128 does not divide 576
    assert method.group_note.text() == ("Only group sizes that divide the input width of "
                                        "every layer (576, 1536) are offered.")
    assert method.form.isRowVisible(method.group_note)
    assert "128 does not divide" in method.group.itemData(2, 3)  # its tooltip says why
    assert method.start_button.isEnabled(), method.validation.text()
    assert method.build_job().scheme.group_size == 64
    assert Path(method.out_edit.text()).name.endswith("-w4g64")

    window.state.set_hardware(Hardware("Fake CPU", 8, 16, 32 * GiB, 30 * GiB, "TestOS", (
        GPU(0, "Fake RTX 24 GB", "cuda", 24 * GiB, 24 * GiB),)))
    assert window.page("hardware").rec_title.text() == "Recommended: AWQ 4-bit, group 64"
    assert method.group.currentData() == 64 and method.start_button.isEnabled()

    method.rules_table.mixed.setCurrentIndex(1)  # the attention 8-bit / FFN 4-bit preset
    table = method.rules_table.table  # follows the group
    assert [table.item(r, 2).text() for r in range(2)] == ["64", "64"]
    method.group.setCurrentIndex(0)  # 32
    assert [table.item(r, 2).text() for r in range(2)] == ["32", "32"]
    assert method.start_button.isEnabled(), method.validation.text()

    table.item(1, 2).setText("128")  # a custom rule with a group that does not divide
    assert not method.start_button.isEnabled()
    assert method.validation.text() == (
        "⚠ rule 2 ('*.mlp.*'): group size 128 does not divide the 576 input features of "
        "gate_proj, up_proj in every block (576 / 128 = 4.5); GPTQ, AWQ and compressed-tensors "
        "need whole groups. Fix: give rule 2 ('*.mlp.*') group size 64 (576 = 9 × 64, "
        "1536 = 24 × 64)")
    table.item(1, 2).setText("64")
    assert method.start_button.isEnabled(), method.validation.text()

    window.state.set_model(model_info(tmp_path, "Llama-7B-test", LLAMA_7B, 6_738_415_616))
    assert offered(method) == [g for g, _ in GROUP_CHOICES]
    assert method.group_note.text() == "" and not method.form.isRowVisible(method.group_note)
