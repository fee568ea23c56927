"""Attention for float32 calibration forwards on a GPU.

transformers' "sdpa" attention hands grouped-query attention to PyTorch with
``enable_gqa=True`` when there is no mask. In float32 on CUDA, the flash kernel is not
available (half precision only) and the memory-efficient kernel does not take
``enable_gqa``, so PyTorch falls back to the math kernel, which materialises the
(batch, heads, L, L) score matrix: 1 GiB per 2048-token sample of a Llama-1B/8B block, 8 GiB
for a mini-batch of 8 (measured on an H100 with `benchmarks/gpu_memory_stages.py`).

``quantdesk_sdpa`` repeats the key/value heads first (as transformers does whenever a mask
is given) and then calls the same sdpa path, which the memory-efficient kernel serves: same
result, memory linear in L.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

# transformers is imported inside the functions that use it (GPU forwards only): it takes about
# half a second to import.

NAME = "quantdesk_sdpa"
_registered = False


def _sdpa_repeated_kv(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    plain = SimpleNamespace(num_key_value_groups=1, is_causal=getattr(module, "is_causal", True))
    return sdpa_attention_forward(plain, query, key, value, attention_mask, **kwargs)


def supports_sdpa(config: Any) -> bool:
    """Whether transformers' causal-LM class of `config` runs sdpa attention (and so
    gpu_attention, whose name transformers treats as sdpa). gpt-oss does not: sdpa has no
    term for its attention sinks, and transformers refuses the request."""
    from transformers import AutoModelForCausalLM

    try:
        cls = AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        return False
    return bool(getattr(cls, "_supports_sdpa", False))


def gpu_attention() -> str:
    """Register (once) and return the attention implementation name for GPU forwards."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, _sdpa_repeated_kv)
        _registered = True
    return NAME
