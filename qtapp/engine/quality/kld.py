"""KL divergence between a source model's next-token distributions and a quantized model's.

Notation (per scored position t): P = softmax of the source's logits, Q = the quantized
model's, V the vocabulary. The exact divergence is

    KL(P‖Q) = Σ_{v ∈ V} P(v) (log P(v) − log Q(v)),

which needs the whole of P: 49 152 floats per position for the demo model, 152 064 for Qwen.
The source side is therefore stored compactly, once per (model, tokens, ctx), as

    S = top-k(P)         the k most likely token ids and their log-probabilities,
    log P(T)             T = V ∖ S, the log of the tail mass (a log-sum-exp of the rest),
    −log P(x_{t+1})      the source's negative log-likelihood of the actual next token,

    U = m tail tokens   drawn from P restricted to T by systematic sampling: the tail
                        sorted by P, u_j = (j + ½)/m, v_j = the token where the tail's CDF
                        passes u_j (deterministic, stratified over probability levels),
    log P(U)            their log-probabilities,

and the divergence is evaluated as the top-k part plus a sampled estimate of the tail:

    KL_k(P‖Q) = Σ_{v ∈ S} P(v) (log P(v) − log Q(v))
              + P(T) · (1/m) Σ_j (log P(v_j) − log Q(v_j)),

since Σ_{v∈T} P(v) log(P(v)/Q(v)) = P(T) · E_{v∼P_T}[log P(v) − log Q(v)]. The estimate
is unbiased up to the stratification (per position it can come out slightly below 0; it is
not clamped, which would bias the mean upwards). Treating the tail
as one bucket instead is a lower bound that proved 17 % low on a 135M model whose top 32
tokens hold only 89 % of the mass; the sampled tail with k = m = 32 is within 1–2 % of the
exact mean KLD there (+0.3 % on 1 500 positions of the de-gridded demo at Q4_K_M, against
the exact KLD of llama-perplexity's own logits; tests/engine/test_quality.py measures the
error on a tiny model with a 24 % tail).
The top-1 agreement and the source perplexity come from S[0] and −log P(x_{t+1}) exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qtapp.engine.errors import UserError

TOP_K = 32
TAIL_SAMPLES = 32


@dataclass
class SourceDistributions:
    """The source's compact distributions at N scored positions."""

    top_ids: np.ndarray   # (N, k) int32, most likely first
    top_logp: np.ndarray  # (N, k) float32, log P of those ids
    log_tail: np.ndarray  # (N,) float32, log P(T), −inf when S holds all the mass
    nll: np.ndarray       # (N,) float32, −log P(next token)
    tail_ids: np.ndarray  # (N, m) int32, systematic sample of the tail
    tail_logp: np.ndarray  # (N, m) float32, log P of those ids

    def save(self, file: Path) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.tmp-{os.getpid()}.npz")  # two jobs may save it
        try:
            np.savez(tmp, **{f: getattr(self, f) for f in FIELDS})
            tmp.replace(file)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, file: Path) -> SourceDistributions:
        with np.load(file) as z:
            return cls(*(z[f] for f in FIELDS))

    @classmethod
    def concat(cls, parts: list[SourceDistributions]) -> SourceDistributions:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))

    def rows(self, start: int, stop: int) -> SourceDistributions:
        return SourceDistributions(*(getattr(self, f)[start:stop] for f in FIELDS))


FIELDS = ("top_ids", "top_logp", "log_tail", "nll", "tail_ids", "tail_logp")


def _log_tail(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log Σ_{v ∉ ids} exp(logp[v]) per row, computed without cancellation."""
    rest = logp.scatter(-1, ids, float("-inf"))
    return torch.logsumexp(rest, dim=-1)


def _tail_sample(logp: torch.Tensor, top_ids: torch.Tensor, m: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """m tokens per row drawn systematically from P restricted to the tail (see above)."""
    p = logp.exp().scatter(-1, top_ids, 0.0)
    p_sorted, order = torch.sort(p, dim=-1, descending=True)
    cdf = torch.cumsum(p_sorted.double(), dim=-1)
    total = cdf[:, -1:].clamp_min(1e-300)
    u = (torch.arange(m, dtype=torch.float64) + 0.5) / m * total
    pos = torch.searchsorted(cdf, u).clamp_max(p.shape[-1] - 1)
    ids = order.gather(-1, pos)
    return ids, logp.gather(-1, ids)


def summarize(logits: torch.Tensor, targets: torch.Tensor, k: int = TOP_K,
              m: int = TAIL_SAMPLES) -> SourceDistributions:
    """Compact form of the source's distributions: logits (N, V) at positions predicting
    targets (N,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top_logp, top_ids = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
    nll = -logp.gather(-1, targets.view(-1, 1))[:, 0]
    tail_ids, tail_logp = _tail_sample(logp, top_ids, m)
    return SourceDistributions(top_ids.to(torch.int32).numpy(), top_logp.numpy(),
                               _log_tail(logp, top_ids).numpy(), nll.numpy(),
                               tail_ids.to(torch.int32).numpy(), tail_logp.numpy())


@dataclass
class Comparison:
    """Per-position figures of the quantized model against the source."""

    kld: np.ndarray     # (N,) KL_k(P‖Q) in nats
    nll: np.ndarray     # (N,) −log Q(next token)
    agree: np.ndarray   # (N,) bool, argmax Q == argmax P


def compare(source: SourceDistributions, logits: torch.Tensor, targets: torch.Tensor
            ) -> Comparison:
    """KL_k, NLL and top-1 agreement of the quantized logits (N, V) against `source`."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.from_numpy(source.top_ids.astype(np.int64))
    if int(ids.max()) >= logq.shape[-1]:
        raise UserError(f"the model's vocabulary ({logq.shape[-1]} tokens) is smaller than the "
                        "source's; compare a quantized model only with its own source")
    logp_s = torch.from_numpy(source.top_logp)
    logq_s = logq.gather(-1, ids)
    head = (logp_s.exp() * (logp_s - logq_s)).sum(-1)
    log_pt = torch.from_numpy(source.log_tail)
    tail_ids = torch.from_numpy(source.tail_ids.astype(np.int64))
    ratio = (torch.from_numpy(source.tail_logp) - logq.gather(-1, tail_ids)).mean(-1)
    tail = torch.where(torch.isfinite(log_pt), log_pt.exp() * ratio, torch.zeros_like(log_pt))
    kld = head + tail
    nll = -logq.gather(-1, targets.view(-1, 1))[:, 0]
    agree = logq.argmax(-1) == ids[:, 0]
    return Comparison(kld.numpy(), nll.numpy(), agree.numpy())


def exact_kld(source_logits: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
    """KL(P‖Q) per row over the whole vocabulary (for tests and benchmarks)."""
    logp = torch.log_softmax(source_logits.double(), dim=-1)
    logq = torch.log_softmax(logits.double(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).numpy()
