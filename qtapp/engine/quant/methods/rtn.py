"""RTN: round-to-nearest on a min/max grid, the baseline every other method must beat."""

from __future__ import annotations

import torch
from torch import Tensor

from qtapp.engine.config import QuantScheme
from qtapp.engine.quant.primitives import (
    QuantizedWeight,
    default_g_idx,
    qparams_mse_grouped,
    quantize,
    quantize_weight,
)


def rtn(W: Tensor, scheme: QuantScheme) -> QuantizedWeight:
    """Quantize W (N, K) = (out, in) to `scheme` by rounding each weight to its group's grid.

    The math runs in float32 on W's device; scale/zero come from each group's min/max.
    """
    if W.ndim != 2:
        raise ValueError(f"rtn expects a 2-D weight (out, in), got shape {tuple(W.shape)}")
    return quantize_weight(W.float(), scheme.bits, scheme.group_size, scheme.sym)


def rtn_searched(W: Tensor, scheme: QuantScheme) -> QuantizedWeight:
    """Round to nearest on each group's searched range: the scale and zero that minimise
    the group's rounding error over shrunk ranges (qparams_mse, GPTQ's mse=True grid), no
    calibration data. The fallback for MoE experts that received too few calibration tokens
    (model/moe.py). Per-tensor schemes (group size 0) have no search: plain rtn."""
    if W.ndim != 2:
        raise ValueError(f"rtn expects a 2-D weight (out, in), got shape {tuple(W.shape)}")
    G = scheme.group_size
    if G == 0:
        return rtn(W, scheme)
    W = W.float()
    K = W.shape[1]
    s, z = qparams_mse_grouped(W.T.contiguous(), G if G > 0 else K, scheme.bits, scheme.sym)
    scale, zero = s.T.contiguous(), z.T.to(torch.int32).contiguous()  # (N, n_groups)
    g_idx = default_g_idx(K, G, W.device)
    q = quantize(W, scale, zero, scheme.bits, g_idx)
    return QuantizedWeight(q, scale, zero, g_idx, scheme.bits, G, scheme.sym)
