"""Quantize / dequantize / pack: the integer grid every method shares.

    Q(w) = s · (clamp(round(w / s) + z, 0, 2^b − 1) − z)

symmetric:  s = max|w| / 2^(b−1),           z = 2^(b−1)   (no zero point, grid centred)
asymmetric: s = (max − min) / (2^b − 1),    z = round(−min / s)

Codes are stored unsigned in [0, 2^b − 1] with the zero point beside them; a symmetric
scheme's zero is the constant 2^(b−1), which is exactly the GPTQ convention
(docs/formats.md#quantization-grid).
Granularity: group_size > 0 (groups of input columns), −1 (one group per output row),
0 (one scale for the whole tensor). Weights are (N, K) = (out_features, in_features).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

PER_CHANNEL = -1
PER_TENSOR = 0


def n_groups(k: int, group_size: int) -> int:
    return 1 if group_size <= 0 else -(-k // group_size)


def default_g_idx(k: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Group of each input column: k // G (all zeros for per-channel / per-tensor)."""
    idx = torch.arange(k, dtype=torch.int32, device=device)
    return idx // group_size if group_size > 0 else torch.zeros_like(idx)


def qparams_from_range(
    wmin: torch.Tensor, wmax: torch.Tensor, bits: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero from per-group min/max (any shape). Returns (s float32, z int32)."""
    wmin = torch.minimum(wmin.float(), torch.zeros_like(wmin, dtype=torch.float32))
    wmax = torch.maximum(wmax.float(), torch.zeros_like(wmax, dtype=torch.float32))
    if sym:
        s = torch.maximum(wmax, -wmin) / 2 ** (bits - 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        z = torch.full_like(s, 2 ** (bits - 1), dtype=torch.int32)
    else:
        s = (wmax - wmin) / (2**bits - 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        z = torch.round(-wmin / s).clamp(0, 2**bits - 1).to(torch.int32)
    return s, z


MSE_CHUNK_ELEMENTS = 2**24  # trial grids searched at once: (shrinks, G, N) floats, 64 MiB
MSE_COARSE_STRIDE = 4  # the range search tries every 4th shrink factor, then the neighbours


@functools.cache
def _shrink_factors(steps: int, grid: int, device: torch.device) -> torch.Tensor:
    """p = 1 − i/grid for i < steps, float32 on `device` (made once: GPTQ captures its
    column sweep, range search included, as a CUDA graph, where no host copy may happen)."""
    return torch.tensor([1 - i / grid for i in range(steps)], dtype=torch.float32,
                        device=device)


@functools.cache
def _offsets(stride: int, device: torch.device) -> torch.Tensor:
    return torch.arange(-(stride - 1), stride, device=device)


def _best_shrink(wg: torch.Tensor, wmin: torch.Tensor, wmax: torch.Tensor, p: torch.Tensor,
                 bits: int, sym: bool, norm: float, valid: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Among shrink factors p (c, 1) or (c, N), in order, the first with the least
    Σ |Q(w) − w|^norm per column of wg (G, N): (error, scale, zero, its row in p)."""
    maxq = 2**bits - 1
    N = wg.shape[1]
    best_err = torch.full((N,), float("inf"), device=wg.device)
    best_s, best_z = torch.ones(N, device=wg.device), torch.zeros(N, dtype=torch.int32,
                                                                   device=wg.device)
    best_row = torch.zeros(N, dtype=torch.long, device=wg.device)
    chunk = max(1, MSE_CHUNK_ELEMENTS // max(1, wg.numel()))
    for start in range(0, p.shape[0], chunk):
        pc = p[start:start + chunk]
        s, z = qparams_from_range(pc * wmin, pc * wmax, bits, sym)  # (c, N)
        zf = z.float()[:, None]
        # |s · (clamp(round(w / s) + z, 0, maxq) − z) − w|^norm, summed per column; the
        # clamp is taken on round(w / s) against [−z, maxq − z], the same integers
        buf = torch.div(wg, s[:, None]).round_().clamp_(-zf, maxq - zf)
        err = buf.mul_(s[:, None]).sub_(wg).abs_().pow_(norm).sum(dim=1)  # (c, N)
        del buf
        if valid is not None:
            err.masked_fill_(~valid[start:start + chunk], float("inf"))
        err_c, i_c = err.min(dim=0)  # the first minimum: the earliest p wins ties
        better = err_c < best_err
        best_err = torch.where(better, err_c, best_err)
        best_s = torch.where(better, s.gather(0, i_c[None])[0], best_s)
        best_z = torch.where(better, z.gather(0, i_c[None])[0], best_z)
        best_row = torch.where(better, i_c + start, best_row)
    return best_err, best_s, best_z, best_row


def qparams_mse(
    wg: torch.Tensor, bits: int, sym: bool, grid: int = 100, max_shrink: float = 0.8,
    norm: float = 2.4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero per column of ``wg`` (G, N) that minimise Σ |Q(w) − w|^norm over the
    range shrunk to p·[min, max], p = 1 − i/grid, i < max_shrink·grid.

    The grid search of the GPTQ reference code (Quantizer.find_params with mse=True, its
    defaults grid 100, maxshrink 0.8, norm 2.4; docs/formats.md#quantization-grid); the
    grid's formulas give the scale and zero for each shrunk range, so p = 1 is exactly
    `qparams_from_range`. Ties go to the first
    (widest) range, as in the reference's strict `err < best`.

    Two changes for speed. (1) The reference tries one p at a time (80 steps of ~10 small
    operations); here many p are tried in one batch of operations: on a GPU, where GPTQ calls
    this once per group inside its column sweep, kernel launches were most of the sweep's
    time. (2) It tries every MSE_COARSE_STRIDE-th p, then, per column, the p within a stride
    of the best one: 27 trials instead of 80. The error over p is close to unimodal, so this
    finds the reference's p for nearly every column (measured on the demo's weights: see
    tests/engine/test_primitives.py), and where it does not, one with nearly the same error.
    On a CPU the search was 43 % of a GPTQ job on the demo (28 of 65 s), most of it the
    fractional power.
    """
    wg = wg.float()
    wmin, wmax = wg.amin(dim=0), wg.amax(dim=0)
    steps = max(1, int(max_shrink * grid))
    ps = _shrink_factors(steps, grid, wg.device)
    stride = MSE_COARSE_STRIDE if steps > 2 * MSE_COARSE_STRIDE else 1
    _err, s, z, row = _best_shrink(wg, wmin, wmax, ps[::stride, None], bits, sym, norm)
    if stride == 1:
        return s, z
    cand = row[None] * stride + _offsets(stride, wg.device)[:, None]  # (2·stride − 1, N)
    valid = (cand >= 0) & (cand < steps)
    p = ps[cand.clamp(0, steps - 1)]
    _err, s, z, _row = _best_shrink(wg, wmin, wmax, p, bits, sym, norm, valid)
    return s, z


def qparams_mse_grouped(
    wt: torch.Tensor, group: int, bits: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """qparams_mse for every group of rows of ``wt`` (K, N) at once → (n_groups, N) each.

    The search is independent per column, so the full groups are laid side by side as one
    (group, n_full·N) matrix and searched in one call: the same result as one call per group,
    but a few large tensor operations instead of many small ones (per-group calls on the
    demo's 64×576 groups spent most of a GPTQ job in thread start-up, 10-30× slower on a
    busy 2-core machine). A last, shorter group is searched on its own.
    """
    K, N = wt.shape
    full = K // group
    scales, zeros = [], []
    if full:
        side = wt[:full * group].reshape(full, group, N).transpose(0, 1).reshape(group, -1)
        s, z = qparams_mse(side, bits, sym)
        scales.append(s.reshape(full, N))
        zeros.append(z.reshape(full, N))
    if K % group:
        s, z = qparams_mse(wt[full * group:], bits, sym)
        scales.append(s[None])
        zeros.append(z[None])
    return torch.cat(scales), torch.cat(zeros)


def qparams(
    w: torch.Tensor, bits: int, group_size: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of a weight (N, K) → (N, n_groups) each."""
    n, k = w.shape
    w = w.float()
    if group_size == PER_TENSOR:
        wmin, wmax = w.min().expand(n, 1), w.max().expand(n, 1)
    elif group_size == PER_CHANNEL:
        wmin, wmax = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    else:
        g = n_groups(k, group_size)
        pad = g * group_size - k
        if pad:
            # Pad with the row's last value (it is in the last group): the range never widens.
            w = torch.cat([w, w[:, -1:].expand(n, pad)], dim=1)
        wg = w.reshape(n, g, group_size)
        wmin, wmax = wg.amin(dim=2), wg.amax(dim=2)
    return qparams_from_range(wmin, wmax, bits, sym)


def quantize(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, g_idx: torch.Tensor
) -> torch.Tensor:
    """Integer codes (N, K) uint8 in [0, 2^b − 1]; column k uses group g_idx[k]."""
    s = scale[:, g_idx.long()]
    z = zero[:, g_idx.long()]
    return (torch.round(w.float() / s) + z).clamp(0, 2**bits - 1).to(torch.uint8)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor
) -> torch.Tensor:
    """Float weights (N, K) from codes: s · (q − z)."""
    gi = g_idx.long()
    return scale[:, gi] * (q.to(torch.float32) - zero[:, gi].to(torch.float32))


@dataclass
class QuantizedWeight:
    """A quantized linear weight: codes, per-group scale/zero and the group of each column."""

    q: torch.Tensor  # (N, K) uint8 codes
    scale: torch.Tensor  # (N, n_groups) float32
    zero: torch.Tensor  # (N, n_groups) int32; 2^(b−1) for symmetric schemes
    g_idx: torch.Tensor  # (K,) int32
    bits: int
    group_size: int
    sym: bool

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero, self.g_idx)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]

    def rows(self, start: int, stop: int) -> QuantizedWeight:
        """Output rows [start, stop): the part of a weight quantized with others stacked."""
        return QuantizedWeight(
            self.q[start:stop].contiguous(), self.scale[start:stop].contiguous(),
            self.zero[start:stop].contiguous(), self.g_idx.clone(), self.bits, self.group_size,
            self.sym,
        )


def quantize_weight(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> QuantizedWeight:
    """Round-to-nearest with min/max parameters (the RTN baseline)."""
    scale, zero = qparams(w, bits, group_size, sym)
    g_idx = default_g_idx(w.shape[1], group_size, w.device)
    q = quantize(w, scale, zero, bits, g_idx)
    return QuantizedWeight(q, scale, zero, g_idx, bits, group_size, sym)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """quantize → dequantize, in w's dtype."""
    return quantize_weight(w, bits, group_size, sym).dequantize().to(w.dtype)


def pack_int32(q: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack unsigned codes along `dim` into int32 words, LSB first (GPTQ order).

    Value j of a word sits at bits [j·b, j·b + b). For b = 3, 32 values span 3 words and
    values 10 and 21 straddle word boundaries (GPTQModel `pack_original`). The packed dim
    is zero-padded to a multiple of the values per word (32 values for b = 3).
    """
    q = q.movedim(dim, 0).to(torch.int64)
    k = q.shape[0]
    per = 32 if bits == 3 else 32 // bits
    if 32 % bits and bits != 3:
        raise ValueError(f"cannot pack {bits}-bit values into int32 words")
    pad = (-k) % per
    if pad:
        q = torch.cat([q, q.new_zeros((pad, *q.shape[1:]))], dim=0)
    if bits == 3:
        # 32 values → 96 bits → 3 words; build the bit stream and cut it into words.
        q = q.reshape(-1, 32, *q.shape[1:])
        words = torch.zeros((q.shape[0], 3, *q.shape[2:]), dtype=torch.int64, device=q.device)
        for j in range(32):
            bit = 3 * j
            w_i, off = divmod(bit, 32)
            words[:, w_i] |= (q[:, j] << off) & 0xFFFFFFFF
            if off + 3 > 32:
                words[:, w_i + 1] |= q[:, j] >> (32 - off)
        packed = words.reshape(-1, *q.shape[2:])
    else:
        q = q.reshape(-1, per, *q.shape[1:])
        packed = torch.zeros((q.shape[0], *q.shape[2:]), dtype=torch.int64, device=q.device)
        for j in range(per):
            packed |= q[:, j] << (bits * j)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return packed.movedim(0, dim).contiguous()


def unpack_int32(packed: torch.Tensor, bits: int, dim: int, length: int) -> torch.Tensor:
    """Inverse of `pack_int32`: `length` unsigned codes along `dim` (uint8)."""
    p = packed.movedim(dim, 0).to(torch.int64) & 0xFFFFFFFF
    mask = 2**bits - 1
    if bits == 3:
        p = p.reshape(-1, 3, *p.shape[1:])
        vals = []
        for j in range(32):
            w_i, off = divmod(3 * j, 32)
            v = p[:, w_i] >> off
            if off + 3 > 32:
                v = v | (p[:, w_i + 1] << (32 - off))
            vals.append(v & mask)
        q = torch.stack(vals, dim=1).reshape(-1, *p.shape[2:])
    else:
        per = 32 // bits
        q = torch.stack([(p >> (bits * j)) & mask for j in range(per)], dim=1)
        q = q.reshape(-1, *p.shape[1:])
    return q[:length].to(torch.uint8).movedim(0, dim).contiguous()
