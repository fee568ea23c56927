"""Mixture-of-experts blocks: transformers' fused experts as per-expert nn.Linear modules.

Since transformers 5 the experts of a sparse MoE block (Qwen3-MoE, Mixtral, …) are one
module holding two 3-D parameters,

    gate_up_proj  (E, 2·I, H)    rows [0, I) are expert e's gate_proj, rows [I, 2·I) its up_proj
    down_proj     (E, H, I)

and its forward calls F.linear on slices: no nn.Linear hook sees an expert, so calibration
would miss them. `unfuse_experts` replaces every such module by `UnfusedExperts`, a list of
`ExpertMLP` (gate_proj, up_proj, down_proj nn.Linear each) named ``experts.{e}.gate_proj`` …,
the per-expert names of the original Hugging Face checkpoints and of vLLM (Qwen-MoE's;
Mixtral's checkpoints say w1 / w3 / w2, which arch.NameMap maps to these). Its forward
routes exactly as the fused one (same top-k indices and weights from the router, same
gather / act(gate)·up / down / weighted index_add), so each expert's linears see only the
tokens routed to it: the GPTQ Hessian and the AWQ statistics of an expert come from its own
tokens. It also counts those tokens (`token_counts`). `fuse_experts` writes the per-expert
weights back into the original fused module (the loader returns transformers' own model).

The router (``mlp.gate``, a TopKRouter with a 2-D weight, not an nn.Linear) is never
unfused and never quantized: it stays 16-bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qtapp.engine.errors import UserError

# An expert whose linears received fewer calibration tokens than this is not solved from
# its Hessian (a Hessian of so few tokens has rank < the tokens, and GPTQ would fit the
# weights to a handful of vectors): it is rounded to nearest with the range search (the
# grid search of GPTQ's mse=True) instead, and the run's events name it. 2 × the group size
# when groups are used (two tokens per weight of a group's scale), else 256.
MIN_EXPERT_TOKENS_PER_CHANNEL = 256


def min_expert_tokens(group_size: int) -> int:
    """Calibration tokens an expert needs to be quantized from its own statistics."""
    return 2 * group_size if group_size > 0 else MIN_EXPERT_TOKENS_PER_CHANNEL


def is_fused_experts(module: nn.Module) -> bool:
    """transformers' fused experts: 3-D gate_up_proj and down_proj, no biases (gpt-oss has
    biases and a clamped activation: not this module)."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(gu, nn.Parameter) and isinstance(down, nn.Parameter)
            and gu.ndim == 3 and down.ndim == 3 and hasattr(module, "act_fn")
            and getattr(module, "gate_up_proj_bias", None) is None
            and getattr(module, "down_proj_bias", None) is None)


class ExpertMLP(nn.Module):
    """One expert: down(act(gate(x)) · up(x))."""

    def __init__(self, hidden: int, inter: int, act_fn: Any, device: Any, dtype: Any) -> None:
        super().__init__()
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.gate_proj = nn.Linear(hidden, inter, **kw)
        self.up_proj = nn.Linear(hidden, inter, **kw)
        self.down_proj = nn.Linear(inter, hidden, **kw)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class UnfusedExperts(nn.ModuleList):
    """The fused experts module as a list of ExpertMLP, with the same forward signature
    (hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k)) and routing."""

    def __init__(self, fused: nn.Module) -> None:
        E, two_i, H = fused.gate_up_proj.shape
        inter = two_i // 2
        if tuple(fused.down_proj.shape) != (E, H, inter) or two_i != 2 * inter:
            raise UserError(
                f"the fused experts hold gate_up_proj {tuple(fused.gate_up_proj.shape)} and "
                f"down_proj {tuple(fused.down_proj.shape)}, which are not E experts of "
                "(2·I, H) and (H, I); this variant of the family is not supported")
        n = getattr(fused, "num_experts", E)
        if n != E:
            raise UserError(f"the config says {n} experts but the experts' tensors hold {E}; "
                            "config.json does not match the model")
        device, dtype = fused.gate_up_proj.device, fused.gate_up_proj.dtype
        super().__init__(ExpertMLP(H, inter, fused.act_fn, device, dtype) for _ in range(E))
        self.num_experts = E
        self.token_counts = torch.zeros(E, dtype=torch.long)  # not a buffer: not saved
        object.__setattr__(self, "fused", fused)  # kept for fuse_experts, not a child
        if device.type != "meta":
            with torch.no_grad():
                for e, expert in enumerate(self):
                    expert.gate_proj.weight.copy_(fused.gate_up_proj[e, :inter])
                    expert.up_proj.weight.copy_(fused.gate_up_proj[e, inter:])
                    expert.down_proj.weight.copy_(fused.down_proj[e])
        self._register_load_state_dict_pre_hook(_split_fused_state)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            mask = mask.permute(2, 1, 0)  # (E + 1, k, T)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit[:, 0].tolist():
            if e == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            self.token_counts[e] += token_idx.numel()
            y = self[e](hidden_states[token_idx])
            y = y * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, y.to(final.dtype))
        return final


def _split_fused_state(state: dict[str, Any], prefix: str, *_args: Any) -> None:
    """Model files that hold the fused tensors (prefix + gate_up_proj / down_proj) load
    into the per-expert linears."""
    gu, down = state.pop(prefix + "gate_up_proj", None), state.pop(prefix + "down_proj", None)
    if gu is not None:
        inter = gu.shape[1] // 2
        for e in range(gu.shape[0]):
            state[f"{prefix}{e}.gate_proj.weight"] = gu[e, :inter]
            state[f"{prefix}{e}.up_proj.weight"] = gu[e, inter:]
    if down is not None:
        for e in range(down.shape[0]):
            state[f"{prefix}{e}.down_proj.weight"] = down[e]


def unfuse_experts(model: nn.Module) -> list[str]:
    """Replace every fused experts module of `model` by UnfusedExperts (in place, on any
    device, meta included); the names of the replaced modules."""
    found = [(n, m) for n, m in model.named_modules() if is_fused_experts(m)]
    for name, fused in found:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, UnfusedExperts(fused))
    return [n for n, _ in found]


def fuse_experts(model: nn.Module) -> None:
    """Write each UnfusedExperts' per-expert weights back into its fused module and put the
    fused module back in its place (the inverse of unfuse_experts)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, UnfusedExperts)]
    for name, unfused in found:
        fused = unfused.fused
        with torch.no_grad():
            gu = torch.stack([torch.cat([x.gate_proj.weight, x.up_proj.weight]) for x in unfused])
            down = torch.stack([x.down_proj.weight for x in unfused])
        fused.gate_up_proj = nn.Parameter(gu, requires_grad=False)
        fused.down_proj = nn.Parameter(down, requires_grad=False)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, fused)
