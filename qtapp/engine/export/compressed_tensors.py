"""compressed-tensors checkpoint writer (vLLM / llm-compressor format,
docs/formats.md#compressed-tensors).

compressed-tensors keeps integers signed: q_s = q − 2^(b−1) in [−2^(b−1), 2^(b−1) − 1] and
zero points zp_s = z − 2^(b−1), so W = s · (q_s − zp_s) = s · (q − z) with our unsigned
codes. Per quantized linear ``<m>`` (weights in PyTorch layout (N, K)):

pack-quantized (2, 4 and 8 bits):
    <m>.weight_packed      int32 (N, K·b/32)   q_s + 2^(b−1) (= q) packed along K, LSB first
    <m>.weight_scale       model dtype (N, G) — (N, 1) per channel, (1,) per tensor
    <m>.weight_zero_point  int32 (N·b/32, G)   asymmetric group/channel only: z packed along
                                               N (dim 0); per tensor: int8 zp_s (1,)
    <m>.weight_shape       int64 [N, K]
naive-quantized (3, 5, 6 and 7 bits):
    <m>.weight             int8 (N, K) q_s;  <m>.weight_scale;  <m>.weight_zero_point int8 zp_s

Why naive for those widths: compressed-tensors 0.20 packs any width 1…8 as a dense bit
stream, but earlier releases packed ⌊32/b⌋ values per word, so a packed 3/5/6/7-bit file
would read differently across versions; 2, 4 and 8 bits are the same in both. naive keeps
one byte per weight (no size gain over 8 bit) but reads the same everywhere; GPTQ is the
compact choice for 3 bits. vLLM's kernels run 4 and 8 bits
(docs/formats.md#compressed-tensors).

One config group per distinct scheme, targets listing the exact module names as anchored
regexes ("re:^model\\.layers\\.0\\.self_attn\\.q_proj$"); 16-bit linears go to `ignore`.
Act-order group indices cannot be stored: compressed-tensors removed actorder "group"
(the g_idx variant); act-order with static groups has plain groups and is fine.
"""

from __future__ import annotations

from typing import Any

import torch

from qtapp.engine.errors import UserError
from qtapp.engine.export.common import ExportPlan, ModuleEntry, module_regex, scale_dtype_for
from qtapp.engine.quant.primitives import QuantizedWeight, pack_int32

PACKED_BITS = (2, 4, 8)


def ct_format(bits: int) -> str:
    return "pack-quantized" if bits in PACKED_BITS else "naive-quantized"


def strategy(group_size: int) -> str:
    return "group" if group_size > 0 else ("channel" if group_size == -1 else "tensor")


def check_module(e: ModuleEntry) -> None:
    """Refuse modules compressed-tensors cannot hold, saying what to use instead."""
    if e.act_order:
        raise UserError(f"{e.name} uses act-order group indices (GPTQ desc_act without "
                        "static groups), which compressed-tensors cannot store. Use "
                        "--format gptq, or turn on static groups")
    if e.group_size > 0 and e.shape[1] % e.group_size:
        raise UserError(f"{e.name} has {e.shape[1]} input features, not a multiple of the "
                        f"group size {e.group_size}; compressed-tensors needs whole groups. "
                        "Choose a group size that divides it (e.g. 32 or 64)")


class CompressedTensorsWriter:
    name = "compressed-tensors"

    def __init__(self, plan: ExportPlan) -> None:
        self.plan = plan
        self.scale_dtype = scale_dtype_for(plan)
        for e in plan.modules.values():
            check_module(e)

    def module_tensors(self, entry: ModuleEntry, qw: QuantizedWeight,
                       ) -> dict[str, torch.Tensor]:
        b, m = entry.bits, entry.name
        offset = 2 ** (b - 1)
        scale, zero = qw.scale, qw.zero
        if entry.group_size == 0:  # one scale for the tensor: (1,)
            scale, zero = scale[:1, 0], zero[:1, 0]
        out = {f"{m}.weight_scale": scale.to(self.scale_dtype).contiguous()}
        if ct_format(b) == "pack-quantized":
            out[f"{m}.weight_packed"] = pack_int32(qw.q, b, dim=1)
            out[f"{m}.weight_shape"] = torch.tensor(entry.shape, dtype=torch.int64)
            if not entry.sym:
                out[f"{m}.weight_zero_point"] = (
                    (zero.to(torch.int64) - offset).to(torch.int8) if entry.group_size == 0
                    else pack_int32(zero, b, dim=0))
        else:
            out[f"{m}.weight"] = (qw.q.to(torch.int16) - offset).to(torch.int8)
            if not entry.sym:
                out[f"{m}.weight_zero_point"] = (zero.to(torch.int16) - offset).to(torch.int8)
        return out

    def _args(self, e: ModuleEntry) -> dict[str, Any]:
        job = self.plan.job
        args: dict[str, Any] = {
            "num_bits": e.bits,
            "type": "int",
            "symmetric": e.sym,
            "group_size": e.group_size if e.group_size > 0 else None,
            "strategy": strategy(e.group_size),
            "dynamic": False,
        }
        if job.method == "gptq" and job.gptq.act_order:
            args["actorder"] = "weight"  # static groups: activation order, plain groups
        return args

    def quantization_config(self) -> dict[str, Any]:
        groups: dict[tuple, list[str]] = {}
        for e in self.plan.sorted_modules():
            groups.setdefault((e.bits, e.group_size, e.sym), []).append(e.name)
        formats = {ct_format(bits) for bits, _, _ in groups}
        config_groups = {}
        for i, names in enumerate(groups.values()):
            e = self.plan.modules[names[0]]
            config_groups[f"group_{i}"] = {
                "targets": ["re:" + module_regex(n) for n in names],
                "weights": self._args(e),
                "input_activations": None,
                "output_activations": None,
                "format": ct_format(e.bits),
            }
        return {
            "quant_method": "compressed-tensors",
            "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed",
            "config_groups": config_groups,
            "ignore": self.plan.float_linears(),
            "kv_cache_scheme": None,
            "global_compression_ratio": None,
        }

    def notes(self) -> list[str]:
        notes = []
        naive = sorted({e.bits for e in self.plan.modules.values()
                        if ct_format(e.bits) == "naive-quantized"})
        if naive:
            notes.append(f"{'/'.join(map(str, naive))}-bit modules are stored naive-quantized "
                         "(one int8 per weight): compressed-tensors reads them in every "
                         "version, but they are not smaller than 8-bit weights. GPTQ stores "
                         "3-bit weights compactly.")
        if any(not e.sym and e.group_size != 0 and ct_format(e.bits) == "pack-quantized"
               for e in self.plan.modules.values()):
            notes.append("Asymmetric zero points are packed, as llm-compressor writes them. "
                         "vLLM reads them; transformers 5 with compressed-tensors 0.20 loads them "
                         "only with quantization_config=CompressedTensorsConfig(dequantize=True), "
                         "and then only when every module has the same scheme "
                         "(vllm-project/llm-compressor#1618).")
        return notes
