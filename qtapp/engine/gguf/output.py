"""A GGUF job's output folder: the .gguf file, an Ollama Modelfile, the imatrix it used.

`write_gguf_output` is what the job runner calls for method "gguf": it turns the job's
settings (file type, imatrix "auto"/"none"/path, module rules) into one quantize_to_gguf
call and writes the files beside it. The model card is the job runner's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qtapp.engine.config import ModuleRule
from qtapp.engine.gguf.convert import Progress, ShouldCancel
from qtapp.engine.gguf.imatrix import Imatrix, compute_imatrix, read_imatrix, write_imatrix
from qtapp.engine.gguf.llama_runtime import write_modelfile
from qtapp.engine.gguf.quantize import quantize_to_gguf
from qtapp.engine.gguf.types import DEFAULT_TYPE, FLOAT_TYPES, Q, file_type

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


def write_gguf_output(model_dir: Path, out_dir: Path, name: str, ftype: str = "Q4_K_M",
                      imatrix: str = "auto", tokens: torch.Tensor | None = None,
                      rules: Sequence[ModuleRule] = (), progress: Progress | None = None,
                      should_cancel: ShouldCancel | None = None) -> dict[str, Any]:
    """Quantize `model_dir` into `out_dir`/`name`-`ftype`.gguf plus a Modelfile.

    imatrix: "auto" computes one from `tokens` (n, L) when the type can use it, "none"
    uses none, anything else is the path of a llama.cpp imatrix file. Returns the summary
    the job reports (files relative to out_dir).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = overrides_from_rules(rules)
    used: Imatrix | None = None
    files: list[str] = []
    if imatrix == "auto":
        if tokens is not None and imatrix_is_useful(ftype, overrides):
            used = compute_imatrix(model_dir, tokens, "builtin", progress, should_cancel)
            write_imatrix(used, out_dir / "imatrix.gguf")
            files.append("imatrix.gguf")
    elif imatrix != "none":
        used = read_imatrix(Path(imatrix).expanduser())
    gguf_name = f"{name}-{ftype.upper()}.gguf"
    report = quantize_to_gguf(model_dir, out_dir / gguf_name, ftype, used, overrides or None,
                              progress, should_cancel)
    write_modelfile(out_dir, gguf_name, chat_template_of(model_dir))
    files += [gguf_name, "Modelfile"]
    return {
        "method": "gguf", "format": "gguf", "gguf_type": ftype.upper(), "files": sorted(files),
        "gguf_file": gguf_name, "quantize_seconds": round(report.seconds, 2),
        "tensor_types": report.types(), "imatrix_entries": report.imatrix_entries,
        "imatrix": ("computed" if imatrix == "auto" and used is not None
                    else used.source if used is not None else "none"),
        "overrides": overrides,
    }
