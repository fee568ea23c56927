"""The facts of a decoder-only transformer that memory and size formulas depend on, read
from its config.json, and the formula size of its weights.

    weights(b)  = P_lin · (b + (16 + b)/G) / 8  +  P_rest · 2     (b < 16: fp16 scale and a
                  b-bit zero per group of G weights; embeddings, norms, lm_head stay 16-bit)
    weights(16) = P · 2

The formula is for a model known by its config.json alone (the advisor's table, the
compatibility check); with the model's folder at hand the planner and the size budget count
the exact bytes of every tensor instead (budget.job_bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_GROUP = 128


@dataclass(frozen=True)
class ModelShape:
    """The facts of a decoder-only transformer that memory depends on."""

    name: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool = False
    n_params: int = 0
    # mixture of experts: experts per block, experts each token is routed to, and the
    # width of an expert's MLP; 0 for a dense model (the MLP is intermediate_size wide)
    n_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    # key and value numbers one token adds to the KV cache, summed over the layers that hold
    # their own (kv_values_per_token); 0: every layer, n_kv_heads × head_dim each, K and V
    kv_values: int = 0
    # linear-attention layers (Qwen3.5): no keys and values per token (kv_values counts the
    # full-attention layers only) but a recurrent state of this many bytes per sequence
    state_bytes: int = 0
    # Gemma 4's per-layer embeddings: the table (vocab_size_per_layer_input × layers × width)
    # and its projection from the token embeddings; 16-bit like the embeddings
    per_layer_embed: int = 0
    # hybrid families (Qwen3.5): blocks whose token mixer is a Gated DeltaNet instead of
    # attention, and the parameters of one such mixer (_deltanet_params)
    linear_attn_layers: int = 0
    linear_attn_params: int = 0
    # parameters of one attention mixer beyond q/k/v/o at the Llama widths (Qwen3.5: the
    # output gate that doubles q_proj's rows, and the per-head q_norm / k_norm)
    attn_extra_params: int = 0
    # a shared expert every token goes through beside the routed ones (Qwen3.5-MoE): its
    # MLP width; its (1 × hidden) gate is counted with it
    shared_expert_size: int = 0
    # an ungated dense MLP beside the routed experts that every token goes through (Gemma 4
    # 26B-A4B, enable_moe_block): its width
    dense_mlp_size: int = 0

    @property
    def kv_values_per_token(self) -> int:
        return self.kv_values or self.n_layers * self.n_kv_heads * self.head_dim * 2

    def __post_init__(self) -> None:
        if self.n_params <= 0:
            object.__setattr__(self, "n_params", self.counted_params)

    @property
    def block_linear_params(self) -> int:
        """q, k, v, o + gate, up, down of one block (Llama layout); with experts, every
        expert's gate, up, down and the router: what memory and disk hold. Of a hybrid
        model, its largest block (the DeltaNet or the attention kind)."""
        full = self.n_layers > self.linear_attn_layers
        mixer = max(self._attn_params if full else 0,
                    self.linear_attn_params if self.linear_attn_layers else 0)
        return mixer + self._mlp_params(self.n_experts)

    @property
    def block_active_params(self) -> int:
        """The linear parameters one token goes through in a block (of a hybrid model, the
        mean over its blocks): with experts, only the router, the shared expert and the
        experts_per_token it is routed to (what time depends on)."""
        return (self._mixers_params // max(self.n_layers, 1)
                + self._mlp_params(self.experts_per_token))

    @property
    def active_params(self) -> int:
        return self.n_params - self.n_layers * (self._mlp_params(self.n_experts)
                                                - self._mlp_params(self.experts_per_token))

    @property
    def _attn_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        return h * self.n_heads * d * 2 + h * self.n_kv_heads * d * 2 + self.attn_extra_params

    @property
    def _mixers_params(self) -> int:
        """The token mixers of every block: attention, or a hybrid's DeltaNet."""
        full = self.n_layers - self.linear_attn_layers
        return full * self._attn_params + self.linear_attn_layers * self.linear_attn_params

    def _mlp_params(self, experts: int) -> int:
        h = self.hidden_size
        if not self.n_experts:
            return 3 * h * self.intermediate_size
        shared = 3 * h * self.shared_expert_size + h if self.shared_expert_size else 0
        return (experts * 3 * h * self.expert_intermediate_size + h * self.n_experts + shared
                + 3 * h * self.dense_mlp_size)

    @property
    def embed_params(self) -> int:
        return (self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
                + self.per_layer_embed)

    @property
    def counted_params(self) -> int:
        norms = (2 * self.n_layers + 1) * self.hidden_size
        return self._blocks_params + self.embed_params + norms

    @property
    def _blocks_params(self) -> int:
        return self._mixers_params + self.n_layers * self._mlp_params(self.n_experts)

    @property
    def linear_params(self) -> int:
        """Parameters that get quantized (everything but embeddings, norms, lm_head)."""
        lin = self._blocks_params
        if self.n_params != self.counted_params:  # MoE or an unusual layout: trust the count
            lin = max(self.n_params - self.embed_params - (2 * self.n_layers + 1)
                      * self.hidden_size, 0)
        return lin

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "",
                    n_params: int | None = None) -> ModelShape:
        """From a Hugging Face config.json dict (text_config of multimodal models is used,
        over the family's defaults for the keys it leaves out)."""
        from qtapp.engine.model.arch import text_settings

        c = text_settings(config)

        def first(*keys: str, default: Any = None) -> Any:
            for k in keys:
                if c.get(k) is not None:
                    return c[k]
            return default

        hidden = int(first("hidden_size", "n_embd", "d_model", default=0))
        n_heads = int(first("num_attention_heads", "n_head", "num_heads", default=1))
        return cls(
            name=name or str(config.get("_name_or_path") or c.get("model_type") or "model"),
            n_layers=int(first("num_hidden_layers", "n_layer", "num_layers", default=0)),
            hidden_size=hidden,
            intermediate_size=int(first("intermediate_size", "n_inner", "ffn_dim",
                                        default=4 * hidden)),
            n_heads=n_heads,
            n_kv_heads=int(first("num_key_value_heads", "num_kv_heads", default=n_heads)),
            head_dim=int(first("head_dim", default=hidden // max(n_heads, 1))),
            vocab_size=int(first("vocab_size", default=0)),
            tie_embeddings=bool(config.get("tie_word_embeddings",
                                           c.get("tie_word_embeddings", False))),
            n_params=int(n_params or 0),
            n_experts=int(first("num_experts", "num_local_experts", default=0) or 0),
            experts_per_token=int(first("num_experts_per_tok", "top_k_experts", default=0) or 0),
            expert_intermediate_size=int(first("moe_intermediate_size", "intermediate_size",
                                               default=4 * hidden)),
            kv_values=_kv_values(c, n_heads),
            state_bytes=_state_bytes(c),
            per_layer_embed=int(first("hidden_size_per_layer_input", default=0) or 0)
            * int(first("num_hidden_layers", default=0))
            * (int(first("vocab_size_per_layer_input", "vocab_size", default=0)) + hidden),
            shared_expert_size=int(first("shared_expert_intermediate_size", default=0) or 0)
            if first("num_experts", "num_local_experts") else 0,
            dense_mlp_size=int(first("intermediate_size", default=0) or 0)
            if c.get("enable_moe_block") and first("num_experts") else 0,
            **{"attn_extra_params": _wide_layers_extra(c, hidden, n_heads),
               **_hybrid_counts(c, hidden, n_heads)},
        )


def shape_of(config: Any, name: str = "", n_params: int | None = None) -> ModelShape | None:
    """ModelShape.from_config of a config.json dict, or None when it has no depth and width
    (the Hub's trimmed configs, a repository without config.json) or they are unusable."""
    if not isinstance(config, dict):
        return None
    c = config.get("text_config") or config
    if not (c.get("num_hidden_layers") and c.get("hidden_size")):
        return None
    try:
        return ModelShape.from_config(config, name, n_params)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


LINEAR_ATTENTION = "linear_attention"  # a layer_types entry (Qwen3.5's Gated DeltaNet)


def _hybrid_counts(c: dict[str, Any], hidden: int, n_heads: int) -> dict[str, int]:
    """ModelShape's counts for a hybrid model (config.json's layer_types names
    linear-attention blocks: Qwen3.5, Qwen3-Next), as transformers builds it
    (modeling_qwen3_5.py): a Gated DeltaNet mixer holds

        in_proj_qkv  hidden × (2·n_k·d_k + n_v·d_v)     in_proj_z  hidden × n_v·d_v
        in_proj_b, in_proj_a  hidden × n_v each         out_proj   n_v·d_v × hidden
        conv1d  (2·n_k·d_k + n_v·d_v) × kernel (depthwise, no bias)
        A_log, dt_bias  n_v each                        norm  d_v (gated RMSNorm)

    and the full-attention blocks' q_proj emits an output gate besides the queries (2 ×
    heads × head_dim rows), with q_norm / k_norm of head_dim each. Empty for other models."""
    types = c.get("layer_types")
    if not isinstance(types, list) or LINEAR_ATTENTION not in types:
        return {}
    n_k, n_v = int(c.get("linear_num_key_heads") or 0), int(c.get("linear_num_value_heads") or 0)
    d_k, d_v = int(c.get("linear_key_head_dim") or 0), int(c.get("linear_value_head_dim") or 0)
    kernel = int(c.get("linear_conv_kernel_dim") or 0)
    conv = 2 * n_k * d_k + n_v * d_v
    value = n_v * d_v
    deltanet = (hidden * (conv + value + 2 * n_v) + value * hidden + conv * kernel
                + 2 * n_v + d_v)
    head = int(c.get("head_dim") or hidden // max(n_heads, 1))
    return {"linear_attn_layers": types.count(LINEAR_ATTENTION),
            "linear_attn_params": deltanet,
            "attn_extra_params": hidden * n_heads * head + 2 * head}


def _wide_layers_extra(c: dict[str, Any], hidden: int, n_heads: int) -> int:
    """Gemma 4's global layers have wider heads (global_head_dim, or per_layer_config as
    transformers writes it) and, with attention_k_eq_v, their own key/value head count and
    no v_proj: their q/k/v/o parameters beyond the plain formula's, spread over all layers
    (ModelShape.attn_extra_params is per layer). 0 for other models."""
    n = int(c.get("num_hidden_layers") or 0)
    types = c.get("layer_types")
    per_layer = c.get("per_layer_config")
    global_dim = c.get("global_head_dim")
    if not n or not (global_dim or isinstance(per_layer, dict)) or not isinstance(types, list):
        return 0
    kv = int(c.get("num_key_value_heads") or n_heads)
    head = int(c.get("head_dim") or hidden // max(n_heads, 1))
    k_eq_v = bool(c.get("attention_k_eq_v"))
    global_kv = int(c.get("num_global_key_value_heads") or kv) if k_eq_v else kv
    extra = 0
    for i, t in enumerate(types[:n]):
        own = per_layer.get(str(i)) if isinstance(per_layer, dict) else None
        if isinstance(own, dict):
            d, kv_i = int(own.get("head_dim") or head), int(own.get("num_key_value_heads") or kv)
        elif t == "full_attention" and global_dim:
            d, kv_i = int(global_dim), global_kv
        else:
            continue
        kv_proj = 1 if k_eq_v else 2  # k_eq_v: the global layers' values are their keys
        extra += hidden * (2 * n_heads * d + kv_proj * kv_i * d) - hidden * (
            2 * n_heads * head + 2 * kv * head)
    return extra // n


def _state_bytes(c: dict[str, Any]) -> int:
    """Bytes of the recurrent state of the linear-attention layers (Qwen3.5's Gated
    DeltaNet), which does not grow with the context: per layer a value-heads × key-dim ×
    value-dim matrix and the last kernel − 1 inputs of the convolution over q, k and v,
    float32 in llama.cpp."""
    types = c.get("layer_types")
    if not isinstance(types, list) or LINEAR_ATTENTION not in types:
        return 0
    n_k, n_v = int(c.get("linear_num_key_heads") or 0), int(c.get("linear_num_value_heads") or 0)
    d_k, d_v = int(c.get("linear_key_head_dim") or 0), int(c.get("linear_value_head_dim") or 0)
    kernel = int(c.get("linear_conv_kernel_dim") or 0)
    conv = max(kernel - 1, 0) * (2 * n_k * d_k + n_v * d_v)
    return types.count(LINEAR_ATTENTION) * (n_v * d_k * d_v + conv) * 4


def _kv_values(c: dict[str, Any], n_heads: int) -> int:
    """Key and value numbers per token of the layers that keep their own in the cache, for
    configs whose layers differ (Gemma 4: the last num_kv_shared_layers reuse earlier layers'
    keys and values; its global layers have global_head_dim and, with attention_k_eq_v,
    num_global_key_value_heads). 0 when every layer is alike (the plain formula holds)."""
    shared = int(c.get("num_kv_shared_layers") or 0)
    global_dim = c.get("global_head_dim")
    per_layer = c.get("per_layer_config")  # what transformers writes instead: {"5": {…}}
    types = c.get("layer_types")
    linear = isinstance(types, list) and LINEAR_ATTENTION in types
    if not shared and not global_dim and not isinstance(per_layer, dict) and not linear:
        return 0
    from qtapp.engine.errors import UserError
    from qtapp.engine.model.arch import layer_attention

    try:
        layers = layer_attention(c)
    except UserError:  # no valid layer or head count: the plain formula's to report
        return 0
    # linear-attention layers keep a fixed-size recurrent state instead (state_bytes)
    return sum(2 * a.kv_heads * a.head_dim for a in layers[:len(layers) - shared]
               if a.kind != LINEAR_ATTENTION)


def bits_per_weight(bits: int, group_size: int = DEFAULT_GROUP) -> float:
    """Stored bits of one quantized weight: its code plus its share of the group's fp16
    scale and `bits`-wide zero point (the formula above)."""
    return bits + (16 + bits) / group_size if group_size > 0 else bits


def weight_bytes(shape: ModelShape, bits: int, group_size: int = DEFAULT_GROUP) -> int:
    """Bytes of the weights at `bits` (groups of `group_size`) by the formula above."""
    if bits >= 16:
        return shape.n_params * 2
    per_weight = bits_per_weight(bits, group_size)
    lin = shape.linear_params
    return int(lin * per_weight / 8 + (shape.n_params - lin) * 2)
