"""Which GGML type each tensor of a GGUF file gets, for a llama.cpp file type like Q4_K_M.

Re-derived from llama.cpp @0c1e57098 src/llama-quant.cpp (the llama-cpp-python 0.3.36 vendor
copy): `tensor_allows_quantization`, `llama_tensor_get_type_impl`, `tensor_type_fallback`,
`llama_ftype_get_default_type`, for the file types listed in FILE_TYPES and dense (non-MoE,
non-Falcon) models; the IQ*, TQ*, MXFP4 and expert branches are left out. Per-tensor
overrides behave like llama-quantize's --tensor-type: an overridden tensor skips the mixture
rules (and does not advance their layer counters) but still gets the row-length fallback.
Unlike llama-quantize, overrides also apply when the file type is F32/F16/BF16.
The rules in words: docs/formats.md#gguf-type-rules.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gguf

from qtapp.engine.errors import UserError

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

FILE_TYPES: dict[str, FT] = {
    "F32": FT.ALL_F32, "F16": FT.MOSTLY_F16, "BF16": FT.MOSTLY_BF16,
    "Q8_0": FT.MOSTLY_Q8_0, "Q4_0": FT.MOSTLY_Q4_0, "Q4_1": FT.MOSTLY_Q4_1,
    "Q5_0": FT.MOSTLY_Q5_0, "Q5_1": FT.MOSTLY_Q5_1, "Q2_K": FT.MOSTLY_Q2_K,
    "Q3_K_S": FT.MOSTLY_Q3_K_S, "Q3_K_M": FT.MOSTLY_Q3_K_M, "Q3_K_L": FT.MOSTLY_Q3_K_L,
    "Q4_K_S": FT.MOSTLY_Q4_K_S, "Q4_K_M": FT.MOSTLY_Q4_K_M,
    "Q5_K_S": FT.MOSTLY_Q5_K_S, "Q5_K_M": FT.MOSTLY_Q5_K_M, "Q6_K": FT.MOSTLY_Q6_K,
}

# llama_ftype_get_default_type
DEFAULT_TYPE: dict[FT, Q] = {
    FT.ALL_F32: Q.F32, FT.MOSTLY_F16: Q.F16, FT.MOSTLY_BF16: Q.BF16,
    FT.MOSTLY_Q8_0: Q.Q8_0, FT.MOSTLY_Q4_0: Q.Q4_0, FT.MOSTLY_Q4_1: Q.Q4_1,
    FT.MOSTLY_Q5_0: Q.Q5_0, FT.MOSTLY_Q5_1: Q.Q5_1, FT.MOSTLY_Q2_K: Q.Q2_K,
    FT.MOSTLY_Q3_K_S: Q.Q3_K, FT.MOSTLY_Q3_K_M: Q.Q3_K, FT.MOSTLY_Q3_K_L: Q.Q3_K,
    FT.MOSTLY_Q4_K_S: Q.Q4_K, FT.MOSTLY_Q4_K_M: Q.Q4_K,
    FT.MOSTLY_Q5_K_S: Q.Q5_K, FT.MOSTLY_Q5_K_M: Q.Q5_K, FT.MOSTLY_Q6_K: Q.Q6_K,
}

# types a per-tensor override may name
TENSOR_TYPES: dict[str, Q] = {t.name: t for t in (
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q6_K, Q.Q5_K, Q.Q5_1, Q.Q5_0, Q.Q4_K, Q.Q4_1, Q.Q4_0,
    Q.Q3_K, Q.Q2_K)}

FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)

# tensor_type_fallback: a type whose block does not divide the row length
_FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


def file_type(name: str) -> FT:
    """The llama.cpp file type called `name` ("Q4_K_M"), or a UserError listing them."""
    try:
        return FILE_TYPES[name.upper()]
    except KeyError:
        raise UserError(f"{name!r} is not a GGUF type QuantDesk writes; choose one of "
                        f"{', '.join(FILE_TYPES)}.") from None


def block_size(t: Q) -> int:
    return gguf.GGML_QUANT_SIZES[t][0]


@dataclass(frozen=True)
class ModelFacts:
    """What the mixture rules look at besides tensor names (llama_model hparams)."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    @property
    def is_70b(self) -> bool:
        # llama-model.cpp: 80 Llama layers with grouped-query attention is LLM_TYPE_70B
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to place: GGUF name, numpy shape, the HF module it comes from (for
    overrides) and its type when it is not quantized (F32 for norms and biases)."""

    name: str
    shape: tuple[int, ...]
    module: str
    float_type: Q


@dataclass(frozen=True)
class TypeChoice:
    type: Q
    reason: str  # "float", "default", "mixture", "override" or "fallback from Q4_K"


def allows_quantization(name: str, n_dims: int) -> bool:
    """tensor_allows_quantization for the tensor names of dense Llama/Qwen models, MoE
    routers (ffn_gate_inp, and the shared expert's gate ffn_gate_inp_shexp, which the
    converter keeps F32), Gated DeltaNet's small 2-D convolution (ssm_conv1d) and Gemma 4's
    per-layer input projection (per_layer_model_proj, kept as it is)."""
    return (n_dims >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name and "ffn_gate_inp_shexp.weight" not in name
            and "ssm_conv1d.weight" not in name and "per_layer_model_proj" not in name
            and name not in ("position_embd.weight", "token_types.weight"))


def _category(name: str) -> str:
    """tensor_get_category."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):  # Gemma 4's too
        return "token_embd"
    for part in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight", "attn_k.weight",
                 "attn_q.weight", "attn_output.weight", "ffn_up", "ffn_gate", "ffn_down"):
        if part in name:
            return part.removesuffix(".weight")
    return "other"


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


class _Mixture:
    """llama_tensor_get_type_impl with its counters (quantize_state_impl)."""

    def __init__(self, ftype: FT, facts: ModelFacts, names: Sequence[str], has_imatrix: bool):
        self.ftype = ftype
        self.facts = facts
        self.has_imatrix = has_imatrix
        self.n_attention_wv = sum(_category(n) in ("attn_v", "attn_qkv", "attn_kv_b")
                                  for n in names)
        self.tied = "output.weight" not in names
        self.i_attention_wv = 0
        self.i_ffn_down = 0

    def type_for(self, t: Q, name: str, ne0: int) -> Q:
        ft, facts, cat = self.ftype, self.facts, _category(name)
        if cat == "output" or (self.tied and cat == "token_embd"):
            if ne0 % block_size(t) != 0:
                return Q.Q8_0
            return Q.Q6_K if t != Q.Q8_0 else t
        if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            if ft == FT.MOSTLY_Q2_K:
                t = Q.Q4_K if facts.n_gqa >= 4 else Q.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                t = Q.Q5_K if self.i_attention_wv < 2 else Q.Q4_K
            elif ft == FT.MOSTLY_Q3_K_L:
                t = Q.Q5_K
            elif (ft in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M)
                  and _use_more_bits(self.i_attention_wv, self.n_attention_wv)):
                t = Q.Q6_K
            elif ft == FT.MOSTLY_Q4_K_S and self.i_attention_wv < 4:
                t = Q.Q5_K
            if facts.is_70b and t in (Q.Q3_K, Q.Q4_K):
                t = Q.Q5_K
            self.i_attention_wv += 1
        elif cat == "ffn_down":
            i, n = self.i_ffn_down, facts.n_layer
            if ft == FT.MOSTLY_Q2_K:
                t = Q.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                t = Q.Q5_K if i < n // 16 else Q.Q4_K
            elif ft == FT.MOSTLY_Q3_K_L:
                t = Q.Q5_K
            elif ft == FT.MOSTLY_Q4_K_M:
                if _use_more_bits(i, n):
                    t = Q.Q6_K
            elif ft == FT.MOSTLY_Q5_K_M and _use_more_bits(i, n):
                t = Q.Q6_K
            elif ft == FT.MOSTLY_Q4_K_S and i < n // 8:
                t = Q.Q5_K
            elif ft in (FT.MOSTLY_Q4_0, FT.MOSTLY_Q5_0) and self.has_imatrix and i < n // 8:
                t = Q.Q4_1 if ft == FT.MOSTLY_Q4_0 else Q.Q5_1
            self.i_ffn_down += 1
        elif cat == "attn_output":
            if ft == FT.MOSTLY_Q2_K:
                t = Q.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                t = Q.Q4_K
            elif ft == FT.MOSTLY_Q3_K_L:
                t = Q.Q5_K
        return t


def type_fallback(t: Q, ne0: int) -> Q:
    """tensor_type_fallback: a type whose block fits rows of `ne0` values."""
    if ne0 % block_size(t) == 0:
        return t
    t = _FALLBACK.get(t, t)
    return t if ne0 % block_size(t) == 0 else Q.F16


def _override_types(overrides: Mapping[str, str] | None) -> list[tuple[str, Q]]:
    rules = []
    for pattern, name in (overrides or {}).items():
        if name.upper() not in TENSOR_TYPES:
            raise UserError(f"The rule {pattern!r} asks for GGUF type {name!r}; use one of "
                            f"{', '.join(TENSOR_TYPES)}.")
        rules.append((pattern, TENSOR_TYPES[name.upper()]))
    return rules


def choose_types(tensors: Sequence[TensorSpec], ftype: FT, facts: ModelFacts,
                 has_imatrix: bool = False, overrides: Mapping[str, str] | None = None
                 ) -> dict[str, TypeChoice]:
    """GGML type of every tensor, as llama-quantize would pick for `ftype`.

    `overrides` maps fnmatch globs on HF module names ("*.self_attn.*") to tensor types
    ("Q8_0"); the first matching glob wins.
    """
    rules = _override_types(overrides)
    default = DEFAULT_TYPE[ftype]
    # llama-quantize visits tensors ordered by layer, then name (llama_model_loader
    # weight_name_comparer); the layer counters of the mixture depend on that order
    order = sorted(tensors, key=lambda s: (_layer(s.name), s.name))
    mixture = _Mixture(ftype, facts, [s.name for s in tensors], has_imatrix)
    choices: dict[str, TypeChoice] = {}
    for spec in order:
        ne0 = spec.shape[-1]
        if not allows_quantization(spec.name, len(spec.shape)):
            choices[spec.name] = TypeChoice(spec.float_type, "float")
            continue
        rule = next((q for pattern, q in rules if fnmatch.fnmatchcase(spec.module, pattern)),
                    None)
        if rule is not None:
            t, reason = rule, "override"
        elif default in FLOAT_TYPES:
            t, reason = default, "default"
        else:
            t = mixture.type_for(default, spec.name, ne0)
            reason = "default" if t == default else "mixture"
        fitted = type_fallback(t, ne0)
        if fitted != t:
            reason = f"fallback from {t.name}"
        choices[spec.name] = TypeChoice(fitted, reason)
    return choices
