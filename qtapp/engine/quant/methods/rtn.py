"""RTN: round-to-nearest on a min/max grid, the baseline every other method must beat."""

from __future__ import annotations

from torch import Tensor

from qtapp.engine.config import QuantScheme
from qtapp.engine.quant.primitives import QuantizedWeight, quantize_weight


def rtn(W: Tensor, scheme: QuantScheme) -> QuantizedWeight:
    """Quantize W (N, K) = (out, in) to `scheme` by rounding each weight to its group's grid.

    The math runs in float32 on W's device; scale/zero come from each group's min/max.
    """
    if W.ndim != 2:
        raise ValueError(f"rtn expects a 2-D weight (out, in), got shape {tuple(W.shape)}")
    return quantize_weight(W.float(), scheme.bits, scheme.group_size, scheme.sym)
