"""GGUF job settings: module rules to per-tensor overrides, imatrix usefulness, template."""

from __future__ import annotations

import json

from qtapp.engine.config import ModuleRule, QuantScheme
from qtapp.engine.gguf.output import chat_template_of, imatrix_is_useful, overrides_from_rules


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


def test_chat_template_from_jinja_file_or_tokenizer_config(tmp_path):
    assert chat_template_of(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ a }}"}))
    assert chat_template_of(tmp_path) == "{{ a }}"
    (tmp_path / "chat_template.jinja").write_text("{{ b }}")
    assert chat_template_of(tmp_path) == "{{ b }}"
