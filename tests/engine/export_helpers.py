"""Shared by the export and loader tests: RTN-quantize a tiny model folder (conftest's
`make_tiny_model`) into a QuantStore, and build a float reference model from the store."""

from __future__ import annotations

from pathlib import Path

import torch

from qtapp.engine.config import JobSpec, ModuleRule, QuantScheme
from qtapp.engine.quant.primitives import QuantizedWeight, default_g_idx, quantize, quantize_weight
from qtapp.engine.quant.qstore import QuantStore

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
N_LAYERS = 2


def job_for(method: str = "rtn", bits: int = 4, group_size: int = 32, sym: bool = True,
            rules: tuple[ModuleRule, ...] = (), **kw) -> JobSpec:
    return JobSpec(model="tiny", method=method, out="unused",
                   scheme=QuantScheme(bits, group_size, sym), rules=rules, **kw)


def act_order_weight(w: torch.Tensor, bits: int, group_size: int, sym: bool,
                     seed: int = 0) -> QuantizedWeight:
    """RTN with GPTQ act-order group indices: groups formed in a random column order, then
    g_idx un-permuted (AutoGPTQ gptq.py), so g_idx is not monotonic."""
    from qtapp.engine.quant.primitives import qparams_from_range

    k = w.shape[1]
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    invperm = torch.argsort(perm)
    g_idx = (torch.arange(k, dtype=torch.int32) // group_size)[invperm]
    n_groups = -(-k // group_size)
    wmin = torch.stack([w[:, g_idx == g].amin(dim=1) for g in range(n_groups)], dim=1)
    wmax = torch.stack([w[:, g_idx == g].amax(dim=1) for g in range(n_groups)], dim=1)
    scale, zero = qparams_from_range(wmin, wmax, bits, sym)
    q = quantize(w.float(), scale, zero, bits, g_idx)
    assert not torch.equal(g_idx, default_g_idx(k, group_size))
    return QuantizedWeight(q, scale, zero, g_idx, bits, group_size, sym)


def quantize_to_store(source: Path, store_root: Path, job: JobSpec,
                      act_order: bool = False, fingerprint: str = "fp") -> QuantStore:
    """RTN every linear the job quantizes, block by block, into a QuantStore."""
    from safetensors import safe_open

    store = QuantStore(store_root, fingerprint=fingerprint)
    with safe_open(str(source / "model.safetensors"), framework="pt") as f:
        for i in range(N_LAYERS):
            modules = {}
            for rel in LINEARS:
                name = f"model.layers.{i}.{rel}"
                scheme = job.scheme_for(name)
                if scheme is None:
                    continue
                w = f.get_tensor(name + ".weight").float()
                if act_order:
                    modules[rel] = act_order_weight(w, scheme.bits, scheme.group_size,
                                                    scheme.sym, seed=i)
                else:
                    modules[rel] = quantize_weight(w, scheme.bits, scheme.group_size,
                                                   scheme.sym)
            store.save_block(i, modules, {"block": i})
    return store


def reference_model(source: Path, store: QuantStore, scale_dtype: torch.dtype | None):
    """The source model in float32 with every quantized weight replaced by s·(q − z), the
    scale rounded to `scale_dtype` first (the dtype the format stores)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        for i in store.completed():
            modules, _meta, _floats = store.load_block(i)
            for rel, qw in modules.items():
                s = qw.scale if scale_dtype is None else qw.scale.to(scale_dtype).float()
                w = QuantizedWeight(qw.q, s, qw.zero, qw.g_idx, qw.bits, qw.group_size,
                                    qw.sym).dequantize()
                model.get_submodule(f"model.layers.{i}.{rel}").weight.copy_(w)
    return model.eval()


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, model.config.vocab_size, (2, 24),
                        generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits.float()
