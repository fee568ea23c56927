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

    def __post_init__(self) -> None:
        if self.n_params <= 0:
            object.__setattr__(self, "n_params", self.counted_params)

    @property
    def block_linear_params(self) -> int:
        """q, k, v, o + gate, up, down of one block (Llama layout); with experts, every
        expert's gate, up, down and the router: what memory and disk hold."""
        return self._attn_params + self._mlp_params(self.n_experts)

    @property
    def block_active_params(self) -> int:
        """The linear parameters one token goes through in a block: with experts, only the
        router and the experts_per_token it is routed to (what time depends on)."""
        return self._attn_params + self._mlp_params(self.experts_per_token)

    @property
    def active_params(self) -> int:
        return self.n_params - self.n_layers * (self.block_linear_params
                                                - self.block_active_params)

    @property
    def _attn_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        return h * self.n_heads * d * 2 + h * self.n_kv_heads * d * 2

    def _mlp_params(self, experts: int) -> int:
        h = self.hidden_size
        if not self.n_experts:
            return 3 * h * self.intermediate_size
        return experts * 3 * h * self.expert_intermediate_size + h * self.n_experts

    @property
    def embed_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def counted_params(self) -> int:
        norms = (2 * self.n_layers + 1) * self.hidden_size
        return self.n_layers * self.block_linear_params + self.embed_params + norms

    @property
    def linear_params(self) -> int:
        """Parameters that get quantized (everything but embeddings, norms, lm_head)."""
        lin = self.n_layers * self.block_linear_params
        if self.n_params != self.counted_params:  # MoE or an unusual layout: trust the count
            lin = max(self.n_params - self.embed_params - (2 * self.n_layers + 1)
                      * self.hidden_size, 0)
        return lin

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "",
                    n_params: int | None = None) -> ModelShape:
        """From a Hugging Face config.json dict (text_config of multimodal models is used)."""
        c = config.get("text_config") or config

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
            experts_per_token=int(first("num_experts_per_tok", default=0) or 0),
            expert_intermediate_size=int(first("moe_intermediate_size", "intermediate_size",
                                               default=4 * hidden)),
        )


def weight_bytes(shape: ModelShape, bits: int, group_size: int = DEFAULT_GROUP) -> int:
    """Bytes of the weights at `bits` (groups of `group_size`) by the formula above."""
    if bits >= 16:
        return shape.n_params * 2
    per_weight = bits + (16 + bits) / group_size if group_size > 0 else bits
    lin = shape.linear_params
    return int(lin * per_weight / 8 + (shape.n_params - lin) * 2)
