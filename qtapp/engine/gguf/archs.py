"""The GGUF side of each family: read from the family table (qtapp.engine.model.arch).

Each family's GgufFacts were re-derived from llama.cpp's convert_hf_to_gguf.py (conversion/
llama.py, qwen.py, granite.py, olmo.py, phi.py, gemma.py, glm.py, smollm3.py); tensor names
come from the gguf package's TensorNameMap for the family's MODEL_ARCH (hf_model.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf

from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import (
    ARCHITECTURE_TO_TYPE,
    FAMILIES,
    Family,
    GgufFacts,
    family_for,
    method_refusal,
    text_settings,
)


@dataclass(frozen=True)
class GgufArch:
    """How one family is written (see GgufFacts): model_arch is the gguf.MODEL_ARCH member;
    norm_offset is added to every norm weight (Gemma's x̂·(1 + w), stored as 1 + w the way
    llama.cpp's Gemma converters do)."""

    model_arch: gguf.MODEL_ARCH
    facts: GgufFacts
    norm_offset: float = 0.0

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.model_arch]

    @property
    def permute_qk(self) -> bool:
        return self.facts.permute_qk

    @property
    def llama_keys(self) -> bool:
        return self.facts.llama_keys

    @property
    def vocab(self) -> str:
        return self.facts.vocab


def gguf_arch(family: Family) -> GgufArch | None:
    """The GgufArch of a supported family that llama.cpp converts, else None."""
    if not family.supported or family.gguf is None:
        return None
    return GgufArch(getattr(gguf.MODEL_ARCH, family.gguf.arch), family.gguf, family.norm_offset)


class GgufRefused(UserError):
    """arch_of's refusal of a model whose family (or variant) the table knows but cannot
    write as GGUF. `reason` is the per-method answer that `quantdesk check`, the advisor and
    the window show next to "GGUF": the table's own reason and what to use instead, in a
    line; the message adds the architecture and llama.cpp's own converter. The list of the
    architectures QuantDesk converts is only in the error for an architecture the table does
    not know."""

    def __init__(self, shown: str, reason: str) -> None:
        super().__init__(f"GGUF conversion does not support {shown}: {reason}, or convert it "
                         "with llama.cpp's convert_hf_to_gguf.py.")
        self.reason = reason


def _instead(config: dict[str, Any]) -> str:
    """'use GPTQ or AWQ': the calibrated methods the family takes (method_refusal); RTN,
    which every supported family takes, when it takes neither."""
    taken = [m.upper() for m in ("gptq", "awq") if not method_refusal(m, config)]
    return f"use {' or '.join(taken or ['RTN'])}"


ARCHS: dict[str, GgufArch] = {a: g for f in FAMILIES.values()
                              if (g := gguf_arch(f)) is not None for a in f.architectures}
LLAMA = ARCHS["LlamaForCausalLM"]
QWEN2 = ARCHS["Qwen2ForCausalLM"]
QWEN3 = ARCHS["Qwen3ForCausalLM"]


def arch_of(config: dict[str, Any]) -> GgufArch:
    """The GGUF family of a model from its config.json, or a UserError naming it."""
    names = config.get("architectures") or []
    shown = ", ".join(names) if names else f"model_type {config.get('model_type')!r}"
    # as llama.cpp's converter, the architectures decide; model_type only without them
    known = [n for n in names if n in ARCHITECTURE_TO_TYPE]
    if names and not known:
        try:  # a family QuantDesk supports by model_type takes the other methods
            other = family_for(config).supported
        except UserError:  # nothing in QuantDesk takes it: no method to point to
            other = False
        instead = ("Choose GPTQ or AWQ for this model, or convert it" if other else
                   "QuantDesk has no other method for it either; convert it")
        raise UserError(
            f"GGUF conversion does not support the architecture {shown}. QuantDesk converts "
            f"{', '.join(ARCHS)}. {instead} with llama.cpp's convert_hf_to_gguf.py.")
    try:
        family = FAMILIES[ARCHITECTURE_TO_TYPE[known[0]]] if known else family_for(config)
    except UserError as e:
        raise UserError(f"GGUF conversion does not support the architecture {shown}: {e}"
                        ) from None
    if not family.supported:
        raise UserError(f"GGUF conversion does not support the architecture {shown}: "
                        f"{family.reason}.")
    found = gguf_arch(family)
    if found is None:
        raise GgufRefused(f"{family.examples} ({shown})",
                          f"{family.gguf_reason}; {_instead(config)}")
    variant = family.variant(config)
    if variant is not None and variant.gguf_reason:
        raise GgufRefused(f"this {family.model_type} model ({variant.key} is set in "
                          "config.json)", f"{variant.gguf_reason}; {_instead(config)}")
    if found.facts.gated_delta_net:
        full_attention_interval(config)  # llama.cpp stores the hybrid's pattern as one number
    if found.facts.split_attention:
        c = text_settings(config)
        types = c.get("layer_types")
        if not isinstance(types, list) or len(types) != c.get("num_hidden_layers"):
            raise UserError(
                "config.json names no layer_types for each of its num_hidden_layers blocks; "
                f"the {found.name} GGUF stores which blocks slide, so this model cannot be "
                "written as GGUF. Choose GPTQ or AWQ.")
        shared_kv_sources(config)
        per_layer_vocab = c.get("vocab_size_per_layer_input")
        if c.get("hidden_size_per_layer_input") and per_layer_vocab not in (None,
                                                                            c.get("vocab_size")):
            raise UserError(
                f"config.json's vocab_size_per_layer_input ({per_layer_vocab}) differs from "
                f"vocab_size ({c.get('vocab_size')}); llama.cpp's Gemma 4 reads both "
                "embedding tables with one row per token of the vocabulary, so this model "
                "cannot be written as GGUF. Choose GPTQ or AWQ.")
    return found


def shared_kv_sources(config: dict[str, Any]) -> tuple[int, int] | None:
    """(global, sliding) layer whose keys and values the last num_kv_shared_layers layers
    reuse, as llama.cpp's Gemma 4 has it: the global ones the last layer before them, the
    sliding ones the layer before that (src/llama-model.cpp, the GEMMA4 layer_reuse_cb);
    None without shared layers. transformers reuses the last layer of the same kind
    (Gemma4TextConfig.kv_sharing_modes): UserError when the config's layer_types put
    those elsewhere (llama.cpp would read another layer's keys and values)."""
    c = text_settings(config)
    shared = int(c.get("num_kv_shared_layers") or 0)
    types = c.get("layer_types") or []
    if not shared:
        return None
    first = len(types) - shared
    if first < 2 or types[first - 1] != "full_attention" \
            or types[first - 2] != "sliding_attention":
        raise UserError(
            f"config.json's layer_types ({', '.join(types)}) with num_kv_shared_layers "
            f"{shared} do not end the layers that keep their own keys and values with a "
            "sliding then a global layer, the only layout llama.cpp's Gemma 4 reads shared "
            "keys and values from; this model cannot be written as GGUF. Choose GPTQ or AWQ.")
    return first - 1, first - 2


def full_attention_interval(config: dict[str, Any]) -> int:
    """Every how many blocks a hybrid (Qwen3.5) model has full attention, as llama.cpp
    stores it (block i is full attention when (i + 1) % interval == 0); UserError when the
    config's layer_types follow no such interval (llama.cpp could not represent them)."""
    types = config.get("layer_types")
    if not types:
        return int(config.get("full_attention_interval") or 4)
    interval = types.index("full_attention") + 1 if "full_attention" in types else 0
    expected = ["linear_attention" if interval == 0 or (i + 1) % interval else "full_attention"
                for i in range(len(types))]
    if interval == 0 or list(types) != expected:
        raise UserError(
            f"config.json's layer_types ({', '.join(types)}) do not put full attention at a "
            "fixed interval, the only pattern llama.cpp's qwen35 architecture stores "
            "(full_attention_interval); this model cannot be written as GGUF. Choose GPTQ or "
            "AWQ.")
    return interval
