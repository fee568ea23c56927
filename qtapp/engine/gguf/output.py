"""What a GGUF job needs from its settings: module rules as per-tensor type overrides,
whether an importance matrix is worth computing, and the chat template for the Modelfile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from qtapp.engine.config import ModuleRule
from qtapp.engine.gguf.types import DEFAULT_TYPE, FLOAT_TYPES, Q, file_type

# Where a GGUF job saves the importance matrix it computed, relative to the output folder: in
# a folder of its own, so that a glob for the model (OUT/*.gguf, `quantdesk chat OUT`, LM
# Studio's and Ollama's file pickers) finds only the model file.
IMATRIX_FILE = "imatrix/imatrix.gguf"

# the GGUF type a rule without gguf_type gets from its scheme's bits
_TYPE_FOR_BITS = {8: "Q8_0", 7: "Q8_0", 6: "Q6_K", 5: "Q5_K", 4: "Q4_K", 3: "Q3_K", 2: "Q2_K"}


def overrides_from_rules(rules: Sequence[ModuleRule]) -> dict[str, str]:
    """glob -> GGUF tensor type: the rule's gguf_type, F16 for skip, else from its bits."""
    overrides = {}
    for rule in rules:
        if rule.gguf_type:
            overrides[rule.pattern] = rule.gguf_type
        elif rule.skip:
            overrides[rule.pattern] = "F16"
        elif rule.scheme is not None:
            overrides[rule.pattern] = _TYPE_FOR_BITS[rule.scheme.bits]
    return overrides


def imatrix_is_useful(ftype: str, overrides: dict[str, str] | None = None) -> bool:
    """Whether any tensor of this file type can use an importance matrix (Q8_0 and the float
    types ignore it)."""
    types = {DEFAULT_TYPE[file_type(ftype)], *(Q[t.upper()] for t in (overrides or {}).values())}
    return any(t not in (*FLOAT_TYPES, Q.Q8_0) for t in types)


def chat_template_of(model_dir: Path) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None
