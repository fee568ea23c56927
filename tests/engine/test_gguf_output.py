"""The GGUF job output: rules to overrides, imatrix auto/none/file, Modelfile beside."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import torch
from gguf_helpers import build_model256

from qtapp.engine.config import ModuleRule, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.gguf.imatrix import read_imatrix
from qtapp.engine.gguf.output import imatrix_is_useful, overrides_from_rules, write_gguf_output


@pytest.fixture(scope="module")
def model256(tmp_path_factory, make_tiny_model, demo_dir) -> Path:
    return build_model256(tmp_path_factory.mktemp("gguf-out") / "m", make_tiny_model, demo_dir)


def test_rules_become_overrides():
    rules = (ModuleRule("*.self_attn.*", QuantScheme(8, 64), gguf_type="Q8_0"),
             ModuleRule("*.mlp.down_proj", QuantScheme(5, 64)),
             ModuleRule("*.mlp.up_proj", skip=True))
    assert overrides_from_rules(rules) == {"*.self_attn.*": "Q8_0", "*.mlp.down_proj": "Q5_K",
                                           "*.mlp.up_proj": "F16"}


def test_which_types_use_an_imatrix():
    assert imatrix_is_useful("Q4_K_M") and imatrix_is_useful("Q4_0")
    assert not imatrix_is_useful("Q8_0") and not imatrix_is_useful("F16")
    assert imatrix_is_useful("Q8_0", {"*.mlp.*": "Q4_K"})


def test_auto_imatrix_files_and_summary(model256, tmp_path):
    tokens = torch.randint(3, 40000, (2, 32), generator=torch.Generator().manual_seed(0))
    stages = set()
    summary = write_gguf_output(model256, tmp_path, "tiny", "Q4_K_M", "auto", tokens,
                                progress=lambda stage, *_: stages.add(stage))
    assert summary["files"] == ["Modelfile", "imatrix.gguf", "tiny-Q4_K_M.gguf"]
    assert summary["imatrix"] == "computed" and summary["imatrix_entries"] == 28
    assert "imatrix" in stages and "output.weight" in stages
    assert read_imatrix(tmp_path / "imatrix.gguf").counts["blk.0.attn_q.weight"].tolist() == [64]
    reader = gguf.GGUFReader(tmp_path / "tiny-Q4_K_M.gguf")
    assert reader.fields["quantize.imatrix.entries_count"].contents() == 28
    assert (tmp_path / "Modelfile").read_text().startswith("FROM ./tiny-Q4_K_M.gguf")


def test_imatrix_none_and_from_file(model256, tmp_path):
    plain = write_gguf_output(model256, tmp_path / "a", "tiny", "Q8_0", "auto",
                              torch.zeros(1, 16, dtype=torch.long))
    assert plain["imatrix"] == "none" and "imatrix.gguf" not in plain["files"]  # Q8_0
    none = write_gguf_output(model256, tmp_path / "b", "tiny", "Q4_0", "none")
    assert none["imatrix_entries"] == 0
    with pytest.raises(UserError, match="Cannot read"):
        write_gguf_output(model256, tmp_path / "c", "tiny", "Q4_0", str(tmp_path / "nope.dat"))
