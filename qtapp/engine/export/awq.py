"""AWQ checkpoint writer: AutoAWQ's GEMM layout (docs/formats.md#awq-gemm), 4-bit only.

Per quantized linear ``<m>`` (K = in_features, N = out_features, G = K / group_size):

    <m>.qweight  int32 (K, N/8)    codes packed along N (output columns), K stays rows
    <m>.qzeros   int32 (G, N/8)    zero points, same packing, stored as is (no −1)
    <m>.scales   float16 (G, N)

Word c holds columns 8c … 8c+7 interleaved: nibble i (bits 4i … 4i+3) is column
8c + ORDER[i], ORDER = [0, 2, 4, 6, 1, 3, 5, 7] (AutoAWQ gemm.py from_linear).
W[n, k] = scales[k // gs, n] · (q[k, n] − z[k // gs, n]).

AWQ GEMM always applies zero points: AutoAWQ's from_linear asserts they exist, so
``zero_point`` is always true here. Symmetric schemes are stored exactly as what they are
on that grid — codes with the explicit zero point 8 (= 2^(b−1)) — which every GEMM loader
dequantizes correctly; the model card says the scheme was symmetric.
AWQ has one group size for the whole model and no per-column group index, so mixed bits,
mixed group sizes and act-order are refused (compressed-tensors or GPTQ hold them).
"""

from __future__ import annotations

from typing import Any

import torch

from qtapp.engine.errors import UserError
from qtapp.engine.export.common import ExportPlan, ModuleEntry, to_float16
from qtapp.engine.quant.primitives import QuantizedWeight

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """(R, C) 4-bit codes → (R, C/8) int32 words in AWQ's interleaved order."""
    r, c = codes.shape
    v = codes.to(torch.int64).reshape(r, c // 8, 8)
    word = torch.zeros((r, c // 8), dtype=torch.int64)
    for i, col in enumerate(AWQ_ORDER):
        word |= v[:, :, col] << (4 * i)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def check_module(e: ModuleEntry) -> None:
    """Refuse modules the AWQ GEMM format cannot hold, saying what to use instead."""
    n, k = e.shape
    if e.bits != 4:
        raise UserError(f"{e.name} is quantized to {e.bits} bits, but the AWQ GEMM format "
                        "holds 4-bit weights only. Use --format compressed-tensors (any "
                        "bits, mixed precision) or --format gptq (2/3/4/8 bits)")
    if e.act_order:
        raise UserError(f"{e.name} uses act-order group indices, which the AWQ format "
                        "cannot store; use --format gptq")
    if e.group_size > 0 and k % e.group_size:
        raise UserError(f"{e.name} has {k} input features, not a multiple of the group "
                        f"size {e.group_size}; AWQ needs whole groups. Choose a group size "
                        "that divides it (e.g. 32 or 64)")
    if n % 8:
        raise UserError(f"{e.name} has {n} output features; AWQ packs 8 per word and needs "
                        "a multiple of 8. Use --format compressed-tensors")


class AWQWriter:
    name = "awq"

    def __init__(self, plan: ExportPlan) -> None:
        self.plan = plan
        entries = plan.sorted_modules()
        for e in entries:
            check_module(e)
        sizes = {self._group(e) for e in entries}
        if len(sizes) > 1:
            raise UserError(f"the AWQ format has one group size per model, but this one mixes "
                            f"{', '.join(map(str, sorted(sizes)))}; use one group size, or "
                            "--format compressed-tensors")
        self.group_size = sizes.pop()

    @staticmethod
    def _group(e: ModuleEntry) -> int:
        return e.group_size if e.group_size > 0 else -1

    def module_tensors(self, entry: ModuleEntry, qw: QuantizedWeight,
                       ) -> dict[str, torch.Tensor]:
        return {
            f"{entry.name}.qweight": pack_awq(qw.q.T.contiguous()),       # (K, N/8)
            f"{entry.name}.qzeros": pack_awq(qw.zero.T.contiguous()),     # (G, N/8)
            f"{entry.name}.scales": to_float16(qw.scale.T.contiguous(), entry.name),  # (G, N)
        }

    def quantization_config(self) -> dict[str, Any]:
        return {
            "quant_method": "awq",
            "zero_point": True,
            "group_size": self.group_size,
            "bits": 4,
            "version": "gemm",
            "modules_to_not_convert": self.plan.float_linears(),
        }

    def notes(self) -> list[str]:
        if any(e.sym for e in self.plan.modules.values()):
            return [("The scheme is symmetric; AWQ GEMM always carries zero points, so the codes "
                    "are stored with the explicit zero point 8 (zero_point: true).")]
        return []
