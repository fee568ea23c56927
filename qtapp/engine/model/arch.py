"""Per-family facts, as data: one `Family` record per Hugging Face model_type.

A family says where the decoder blocks are, how a block's linear layers are grouped
(true-sequential GPTQ), which op absorbs each AWQ scale, whether its norms compute
x̂·(1 + w) (Gemma), and how llama.cpp's converter writes it (GGUF architecture, q/k row
permutation, the config keys it turns into metadata). The pipeline runs every block through
the transformers module itself, so a new dense family is an entry in FAMILIES plus a test
(tests/engine/test_families.py); what the table declares is checked against the real
module graph (`ArchSpec.check_block`: every nn.Linear of a block is in exactly one group).

Module names inside a block are relative to the block (``model.layers.{i}``). The Llama
block, shared by Llama (SmolLM2), SmolLM3, Mistral, Qwen2, Qwen3 and Granite:

    x + o_proj(attn(q_proj(n1(x)), k_proj(n1(x)), v_proj(n1(x))))       n1 = input_layernorm
    h + down_proj(act(gate_proj(n2(h))) * up_proj(n2(h)))               n2 = post_attention_layernorm

Qwen2 adds biases on q/k/v, Qwen3 per-head RMSNorms q_norm/k_norm after q/k; neither changes
the groups (scaling the input channels of q/k/v leaves q_norm/k_norm inputs unchanged, and
an AWQ scale folded into v_proj divides its bias as well as its weight). Granite multiplies
embeddings, residuals, attention and logits by constants inside the transformers forward,
so only GGUF needs them (as metadata). Other layouts:

    OLMo 2   no norm before attention or MLP; post-norms on their outputs
             (x + post_attention_layernorm(attn(x)), h + post_feedforward_layernorm(mlp(h))):
             q/k/v and gate/up have no op that can absorb an AWQ scale, only v→o, up→down do.
    Phi-3    fused qkv_proj and gate_up_proj (one linear each): qkv and gate_up take the
             norm scales; v→o and up→down are slices of a fused output and are not scaled.
    Gemma 2/3  four norms per block (input, post-attention, pre-feedforward, post-feedforward),
             each x̂·(1 + w): a scale s folds as w' = (1 + w)/s − 1 (norm_offset = 1).
    Gemma 4  the Gemma 3 block with plain x̂·w norms, then the per-layer input
             (per_layer_input_gate → ·per_layer_input → per_layer_projection); blocks that
             reuse earlier keys and values lack k/v_proj (BlockLayout.optional, read from
             each block's module graph).
    Gemma 4 26B-A4B  mixture of experts (Family.variants, chosen by enable_moe_block): the
             dense MLP and block-level experts side by side, the router (router.proj) 16-bit
             (GEMMA4_MOE_BLOCK).
    Gemma 3 4B+, Gemma 4 (vision-language)  the language model under
             model.language_model, its settings in config.json's text_config (text_settings);
             the vision tower is not in the table and is copied unchanged.
    Qwen3.5 as released (vision-language)  the same, but AutoModelForCausalLM builds the
             text-only class: the decoder's modules are at model.*, its checkpoint names
             under model.language_model (checkpoint_names); model.visual.* and mtp.* are
             copied unchanged.
    GLM-4    separate q/k/v (biased), fused gate_up_proj, post-norms after attention and MLP
             besides the pre-norms.
    Qwen3-MoE  the Qwen3 attention, then a router (mlp.gate, not an nn.Linear, never
             quantized) and E experts (fused 3-D tensors in transformers 5, unfused into
             mlp.experts.{e}.gate_proj/up_proj/down_proj by model/moe.py while the
             pipeline and the loader work): names with "{e}" expand per expert.
    Qwen3.5  hybrid: blocks of two kinds from config.json's layer_types (BlockLayout.kinds):
             Gated DeltaNet (linear_attn: in_proj_qkv/z/b/a and out_proj quantized; conv1d,
             A_log, dt_bias, its gated norm 16-bit) or full attention (self_attn), each
             then the MLP (Qwen3.5-MoE: routed experts plus a shared expert, whose (1 × hidden)
             gate stays 16-bit: BlockLayout.keep); ArchSpec.linears_of(i) is block i's.
    gpt-oss  attention with biases and per-head sinks (16-bit); a router with a bias
             (mlp.router) and experts whose gate and up are interleaved in one linear
             (mlp.experts.{e}.gate_up_proj, with bias) and a clamped SwiGLU; the
             checkpoints' names follow GPTQModel (mlp.experts.gate_up.{e} / down.{e}).
    Mixtral  the same block; its checkpoints name the experts block_sparse_moe.experts.{e}.
             w1/w3/w2 and the router block_sparse_moe.gate (Family.checkpoint_names,
             NameMap: read as the module names, written back as the checkpoint's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from qtapp.engine.config import GROUP_SIZES
from qtapp.engine.errors import UserError

# torch and transformers are imported inside the functions that use them: the window and the
# planner read the family tables without loading either.

if TYPE_CHECKING:
    from qtapp.engine.config import JobSpec


@dataclass(frozen=True)
class AwqGroup:
    """One AWQ scaling pair.

    prev:    op whose output feeds ``linears`` and absorbs 1/s (a norm or a linear).
    linears: linear layers that share that input; their weight columns are multiplied by s.
    target:  module whose output the scale search compares (the block's attention or MLP,
             or the single linear itself).
    stat:    module whose input x̄ (the activation statistic) is measured on; "" for the
             first linear. A MoE block's experts each see only their routed tokens, so the
             norm before them is measured on the whole block's input ("mlp").
    also:    float modules (never quantized) that read the same input: their weight columns
             are multiplied by s as well, so their output is exactly unchanged (a MoE
             router, which must route the scaled input as it routed the original).
    """

    prev: str
    linears: tuple[str, ...]
    target: str
    stat: str = ""
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockLayout:
    """The linears of one decoder block and how quantization groups them.

    sequential: linears in true-sequential order (GPTQ solves a group on the outputs of the
        groups before it). awq: scaling pairs in search order. v_o: the pair of awq that
        exists only when v_proj's output matches o_proj's input (no grouped-query attention).
    attn_out / mlp_out: the linears whose input is num_heads·head_dim / intermediate_size
        wide (every other linear reads hidden_size). norms: every norm of the block.
    """

    sequential: tuple[tuple[str, ...], ...]
    awq: tuple[AwqGroup, ...]
    attn_out: str
    mlp_out: str
    norms: tuple[str, ...]
    v_o: AwqGroup | None = None
    experts: str = ""  # a MoE block's experts module; names "{experts}.{e}.…" expand per expert
    # Hybrid families (Qwen3.5): (layer type, token-mixer module) pairs; block i holds only
    # the mixer of config.json's layer_types[i], and the names under the other mixers are
    # not in it (ArchSpec.linears_of). Empty: every block is alike.
    kinds: tuple[tuple[str, str], ...] = ()
    keep: tuple[str, ...] = ()  # nn.Linear modules that stay 16-bit (a shared expert's gate)
    # linears some blocks of the family lack (Gemma 4: k/v of the layers that reuse an earlier
    # layer's keys and values, v of the global layers whose values are their keys): which
    # ones block i has is read from its module graph (ArchSpec.present)
    optional: tuple[str, ...] = ()
    # input widths that are neither hidden_size, attn_out nor mlp_out: (linear, config keys
    # whose product is the width), e.g. Gated DeltaNet's out_proj (value heads × head dim)
    widths: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class GgufFacts:
    """How llama.cpp's convert_hf_to_gguf.py writes a family.

    arch: the gguf.MODEL_ARCH member name. permute_qk: q/k rows go from HF's rotate-half
    layout to llama.cpp's interleaved pairs (LlamaModel.permute). llama_keys: the family also
    writes vocab_size (LlamaModel). rope_dims: write rope.dimension_count = head_dim ·
    partial_rotary_factor. vocab: tokenizer files tried in order, "llama" (SentencePiece, HF
    BPE, GPT-2 BPE), "gpt2" (SentencePiece, GPT-2 BPE) or "gemma4" (Gemma 4's BPE with byte
    fallback from tokenizer.json, else as "gpt2"). kv: (config key, GGUFWriter method,
    default when the key is absent or null (None: write nothing)). ignore: config keys the
    converter drops (Granite ignores head_dim).
    """

    arch: str
    permute_qk: bool = False
    llama_keys: bool = False
    rope_dims: bool = False
    vocab: str = "gpt2"
    kv: tuple[tuple[str, str, Any], ...] = ()
    ignore: tuple[str, ...] = ()
    # Qwen3.5 / Qwen3-Next: Gated DeltaNet tensors change on the way (hf_model.py) and the
    # ssm.* / full_attention_interval / rope.dimension_sections keys are written
    gated_delta_net: bool = False
    # Gemma 4: sliding and global layers (config.json's layer_types) each with their own head
    # width, key/value heads and rope (layer_attention): the *_swa keys, per-layer arrays,
    # the sliding-window pattern and the global layers' rope as a rope_freqs tensor
    # (gguf/metadata.py, gguf/hf_model.py; docs/formats.md#gemma-4)
    split_attention: bool = False
    # checkpoint tensors without a .weight suffix that llama.cpp's converter names with one
    # (Gemma 4's per-layer output scale layer_scalar → blk.N.layer_output_scale.weight)
    weight_suffix: tuple[str, ...] = ()
    # gpt-oss: each block's experts fused as the checkpoint holds them (gate_up_proj (E, H, 2·I)
    # with gate and up in alternate columns, down_proj (E, I, H), their biases), written as
    # llama.cpp's GptOssModel.modify_tensors does: ffn_gate_exps / ffn_up_exps (E, I, H)
    # from the even / odd columns, ffn_down_exps (E, H, I), biases split alike
    interleaved_experts: bool = False
    # (checkpoint tensor suffix, gguf.MODEL_TENSOR member): per-block tensors that llama.cpp's
    # converter writes as that tensor's ".scale" (Gemma 4's router.scale → blk.N.ffn_gate_inp
    # .scale, router.per_expert_scale → blk.N.ffn_down_exps.scale: Gemma4Model.modify_tensors)
    scales: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Variant:
    """Another form of a family, chosen by a key of its text config being set (Gemma 4's
    enable_moe_block: 26B-A4B): its own block layout, and why GGUF cannot hold it ("" when
    the family's GGUF facts do)."""

    key: str
    block: BlockLayout
    gguf_reason: str = ""


@dataclass(frozen=True)
class Family:
    """Everything QuantDesk knows about one model_type; `supported` False with the reason
    says why it is refused (before any download: `quantdesk check`)."""

    model_type: str
    architectures: tuple[str, ...]
    examples: str
    block: BlockLayout | None = None
    supported: bool = True
    reason: str = ""
    layers_prefix: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    norm_offset: float = 0.0  # the block's norms compute x̂·(norm_offset + w)
    gguf: GgufFacts | None = None
    # why there is no GGUF conversion, when gguf is None: one short clause, shown next to
    # "GGUF" in `quantdesk check` and the window (gguf.archs.GgufRefused)
    gguf_reason: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    # (checkpoint name part, module name part): checkpoints that name a module otherwise
    # than QuantDesk's (unfused) transformers modules do; "{e}" is an expert index. Read
    # through NameMap: readers see module names, exporters write the checkpoint's names.
    checkpoint_names: tuple[tuple[str, str], ...] = ()
    # vision-language checkpoints keep the language model's settings in config.json's
    # text_config, which may name only what differs from the text config class's defaults
    # (Gemma 3 4B names no head counts): those defaults, used where text_config lacks a key
    text_defaults: tuple[tuple[str, Any], ...] = ()
    # forms with another block layout, chosen by a text config key (Gemma 4's MoE): layout()
    variants: tuple[Variant, ...] = ()

    def variant(self, config: Any) -> Variant | None:
        """The variant a parsed config.json (its text settings) selects; None: the family's
        own block."""
        settings = text_settings(config)
        if not isinstance(settings, dict):
            return None
        return next((v for v in self.variants if settings.get(v.key)), None)

    def layout(self, config: Any) -> BlockLayout | None:
        """The block layout of this config: a variant's, else the family's."""
        found = self.variant(config)
        return found.block if found is not None else self.block


@dataclass(frozen=True)
class ArchSpec:
    name: str
    layers_prefix: str
    embed: str
    final_norm: str
    lm_head: str
    sequential: tuple[tuple[str, ...], ...]
    awq_groups: tuple[AwqGroup, ...]
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    norm_offset: float = 0.0
    experts: str = ""  # MoE: the experts module ("mlp.experts"), unfused (model/moe.py)
    n_experts: int = 0
    layer_types: tuple[str, ...] = ()  # hybrid families: config.json's layer_types
    kinds: tuple[tuple[str, str], ...] = ()  # BlockLayout.kinds
    keep: tuple[str, ...] = ()  # BlockLayout.keep
    optional: tuple[str, ...] = ()  # BlockLayout.optional

    def _absent(self, i: int) -> tuple[str, ...]:
        """Prefixes ("linear_attn.") of the token mixers block i does not have."""
        if not self.kinds:
            return ()
        kind = self.layer_types[i] if 0 <= i < len(self.layer_types) else ""
        return tuple(m + "." for k, m in self.kinds if k != kind)

    def sequential_of(self, i: int) -> tuple[tuple[str, ...], ...]:
        """The true-sequential groups of block i (a hybrid's blocks differ by kind)."""
        absent = self._absent(i)
        return tuple(g for g in (tuple(n for n in group if not n.startswith(absent))
                                 for group in self.sequential) if g)

    def linears_of(self, i: int) -> tuple[str, ...]:
        """The quantized linears of block i in true-sequential order."""
        return tuple(n for group in self.sequential_of(i) for n in group)

    def awq_groups_of(self, i: int) -> tuple[AwqGroup, ...]:
        """The AWQ scaling pairs of block i."""
        absent = self._absent(i)
        return tuple(g for g in self.awq_groups
                     if not any(n.startswith(absent) for n in (g.prev + ".", g.target + ".",
                                                              *g.linears)))

    def present(self, i: int, block: Any) -> tuple[tuple[tuple[str, ...], ...],
                                                   tuple[AwqGroup, ...]]:
        """(true-sequential groups, AWQ pairs) of block i that its module graph has: the
        table's, less the optional linears this block lacks (and the pairs that name one)."""
        if not self.optional:
            return self.sequential_of(i), self.awq_groups_of(i)
        have = set(block_linears(block))
        lacks = {n for n in self.optional if n not in have}
        groups = tuple(g for g in (tuple(n for n in group if n not in lacks)
                                   for group in self.sequential_of(i)) if g)
        pairs = []
        for g in self.awq_groups_of(i):
            if g.prev in lacks:
                continue
            linears = tuple(n for n in g.linears if n not in lacks)
            if linears:
                pairs.append(replace(g, linears=linears))
        return groups, tuple(pairs)

    def expert_of(self, name: str) -> int | None:
        """The expert index of a linear's name in the block ("mlp.experts.3.up_proj" → 3),
        None for a linear outside the experts."""
        if not self.experts or not name.startswith(self.experts + "."):
            return None
        return int(name[len(self.experts) + 1:].split(".", 1)[0])

    @property
    def linears(self) -> tuple[str, ...]:
        """All linear layers of a block in true-sequential order (of a hybrid family: of
        every kind of block; linears_of(i) for one block)."""
        return tuple(name for group in self.sequential for name in group)

    def block(self, i: int) -> str:
        """Absolute module name of block ``i``, e.g. ``model.layers.3``."""
        return f"{self.layers_prefix}.{i}"

    def check_block(self, block: Any, i: int = 0) -> None:
        """UserError unless block i's nn.Linear modules (from its module graph) are exactly
        the table's linears of that block (plus those it keeps 16-bit): a linear the table
        misses would silently stay in float."""
        found = [n for n in block_linears(block) if n not in self.keep]
        linears = self.linears_of(i)
        missing = [n for n in linears if n not in found and n not in self.optional]
        extra = [n for n in found if n not in linears]
        if missing or extra:
            raise UserError(
                f"the {self.name} block of this model does not match QuantDesk's table of "
                f"the family: {'linears not in the model: ' + ', '.join(missing) if missing else ''}"
                f"{'; ' if missing and extra else ''}"
                f"{'linears the table lacks: ' + ', '.join(extra) if extra else ''}. "
                "This variant of the family is not supported.")


def block_linears(block: Any) -> list[str]:
    """Names (relative to the block) of the nn.Linear modules of a block, in module order."""
    from torch import nn

    return [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]


class NameMap:
    """Tensor names of a family's checkpoints ↔ names of QuantDesk's modules (transformers'
    modules with fused experts unfused, model/moe.py), from `Family.checkpoint_names`.

    Mixtral's checkpoints name expert e's linears ``block_sparse_moe.experts.{e}.w1/w3/w2``
    and the router ``block_sparse_moe.gate``; transformers 5 renames them on load (its
    conversion_mapping.py: ``.block_sparse_moe.`` → ``.mlp.``, w1/w3 stacked into
    ``gate_up_proj``, w2 into ``down_proj``) and back on save. QuantDesk's modules are
    ``mlp.experts.{e}.gate_proj/up_proj/down_proj`` and ``mlp.gate``: `to_module` maps a
    checkpoint name there, `to_checkpoint` back (what the exports write, as GPTQModel,
    AutoGPTQ and vLLM name Mixtral). Parts match whole dotted segments."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        import re

        def rx(part: str) -> re.Pattern[str]:
            body = re.escape(part).replace(re.escape("{e}"), r"(?P<e>\d+)")
            return re.compile(rf"(?:^|(?<=\.)){body}(?=\.|$)")

        self._to_module = [(rx(c), m) for c, m in pairs]
        self._to_checkpoint = [(rx(m), c) for c, m in pairs]

    @staticmethod
    def _apply(rules: list, name: str) -> str:
        for pattern, part in rules:
            name = pattern.sub(lambda m, part=part: part.replace("{e}", m.groupdict().get("e") or ""),
                               name)
        return name

    def to_module(self, name: str) -> str:
        return self._apply(self._to_module, name)

    def to_checkpoint(self, name: str) -> str:
        return self._apply(self._to_checkpoint, name)

    def __bool__(self) -> bool:
        return bool(self._to_module)


def name_map(config: Any) -> NameMap:
    """The NameMap of a parsed config.json's family (identity for every other config)."""
    family = FAMILIES.get(str(config.get("model_type"))) if isinstance(config, dict) else None
    return NameMap(family.checkpoint_names if family is not None else ())


# ------------------------------------------------------------------------ block layouts

_Q, _K, _V, _O = (f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
_GATE, _UP, _DOWN = (f"mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj"))
_QKV_FUSED, _GATE_UP_FUSED = "self_attn.qkv_proj", "mlp.gate_up_proj"

LLAMA_SEQUENTIAL: tuple[tuple[str, ...], ...] = ((_Q, _K, _V), (_O,), (_GATE, _UP), (_DOWN,))
_VO = AwqGroup(_V, (_O,), _O)
_UP_DOWN = AwqGroup(_UP, (_DOWN,), _DOWN)

LLAMA_BLOCK = BlockLayout(
    sequential=LLAMA_SEQUENTIAL,
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("post_attention_layernorm", (_GATE, _UP), "mlp"), _UP_DOWN),
    attn_out=_O, mlp_out=_DOWN, norms=("input_layernorm", "post_attention_layernorm"), v_o=_VO)

OLMO2_BLOCK = BlockLayout(
    sequential=LLAMA_SEQUENTIAL, awq=(_VO, _UP_DOWN), attn_out=_O, mlp_out=_DOWN,
    norms=("post_attention_layernorm", "post_feedforward_layernorm", "self_attn.q_norm",
           "self_attn.k_norm"), v_o=_VO)

GEMMA_BLOCK = BlockLayout(
    sequential=LLAMA_SEQUENTIAL,
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("pre_feedforward_layernorm", (_GATE, _UP), "mlp"), _UP_DOWN),
    attn_out=_O, mlp_out=_DOWN,
    norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
           "post_feedforward_layernorm"), v_o=_VO)

PHI3_BLOCK = BlockLayout(
    sequential=((_QKV_FUSED,), (_O,), (_GATE_UP_FUSED,), (_DOWN,)),
    awq=(AwqGroup("input_layernorm", (_QKV_FUSED,), "self_attn"),
         AwqGroup("post_attention_layernorm", (_GATE_UP_FUSED,), "mlp")),
    attn_out=_O, mlp_out=_DOWN, norms=("input_layernorm", "post_attention_layernorm"))

# A sparse MoE block (Qwen3-MoE, Mixtral): the Llama attention, then a router (mlp.gate, a
# TopKRouter: not an nn.Linear, never quantized) and E experts, each a Llama MLP that sees
# only the tokens routed to it. "{e}" expands to every expert (arch_for, expand_awq). AWQ:
# post_attention_layernorm feeds the router and every expert, so it takes one scale for all
# experts' gate/up, searched on the whole MoE block's output with x̄ over all tokens; the
# router's weight columns are multiplied by the same scale, so it routes exactly as before
# (it stays 16-bit). up→down is a pair per expert, from the tokens routed to that expert.
_EXPERTS = "mlp.experts"
_EGATE, _EUP, _EDOWN = (f"{_EXPERTS}.{{e}}.{n}" for n in ("gate_proj", "up_proj", "down_proj"))
MOE_BLOCK = BlockLayout(
    sequential=((_Q, _K, _V), (_O,), (_EGATE, _EUP), (_EDOWN,)),
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("post_attention_layernorm", (_EGATE, _EUP), "mlp", stat="mlp",
                  also=("mlp.gate",)),
         AwqGroup(_EUP, (_EDOWN,), _EDOWN)),
    attn_out=_O, mlp_out=_EDOWN, norms=("input_layernorm", "post_attention_layernorm"),
    experts=_EXPERTS, v_o=_VO)

# gpt-oss: attention with biases on q/k/v/o and a learned sink logit per head (self_attn.sinks,
# 16-bit), sliding-window and full layers alternating (layer_types); then a router with a bias
# (mlp.router, a TopKRouter: not an nn.Linear, never quantized) and E experts whose gate and
# up share one linear with interleaved rows (gate 2j, up 2j + 1) and a clamped SwiGLU
# ((clamp(up, ±limit) + 1) · g·σ(alpha·g), g = min(gate, limit)), biases on every linear:
# model/moe.py unfuses them into mlp.experts.{e}.gate_up_proj / down_proj. AWQ:
# post_attention_layernorm's one scale goes to every expert's gate_up (searched on the whole
# MoE block), the router's weight columns take it too (its logits are unchanged; its bias is
# untouched); there is no up→down pair: up passes through a clamp and + 1 before it meets
# the gate, so a scale on up's rows cannot be undone on down's columns.
_EGATE_UP = f"{_EXPERTS}.{{e}}.gate_up_proj"
GPT_OSS_BLOCK = BlockLayout(
    sequential=((_Q, _K, _V), (_O,), (_EGATE_UP,), (_EDOWN,)),
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("post_attention_layernorm", (_EGATE_UP,), "mlp", stat="mlp",
                  also=("mlp.router",))),
    attn_out=_O, mlp_out=_EDOWN, norms=("input_layernorm", "post_attention_layernorm"),
    experts=_EXPERTS, v_o=_VO)

# Qwen3.5 (hybrid): blocks of two kinds, from config.json's layer_types. A full-attention
# block is the Qwen3 block (its q_proj also emits an output gate, 2 × heads × head_dim rows);
# a linear-attention block has a Gated DeltaNet mixer (linear_attn) instead:
#     in_proj_qkv, in_proj_z, in_proj_b, in_proj_a   all read input_layernorm's output
#     conv1d (depthwise), A_log, dt_bias, norm (gated RMSNorm)   never quantized
#     out_proj   reads norm(core(q, k, v)) · silu(z): value heads × value head dim wide
# The four input projections share the input norm's AWQ scale; out_proj has no scaling pair
# (the gated norm's weight is one head_v_dim vector shared by every value head, so it cannot
# absorb a per-channel scale), only clipping. Both kinds end with the Llama MLP.
_LIN = "linear_attn"
_LQKV, _LZ, _LB, _LA = (f"{_LIN}.{n}" for n in ("in_proj_qkv", "in_proj_z", "in_proj_b",
                                                 "in_proj_a"))
_LOUT = f"{_LIN}.out_proj"
_HYBRID_KINDS = (("full_attention", "self_attn"), ("linear_attention", _LIN))
_LOUT_WIDTH = (_LOUT, ("linear_num_value_heads", "linear_value_head_dim"))
QWEN3_5_BLOCK = BlockLayout(
    sequential=((_Q, _K, _V, _LQKV, _LZ, _LB, _LA), (_O, _LOUT), (_GATE, _UP), (_DOWN,)),
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("input_layernorm", (_LQKV, _LZ, _LB, _LA), _LIN),
         AwqGroup("post_attention_layernorm", (_GATE, _UP), "mlp"), _UP_DOWN),
    attn_out=_O, mlp_out=_DOWN, norms=("input_layernorm", "post_attention_layernorm"),
    v_o=_VO, kinds=_HYBRID_KINDS, widths=(_LOUT_WIDTH,))

# Qwen3.5-MoE: the Qwen3.5 mixers, then routed experts as MOE_BLOCK plus one shared expert
# (mlp.shared_expert, a Llama MLP every token goes through) whose output is weighted by
# sigmoid(mlp.shared_expert_gate(x)): that gate is a (1, hidden) nn.Linear, kept 16-bit like
# the router. AWQ: the mixers' pairs of QWEN3_5_BLOCK; post_attention_layernorm's one scale
# goes to every routed expert's and the shared expert's gate/up, searched on the whole MoE
# block; the router and the shared expert's gate read the same normed input, so both take
# the scale on their weight columns (`also`) and their outputs stay exact; up→down is a pair
# per routed expert (its routed tokens) and one for the shared expert (every token).
_SHARED = "mlp.shared_expert"
_SGATE, _SUP, _SDOWN = (f"{_SHARED}.{n}" for n in ("gate_proj", "up_proj", "down_proj"))
_SHARED_GATE = "mlp.shared_expert_gate"
QWEN3_5_MOE_BLOCK = BlockLayout(
    sequential=((_Q, _K, _V, _LQKV, _LZ, _LB, _LA), (_O, _LOUT),
                (_EGATE, _EUP, _SGATE, _SUP), (_EDOWN, _SDOWN)),
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("input_layernorm", (_LQKV, _LZ, _LB, _LA), _LIN),
         AwqGroup("post_attention_layernorm", (_EGATE, _EUP, _SGATE, _SUP), "mlp", stat="mlp",
                  also=("mlp.gate", _SHARED_GATE)),
         AwqGroup(_EUP, (_EDOWN,), _EDOWN), AwqGroup(_SUP, (_SDOWN,), _SDOWN)),
    attn_out=_O, mlp_out=_EDOWN, norms=("input_layernorm", "post_attention_layernorm"),
    v_o=_VO, experts=_EXPERTS, kinds=_HYBRID_KINDS, keep=(_SHARED_GATE,),
    widths=(_LOUT_WIDTH, (_SDOWN, ("shared_expert_intermediate_size",))))

# Gemma 4: the Gemma 2/3 block with plain x̂·w norms (norm_offset 0), then the per-layer
# input (PLE): h + post_per_layer_input_norm(per_layer_projection(act(per_layer_input_gate(h))
# · per_layer_input_i)), per_layer_input_i the block's slice of the per-layer embeddings
# (model.embed_tokens_per_layer, never quantized) mixed with a projection of the token
# embeddings. per_layer_input_gate reads the residual stream (no norm to absorb an AWQ scale)
# and per_layer_projection a product through the activation: neither is scaled. Layers that
# reuse an earlier layer's keys and values (num_kv_shared_layers) have no k/v_proj; the global
# layers of attention_k_eq_v checkpoints have no v_proj (values are the keys); checkpoints
# without per-layer inputs (hidden_size_per_layer_input 0) have neither PLE linear.
_PLE_GATE, _PLE_PROJ = "per_layer_input_gate", "per_layer_projection"
GEMMA4_BLOCK = BlockLayout(
    sequential=(*LLAMA_SEQUENTIAL, (_PLE_GATE,), (_PLE_PROJ,)),
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("pre_feedforward_layernorm", (_GATE, _UP), "mlp"), _UP_DOWN),
    attn_out=_O, mlp_out=_DOWN,
    norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
           "post_feedforward_layernorm", "post_per_layer_input_norm"), v_o=_VO,
    optional=(_K, _V, _PLE_GATE, _PLE_PROJ),
    widths=((_PLE_PROJ, ("hidden_size_per_layer_input",)),))

# Gemma 4 26B-A4B (enable_moe_block): every block runs the dense MLP and E experts side by
# side on the attention's output h (modeling_gemma4.Gemma4TextDecoderLayer):
#     mlp(pre_feedforward_layernorm(h))                    → post_feedforward_layernorm_1
#     experts(pre_feedforward_layernorm_2(h), router(h))   → post_feedforward_layernorm_2
#     h + post_feedforward_layernorm(sum of the two)
# The router (Gemma4TextRouter) reads h itself, through its own weightless RMSNorm, a learned
# per-channel scale and router.proj (an nn.Linear, kept 16-bit), then softmax, top-k,
# renormalised and multiplied by per_expert_scale. The experts (block-level "experts", fused
# (E, 2·I, H) / (E, H, I) in transformers 5) are unfused by model/moe.py as Qwen3-MoE's.
# AWQ: pre_feedforward_layernorm_2 feeds only the experts, so it takes one scale for every
# expert's gate/up, searched on the experts' output with x̄ over all tokens (stat); the
# router does not read that norm's output, so no column scale is needed on router.proj
# (`also` stays empty) and routing cannot change. pre_feedforward_layernorm → the dense
# gate/up and up→down as in GEMMA4_BLOCK; up→down per expert on its routed tokens.
_G4_EXPERTS = "experts"
_G4_EGATE, _G4_EUP, _G4_EDOWN = (f"{_G4_EXPERTS}.{{e}}.{n}"
                                 for n in ("gate_proj", "up_proj", "down_proj"))
GEMMA4_MOE_BLOCK = BlockLayout(
    sequential=((_Q, _K, _V), (_O,), (_GATE, _UP, _G4_EGATE, _G4_EUP), (_DOWN, _G4_EDOWN),
                (_PLE_GATE,), (_PLE_PROJ,)),
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("pre_feedforward_layernorm", (_GATE, _UP), "mlp"), _UP_DOWN,
         AwqGroup("pre_feedforward_layernorm_2", (_G4_EGATE, _G4_EUP), _G4_EXPERTS,
                  stat=_G4_EXPERTS),
         AwqGroup(_G4_EUP, (_G4_EDOWN,), _G4_EDOWN)),
    attn_out=_O, mlp_out=_G4_EDOWN,
    norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
           "post_feedforward_layernorm", "pre_feedforward_layernorm_2",
           "post_feedforward_layernorm_1", "post_feedforward_layernorm_2",
           "post_per_layer_input_norm"), v_o=_VO,
    experts=_G4_EXPERTS, keep=("router.proj",),
    optional=(_K, _V, _PLE_GATE, _PLE_PROJ),
    widths=((_PLE_PROJ, ("hidden_size_per_layer_input",)), (_DOWN, ("intermediate_size",))))

GLM4_BLOCK = BlockLayout(
    sequential=((_Q, _K, _V), (_O,), (_GATE_UP_FUSED,), (_DOWN,)),
    awq=(AwqGroup("input_layernorm", (_Q, _K, _V), "self_attn"), _VO,
         AwqGroup("post_attention_layernorm", (_GATE_UP_FUSED,), "mlp")),
    attn_out=_O, mlp_out=_DOWN,
    norms=("input_layernorm", "post_self_attn_layernorm", "post_attention_layernorm",
           "post_mlp_layernorm"), v_o=_VO)

# --------------------------------------------------------------------------- the table

_LLAMA_GGUF = GgufFacts("LLAMA", permute_qk=True, llama_keys=True, rope_dims=True,
                        vocab="llama")
_GEMMA_KV = (("sliding_window", "add_sliding_window", None),)
_MOE_KV = (("num_experts", "add_expert_count", None),
           ("num_local_experts", "add_expert_count", None),
           ("num_experts_per_tok", "add_expert_used_count", None),
           ("moe_intermediate_size", "add_expert_feed_forward_length", None))
_QWEN3_5_GGUF = GgufFacts("QWEN35", vocab="gpt2", rope_dims=True, gated_delta_net=True)
_QWEN3_5_NOTES = (
    ("blocks of two kinds from config.json's layer_types: Gated DeltaNet (linear attention) "
     "and full attention; the DeltaNet projections (in_proj_qkv/z/b/a, out_proj) are "
     "quantized, its conv1d, A_log, dt_bias and gated norm stay 16-bit"),
    ("AWQ scales input_layernorm → q/k/v or in_proj_qkv/z/b/a, post_attention_layernorm → "
     "gate/up, up → down (and v → o when the shapes match); out_proj gets clipping only"),
    ("llama.cpp decides a block's kind from full_attention_interval: GGUF needs layer_types "
     "to follow it"))


_QWEN3_5_VLM_NOTE = (
    "vision-language as released: the language model is quantized, the vision tower "
    "(model.visual.*) and the multi-token-prediction layers (mtp.*) are copied unchanged "
    "(16-bit) into the output; GGUF holds the text model only (llama.cpp writes the vision "
    "tower to a separate mmproj file, which QuantDesk does not write)")

_QWEN3_5_MOE_GGUF = GgufFacts("QWEN35MOE", vocab="gpt2", rope_dims=True, gated_delta_net=True,
                              kv=(*_MOE_KV, ("shared_expert_intermediate_size",
                                             "add_expert_shared_feed_forward_length", None)))
_QWEN3_5_MOE_NOTES = (
    *_QWEN3_5_NOTES,
    ("the shared expert is quantized with the routed ones; the router and the shared "
     "expert's (1 × hidden) gate stay 16-bit (AWQ multiplies their weight columns by the "
     "norm's scale, so routing and gating are unchanged)"))


# vision-language checkpoints: transformers' module names of the language model
_VLM_NAMES: dict[str, Any] = {
    "layers_prefix": "model.language_model.layers", "embed": "model.language_model.embed_tokens",
    "final_norm": "model.language_model.norm"}
# Gemma3TextConfig's defaults (transformers 5.25): the released 4B/12B/27B config.json's
# text_config omits the keys that equal them
_GEMMA3_TEXT_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("vocab_size", 262208), ("hidden_size", 2304), ("intermediate_size", 9216),
    ("num_hidden_layers", 26), ("num_attention_heads", 8), ("num_key_value_heads", 4),
    ("head_dim", 256), ("query_pre_attn_scalar", 256), ("sliding_window", 4096),
    ("max_position_embeddings", 131072), ("rms_norm_eps", 1e-6),
    ("final_logit_softcapping", None), ("attn_logit_softcapping", None))
# llama.cpp's Gemma4Model (conversion/gemma.py) and src/models/gemma4.cpp: plain x̂·w norms,
# the shared key/value layer count, the per-layer input width (0: none, the 31B), the
# sliding-window pattern, global/sliding head widths and rope (split_attention), the
# per-layer output scales (layer_scalar) and the "gemma4" BPE vocabulary; the MoE form
# (26B-A4B, enable_moe_block) adds the expert count, top-k and expert width, the router's
# scales (ffn_gate_inp.scale, ffn_down_exps.scale) and the fused experts as the checkpoint
# holds them: gate_up_proj (E, 2·I, H) → ffn_gate_up_exps, down_proj (E, H, I) →
# ffn_down_exps (docs/formats.md#gemma-4)
_GEMMA4_GGUF = GgufFacts("GEMMA4", vocab="gemma4", split_attention=True,
                         weight_suffix=("layer_scalar", ".experts.gate_up_proj",
                                        ".experts.down_proj"),
                         scales=(("router.scale", "FFN_GATE_INP"),
                                 ("router.per_expert_scale", "FFN_DOWN_EXP")),
                         kv=(
                             *_GEMMA_KV,
                             # 0 (off) when unset: llama.cpp's default would be 30
                             ("final_logit_softcapping", "add_final_logit_softcapping", 0.0),
                             ("num_kv_shared_layers", "add_shared_kv_layers", 0),
                             ("hidden_size_per_layer_input",
                              "add_embedding_length_per_layer_input", 0),
                             ("num_experts", "add_expert_count", None),
                             ("top_k_experts", "add_expert_used_count", None),
                             ("moe_intermediate_size", "add_expert_feed_forward_length",
                              None)))
_GEMMA4_MOE = Variant("enable_moe_block", GEMMA4_MOE_BLOCK)
_GEMMA4_NOTES = (
    ("the per-layer embedding table (embed_tokens_per_layer), its projection "
     "(per_layer_model_projection) and every norm stay 16-bit; each block's "
     "per_layer_input_gate / per_layer_projection are quantized"),
    ("layers that reuse an earlier layer's keys and values (num_kv_shared_layers) have no k/v "
     "projections to quantize and no KV cache of their own"),
    "AWQ scales q/k/v and gate/up by their norms; the per-layer-input linears get no scale",
    ("mixture of experts (26B-A4B, enable_moe_block): the dense MLP and every expert are "
     "quantized, experts calibrated one by one on the tokens routed to them (too few: rounded "
     "to nearest with the range search, named in the run's log); the router (router.proj, "
     "its scales) stays 16-bit and reads the block's input through its own norm, so AWQ's "
     "scale on pre_feedforward_layernorm_2 cannot change routing"))

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", ("LlamaForCausalLM",), "Llama 3.x, SmolLM2", LLAMA_BLOCK,
           gguf=_LLAMA_GGUF),
    Family("mistral", ("MistralForCausalLM",), "Mistral 7B", LLAMA_BLOCK, gguf=_LLAMA_GGUF),
    Family("qwen2", ("Qwen2ForCausalLM",), "Qwen2, Qwen2.5", LLAMA_BLOCK,
           gguf=GgufFacts("QWEN2", vocab="gpt2")),
    Family("qwen3", ("Qwen3ForCausalLM",), "Qwen3 (dense)", LLAMA_BLOCK,
           gguf=GgufFacts("QWEN3", vocab="gpt2")),
    Family("smollm3", ("SmolLM3ForCausalLM",), "SmolLM3", LLAMA_BLOCK,
           gguf=GgufFacts("SMOLLM3", permute_qk=True, llama_keys=True, rope_dims=True,
                          vocab="llama"),
           notes=(("every 4th layer has no rotary embedding (NoPE); llama.cpp fixes that "
                  "interval at 4, as SmolLM3 ships"),)),
    Family("granite", ("GraniteForCausalLM",), "Granite 3.x dense", LLAMA_BLOCK,
           gguf=GgufFacts("GRANITE", permute_qk=True, llama_keys=True, rope_dims=True,
                          vocab="llama",
                          kv=(("attention_multiplier", "add_attention_scale", None),
                              ("embedding_multiplier", "add_embedding_scale", None),
                              ("residual_multiplier", "add_residual_scale", None),
                              ("logits_scaling", "add_logit_scale", None)),
                          ignore=("head_dim",))),
    Family("olmo2", ("Olmo2ForCausalLM",), "OLMo 2", OLMO2_BLOCK,
           gguf=GgufFacts("OLMO2"),
           notes=(("AWQ scales only v→o and up→down: OLMo 2 has no norm before attention "
                  "or MLP to absorb the other scales"),)),
    Family("phi3", ("Phi3ForCausalLM",), "Phi-3, Phi-4, Phi-4-mini", PHI3_BLOCK,
           # shown in a line next to "GGUF" (check, the window); the details are in
           # docs/models.md, footnote 3
           gguf_reason="not verified: the llama.cpp of llama-cpp-python 0.3.36 could not "
                       "load the vocabulary of QuantDesk's Phi-3 test GGUF",
           notes=(("fused qkv_proj / gate_up_proj are quantized as one linear each; AWQ "
                  "does not scale v→o or up→down (slices of a fused output)"),)),
    Family("gemma2", ("Gemma2ForCausalLM",), "Gemma 2", GEMMA_BLOCK, norm_offset=1.0,
           gguf=GgufFacts("GEMMA2", kv=(*_GEMMA_KV,
                                        ("attn_logit_softcapping",
                                         "add_attn_logit_softcapping", None),
                                        ("final_logit_softcapping",
                                         "add_final_logit_softcapping", None))),
           notes=(("llama.cpp scales attention by 1/√head_dim (1/√(hidden/heads) for the "
                  "27B); a checkpoint whose query_pre_attn_scalar differs reads wrong"),)),
    Family("gemma3_text", ("Gemma3ForCausalLM",), "Gemma 3 1B / 270M (text-only)",
           GEMMA_BLOCK, norm_offset=1.0, gguf=GgufFacts("GEMMA3", kv=_GEMMA_KV),
           notes=(("llama.cpp fixes the sliding-window pattern (5 local : 1 global) and the "
                  "local rope base (10 000), as Gemma 3 ships"),)),
    Family("gemma3", ("Gemma3ForConditionalGeneration",), "Gemma 3 4B/12B/27B (vision)",
           GEMMA_BLOCK, norm_offset=1.0, **_VLM_NAMES,
           # the released checkpoints (and transformers' save_pretrained) name the text
           # decoder language_model.model.*, the vision tower vision_tower.* and the
           # projector multi_modal_projector.*: transformers' "llava" renaming
           # (conversion_mapping.py) puts them under model.*; the exports keep the files' names
           checkpoint_names=(("language_model.model", "model.language_model"),
                             ("language_model.lm_head", "lm_head"),
                             ("vision_tower", "model.vision_tower"),
                             ("multi_modal_projector", "model.multi_modal_projector")),
           text_defaults=_GEMMA3_TEXT_DEFAULTS,
           gguf=GgufFacts("GEMMA3", kv=_GEMMA_KV),
           notes=(("vision-language: the language model is quantized, the vision tower and "
                   "the multimodal projector are copied unchanged (16-bit) into the output, "
                   "which loads as Gemma3ForConditionalGeneration; GGUF holds the text model "
                   "only (llama.cpp writes the vision tower to a separate mmproj file, which "
                   "QuantDesk does not write)"),)),
    Family("gemma4_text", ("Gemma4ForCausalLM",), "Gemma 4 (text decoder alone)",
           GEMMA4_BLOCK, variants=(_GEMMA4_MOE,),
           gguf=_GEMMA4_GGUF, notes=_GEMMA4_NOTES),
    Family("gemma4", ("Gemma4ForConditionalGeneration",), "Gemma 4 E2B/E4B/31B/26B-A4B",
           GEMMA4_BLOCK, **_VLM_NAMES, variants=(_GEMMA4_MOE,),
           gguf=_GEMMA4_GGUF,
           notes=(*_GEMMA4_NOTES, ("multimodal: the language model is quantized, the vision "
                                   "(and audio) towers and their embedders are copied "
                                   "unchanged (16-bit)"))),
    Family("glm4", ("Glm4ForCausalLM",), "GLM-4 0414", GLM4_BLOCK,
           gguf=GgufFacts("GLM4", rope_dims=True),
           notes=(("the GGUF converter of llama.cpp sets GLM-4's special tokens from its own "
                  "tokenizer; QuantDesk writes the tokenizer's own special tokens"),)),
    Family("qwen3_moe", ("Qwen3MoeForCausalLM",), "Qwen3-30B-A3B, Qwen3-235B-A22B", MOE_BLOCK,
           gguf=GgufFacts("QWEN3MOE", vocab="gpt2", kv=_MOE_KV),
           notes=(("experts are calibrated one by one on the tokens routed to them; an expert "
                  "with too few tokens is rounded to nearest with the range search (named in "
                  "the run's log); the router stays 16-bit (AWQ multiplies its weight "
                  "columns by the norm's scale, so routing is unchanged)"),)),
    Family("mixtral", ("MixtralForCausalLM",), "Mixtral 8x7B, 8x22B", MOE_BLOCK,
           checkpoint_names=(("block_sparse_moe.experts.{e}.w1", "mlp.experts.{e}.gate_proj"),
                             ("block_sparse_moe.experts.{e}.w3", "mlp.experts.{e}.up_proj"),
                             ("block_sparse_moe.experts.{e}.w2", "mlp.experts.{e}.down_proj"),
                             ("block_sparse_moe.gate", "mlp.gate")),
           # llama.cpp converts Mixtral as LLAMA with expert tensors (LlamaModel; the
           # expert count and top-k from TextModel.set_gguf_parameters)
           gguf=GgufFacts("LLAMA", permute_qk=True, llama_keys=True, rope_dims=True,
                          vocab="llama", kv=(
                              ("num_local_experts", "add_expert_count", None),
                              ("num_experts_per_tok", "add_expert_used_count", None))),
           notes=(("checkpoints name the experts block_sparse_moe.experts.{e}.w1/w3/w2 (gate, "
                  "up, down) and the router block_sparse_moe.gate; the exports keep those "
                  "names; experts are calibrated as Qwen3-MoE's"),)),
    Family("gpt_oss", ("GptOssForCausalLM",), "gpt-oss 20B/120B", GPT_OSS_BLOCK,
           # GPTQModel's names for gpt-oss experts (its models/definitions/gpt_oss.py:
           # experts.gate_up.{e} / experts.down.{e}, nn.Linear with bias, gate_up's rows
           # interleaved as stored); the source checkpoints hold the fused tensors
           checkpoint_names=(("mlp.experts.gate_up.{e}", "mlp.experts.{e}.gate_up_proj"),
                             ("mlp.experts.down.{e}", "mlp.experts.{e}.down_proj")),
           gguf=GgufFacts("GPT_OSS", vocab="gpt2", weight_suffix=("sinks",),
                          interleaved_experts=True,
                          kv=(("sliding_window", "add_sliding_window", None),
                              ("num_local_experts", "add_expert_count", None),
                              ("num_experts_per_tok", "add_expert_used_count", None),
                              ("intermediate_size", "add_expert_feed_forward_length", None))),
           notes=(("experts are calibrated one by one on the tokens routed to them (gate and "
                   "up interleaved in one linear per expert, with biases, as GPTQModel "
                   "names them: mlp.experts.gate_up.{e} / mlp.experts.down.{e}); the router "
                   "(mlp.router) and the attention sinks stay 16-bit; AWQ scales q/k/v and "
                   "every expert's gate_up by their norms (the router's weight columns take "
                   "the same scale, so routing is unchanged), with no up→down pair (the "
                   "clamped SwiGLU)"),
                  ("the released checkpoints' MXFP4 experts (*_blocks / *_scales) are "
                   "dequantized to bf16 as they are read"),
                  ("llama.cpp truncates yarn's correction range where gpt-oss's config says "
                   "not to: its logits differ slightly from transformers' (docs/models.md, "
                   "footnote 10)"))),
    Family("qwen3_5_text", ("Qwen3_5ForCausalLM",), "Qwen3.5 (text-only checkpoints)",
           QWEN3_5_BLOCK, norm_offset=1.0, gguf=_QWEN3_5_GGUF, notes=_QWEN3_5_NOTES),
    Family("qwen3_5", ("Qwen3_5ForConditionalGeneration",), "Qwen3.5 0.8B … 397B",
           QWEN3_5_BLOCK, norm_offset=1.0, gguf=_QWEN3_5_GGUF,
           # the released checkpoints (and save_pretrained) name the decoder
           # model.language_model.*, the vision tower model.visual.* and the multi-token-
           # prediction layers mtp.*; AutoModelForCausalLM builds Qwen3_5ForCausalLM (decoder
           # at model.*; transformers' conversion_mapping.py drops the language_model prefix
           # on load): QuantDesk's modules are that class's, the exports keep the files' names
           checkpoint_names=(("model.language_model", "model"),),
           notes=(*_QWEN3_5_NOTES, _QWEN3_5_VLM_NOTE)),
    Family("qwen3_5_moe_text", ("Qwen3_5MoeForCausalLM",),
           "Qwen3.5 MoE (text-only checkpoints)", QWEN3_5_MOE_BLOCK, norm_offset=1.0,
           gguf=_QWEN3_5_MOE_GGUF, notes=_QWEN3_5_MOE_NOTES),
    Family("qwen3_5_moe", ("Qwen3_5MoeForConditionalGeneration",), "Qwen3.5-35B-A3B …",
           QWEN3_5_MOE_BLOCK, norm_offset=1.0, gguf=_QWEN3_5_MOE_GGUF,
           # as qwen3_5: AutoModelForCausalLM builds Qwen3_5MoeForCausalLM
           checkpoint_names=(("model.language_model", "model"),),
           notes=(*_QWEN3_5_MOE_NOTES, _QWEN3_5_VLM_NOTE)),
)}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for t, f in FAMILIES.items() if f.supported)

ARCHITECTURE_TO_TYPE = {a: t for t, f in FAMILIES.items() for a in f.architectures}


def _int_field(config: dict, key: str, model_type: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(
            f"config.json of this {model_type} model has no valid '{key}' (found {value!r}). "
            "The model folder looks incomplete or edited; download it again."
        )
    return value


def text_settings(config: Any) -> Any:
    """The language model's settings of a parsed config.json: for a vision-language checkpoint
    (Gemma 3 4B+, Gemma 4) its text_config over the family's text_defaults, under the
    checkpoint's own model_type and architectures (and its top-level keys, such as
    tie_word_embeddings); config itself for every other model."""
    if not isinstance(config, dict) or not isinstance(config.get("text_config"), dict):
        return config
    family = FAMILIES.get(str(config.get("model_type")))
    defaults = dict(family.text_defaults) if family is not None else {}
    top = {k: v for k, v in config.items() if not k.endswith("_config")}
    return {**top, **defaults, **config["text_config"], "model_type": config.get("model_type"),
            "architectures": config.get("architectures") or []}


@dataclass(frozen=True)
class LayerAttention:
    """One block's attention as transformers builds it: its kind (layer_types), head width
    and key/value heads."""

    kind: str
    head_dim: int
    kv_heads: int


def layer_attention(config: Any) -> tuple[LayerAttention, ...]:
    """Every block's attention from a parsed config.json (its text settings). Gemma 4's
    global layers have their own head width and (attention_k_eq_v) key/value heads:
    transformers 5 saves them as per_layer_config ({"5": {"head_dim": 512}}), the released
    config.json as global_head_dim / num_global_key_value_heads
    (Gemma4TextConfig.__post_init__); every other layer has head_dim and
    num_key_value_heads."""
    c = text_settings(config)
    model_type = str(c.get("model_type", "model"))
    n = _int_field(c, "num_hidden_layers", model_type)
    heads = _int_field(c, "num_attention_heads", model_type)
    kv = int(c.get("num_key_value_heads") or heads)
    head = int(c.get("head_dim") or _int_field(c, "hidden_size", model_type) // heads)
    types = c.get("layer_types")
    if not isinstance(types, list) or len(types) != n:
        types = ["full_attention"] * n
    per_layer = c.get("per_layer_config")
    global_head = int(c.get("global_head_dim") or head)
    global_kv = int(c.get("num_global_key_value_heads") or kv) if c.get("attention_k_eq_v") \
        else kv
    found = []
    for i, kind in enumerate(types):
        if isinstance(per_layer, dict):
            own = per_layer.get(str(i)) or per_layer.get(i) or {}
            found.append(LayerAttention(kind, int(own.get("head_dim") or head),
                                        int(own.get("num_key_value_heads") or kv)))
        elif kind == "full_attention":
            found.append(LayerAttention(kind, global_head, global_kv))
        else:
            found.append(LayerAttention(kind, head, kv))
    return tuple(found)


def v_o_shapes_match(config: dict) -> bool:
    """True when v_proj.weight and o_proj.weight have the same shape.

    v_proj: (num_kv_heads·head_dim, hidden); o_proj: (hidden, num_heads·head_dim). AutoAWQ
    scales v→o only in that case; with grouped-query attention (fewer kv heads) or a head_dim
    that is not hidden/num_heads (Qwen3) the shapes differ and the pair is skipped.
    """
    config = text_settings(config)
    model_type = str(config.get("model_type", "model"))
    hidden = _int_field(config, "hidden_size", model_type)
    heads = _int_field(config, "num_attention_heads", model_type)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return kv_heads * head_dim == hidden and heads * head_dim == hidden


def _supported_list() -> str:
    return ", ".join(SUPPORTED_MODEL_TYPES)


def family_for(config: dict) -> Family:
    """The Family of a parsed config.json, supported or not; UserError when QuantDesk has no
    entry for it (unknown to QuantDesk, or not a causal language model)."""
    if not isinstance(config, dict):
        raise UserError("config.json does not hold a JSON object; the model folder is damaged.")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    if not model_type:
        known = [ARCHITECTURE_TO_TYPE[a] for a in architectures if a in ARCHITECTURE_TO_TYPE]
        if not known:
            raise UserError(
                "config.json names no 'model_type' and no supported 'architectures' "
                f"(architectures: {architectures or 'none'}). QuantDesk supports model types "
                f"{_supported_list()}; pick a model of one of these families."
            )
        model_type = known[0]
    family = FAMILIES.get(str(model_type))
    if family is None:
        from_transformers = _transformers_knows(str(model_type))
        raise UserError(
            f"Model type '{model_type}' (architectures: "
            f"{', '.join(map(str, architectures)) or 'none'}) is "
            + ("known to transformers but not to QuantDesk: no entry in its table of "
               "families (block layout, scaling pairs, GGUF names)" if from_transformers else
               "unknown (neither transformers nor QuantDesk has it)")
            + f". QuantDesk supports {_supported_list()} (SmolLM2 is llama). Pick a model of "
            "one of these types; docs/models.md lists what works per method."
        )
    heads = [a for a in architectures if isinstance(a, str) and not a.endswith("ForCausalLM")
             and a not in family.architectures]
    if heads and len(heads) == len(architectures):
        raise UserError(
            f"This {model_type} model is a {heads[0]}, not a causal language model "
            f"(…ForCausalLM). QuantDesk quantizes text-generation models; pick the base or "
            "instruct checkpoint instead."
        )
    return family


def _transformers_knows(model_type: str) -> bool:
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return model_type in CONFIG_MAPPING_NAMES


def _model_type(config: dict) -> str:
    family = family_for(config)
    if not family.supported:
        raise UserError(f"Model type '{family.model_type}' ({family.examples}) is not "
                        f"supported: {family.reason}. QuantDesk supports {_supported_list()}.")
    return family.model_type


def n_experts(config: dict) -> int:
    """Experts per MoE block from config.json (num_experts, or Mixtral's num_local_experts);
    UserError when absent or when some blocks are dense (QuantDesk's table has one block
    layout per family)."""
    config = text_settings(config)
    model_type = str(config.get("model_type", "model"))
    key = "num_experts" if config.get("num_experts") is not None else "num_local_experts"
    n = _int_field(config, key, model_type)
    if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) not in (1, None):
        raise UserError(f"this {model_type} model mixes dense and sparse (MoE) blocks "
                        "(mlp_only_layers / decoder_sparse_step); not yet supported")
    return n


def method_refusal(method: str, config: dict) -> str:
    """Why `method` cannot quantize this (supported) family yet; "" when it can."""
    family = FAMILIES.get(str(config.get("model_type"))) if isinstance(config, dict) else None
    layout = family.layout(config) if family is not None else None
    if method == "awq" and layout is not None and layout.experts and not layout.awq:
        return (f"AWQ is not yet supported for this mixture-of-experts family "
                f"({family.model_type}): QuantDesk's table has no AWQ scaling pairs for its "
                "blocks; use GPTQ or RTN")
    return ""


def expand_awq(group: AwqGroup, n: int) -> tuple[AwqGroup, ...]:
    """A pair whose prev names "{e}" (an expert's up→down) → one pair per expert; a pair
    whose linears name "{e}" (the norm before the experts) → one pair over every expert's
    linears; any other pair as it is."""
    if "{e}" in group.prev:
        return tuple(replace(group, prev=group.prev.format(e=e),
                             linears=tuple(x.format(e=e) for x in group.linears),
                             target=group.target.format(e=e)) for e in range(n))
    if any("{e}" in x for x in group.linears):
        return (replace(group, linears=expand_experts(group.linears, n)),)
    return (group,)


def expand_experts(names: Iterable[str], n: int) -> tuple[str, ...]:
    """Names with "{e}" repeated for experts 0 … n−1, expert by expert; names without it
    (a shared expert's) once."""
    names = tuple(names)
    if not any("{e}" in x for x in names):
        return names
    return tuple(dict.fromkeys(x.format(e=e) for e in range(n) for x in names))


def arch_for(config: dict) -> ArchSpec:
    """The ArchSpec of a parsed config.json; UserError if the architecture is unsupported."""
    family = FAMILIES[_model_type(config)]
    layout = family.layout(config)
    assert layout is not None
    config = text_settings(config)
    experts = n_experts(config) if layout.experts else 0
    groups = tuple(x for g in layout.awq if g != layout.v_o or v_o_shapes_match(config)
                   for x in expand_awq(g, experts))
    kinds = layer_types(config, family) if layout.kinds else ()
    return ArchSpec(
        name=family.model_type,
        layers_prefix=family.layers_prefix,
        embed=family.embed,
        final_norm=family.final_norm,
        lm_head=family.lm_head,
        sequential=tuple(expand_experts(g, experts) for g in layout.sequential),
        awq_groups=groups,
        attn_norm=layout.norms[0],
        mlp_norm=layout.norms[1],
        norm_offset=family.norm_offset,
        experts=layout.experts,
        n_experts=experts,
        layer_types=kinds,
        kinds=layout.kinds,
        keep=layout.keep,
        optional=layout.optional,
    )


def layer_types(config: dict, family: Family) -> tuple[str, ...]:
    """The kind of every block of a hybrid family: config.json's layer_types, or (as
    transformers derives it when absent) full attention every full_attention_interval-th
    block (default 4) and linear attention in between; UserError for a kind the table does
    not know or a list that does not cover num_hidden_layers."""
    assert family.block is not None
    n = _int_field(config, "num_hidden_layers", family.model_type)
    types = config.get("layer_types")
    if types is None:
        interval = config.get("full_attention_interval") or 4
        types = ["linear_attention" if (i + 1) % interval else "full_attention"
                 for i in range(n)]
    known = [k for k, _ in family.block.kinds]
    if not isinstance(types, list) or len(types) != n or any(t not in known for t in types):
        raise UserError(
            f"config.json of this {family.model_type} model has layer_types {types!r}, which "
            f"is not one of {', '.join(known)} for each of its {n} blocks; the model folder "
            "looks edited or damaged.")
    return tuple(types)


# --------------------------------------------------------------------------- group sizes
#
# A group of G weights shares one scale along a row's input features, and every exported
# format (GPTQ, AWQ, compressed-tensors) and its kernels need whole groups: G must divide the
# input width of every quantized linear of a block, i.e.
#
#     num_heads · head_dim       for the family's attn_out (o_proj)
#     intermediate_size          for its mlp_out (down_proj)
#     hidden_size                for every other linear (q/k/v or qkv, gate/up or gate_up)
#
# The demo (SmolLM2-135M) is 576 wide: 128 does not divide it, 64 does (576 = 9 × 64).
# "auto" is the first of AUTO_GROUP_SIZES that divides every width, else per-channel (-1).
# GGUF has its own block sizes (llama.cpp falls back per tensor) and is not checked here.

AUTO_GROUP_SIZES: tuple[int, ...] = (128, 64, 32)
LLAMA_SEQUENTIAL_NAMES: tuple[str, ...] = tuple(n for g in LLAMA_SEQUENTIAL for n in g)


def linear_input_widths(config: dict) -> dict[str, int]:
    """Input features of each quantized linear of a block, by its name in the block (the
    family's layout; the Llama block for a family QuantDesk does not support); empty when
    config.json lacks the sizes (reading the model explains that elsewhere)."""
    if not isinstance(config, dict):
        return {}
    config = text_settings(config)
    hidden, heads, inter = (config.get(k) for k in ("hidden_size", "num_attention_heads",
                                                    "intermediate_size"))
    if config.get("moe_intermediate_size") is not None:  # Qwen3-MoE experts
        inter = config.get("moe_intermediate_size")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for v in (hidden, heads, inter)):
        return {}
    head_dim = config.get("head_dim")
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
        head_dim = hidden // heads
    try:
        layout = FAMILIES[_model_type(config)].layout(config)
    except UserError:
        layout = LLAMA_BLOCK
    assert layout is not None
    widths = {layout.attn_out: heads * head_dim, layout.mlp_out: inter}
    absent = set()  # optional linears this config has none of (Gemma 4 without PLE)
    for name, keys in layout.widths:
        values = [config.get(k) for k in keys]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            if name in layout.optional and all(v in (0, None) for v in values):
                absent.add(name)
                continue
            return {}
        widths[name] = math.prod(values)
    out = {name: widths.get(name, hidden) for group in layout.sequential for name in group
           if name not in absent}
    if layout.experts:  # every expert's linears have the widths of the "{e}" names
        try:
            n = n_experts(config)
        except UserError:
            return {}
        out = {x.format(e=e): w for x, w in out.items()
               for e in (range(n) if "{e}" in x else (0,))}
    return out


def dividing_group_sizes(widths: Iterable[int], choices: Iterable[int]) -> tuple[int, ...]:
    """The group sizes of `choices` that split every width into whole groups (−1 per channel
    and 0 per tensor always do)."""
    widths = tuple(widths)
    return tuple(g for g in choices if g <= 0 or all(w % g == 0 for w in widths))


def auto_group_size(widths: Iterable[int]) -> int:
    """128 when it divides every width, else the largest of 64 and 32 that does, else −1
    (one scale per output channel)."""
    found = dividing_group_sizes(widths, AUTO_GROUP_SIZES)
    return found[0] if found else -1


def _split(width: int, g: int) -> str:
    return f"{width} = {width // g} × {g}" if width % g == 0 else f"{width} / {g} = {width / g:g}"


@dataclass(frozen=True)
class GroupSizeProblem:
    """A group size that does not divide some quantized linear's input width.

    rule: index in job.rules of the rule whose scheme has it; None for the job's scheme.
    suggested: the largest group size not above it that divides every width (−1: none).
    """

    group_size: int
    width: int
    modules: tuple[str, ...]      # names inside a block, e.g. "self_attn.q_proj"
    blocks: tuple[int, ...]
    n_blocks: int
    widths: tuple[int, ...]       # every distinct input width of the model's linears
    suggested: int
    rule: int | None = None
    pattern: str = ""

    @property
    def problem(self) -> str:
        where = ("every block" if len(self.blocks) == self.n_blocks else
                 f"block{'s' if len(self.blocks) > 1 else ''} "
                 + ", ".join(map(str, self.blocks[:5])) + ("…" if len(self.blocks) > 5 else ""))
        names = ", ".join(m.split(".")[-1] for m in self.modules)
        whose = "" if self.rule is None else f"rule {self.rule + 1} ('{self.pattern}'): "
        return (f"{whose}group size {self.group_size} does not divide the {self.width} input "
                f"features of {names} in {where} ({_split(self.width, self.group_size)}); "
                "GPTQ, AWQ and compressed-tensors need whole groups")

    def fix(self, cli: bool = True) -> str:
        g = self.suggested
        why = (", ".join(_split(w, g) for w in self.widths) if g > 0 else
               f"one scale per output channel; no group size up to {self.group_size} "
               f"divides {' and '.join(map(str, self.widths))}")
        if self.rule is not None:
            return f"give rule {self.rule + 1} ('{self.pattern}') group size {g} ({why})"
        return f"use --group-size {g} ({why})" if cli else f"choose group size {g} ({why})"


def group_size_problem(job: JobSpec, config: dict) -> GroupSizeProblem | None:
    """The first scheme of `job` (its own, or a rule's) whose group size does not divide the
    input width of a linear it quantizes; None when every group is whole, for GGUF (its own
    block sizes), and when the config cannot be read (other checks explain that)."""
    widths = linear_input_widths(config)
    n_layers = text_settings(config).get("num_hidden_layers") if isinstance(config, dict) \
        else None
    if job.method == "gguf" or not widths or not isinstance(n_layers, int) or n_layers < 1:
        return None
    try:
        spec = arch_for(config)
    except UserError:
        return None
    bad: dict[tuple[int, int, int | None], tuple[dict[str, None], dict[int, None]]] = {}
    for i in range(n_layers):
        for name in spec.linears_of(i):
            full = f"{spec.block(i)}.{name}"
            scheme = job.scheme_for(full)
            g = scheme.group_size if scheme is not None else 0
            width = widths.get(name, 0)
            if g > 0 and width % g:
                rule = job.rule_for(full)
                index = (job.rules.index(rule) if rule is not None and rule.scheme is not None
                         else None)
                modules, blocks = bad.setdefault((g, width, index), ({}, {}))
                modules[name] = None
                blocks[i] = None
    if not bad:
        return None
    (g, width, index), (modules, blocks) = next(iter(bad.items()))
    distinct = tuple(sorted(set(widths.values())))
    fitting = dividing_group_sizes(distinct, sorted((x for x in GROUP_SIZES if x <= g),
                                                   reverse=True))
    return GroupSizeProblem(g, width, tuple(modules), tuple(blocks), n_layers, distinct,
                            fitting[0] if fitting else -1, index,
                            job.rules[index].pattern if index is not None else "")


def check_group_sizes(job: JobSpec, config: dict, cli: bool = True) -> None:
    """UserError naming the layers and the fix when a group size of `job` does not divide
    a quantized linear's input width (see group_size_problem)."""
    found = group_size_problem(job, config)
    if found is not None:
        raise UserError(f"{found.problem}. Fix: {found.fix(cli)}")
