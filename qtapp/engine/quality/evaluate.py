"""Perplexity and size of a model on the built-in evaluation text.

Perplexity is exp(mean negative log-likelihood) over non-overlapping windows of `ctx`
tokens of the evaluation text (disjoint from the calibration text), the first token of
each window unpredicted, as `llama-perplexity` does with its default settings
(it scores only the second half of each window; we score all but the first token, which
is why the figures are comparable between our models but not to llama.cpp's numbers).

The quality gate (KL divergence, top-1 agreement and a generation check against the source,
with the llama-perplexity protocol and a verdict) is `quality_report`, from
qtapp.engine.quality.gate.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from qtapp.engine.quality.gate import QualityReport, Thresholds, quality_report

__all__ = ["DEFAULT_CTX", "QualityReport", "Thresholds", "folder_size", "model_perplexity",
           "perplexity", "quality_report", "source_perplexity"]

DEFAULT_CTX = 512


def perplexity(model: nn.Module, tokens: torch.Tensor, ctx: int = DEFAULT_CTX,
               batch: int = 1) -> float:
    """exp(mean NLL) of `tokens` (1, T) in windows of `ctx` tokens."""
    model.eval()
    device = next(model.parameters()).device
    t = tokens.shape[1] // ctx * ctx
    if t == 0:
        raise ValueError(f"the evaluation text has {tokens.shape[1]} tokens; need at least {ctx}")
    windows = tokens[0, :t].reshape(-1, ctx)
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, windows.shape[0], batch):
            ids = windows[i : i + batch].to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = ids[:, 1:]
            nll -= logp.gather(-1, target.unsqueeze(-1)).sum().item()
            count += target.numel()
    return math.exp(nll / count)


def folder_size(path: Path) -> int:
    """Bytes of a model's weight files (safetensors, gguf): the files at the top of the
    folder, so that side data is not counted as model (AWQ's saved search under
    awq_search/, a GGUF job's imatrix.gguf)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir()
               if p.is_file() and p.suffix in (".safetensors", ".gguf")
               and not p.name.startswith("imatrix"))


def model_perplexity(path: Path, ctx: int = DEFAULT_CTX, text: str | None = None) -> float:
    """Perplexity of any folder QuantDesk can load (plain HF, GPTQ, AWQ, compressed-tensors)."""
    from qtapp.engine.model.loader import load_dequantized
    from qtapp.engine.quant.calibration import eval_tokens

    model, tokenizer = load_dequantized(Path(path))
    return perplexity(model, eval_tokens(tokenizer, text), ctx)


def source_perplexity(path: Path, ctx: int = DEFAULT_CTX) -> float:
    """Perplexity of a source model, cached per (weights, evaluation text, ctx)."""
    import hashlib
    import json

    from qtapp.engine.model.sources import cache_disk_full, cache_root
    from qtapp.engine.quant.calibration import builtin_eval_text

    path = Path(path).resolve()
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime))
             for p in sorted(path.glob("*.safetensors"))]
    key = hashlib.sha256(json.dumps([str(path), stamp, ctx]).encode()
                         + builtin_eval_text().encode()).hexdigest()[:16]
    cached = cache_root() / "ppl" / f"{key}.json"
    if cached.exists():
        try:
            return float(json.loads(cached.read_text())["ppl"])
        except (ValueError, KeyError, OSError):
            cached.unlink(missing_ok=True)
    ppl = model_perplexity(path, ctx)
    with cache_disk_full(cached.parent, "a perplexity"):
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ppl": ppl, "path": str(path)}))
        tmp.replace(cached)
    return ppl
