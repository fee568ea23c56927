"""The Hugging Face architectures QuantDesk converts to GGUF, and what differs between them.

Re-derived from llama.cpp @0c1e57098 (the llama-cpp-python 0.3.36 vendor copy):
conversion/llama.py (LlamaModel) and conversion/qwen.py (Qwen2Model, Qwen3Model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf

from qtapp.engine.errors import UserError


@dataclass(frozen=True)
class GgufArch:
    """How one family is written.

    permute_qk: attn_q/attn_k rows are reordered for llama.cpp's rotary layout
    (LlamaModel.undo_permute). llama_keys: the family also writes `{arch}.vocab_size` and
    `{arch}.rope.dimension_count` (LlamaModel.set_gguf_parameters). vocab: the order in
    which tokenizer files are tried, "llama" (SentencePiece, then Llama-style HF BPE, then
    GPT-2 BPE) or "qwen" (SentencePiece, then GPT-2 BPE).
    """

    model_arch: gguf.MODEL_ARCH
    permute_qk: bool
    llama_keys: bool
    vocab: str

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.model_arch]


LLAMA = GgufArch(gguf.MODEL_ARCH.LLAMA, permute_qk=True, llama_keys=True, vocab="llama")
QWEN2 = GgufArch(gguf.MODEL_ARCH.QWEN2, permute_qk=False, llama_keys=False, vocab="qwen")
QWEN3 = GgufArch(gguf.MODEL_ARCH.QWEN3, permute_qk=False, llama_keys=False, vocab="qwen")

ARCHS: dict[str, GgufArch] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": QWEN2,
    "Qwen3ForCausalLM": QWEN3,
}


def arch_of(config: dict[str, Any]) -> GgufArch:
    """The GGUF family of a model from its config.json, or a UserError naming it."""
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHS:
            return ARCHS[name]
    shown = ", ".join(names) if names else f"model_type {config.get('model_type')!r}"
    raise UserError(
        f"GGUF conversion does not support the architecture {shown}. QuantDesk converts "
        f"{', '.join(ARCHS)}. Choose GPTQ or AWQ for this model, or convert it with "
        "llama.cpp's convert_hf_to_gguf.py.")
