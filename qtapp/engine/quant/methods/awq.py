"""AWQ: activation-aware weight quantization (Lin et al. 2023), one decoder block at a time.

Search and apply are separate steps. `awq_search_block` leaves the block as it found it and
returns plain data (`AwqBlockResult`); `awq_apply_block` folds that data into the block.
The quantizer that runs afterwards (RTN here) then sees the scaled and clipped weights.

Scaling (paper §3.2, Eq. 4–5), for each group  prev op → linears, judged on `target`:

    x̄_k  = mean_t |X[t, k]|                    input channel k of the linears (calibration)
    w̄_k  = mean_n |W[n, k]| / max_{k'∈g(k)} |W[n, k']|     (rows of all the group's linears)
    s(α) = x̄^α / (w̄^(1−α) + 10⁻⁴),  s ← s / √(max s · min s),  α ∈ {0, 1/n, …, (n−1)/n}
    L(s) = mean (T(X; Q(W·diag s)·diag s⁻¹) − T(X; W))²
    s*   = argmin L over {1} ∪ {s(α)}

T is the group's target: the attention module for q/k/v, o_proj for v→o, the MLP for
gate/up, down_proj for up→down. Each linear is fake-quantized with its own scheme
(`scheme_for`, mixed precision); a linear whose scheme is None stays float in the loss and
is still scaled, so the folded float block stays exact. s = 1 is plain RTN, so the search
never picks scales that do worse than RTN on the calibration data.
The paper and llm-awq use s = x̄^α alone; AutoAWQ's default ("duo scaling") adds the weight
statistic w̄. On the demo model (SmolLM2-135M, W4 asym, 8 held-out windows) the block
output MSE relative to RTN was, x̄ alone vs duo: block 2 g64 0.39 / 0.38, g128 0.51 / 0.38;
block 15 g64 0.46 / 0.45, g128 0.41 / 0.40. So we use duo scaling.

A linear target of at most LOSS_TOKENS inputs needs no forward pass: with the Gram matrix
G = Σ_t x_t x_tᵀ of its input (all tokens), L = tr(ΔW G ΔWᵀ) / (T·N); wider ones are rerun. Attention and MLP targets are rerun on at most
LOSS_TOKENS tokens of their captured inputs (whole mini-batches of samples). On the demo
model (block 2, W4 g64/g128, 32 calibration windows of 256 tokens) 2048, 4096 and 8192
tokens chose the same α for every group, at 20, 30 and 43 CPU-seconds per block.

Folding (exact in real arithmetic):  W X = (W · diag s) (diag s⁻¹ X).  diag s⁻¹ goes into
the previous op: an RMSNorm/LayerNorm's weight (and bias) or the previous linear's output
rows (and bias). A linear → linear pair whose shapes do not match (v→o under grouped-query
attention) is skipped, as AutoAWQ does. Norms of the form x̂·(1 + w) (Gemma) fold as
w' = (1 + w)/s − 1 (the family's norm_offset, qtapp.engine.model.arch).

Clipping (paper §3.3 / llm-awq `auto_clip`), after scaling, for every quantized linear but
q/k (their errors pass through the softmax, so a per-row error is a poor proxy): per output
row n and quantization group g, the threshold c = (1 − i/m)·max|w|, i < max_shrink·m
(m = clip_grid), that minimises mean_t (Σ_{k∈g} (Q(clamp(w, ±c)) − w)_{n,k} x_{t,k})² over
CLIP_TOKENS tokens of the linear's (scaled) input, spread evenly over the calibration set.
Per-tensor schemes are not clipped.

Order: as in AutoAWQ, one forward of the original block captures every group's input, then
each group is searched on those original inputs with the other groups unscaled; the clip
search uses the weights and inputs as they are once all scales are folded.

Memory: the captured inputs of the attention and MLP targets (≤ LOSS_TOKENS tokens each)
and one (K, K) Gram matrix per linear target, on the block's device.

Mixture of experts (docs/models.md, footnote 6): the norm before the experts is one pair
over every expert's gate/up, judged on the whole MoE block, x̄ from the block's input
(AwqGroup.stat); the router's weight takes the same column scale (AwqGroup.also), so it
routes exactly as before. Each expert's up→down pair and clip search see only its routed
token rows; an expert below min_tokens gets neither.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from qtapp.engine.config import AWQOptions, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import AwqGroup
from qtapp.engine.quant.batching import first_output, fit_batch
from qtapp.engine.quant.primitives import default_g_idx, fake_quantize, n_groups, qparams_from_range

LOSS_TOKENS = 4096  # calibration tokens an attention / MLP target is rerun on per candidate
CLIP_TOKENS = 2048  # tokens of each linear's input that the clip search weighs errors with
CLIP_BLOCK_ELEMENTS = 1 << 22  # weights per slice of output rows in the clip search
NO_CLIP_PREFIXES = ("q_", "k_", "query", "key", "wqkv", "qkv")


@dataclass
class AwqBlockResult:
    """What the search found for one block: plain tensors, saved beside the output.

    scales: prev-op name → s (C_in,): prev's output channels are divided by s, the group's
        linears' input columns multiplied by s.
    clips: linear name → c (N, n_groups): after scaling, w[n, k] is clamped to ±c[n, g(k)].
    group_sizes: linear name → the group size of its clip tensor (−1: one group per row).
    losses: group (prev name) → {"target", "linears", "alpha" (None when s = 1, plain RTN,
        won), "loss_rtn", "loss", "history" (losses of s = 1, α = 0, 1/n, …), "seconds"} or
        {"target", "skipped": reason}; JSON-ready, for the log.
    """

    scales: dict[str, Tensor] = field(default_factory=dict)
    clips: dict[str, Tensor] = field(default_factory=dict)
    group_sizes: dict[str, int] = field(default_factory=dict)
    losses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # MoE: expert linears that received fewer tokens than min_tokens → their tokens (not
    # searched, not clipped); not saved: the pipeline reports them
    few_tokens: dict[str, int] = field(default_factory=dict)

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """Flat name → tensor map ("scales.<prev>", "clips.<linear>") for safetensors."""
        out = {f"{prefix}scales.{k}": v.detach().cpu().contiguous() for k, v in self.scales.items()}
        out.update({f"{prefix}clips.{k}": v.detach().cpu().contiguous()
                    for k, v in self.clips.items()})
        return out

    def meta(self) -> dict[str, Any]:
        return {"group_sizes": self.group_sizes, "losses": self.losses}

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict[str, Any],
                   prefix: str = "") -> AwqBlockResult:
        scales, clips = {}, {}
        for key, value in tensors.items():
            if not key.startswith(prefix):
                continue
            kind, _, name = key[len(prefix):].partition(".")
            if kind == "scales":
                scales[name] = value
            elif kind == "clips":
                clips[name] = value
        return cls(scales, clips, {k: int(v) for k, v in meta["group_sizes"].items()},
                   dict(meta.get("losses", {})))

    def save(self, path: Path) -> None:
        """Write `path` (.safetensors) and its `.json` twin (group sizes and losses)."""
        path = Path(path)
        save_file(self.tensors(), str(path))
        path.with_suffix(".json").write_text(json.dumps(self.meta(), indent=1))

    @classmethod
    def load(cls, path: Path) -> AwqBlockResult:
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls.from_parts(load_file(str(path)), meta)


# ---------------------------------------------------------------------------- capture


@dataclass
class _Call:
    """How the block called a target on one mini-batch: its input and the other arguments."""

    x: Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: str | None  # keyword that carried the input, None when it was positional

    def run(self, module: nn.Module) -> Tensor:
        if self.key is None:
            return first_output(module(self.x, *self.args, **self.kwargs))
        return first_output(module(*self.args, **{self.key: self.x}, **self.kwargs))


@dataclass
class _Captured:
    calls: dict[str, list[_Call]] = field(default_factory=dict)  # module target → mini-batches
    gram: dict[str, Tensor] = field(default_factory=dict)  # linear target → Σ_t x_t x_tᵀ (K, K)
    gram_tokens: dict[str, int] = field(default_factory=dict)
    abs_sum: dict[str, Tensor] = field(default_factory=dict)  # group's first linear → Σ_t |x_t|
    tokens: dict[str, int] = field(default_factory=dict)
    clip_x: dict[str, list[Tensor]] = field(default_factory=dict)  # linear → token subsample
    seen: dict[str, int] = field(default_factory=dict)  # counted linear → tokens it received


def _input_key(module: nn.Module, kwargs: dict[str, Any]) -> str:
    params = list(inspect.signature(module.forward).parameters)
    for key in (*params[:1], "hidden_states", "x", "input"):
        if key in kwargs:
            return key
    raise UserError(f"cannot tell which argument of {type(module).__name__}.forward carries "
                    "the hidden states; AWQ does not support this architecture")


def _capture(block: nn.Module, x: Tensor, block_kwargs: dict[str, Any], gram_targets: list[str],
             call_targets: list[str], stat_linears: list[str], clip_linears: list[str],
             batch_size: int, batches: Iterable[tuple[Tensor, dict[str, Any]]] | None = None,
             counted: Iterable[str] = (),
             ) -> _Captured:
    """One forward of the unchanged block over all samples, recording what the search needs.
    `batches` (mini-batches of x and their kwargs) replaces slicing x: the pipeline's lean
    mode streams them from host memory.

    Gram targets get the Gram matrix of their input (all tokens); call targets keep their
    inputs (and call arguments) for the first mini-batches, up to LOSS_TOKENS tokens.
    `counted` modules (MoE experts) count the tokens they receive (cap.seen).
    """
    n, seq = x.shape[0], x.shape[1]
    device, dtype = _device_dtype(block)
    stride = max(1, n * seq // CLIP_TOKENS)
    cap = _Captured()
    offset = 0  # index of the current mini-batch's first token in the whole calibration set

    def keep_call(name: str):
        cap.calls[name] = []
        kept = [0]  # token rows kept so far, for targets fed (tokens, C) rows

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if args:
                x_in, rest_args, rest, key = args[0], args[1:], kwargs, None
            else:
                key = _input_key(module, kwargs)
                x_in, rest_args = kwargs[key], ()
                rest = {k: v for k, v in kwargs.items() if k != key}
            full = x_in.shape[0]
            if x_in.dim() == 2:  # a MoE expert's routed token rows: up to LOSS_TOKENS rows,
                keep = min(full, LOSS_TOKENS - kept[0])  # from however many mini-batches
                kept[0] += max(keep, 0)
            else:  # keep whole samples, no more than the LOSS_TOKENS budget (a batch of
                # 8 × 2048 tokens would otherwise be kept whole, 4× the budget, and rerun
                # per candidate)
                keep = min(full, -(-(LOSS_TOKENS - offset) // seq))
            if keep <= 0:
                return
            cap.calls[name].append(_Call(
                x_in[:keep].detach().clone(), fit_batch(rest_args, full, keep),
                fit_batch(rest, full, keep), key))
        return hook

    def add_gram(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            a = _rows(args[0])
            g = a.T @ a
            cap.gram[name] = cap.gram[name] + g if name in cap.gram else g
            cap.gram_tokens[name] = cap.gram_tokens.get(name, 0) + a.shape[0]
        return hook

    def add_abs(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            a = _rows(args[0])
            s = a.abs().sum(0)
            cap.abs_sum[name] = cap.abs_sum[name] + s if name in cap.abs_sum else s
            cap.tokens[name] = cap.tokens.get(name, 0) + a.shape[0]
        return hook

    def count(name: str):
        cap.seen[name] = 0

        def hook(_module: nn.Module, args: tuple) -> None:
            cap.seen[name] += _rows(args[0]).shape[0]
        return hook

    def keep_tokens(name: str):
        cap.clip_x[name] = []

        def hook(_module: nn.Module, args: tuple) -> None:
            # a copy: a strided view would keep every mini-batch's whole input alive (14 GiB
            # over 128 × 2048 tokens of a Llama-1B block, measured on an H100)
            if args[0].dim() == 2:  # a MoE expert's routed rows: the first CLIP_TOKENS of
                have = sum(len(t) for t in cap.clip_x[name])  # them (the stride would
                if have < CLIP_TOKENS:  # leave a seldom-routed expert a handful of tokens)
                    cap.clip_x[name].append(_rows(args[0])[:CLIP_TOKENS - have].clone())
                return
            cap.clip_x[name].append(_rows(args[0])[(-offset) % stride::stride].clone())
        return hook

    handles = []
    try:
        for t in gram_targets:
            handles.append(block.get_submodule(t).register_forward_pre_hook(add_gram(t)))
        for t in call_targets:
            handles.append(block.get_submodule(t).register_forward_pre_hook(
                keep_call(t), with_kwargs=True))
        for name in dict.fromkeys(stat_linears):
            handles.append(block.get_submodule(name).register_forward_pre_hook(add_abs(name)))
        for name in counted:
            handles.append(block.get_submodule(name).register_forward_pre_hook(count(name)))
        for name in clip_linears:
            handles.append(block.get_submodule(name).register_forward_pre_hook(
                keep_tokens(name)))
        if batches is None:
            batches = ((x[i:i + batch_size], fit_batch(block_kwargs, batch_size,
                                                       x[i:i + batch_size].shape[0]))
                       for i in range(0, n, batch_size))
        with torch.no_grad():
            for xb, kw in batches:
                block(xb.to(device, dtype), **kw)
                offset += xb.shape[0] * seq
    finally:
        for h in handles:
            h.remove()
    return cap


def _rows(a: Tensor) -> Tensor:
    """(…, C) activations → (tokens, C) float32."""
    return a.detach().reshape(-1, a.shape[-1]).float()


def _device_dtype(block: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(block.parameters())
    return p.device, p.dtype


# ---------------------------------------------------------------------------- quantizer


def _grouped(W: Tensor, group_size: int) -> Tensor:
    """W (N, K) → (N, G, gs) float32; a short last group repeats the last column (as
    `primitives.qparams` pads), so its range is unchanged."""
    N, K = W.shape
    gs = group_size if group_size > 0 else K
    pad = n_groups(K, gs) * gs - K
    W = W.float()
    if pad:
        W = torch.cat([W, W[:, -1:].expand(N, pad)], dim=1)
    return W.reshape(N, -1, gs)


def _fake_quantize_groups(wg: Tensor, bits: int, sym: bool) -> Tensor:
    """Round-to-nearest on each group's min/max grid, last dim = one group (float32)."""
    s, z = qparams_from_range(wg.amin(dim=-1), wg.amax(dim=-1), bits, sym)
    s, z = s[..., None], z[..., None].float()
    return s * ((torch.round(wg / s) + z).clamp(0, 2 ** bits - 1) - z)


def fake_quantize_scheme(W: Tensor, scheme: QuantScheme) -> Tensor:
    """quantize → dequantize W (N, K) with `scheme`, float32; same values as
    `primitives.fake_quantize`, computed on a reshaped view instead of a gather."""
    if scheme.group_size == 0:
        return fake_quantize(W.float(), scheme.bits, 0, scheme.sym)
    N, K = W.shape
    q = _fake_quantize_groups(_grouped(W, scheme.group_size), scheme.bits, scheme.sym)
    return q.reshape(N, -1)[:, :K]


# ---------------------------------------------------------------------------- scale search


def _weight_mean(block: nn.Module, linears: list[tuple[str, QuantScheme]]) -> Tensor:
    """w̄_k: mean over the rows of the group's quantized linears of |w| / max|w| in its
    quantization group (AutoAWQ's weight statistic; per-tensor schemes use one row)."""
    rows = []
    for name, scheme in linears:
        W = block.get_submodule(name).weight.detach()
        wg = _grouped(W, scheme.group_size).abs()
        wg = wg / (wg.amax(dim=-1, keepdim=True) + 1e-6)
        rows.append(wg.reshape(W.shape[0], -1)[:, :W.shape[1]].mean(0))
    weights = torch.tensor([block.get_submodule(n).weight.shape[0] for n, _ in linears],
                           dtype=torch.float32, device=rows[0].device)
    return (torch.stack(rows) * weights[:, None]).sum(0) / weights.sum()


def _scale_candidates(x_mean: Tensor, w_mean: Tensor, grid: int,
                      ) -> list[tuple[float | None, Tensor]]:
    """(α, s(α)) for α = i / grid, i < grid, after (None, 1): plain RTN."""
    out: list[tuple[float | None, Tensor]] = [(None, torch.ones_like(x_mean))]
    for i in range(grid):
        alpha = i / grid
        s = (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        out.append((alpha, s))
    return out


def _quantized_scaled(W: Tensor, s: Tensor, scheme: QuantScheme) -> Tensor:
    """Q(W · diag s) · diag s⁻¹ in W's dtype."""
    return (fake_quantize_scheme(W.float() * s, scheme) / s).to(W.dtype)


class _Loss:
    """L(W_q) = mean (T(X; W_q) − T(X; W))² for one group's target.

    A linear target needs no forward: with G = Σ_t x_t x_tᵀ, the loss is
    tr(ΔW G ΔWᵀ) / (T·N), ΔW = W_q − W, whatever the number of tokens. Any other target
    (attention, MLP) is run on its captured inputs.
    """

    def __init__(self, block: nn.Module, group: AwqGroup, cap: _Captured) -> None:
        self.target = block.get_submodule(group.target)
        self.gram = cap.gram.pop(group.target, None)
        self.gram_tokens = cap.gram_tokens.get(group.target, 0)
        self.calls = cap.calls.pop(group.target, [])
        with torch.no_grad():
            self.reference = [c.run(self.target) for c in self.calls]  # T(X; W)
        self.numel = sum(y.numel() for y in self.reference)

    def __call__(self, changed: list[tuple[nn.Linear, Tensor]]) -> float:
        if self.gram is not None:
            ((lin, w_q),) = changed
            dW = w_q.float() - lin.weight.float()  # (N, K)
            return float(((dW @ self.gram) * dW).sum()) / (self.gram_tokens * dW.shape[0])
        originals = [lin.weight.data for lin, _ in changed]
        try:
            for lin, w_q in changed:
                lin.weight.data = w_q
            sse = sum(float((c.run(self.target) - y).float().pow(2).sum())
                      for c, y in zip(self.calls, self.reference))
        finally:
            for (lin, _), w in zip(changed, originals):
                lin.weight.data = w
        return sse / self.numel


def _search_group(block: nn.Module, group: AwqGroup, loss: _Loss, x_mean: Tensor,
                  schemes: dict[str, QuantScheme | None], grid: int,
                  ) -> tuple[Tensor, dict[str, Any]]:
    t0 = time.perf_counter()
    named = [(n, schemes[n]) for n in group.linears if schemes[n] is not None]
    quantized = [(block.get_submodule(n), scheme) for n, scheme in named]
    history: list[tuple[float, float | None, Tensor]] = []
    with torch.no_grad():
        for alpha, s in _scale_candidates(x_mean, _weight_mean(block, named), grid):
            changed = [(lin, _quantized_scaled(lin.weight.data, s, scheme))
                       for lin, scheme in quantized]
            history.append((loss(changed), alpha, s))
    best = min(history, key=lambda t: t[0])
    record = {"target": group.target, "linears": list(group.linears), "alpha": best[1],
              "loss_rtn": history[0][0], "loss": best[0],
              "history": [h[0] for h in history],
              "seconds": round(time.perf_counter() - t0, 4)}
    return best[2], record


def _linear_target(block: nn.Module, group: AwqGroup) -> bool:
    """The target is the group's only linear, with at most LOSS_TOKENS inputs: its loss
    follows from the Gram matrix. Evaluating tr(ΔW G ΔWᵀ) costs N·K² per candidate against
    N·K·LOSS_TOKENS for a rerun, so wider inputs (8B-class down_proj, K = 14 336) are rerun
    on their captured tokens instead (on 2 CPU cores the Gram route took 170 s per block of
    a 1B-shape Llama, K = 8192)."""
    target = block.get_submodule(group.target)
    return group.linears == (group.target,) and isinstance(target, nn.Linear) and \
        target.in_features <= LOSS_TOKENS


def _skip_reason(block: nn.Module, group: AwqGroup,
                 schemes: dict[str, QuantScheme | None]) -> str | None:
    if all(schemes[n] is None for n in group.linears):
        return "no linear of the group is quantized"
    prev = block.get_submodule(group.prev)
    widths = {block.get_submodule(n).in_features for n in group.linears}
    if len(widths) != 1:
        raise UserError(f"the linears {', '.join(group.linears)} have different input widths; "
                        "the architecture table does not match the model")
    (width,) = widths
    if isinstance(prev, nn.Linear):
        if prev.out_features != width:
            return (f"{group.prev} has {prev.out_features} outputs, {group.linears[0]} "
                    f"{width} inputs (grouped-query attention): the scale cannot be folded")
    elif getattr(prev, "weight", None) is None or tuple(prev.weight.shape) != (width,):
        raise UserError(f"{group.prev} is neither a linear layer nor a norm with a ({width},) "
                        "weight; the architecture table does not match the model")
    return None


# ---------------------------------------------------------------------------- clip search


def _clip_search(W: Tensor, X: Tensor, scheme: QuantScheme, options: AWQOptions) -> Tensor:
    """Best clip value c (N, G) per output row and group of W (N, K) on inputs X (T, K).

    Error of row n, group g: mean_t (Σ_{k∈g} (Q(clamp(w, ±c)) − w)_{n,k} x_{t,k})²
    = δᵀ H_g δ / T with H_g = X_gᵀ X_g (gs, gs), the group's share of the output error.
    All rows and groups are searched at once, the shrink grid in a loop.
    """
    N, K = W.shape
    Wg = _grouped(W, scheme.group_size)  # (N, G, gs)
    G, gs = Wg.shape[1], Wg.shape[2]
    Xg = torch.cat([X.float(), X.new_zeros(X.shape[0], G * gs - K)], dim=1)  # padding sees 0
    Xg = Xg.reshape(-1, G, gs).transpose(0, 1)  # (G, T, gs)
    H = torch.bmm(Xg.transpose(1, 2), Xg) / Xg.shape[1]  # (G, gs, gs)
    w_max = Wg.abs().amax(dim=2)  # (N, G)
    best = w_max.clone()
    rows = max(1, CLIP_BLOCK_ELEMENTS // (G * gs))
    for r0 in range(0, N, rows):
        w = Wg[r0:r0 + rows]  # (R, G, gs)
        best_err = torch.full(w.shape[:2], float("inf"), device=W.device)
        for i in range(max(1, int(options.max_shrink * options.clip_grid))):
            c = w_max[r0:r0 + rows] * (1 - i / options.clip_grid)  # (R, G)
            wc = torch.maximum(torch.minimum(w, c[..., None]), -c[..., None])
            d = (_fake_quantize_groups(wc, scheme.bits, scheme.sym) - w).transpose(0, 1)
            err = (torch.bmm(d, H) * d).sum(dim=2).T  # (R, G)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best[r0:r0 + rows] = torch.where(better, c, best[r0:r0 + rows])
    return best


def _clippable(name: str, scheme: QuantScheme | None) -> bool:
    leaf = name.rsplit(".", 1)[-1].lower()
    return scheme is not None and scheme.group_size != 0 and not leaf.startswith(NO_CLIP_PREFIXES)


# ---------------------------------------------------------------------------- entry points


def awq_search_block(
    block: nn.Module,
    x: Tensor,
    block_kwargs: dict[str, Any],
    groups: tuple[AwqGroup, ...],
    scheme_for: Callable[[str], QuantScheme | None],
    options: AWQOptions,
    batch_size: int = 8,
    batches: Iterable[tuple[Tensor, dict[str, Any]]] | None = None,
    min_tokens: Callable[[str], int] | None = None,
) -> AwqBlockResult:
    """Search AWQ scales (and clip values) for one decoder block; the block is not changed.

    x: (n_samples, seq_len, hidden) inputs of the block; block_kwargs: the other arguments of
    its forward, made for a batch of `batch_size` samples (or broadcastable). scheme_for maps
    a linear's name relative to the block to its scheme, None when it stays in float.

    min_tokens(name) > 0 marks a linear that sees only some tokens (a MoE expert): one that
    received fewer gets no statistics of its own: a pair whose linears all fall short is not
    searched (s = 1; losses[prev]["skipped"] says why, with the tokens) and the linear is not
    clipped. A pair over several experts' linears (the norm before them) is searched on the
    whole MoE block's output, where each expert weighs as much as its routed tokens.
    """
    linears = list(dict.fromkeys(n for g in groups for n in g.linears))
    schemes = {n: scheme_for(n) for n in linears}
    result = AwqBlockResult()
    searched = []
    for g in groups:
        reason = _skip_reason(block, g, schemes)
        if reason is None:
            searched.append(g)
        else:
            result.losses[g.prev] = {"target": g.target, "skipped": reason}
    clip_linears = [n for n in linears if options.clip and _clippable(n, schemes[n])]
    gram_targets = [g.target for g in searched if _linear_target(block, g)]
    call_targets = [g.target for g in searched if not _linear_target(block, g)]
    needed = {n: min_tokens(n) for n in linears} if min_tokens is not None else {}
    cap = _capture(block, x, block_kwargs, gram_targets, call_targets,
                   [g.stat or g.linears[0] for g in searched], clip_linears, batch_size,
                   batches, counted=[n for n, m in needed.items() if m > 0])
    few = {n: cap.seen[n] for n in cap.seen if cap.seen[n] < needed[n]}
    clip_linears = [n for n in clip_linears if n not in few]

    for g in searched:
        if all(n in few for n in g.linears):
            result.losses[g.prev] = {"target": g.target, "skipped": (
                f"{', '.join(f'{n} got {few[n]}' for n in g.linears)} calibration tokens, "
                f"fewer than {max(needed[n] for n in g.linears)}: no scale of its own")}
            cap.gram.pop(g.target, None)
            continue
        stat = g.stat or g.linears[0]
        x_mean = cap.abs_sum[stat] / cap.tokens[stat]
        result.scales[g.prev], result.losses[g.prev] = _search_group(
            block, g, _Loss(block, g, cap), x_mean, schemes, options.grid)
    result.few_tokens = few

    col_scale = {n: result.scales[g.prev] for g in searched if g.prev in result.scales
                 for n in g.linears}
    row_scale = {g.prev: result.scales[g.prev] for g in searched if g.prev in result.scales}
    with torch.no_grad():
        for name in clip_linears:
            scheme = schemes[name]
            assert scheme is not None
            W = block.get_submodule(name).weight.detach().float()
            X = torch.cat(cap.clip_x.pop(name))[:CLIP_TOKENS]
            if name in col_scale:
                W = W * col_scale[name]
                X = X / col_scale[name]
            if name in row_scale:
                W = W / row_scale[name][:, None]
            result.clips[name] = _clip_search(W, X, scheme, options)
            result.group_sizes[name] = scheme.group_size if scheme.group_size > 0 else -1
    return result


def awq_apply_block(block: nn.Module, result: AwqBlockResult, groups: tuple[AwqGroup, ...],
                    norm_offset: float = 0.0) -> None:
    """Fold the scales into the block, then clamp the weights to the clip values (in place).

    prev op: norm weight (and bias) / s, or prev linear's output rows (and bias) / s;
    the group's linears and its `also` modules (a MoE router): weight[:, k] · s_k. A norm
    that computes x̂·(norm_offset + w)
    (Gemma: 1) gets w' = (norm_offset + w) / s − norm_offset. Arithmetic in float32, stored
    in each parameter's own dtype.
    """
    with torch.no_grad():
        for g in groups:
            if g.prev not in result.scales:
                continue
            prev = block.get_submodule(g.prev)
            s = result.scales[g.prev].to(prev.weight.device, torch.float32)
            if isinstance(prev, nn.Linear):
                _set(prev.weight, prev.weight.float() / s[:, None])
            else:
                _set(prev.weight, (prev.weight.float() + norm_offset) / s - norm_offset)
            if getattr(prev, "bias", None) is not None:
                _set(prev.bias, prev.bias.float() / s)
            for name in (*g.linears, *g.also):
                lin = block.get_submodule(name)
                _set(lin.weight, lin.weight.float() * s.to(lin.weight.device))
        for name, c in result.clips.items():
            lin = block.get_submodule(name)
            K = lin.weight.shape[1]
            gs = result.group_sizes[name]
            g_idx = default_g_idx(K, gs if gs > 0 else K, lin.weight.device).long()
            c = c.to(lin.weight.device, torch.float32)[:, g_idx]  # (N, K)
            w = lin.weight.float()
            _set(lin.weight, torch.maximum(torch.minimum(w, c), -c))


def _set(p: Tensor, value: Tensor) -> None:
    p.data.copy_(value.to(p.dtype))
