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

The layout of the fused tensors is read from the module itself, from the attributes that
transformers' experts registry (`use_experts_implementation`) sets on every experts module:
``is_transposed`` (gpt-oss: gate_up_proj (E, H, 2·I), down_proj (E, I, H)), ``is_concatenated``
(False for gpt-oss: gate and up in alternate columns, gate 2j, up 2j + 1) and biases
(``gate_up_proj_bias`` (E, 2·I), ``down_proj_bias`` (E, H)). Concatenated experts become
gate_proj / up_proj / down_proj as above; interleaved ones keep gate and up in one linear per
expert, ``experts.{e}.gate_up_proj`` (2·I rows in the stored interleaved order, as
GPTQModel's gpt-oss ``experts.gate_up.{e}``), whose output goes through the fused module's own
``_apply_gate`` (gpt-oss: the clamped SwiGLU with its alpha and limit), then
``experts.{e}.down_proj``; biases go with their linears.

The router (``mlp.gate``, gpt-oss's ``mlp.router``: a TopKRouter with a 2-D weight, not an
nn.Linear; Gemma 4's ``router.proj``, an nn.Linear the family table keeps) is never unfused
and never quantized: it stays 16-bit. Gemma 4's experts sit at block level (``experts``)
and compute as Qwen3-MoE's, so they are unfused the same way.
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


# the fused experts' tensors, as transformers' modules and the checkpoints name them
FUSED_TENSORS = ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias")


def min_expert_tokens(group_size: int) -> int:
    """Calibration tokens an expert needs to be quantized from its own statistics."""
    return 2 * group_size if group_size > 0 else MIN_EXPERT_TOKENS_PER_CHANNEL


def is_fused_experts(module: nn.Module) -> bool:
    """transformers' fused experts: 3-D gate_up_proj and down_proj, with an activation
    (act_fn, or the registry's _apply_gate), biases on both or on neither."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    gu_bias = getattr(module, "gate_up_proj_bias", None)
    down_bias = getattr(module, "down_proj_bias", None)
    return (isinstance(gu, nn.Parameter) and isinstance(down, nn.Parameter)
            and gu.ndim == 3 and down.ndim == 3
            and (hasattr(module, "act_fn") or hasattr(module, "_apply_gate"))
            and getattr(module, "has_gate", True)
            and (gu_bias is None) == (down_bias is None))


class ExpertMLP(nn.Module):
    """One expert: down(act(gate(x)) · up(x)), or with gate and up interleaved in one
    linear, down(apply_gate(gate_up(x))) (apply_gate: the fused module's own _apply_gate)."""

    def __init__(self, hidden: int, inter: int, act_fn: Any, device: Any, dtype: Any,
                 bias: bool = False, apply_gate: Any = None) -> None:
        super().__init__()
        kw = {"bias": bias, "device": device, "dtype": dtype}
        if apply_gate is None:
            self.gate_proj = nn.Linear(hidden, inter, **kw)
            self.up_proj = nn.Linear(hidden, inter, **kw)
            self.act_fn = act_fn
        else:
            self.gate_up_proj = nn.Linear(hidden, 2 * inter, **kw)
            object.__setattr__(self, "apply_gate", apply_gate)  # a bound method, not a child
        self.down_proj = nn.Linear(inter, hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_up_proj"):
            return self.down_proj(self.apply_gate(self.gate_up_proj(x)))
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class UnfusedExperts(nn.ModuleList):
    """The fused experts module as a list of ExpertMLP, with the same forward signature
    (hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k)) and routing."""

    def __init__(self, fused: nn.Module) -> None:
        transposed = bool(getattr(fused, "is_transposed", False))
        interleaved = not getattr(fused, "is_concatenated", True)
        bias = getattr(fused, "gate_up_proj_bias", None) is not None
        E, a, b = fused.gate_up_proj.shape
        two_i, H = (b, a) if transposed else (a, b)
        inter = two_i // 2
        down_shape = (E, inter, H) if transposed else (E, H, inter)
        if tuple(fused.down_proj.shape) != down_shape or two_i != 2 * inter:
            raise UserError(
                f"the fused experts hold gate_up_proj {tuple(fused.gate_up_proj.shape)} and "
                f"down_proj {tuple(fused.down_proj.shape)}, which are not E experts of "
                "(2·I, H) and (H, I); this variant of the family is not supported")
        n = getattr(fused, "num_experts", E)
        if n != E:
            raise UserError(f"the config says {n} experts but the experts' tensors hold {E}; "
                            "config.json does not match the model")
        device, dtype = fused.gate_up_proj.device, fused.gate_up_proj.dtype
        apply_gate = fused._apply_gate if interleaved else None
        super().__init__(ExpertMLP(H, inter, getattr(fused, "act_fn", None), device, dtype,
                                   bias, apply_gate) for _ in range(E))
        self.transposed, self.interleaved, self.bias = transposed, interleaved, bias
        self.num_experts = E
        self.token_counts = torch.zeros(E, dtype=torch.long)  # not a buffer: not saved
        object.__setattr__(self, "fused", fused)  # kept for fuse_experts, not a child
        if device.type != "meta":
            with torch.no_grad():
                state = {k: getattr(fused, k) for k in FUSED_TENSORS
                         if getattr(fused, k, None) is not None}
                self.load_state_dict(self.split_state(state), strict=True)
        self._register_load_state_dict_pre_hook(self._split_fused_state)

    def split_state(self, state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """The fused tensors of `state` (prefix + gate_up_proj, down_proj and their biases)
        as per-expert linear weights and biases (prefix + "{e}.gate_proj.weight" …), in place;
        other entries as they are."""
        gu, down = state.pop(prefix + "gate_up_proj", None), state.pop(prefix + "down_proj", None)
        gu_b = state.pop(prefix + "gate_up_proj_bias", None)
        down_b = state.pop(prefix + "down_proj_bias", None)
        if gu is not None and self.transposed:
            gu = gu.transpose(1, 2)
        if down is not None and self.transposed:
            down = down.transpose(1, 2)
        for kind, w, b in (("gate_up_proj", gu, gu_b), ("down_proj", down, down_b)):
            for part, t in (("weight", w), ("bias", b)):
                if t is None:
                    continue
                for e in range(t.shape[0]):
                    if kind == "gate_up_proj" and not self.interleaved:
                        inter = t.shape[1] // 2
                        state[f"{prefix}{e}.gate_proj.{part}"] = t[e, :inter]
                        state[f"{prefix}{e}.up_proj.{part}"] = t[e, inter:]
                    else:
                        state[f"{prefix}{e}.{kind}.{part}"] = t[e]
        return state

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

    def _split_fused_state(self, state: dict[str, Any], prefix: str, *_args: Any) -> None:
        """Model files that hold the fused tensors (prefix + gate_up_proj / down_proj, their
        biases) load into the per-expert linears."""
        self.split_state(state, prefix)

    def fused_state(self) -> dict[str, torch.Tensor]:
        """The per-expert weights (and biases) stacked in the fused module's layout: the
        inverse of split_state."""
        def gate_up(x: ExpertMLP, part: str) -> torch.Tensor:
            if self.interleaved:
                return getattr(x.gate_up_proj, part)
            return torch.cat([getattr(x.gate_proj, part), getattr(x.up_proj, part)])

        parts = ("weight", "bias") if self.bias else ("weight",)
        out = {}
        for part in parts:
            gu = torch.stack([gate_up(x, part) for x in self])
            down = torch.stack([getattr(x.down_proj, part) for x in self])
            if part == "weight" and self.transposed:
                gu, down = gu.transpose(1, 2), down.transpose(1, 2)
            suffix = "_bias" if part == "bias" else ""
            out["gate_up_proj" + suffix], out["down_proj" + suffix] = gu, down
        return out


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
            for key, t in unfused.fused_state().items():
                setattr(fused, key, nn.Parameter(t.contiguous(), requires_grad=False))
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, fused)
