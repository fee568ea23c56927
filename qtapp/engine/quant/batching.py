"""Mini-batching of captured block inputs, shared by the pipeline and the methods."""

from __future__ import annotations

from typing import Any

import torch


def fit_batch(obj: Any, full: int, b: int) -> Any:
    """Slice kwargs captured for a batch of `full` samples down to `b` samples."""
    if isinstance(obj, torch.Tensor):
        return obj[:b] if obj.dim() > 0 and obj.shape[0] == full and b != full else obj
    if isinstance(obj, tuple):
        return tuple(fit_batch(o, full, b) for o in obj)
    if isinstance(obj, list):
        return [fit_batch(o, full, b) for o in obj]
    if isinstance(obj, dict):
        return {k: fit_batch(v, full, b) for k, v in obj.items()}
    return obj


def first_output(out: Any) -> torch.Tensor:
    """A module's main output: transformers blocks return a tensor or a tuple by version."""
    return out[0] if isinstance(out, (tuple, list)) else out
