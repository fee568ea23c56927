"""GPTQ on one linear layer (Frantar et al. 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", Algorithm 1).

For W (N, K) = (out, in) and layer inputs X (K, n), GPTQ minimises ‖WX − ŴX‖²_F. Every
row has the same Hessian H = 2XXᵀ. Columns are quantized one at a time; the error of
column i moves the columns not yet quantized (OBS update, Eq. 3 of the paper):

    δ_F = −(w_i − quant(w_i)) / [H_F⁻¹]_ii · (H_F⁻¹)_{:,i}

Sec. 3 of the paper turns this into Algorithm 1:
- the rows of the upper Cholesky factor of H⁻¹ hold every (H_F⁻¹)_{i,:} / sqrt([H_F⁻¹]_ii)
  that the sweep needs, so H is factored once ("Cholesky reformulation");
- updates go at once to the columns of the current block of `blocksize` columns and to
  the rest of W once per block ("lazy batch updates"); this is exact, only faster;
- H gets λ = percdamp · mean(diag H) on its diagonal ("dampening").

Options beyond the paper, as in IST-DASLab/gptq and AutoGPTQ/GPTQModel: act-order
(desc_act) processes columns by descending diag(H); with groups, each group's scale/zero
come from the group's weights as updated so far, taken when the sweep reaches the group's
first column (blocks are aligned to groups so that these are exact; the reference reads W,
which misses the updates made earlier in the same block), or, with static groups, from the
original weights before the sweep. The stored g_idx follows
docs/formats.md#gptq-group-index.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from qtapp.engine.config import GPTQOptions, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.quant.primitives import (
    QuantizedWeight,
    n_groups,
    qparams,
    qparams_from_range,
    qparams_mse,
    qparams_mse_grouped,
)

log = logging.getLogger(__name__)

DAMP_RETRIES = 3  # after the first try, λ grows ×10 up to this many times


class HessianError(UserError):
    """H + λI is not positive definite even with much more dampening."""


class HessianAccumulator:
    """H = 2/n Σ x xᵀ over the n input vectors x seen so far, kept as a running mean.

    H is float32 on `device`: pass the device the layer inputs live on (a batch from
    another device is copied there).
    """

    def __init__(self, n_in: int, device: torch.device | str = "cpu") -> None:
        self.H = torch.zeros((n_in, n_in), dtype=torch.float32, device=device)  # (K, K)
        self.n_samples = 0

    def add_batch(self, x: Tensor) -> None:
        """Add inputs x (..., K); every vector along the last dim is one sample."""
        K = self.H.shape[0]
        if x.shape[-1] != K:
            raise ValueError(f"inputs have {x.shape[-1]} features, the layer has {K}")
        X = x.reshape(-1, K).to(device=self.H.device, dtype=torch.float32)  # (m, K)
        m = X.shape[0]
        if m == 0:
            return
        n = self.n_samples + m
        # H ← (n_old / n) · H + (2 / n) · XᵀX
        self.H.addmm_(X.T, X, beta=self.n_samples / n, alpha=2.0 / n)
        self.n_samples = n


def invert_upper_triangular(R: Tensor, leaf: int = 512) -> Tensor:
    """R⁻¹ for an upper triangular R (K, K), by halves:

        [A B]⁻¹   [A⁻¹  −A⁻¹ B D⁻¹]
        [0 D]   = [0     D⁻¹      ]

    This costs about K³/3 flops in large products, where a triangular solve against the
    identity costs K³ (measured: K = 4096 on one CPU thread 2.0 s instead of 4.4 s;
    K = 14336 on an H100 0.049 s instead of 0.078 s).
    """
    K = R.shape[0]
    if K <= leaf:
        return torch.linalg.solve_triangular(
            R, torch.eye(K, dtype=R.dtype, device=R.device), upper=True
        )
    h = K // 2
    Rinv = torch.zeros_like(R)
    Rinv[:h, :h] = invert_upper_triangular(R[:h, :h], leaf)
    Rinv[h:, h:] = invert_upper_triangular(R[h:, h:], leaf)
    Rinv[:h, h:] = -torch.linalg.solve_triangular(R[:h, :h], R[:h, h:] @ Rinv[h:, h:], upper=True)
    return Rinv


def inverse_hessian_cholesky(H: Tensor, percdamp: float, order: Tensor | None = None,
                             ) -> tuple[Tensor, float]:
    """Upper Cholesky factor U of (H + λI)⁻¹, i.e. (H + λI)⁻¹ = UᵀU, λ = percdamp·mean(diag H).

    With `order` (a permutation of the K inputs: GPTQ's act-order), U is that of
    H[order][:, order]. Inputs whose diagonal is 0 (always-zero inputs) get 1 there.
    H is not modified.

    If H + λI is not positive definite, percdamp grows ×10 up to DAMP_RETRIES times, then
    HessianError. Returns (U, the percdamp that worked).

    U comes without forming the inverse: with J the reversal permutation, the lower
    Cholesky factor L of JHJ gives H = RRᵀ with R = JLJ upper triangular, so
    H⁻¹ = R⁻ᵀR⁻¹ and U = R⁻¹. This is the U of the reference's
    cholesky(cholesky_inverse(cholesky(H)), upper=True) at about half the flops
    (K³/3 + K³/3 instead of 4K³/3; measured: K = 4096 on one CPU thread 4.2 s instead of
    6.2 s, K = 14336 on an H100 0.086 s instead of 0.224 s).

    Memory: besides H, at most two K × K float32 matrices live at once (JHJ, built with the
    permutation and the reversal in one gather, then L, then R = JLJ and R⁻¹), plus the
    half-size products of `invert_upper_triangular`: for the 70B shape's down_proj
    (K = 28 672, 3.1 GiB per matrix) this is what lets a block fit a 24 GB card.
    """
    K = H.shape[0]
    if not bool(torch.isfinite(H).all()):
        raise HessianError(
            f"The calibration inputs of a layer with {K} inputs contain NaN or Inf values, so "
            "GPTQ cannot use them. The model overflows in this dtype: load it in float32 or "
            "bfloat16, or check the calibration text."
        )
    rev = (order if order is not None else torch.arange(K, device=H.device)).flip(0)
    damp = percdamp
    for attempt in range(DAMP_RETRIES + 1):
        JHJ = H.index_select(0, rev).index_select(1, rev)  # (K, K), J H[order][:, order] J
        diag = JHJ.diagonal()
        diag.masked_fill_(diag == 0, 1)
        diag.add_(damp * diag.mean())
        L, info = torch.linalg.cholesky_ex(JHJ)
        del JHJ, diag
        if info.item() == 0:
            R = L.flip(0, 1)
            del L
            U = invert_upper_triangular(R)
            del R
            if bool(torch.isfinite(U).all()):
                return U, damp
            del U
        else:
            del L
        if attempt < DAMP_RETRIES:
            log.warning("GPTQ: H is not positive definite with percdamp=%g; retrying with %g",
                        damp, damp * 10)
            damp *= 10
    raise HessianError(
        f"GPTQ could not invert the Hessian of a layer with {K} inputs, even with dampening "
        f"raised to {damp:g} × mean(diag H). The calibration inputs are too few or "
        "degenerate for this layer: use more calibration samples or longer sequences, "
        "or a larger damp percent."
    )


def gptq_quantize(
    W: Tensor, H: Tensor, scheme: QuantScheme, options: GPTQOptions
) -> QuantizedWeight:
    """Quantize W (N, K) = (out, in) with GPTQ, given H (K, K) = 2XXᵀ of its inputs.

    Math in float32 on W's device; H is not modified. The result has q in the original
    column order, g_idx as a GPTQ checkpoint stores it, and scale/zero indexed by group.
    (`options.true_sequential` is about the order of layers and is used by the pipeline.)
    """
    N, K = W.shape
    if H.shape != (K, K):
        raise ValueError(f"H has shape {tuple(H.shape)}, expected ({K}, {K}) for W {N}×{K}")
    bits, G, sym = scheme.bits, scheme.group_size, scheme.sym
    dev = W.device
    # The sweep runs on Wᵀ (K, N): column j of W is the contiguous row Wt[j], which makes
    # the per-column steps 2.5-4× faster on a CPU than strided columns. Names and steps are
    # otherwise those of Algorithm 1; scale/zero are kept as (n_groups, N) for the same reason.
    Wt = W.T.float().clone(memory_format=torch.contiguous_format)  # (K, N)
    H = H.to(device=dev, dtype=torch.float32)  # (K, K), not modified: no copy of it is made

    diag_h = torch.diag(H).clone()
    dead = diag_h == 0  # inputs that are always zero: their weights do not matter
    diag_h.masked_fill_(dead, 1)  # masked_fill, not diag_h[dead] = …: no wait for the GPU
    Wt.masked_fill_(dead[:, None], 0)

    dynamic_groups = G > 0 and not options.static_groups
    if dynamic_groups:
        scale_t = torch.empty((n_groups(K, G), N), dtype=torch.float32, device=dev)
        zero_t = torch.empty_like(scale_t)  # both filled during the sweep
    else:
        scale, zero = qparams(Wt.T, bits, G, sym)  # static groups, per channel or per tensor
        scale_t, zero_t = scale.T.contiguous(), zero.T.float().contiguous()
        if options.mse and G != 0:
            s, z = qparams_mse_grouped(Wt, G if G > 0 else K, bits, sym)
            scale_t, zero_t = s, z.float()

    if options.act_order:
        perm = torch.argsort(diag_h, descending=True)
        Wt = Wt[perm]
    else:
        perm = torch.arange(K, device=dev)
    invperm = torch.argsort(perm)

    # Group of the column at each sweep position p (g_pos) and group of each original
    # column k (g_idx). Dynamic groups are runs of G positions in sweep order.
    col = torch.arange(K, device=dev)
    if dynamic_groups:
        g_of_pos = col // G
        g_idx = g_of_pos[invperm]
    else:
        g_idx = col // G if G > 0 else torch.zeros_like(col)
        g_of_pos = g_idx[perm]

    Hinv, _ = inverse_hessian_cholesky(H, options.percdamp, perm if options.act_order else None)
    del H

    # Blocks start on group boundaries, so a group's parameters are taken from weights
    # that hold every update made so far (W1 inside the block). Blocksize changes speed only.
    B = G * max(1, options.blocksize // G) if dynamic_groups else options.blocksize
    sweep = BlockSweep(G if dynamic_groups else 0, bits, sym, options.mse)
    g_of_pos_t = g_of_pos.to(dev)
    Qt = torch.empty((K, N), dtype=torch.float32, device=dev)  # integer codes, sweep order
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        if dynamic_groups:
            Q1, Err1, S1, Z1 = sweep(Wt[i1:i2], Hinv[i1:i2, i1:i2])
            g1, g2 = i1 // G, -(-i2 // G)
            scale_t[g1:g2], zero_t[g1:g2] = S1[::G], Z1[::G]
        else:
            rows = g_of_pos_t[i1:i2]
            Q1, Err1, _, _ = sweep(Wt[i1:i2], Hinv[i1:i2, i1:i2], scale_t[rows], zero_t[rows])
        Qt[i1:i2] = Q1
        # W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].T, Err1, alpha=-1)

    q = Qt[invperm].T.to(torch.uint8).contiguous()  # (N, K), original column order
    return QuantizedWeight(
        q=q, scale=scale_t.T.contiguous(), zero=zero_t.T.to(torch.int32).contiguous(),
        g_idx=g_idx.to(torch.int32), bits=bits, group_size=G, sym=sym,
    )


def sweep_block(W1: Tensor, Hinv1: Tensor, Q1: Tensor, Err1: Tensor, S1: Tensor, Z1: Tensor,
                G: int, bits: int, sym: bool, mse: bool) -> None:
    """The inner loop of Algorithm 1 over one block of columns, in place.

    W1 (B, N): the block's columns of W (transposed), updated as the sweep goes; Hinv1 (B, B)
    the block of the Cholesky factor; Q1 / Err1 (B, N) receive the codes and the scaled
    errors. S1 / Z1 (B, N) hold the scale and zero of each column's group: given (static
    groups) or, with G > 0 (dynamic groups; the block starts on a group boundary), computed
    here when the sweep reaches a group's first column, from the weights updated so far.
    """
    maxq = 2**bits - 1
    for i in range(W1.shape[0]):
        w = W1[i]  # (N,)
        if G and i % G == 0:
            Wg = W1[i : i + G]  # (G, N)
            if mse:
                s, z = qparams_mse(Wg, bits, sym)
            else:
                s, z = qparams_from_range(Wg.amin(dim=0), Wg.amax(dim=0), bits, sym)
            S1[i : i + G] = s
            Z1[i : i + G] = z.float()
        s, z = S1[i], Z1[i]
        q = torch.div(w, s, out=Q1[i]).round_().add_(z).clamp_(0, maxq)
        # (w - s·(q - z)) / [H⁻¹]_ii, then W1[:, i:] -= err ⊗ Hinv1[i, i:]
        err = torch.addcmul(w, s, q - z, value=-1, out=Err1[i]).div_(Hinv1[i, i])
        W1[i:].addr_(Hinv1[i, i:], err, alpha=-1)


class BlockSweep:
    """Runs `sweep_block` on copies of one block's columns; returns (Q1, Err1, S1, Z1).

    On a GPU the sweep is about ten tiny kernels per column, and launching them from Python
    took 150 µs per column on an H100 (measured: down_proj of a 1B Llama, 8192 columns,
    1.3 s), about 20 times the GPU's own time. So on CUDA each block shape is run once
    eagerly, captured as a CUDA graph, and replayed for every later block of the same shape
    (graphs are kept per shape for the process: q/k/v, o, gate/up and down of every block of
    a model share four or five). QUANTDESK_GPTQ_GRAPHS=0 turns this off; a capture that fails
    falls back to the eager sweep for the rest of the process.
    """

    def __init__(self, G: int, bits: int, sym: bool, mse: bool) -> None:
        self.args = (G, bits, sym, mse)

    def __call__(self, W1: Tensor, Hinv1: Tensor, S1: Tensor | None = None,
                 Z1: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if W1.is_cuda and _graphs_enabled():
            key = (W1.device, *W1.shape, *self.args)
            graphed = _GRAPHS.get(key)
            if graphed is None:
                try:
                    return _capture(key, W1, Hinv1, S1, Z1, self.args)
                except Exception as e:  # noqa: BLE001 - any capture failure: run eagerly
                    log.warning("GPTQ: CUDA graph capture failed (%s); sweeping eagerly", e)
                    _disable_graphs()
            else:
                return graphed.run(W1, Hinv1, S1, Z1)
        W1 = W1.clone()
        Q1, Err1 = torch.empty_like(W1), torch.empty_like(W1)
        S1 = torch.empty_like(W1) if S1 is None else S1
        Z1 = torch.empty_like(W1) if Z1 is None else Z1
        sweep_block(W1, Hinv1, Q1, Err1, S1, Z1, *self.args)
        return Q1, Err1, S1, Z1


_GRAPHS: dict[tuple, _GraphedSweep] = {}
_MAX_GRAPHS = 16
_graphs_broken = False


def _graphs_enabled() -> bool:
    return not _graphs_broken and os.environ.get("QUANTDESK_GPTQ_GRAPHS", "1") != "0"


def _disable_graphs() -> None:
    global _graphs_broken
    _graphs_broken = True
    _GRAPHS.clear()


def release_graphs() -> None:
    """Free the captured sweeps and their memory (the pipeline calls this after a job)."""
    _GRAPHS.clear()


class _GraphedSweep:
    """Static input/output buffers of one block shape and the CUDA graph that sweeps them."""

    def __init__(self, W1: Tensor, Hinv1: Tensor, args: tuple) -> None:
        self.W1, self.Hinv1 = torch.empty_like(W1), torch.empty_like(Hinv1)
        self.Q1, self.Err1 = torch.empty_like(W1), torch.empty_like(W1)
        self.S1, self.Z1 = torch.empty_like(W1), torch.empty_like(W1)
        self.args = args
        self.graph: torch.cuda.CUDAGraph | None = None

    def load(self, W1: Tensor, Hinv1: Tensor, S1: Tensor | None, Z1: Tensor | None) -> None:
        self.W1.copy_(W1)
        self.Hinv1.copy_(Hinv1)
        if S1 is not None and Z1 is not None:
            self.S1.copy_(S1)
            self.Z1.copy_(Z1)

    def sweep(self) -> None:
        sweep_block(self.W1, self.Hinv1, self.Q1, self.Err1, self.S1, self.Z1, *self.args)

    def outputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.Q1, self.Err1, self.S1, self.Z1

    def run(self, W1: Tensor, Hinv1: Tensor, S1: Tensor | None, Z1: Tensor | None,
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.load(W1, Hinv1, S1, Z1)
        assert self.graph is not None
        self.graph.replay()
        return self.outputs()


def _capture(key: tuple, W1: Tensor, Hinv1: Tensor, S1: Tensor | None, Z1: Tensor | None,
             args: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sweep this block eagerly on a side stream (the warm-up a capture needs, and this
    block's result), then capture the same sweep as a graph for the next blocks."""
    g = _GraphedSweep(W1, Hinv1, args)
    side = torch.cuda.Stream(W1.device)
    side.wait_stream(torch.cuda.current_stream(W1.device))
    with torch.cuda.stream(side):
        g.load(W1, Hinv1, S1, Z1)
        g.sweep()
        result = tuple(t.clone() for t in g.outputs())
    torch.cuda.current_stream(W1.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        g.sweep()
    g.graph = graph
    if len(_GRAPHS) >= _MAX_GRAPHS:
        _GRAPHS.pop(next(iter(_GRAPHS)))
    _GRAPHS[key] = g
    return result  # type: ignore[return-value]


def relative_output_error(W: Tensor, W_hat: Tensor, H: Tensor) -> float:
    """‖(W − Ŵ)X‖²_F / ‖WX‖²_F = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) for H ∝ XXᵀ (scale cancels)."""
    return error_ratio(*output_error_terms(W, W_hat, H).tolist())


def output_error_terms(W: Tensor, W_hat: Tensor, H: Tensor) -> Tensor:
    """(tr(ΔW H ΔWᵀ), tr(W H Wᵀ)) on W's device, not read back: a caller with several
    linears reads all their terms at once (one wait for the device instead of two each)."""
    W = W.float()
    H = H.to(device=W.device, dtype=torch.float32)
    dW = W - W_hat.to(device=W.device, dtype=torch.float32)  # (N, K)
    return torch.stack((((dW @ H) * dW).sum(), ((W @ H) * W).sum()))


def error_ratio(num: float, den: float) -> float:
    """num / den of output_error_terms; 0 for a layer that never saw a non-zero input."""
    if den <= 0:
        return 0.0 if num <= 0 else float("inf")
    return num / den
