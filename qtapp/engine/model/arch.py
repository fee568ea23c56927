"""Per-architecture facts: where the blocks are and how their linear layers are grouped.

Module names inside a block are relative to the block (``model.layers.{i}``). All four
supported model types (Llama incl. SmolLM, Mistral, Qwen2, Qwen3) share the Llama block:

    x + o_proj(attn(q_proj(n1(x)), k_proj(n1(x)), v_proj(n1(x))))       n1 = input_layernorm
    h + down_proj(act(gate_proj(n2(h))) * up_proj(n2(h)))               n2 = post_attention_layernorm

Qwen2 adds biases on q/k/v, Qwen3 adds per-head RMSNorms q_norm/k_norm after q/k; neither
changes the groups below (scaling the input channels of q/k/v leaves q_norm/k_norm inputs
unchanged, and an AWQ scale folded into v_proj divides its bias as well as its weight).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qtapp.engine.errors import UserError

if TYPE_CHECKING:
    from qtapp.engine.config import JobSpec


@dataclass(frozen=True)
class AwqGroup:
    """One AWQ scaling pair.

    prev:    op whose output feeds ``linears`` and absorbs 1/s (a norm or a linear).
    linears: linear layers that share that input; their weight columns are multiplied by s.
    target:  module whose output the scale search compares (the block's attention or MLP,
             or the single linear itself).
    """

    prev: str
    linears: tuple[str, ...]
    target: str


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

    @property
    def linears(self) -> tuple[str, ...]:
        """All linear layers of a block in true-sequential order."""
        return tuple(name for group in self.sequential for name in group)

    def block(self, i: int) -> str:
        """Absolute module name of block ``i``, e.g. ``model.layers.3``."""
        return f"{self.layers_prefix}.{i}"


LLAMA_SEQUENTIAL: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)

_QKV = AwqGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "self_attn")
_VO = AwqGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj")
_GATE_UP = AwqGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp")
_UP_DOWN = AwqGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj")

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")

_ARCHITECTURE_TO_TYPE = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


def _int_field(config: dict, key: str, model_type: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(
            f"config.json of this {model_type} model has no valid '{key}' (found {value!r}). "
            "The model folder looks incomplete or edited; download it again."
        )
    return value


def v_o_shapes_match(config: dict) -> bool:
    """True when v_proj.weight and o_proj.weight have the same shape.

    v_proj: (num_kv_heads·head_dim, hidden); o_proj: (hidden, num_heads·head_dim). AutoAWQ
    scales v→o only in that case; with grouped-query attention (fewer kv heads) or a head_dim
    that is not hidden/num_heads (Qwen3) the shapes differ and the pair is skipped.
    """
    model_type = str(config.get("model_type", "model"))
    hidden = _int_field(config, "hidden_size", model_type)
    heads = _int_field(config, "num_attention_heads", model_type)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return kv_heads * head_dim == hidden and heads * head_dim == hidden


def _model_type(config: dict) -> str:
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    if not model_type:
        known = [_ARCHITECTURE_TO_TYPE[a] for a in architectures if a in _ARCHITECTURE_TO_TYPE]
        if not known:
            raise UserError(
                "config.json names no 'model_type' and no supported 'architectures' "
                f"(architectures: {architectures or 'none'}). QuantDesk supports model types "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}; pick a model of one of these families."
            )
        model_type = known[0]
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"Model type '{model_type}' (architectures: {', '.join(map(str, architectures)) or 'none'}) "
            f"is not supported. QuantDesk supports the Llama family: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (SmolLM is llama). Pick a model of one of these "
            "types."
        )
    heads = [a for a in architectures if isinstance(a, str) and not a.endswith("ForCausalLM")]
    if heads and len(heads) == len(architectures):
        raise UserError(
            f"This {model_type} model is a {heads[0]}, not a causal language model "
            f"(…ForCausalLM). QuantDesk quantizes text-generation models; pick the base or "
            "instruct checkpoint instead."
        )
    return model_type


def arch_for(config: dict) -> ArchSpec:
    """The ArchSpec of a parsed config.json; UserError if the architecture is unsupported."""
    if not isinstance(config, dict):
        raise UserError("config.json does not hold a JSON object; the model folder is damaged.")
    model_type = _model_type(config)
    groups = [_QKV]
    if v_o_shapes_match(config):
        groups.append(_VO)
    groups += [_GATE_UP, _UP_DOWN]
    return ArchSpec(
        name=model_type,
        layers_prefix="model.layers",
        embed="model.embed_tokens",
        final_norm="model.norm",
        lm_head="lm_head",
        sequential=LLAMA_SEQUENTIAL,
        awq_groups=tuple(groups),
    )


# --------------------------------------------------------------------------- group sizes
#
# A group of G weights shares one scale along a row's input features, and every exported
# format (GPTQ, AWQ, compressed-tensors) and its kernels need whole groups: G must divide the
# input width of every quantized linear of a block, i.e.
#
#     hidden_size                for q_proj, k_proj, v_proj, gate_proj, up_proj
#     num_heads · head_dim       for o_proj
#     intermediate_size          for down_proj
#
# The demo (SmolLM2-135M) is 576 wide: 128 does not divide it, 64 does (576 = 9 × 64).
# "auto" is the first of AUTO_GROUP_SIZES that divides every width, else per-channel (-1).
# GGUF has its own block sizes (llama.cpp falls back per tensor) and is not checked here.

AUTO_GROUP_SIZES: tuple[int, ...] = (128, 64, 32)
LLAMA_SEQUENTIAL_NAMES: tuple[str, ...] = tuple(n for g in LLAMA_SEQUENTIAL for n in g)


def linear_input_widths(config: dict) -> dict[str, int]:
    """Input features of each quantized linear of a block, by its name in the block; empty
    when config.json lacks the sizes (reading the model explains that elsewhere)."""
    if not isinstance(config, dict):
        return {}
    hidden, heads, inter = (config.get(k) for k in ("hidden_size", "num_attention_heads",
                                                    "intermediate_size"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for v in (hidden, heads, inter)):
        return {}
    head_dim = config.get("head_dim")
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
        head_dim = hidden // heads
    widths = {"self_attn.o_proj": heads * head_dim, "mlp.down_proj": inter}
    return {name: widths.get(name, hidden) for name in LLAMA_SEQUENTIAL_NAMES}


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
    from qtapp.engine.config import GROUP_SIZES

    widths = linear_input_widths(config)
    n_layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    if job.method == "gguf" or not widths or not isinstance(n_layers, int) or n_layers < 1:
        return None
    try:
        spec = arch_for(config)
    except UserError:
        return None
    bad: dict[tuple[int, int, int | None], tuple[dict[str, None], dict[int, None]]] = {}
    for i in range(n_layers):
        for name in spec.linears:
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
