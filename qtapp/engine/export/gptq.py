"""GPTQ checkpoint writer: the AutoGPTQ / GPTQModel / transformers+optimum layout
(docs/formats.md#gptq).

Per quantized linear ``<m>`` (K = in_features, N = out_features, pf = 32/b values per word):

    <m>.qweight  int32 (K·b/32, N)   codes packed along K, LSB first (3-bit: 32 values in
                                     3 words, values 10 and 21 straddle words)
    <m>.qzeros   int32 (G, N·b/32)   zero points packed along N, same order; v1 stores z − 1
    <m>.scales   float16 (G, N)
    <m>.g_idx    int32 (K,)          group of each input column (act-order keeps it permuted)

W[n, k] = scales[g, n] · (q[k, n] − z[g, n]) with g = g_idx[k]. Symmetric schemes have
z = 2^(b−1), so a 4-bit symmetric v1 file has qzeros words 0x77777777.

Format version: v1 ("gptq") is what every loader reads. It stores z − 1, which wraps when
an asymmetric zero point is 0; then the whole checkpoint is written as "gptq_v2" (z as is),
which GPTQModel reads and others may not (docs/formats.md#gptq-zero-points) — the writer
reports it.
Per-tensor schemes are written as per-channel (group_size −1) with the scale repeated.
Modules with another scheme than the most common one get a GPTQModel ``dynamic`` override
``"+:<regex>": {bits, group_size, sym}``; 16-bit linears inside blocks get ``"-:<regex>"``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

import qtapp
from qtapp.engine.errors import UserError
from qtapp.engine.export.common import (
    ExportPlan,
    ModuleEntry,
    module_regex,
    natural_key,
    to_float16,
)
from qtapp.engine.model.arch import arch_for
from qtapp.engine.quant.primitives import QuantizedWeight, pack_int32

GPTQ_BITS = (2, 3, 4, 8)


def values_per_word(bits: int) -> int:
    """Values that make a whole number of int32 words: 32/b, or 32 values in 3 words at b = 3."""
    return 32 if bits == 3 else 32 // bits


def gptq_group_size(group_size: int) -> int:
    """GPTQ's group_size: per-tensor (0) and per-channel (−1) are both −1 (one group)."""
    return group_size if group_size > 0 else -1


def check_module(entry: ModuleEntry) -> None:
    """Refuse modules GPTQ cannot hold, with the reason and what to do instead."""
    n, k = entry.shape
    if entry.bits not in GPTQ_BITS:
        raise UserError(f"{entry.name} is quantized to {entry.bits} bits; the GPTQ format holds "
                        f"{', '.join(map(str, GPTQ_BITS))} bits only. Export with --format "
                        "compressed-tensors, or use one of those bit widths")
    if entry.group_size > 0 and k % entry.group_size:
        raise UserError(f"{entry.name} has {k} input features, not a multiple of the group "
                        f"size {entry.group_size}; GPTQ loaders need whole groups. Choose a "
                        "group size that divides it (e.g. 32 or 64) or per-channel (-1)")
    pf = values_per_word(entry.bits)
    if k % pf or n % pf:
        raise UserError(f"{entry.name} has shape {n}×{k}; {entry.bits}-bit GPTQ packing needs "
                        f"both dimensions to be multiples of {pf}. Export with --format "
                        "compressed-tensors instead")


class GPTQWriter:
    name = "gptq"

    def __init__(self, plan: ExportPlan) -> None:
        self.plan = plan
        for entry in plan.modules.values():
            check_module(entry)
        self.v2 = self._needs_v2()
        self.checkpoint_format = "gptq_v2" if self.v2 else "gptq"

    def _needs_v2(self) -> bool:
        """True when some asymmetric zero point is 0, which v1's z − 1 would wrap."""
        by_block: dict[int, list[str]] = {}
        for e in self.plan.modules.values():
            if not e.sym:
                by_block.setdefault(e.block, []).append(e.key)
        for b, keys in by_block.items():
            zeros = self.plan.store.load_parts(b, keys, "zero")
            if any(int(z.min()) == 0 for z in zeros.values()):
                return True
        return False

    def module_tensors(self, entry: ModuleEntry, qw: QuantizedWeight,
                       ) -> dict[str, torch.Tensor]:
        b = entry.bits
        zeros = qw.zero.to(torch.int64).T.contiguous()  # (G, N)
        if not self.v2:
            zeros = zeros - 1
        return {
            f"{entry.name}.qweight": pack_int32(qw.q.T.contiguous(), b, dim=0),
            f"{entry.name}.qzeros": pack_int32(zeros, b, dim=1),
            f"{entry.name}.scales": to_float16(qw.scale.T.contiguous(), entry.name),
            f"{entry.name}.g_idx": qw.g_idx.to(torch.int32).contiguous(),
        }

    # quantization_config ----------------------------------------------------------------
    def _norm(self, entry: ModuleEntry) -> tuple[int, int, bool]:
        return (entry.bits, gptq_group_size(entry.group_size), entry.sym)

    def dynamic(self) -> dict[str, dict[str, Any]]:
        """GPTQModel per-module overrides: '+:regex' → scheme, '-:regex' → left in 16 bit.

        GPTQModel takes the first pattern that matches (re.match) a module's full name.
        A module kind gets one pattern for all layers when every layer's copy of it has the
        same scheme; otherwise each module gets its own anchored pattern.
        """
        plan = self.plan
        base = self._base()
        prefix = plan.layers_prefix
        rx = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
        layer_modules: dict[str, dict[int, tuple[int, int, bool] | None]] = {}
        loose: dict[str, tuple[int, int, bool] | None] = {}
        for e in plan.modules.values():
            m = rx.match(e.name)
            if m:
                layer_modules.setdefault(m.group(2), {})[int(m.group(1))] = self._norm(e)
            else:
                loose[e.name] = self._norm(e)
        for name in plan.float_linears():
            m = rx.match(name)
            if m:
                layer_modules.setdefault(m.group(2), {})[int(m.group(1))] = None
        out: dict[str, dict[str, Any]] = {}

        def add(pattern: str, scheme: tuple[int, int, bool] | None) -> None:
            if scheme is None:
                out["-:" + pattern] = {}
            elif scheme != base:
                out["+:" + pattern] = {"bits": scheme[0], "group_size": scheme[1],
                                       "sym": scheme[2]}

        for suffix, per_layer in sorted(layer_modules.items()):
            kinds = set(per_layer.values())
            if len(kinds) == 1:
                add(rf"^{re.escape(prefix)}\.\d+\.{re.escape(suffix)}$", kinds.pop())
            else:
                for i, scheme in sorted(per_layer.items()):
                    add(module_regex(f"{prefix}.{i}.{suffix}"), scheme)
        for name, scheme in sorted(loose.items()):
            add(module_regex(name), scheme)
        return out

    def _base(self) -> tuple[int, int, bool]:
        bits, gs, sym = self.plan.base_scheme()
        return (bits, gptq_group_size(gs), sym)

    def modules_in_block(self) -> list[list[str]] | None:
        """The quantized linears of a block, when every block has the same ones and some
        in-block linear stays in 16 bit (optimum and vLLM then skip the others)."""
        prefix = self.plan.layers_prefix
        rx = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
        per_block: dict[int, set[str]] = {}
        for name in self.plan.modules:
            m = rx.match(name)
            if m:
                per_block.setdefault(int(m.group(1)), set()).add(m.group(2))
        skipped = [n for n in self.plan.float_linears() if rx.match(n)]
        sets = {frozenset(s) for s in per_block.values()}
        if not skipped or len(sets) != 1:
            return None
        return [sorted(sets.pop(), key=natural_key)]

    def quantization_config(self) -> dict[str, Any]:
        bits, group_size, sym = self._base()
        job = self.plan.job
        opts = job.gptq
        act_order = any(e.act_order for e in self.plan.modules.values()) or (
            job.method == "gptq" and opts.act_order)
        static_groups = job.method == "gptq" and opts.act_order and opts.static_groups
        true_sequential = job.method != "gptq" or opts.true_sequential
        config: dict[str, Any] = {
            "quant_method": "gptq",
            "bits": bits,
            "group_size": group_size,
            "desc_act": bool(act_order),
            "sym": sym,
            "static_groups": bool(static_groups),
            "true_sequential": bool(true_sequential),
            "damp_percent": float(opts.percdamp),
            "checkpoint_format": self.checkpoint_format,
            "format": self.checkpoint_format,
            "pack_dtype": "int32",
            "lm_head": False,
            "meta": {
                "quantizer": [f"quantdesk:{qtapp.__version__}"],
                "method": job.method,
                "damp_percent": float(opts.percdamp),
                "static_groups": bool(static_groups),
                "true_sequential": bool(true_sequential),
            },
        }
        dynamic = self.dynamic()
        if dynamic:
            config["dynamic"] = dynamic
        in_block = self.modules_in_block()
        if in_block:
            config["modules_in_block_to_quantize"] = in_block
        blocks = arch_for(self.plan.config).layers_prefix  # transformers' module names
        if blocks != "model.layers":  # a vision-language model: the language model's blocks
            config["block_name_to_quantize"] = blocks  # (optimum would take the first found)
        return config

    def notes(self) -> list[str]:
        notes = []
        if len({e.bits for e in self.plan.modules.values()}) > 1:
            notes.append("Modules have different bit widths, given per module in `dynamic`. "
                         "GPTQModel (GPTQModel.load) and vLLM read it; transformers (through "
                         "optimum) ignores it and cannot load this folder. For transformers, "
                         "export mixed precision as compressed-tensors.")
        if self.v2:
            notes.append("Some asymmetric zero points are 0, which the usual GPTQ v1 layout "
                         "(zero − 1) cannot store; this checkpoint uses format gptq_v2 (zeros as "
                         "is), which GPTQModel reads, also under transformers. AutoGPTQ and "
                         "other v1-only loaders cannot.")
        return notes
