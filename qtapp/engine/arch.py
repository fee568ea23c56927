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

from dataclasses import dataclass

from qtapp.engine.errors import UserError


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
