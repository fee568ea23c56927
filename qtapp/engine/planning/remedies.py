"""What to try when a run's quality verdict is degraded or broken (docs/quality.md): a
smaller group, a calibrated method (AWQ), attention 8-bit, a size budget, more calibration;
for GGUF a larger type or an importance matrix. Each remedy is the run's job with that one
change, with the output size the planner predicts for it (budget.job_bytes) when the source
model can be read: the price of the remedy in disk and memory, next to what it buys.

    remedies(job, info=None, size_bytes=0) -> [Remedy, ...]

The words are the caller's (the window translates them); `Remedy.key` says which change."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qtapp.engine.config import (
    GROUP_SIZES,
    PER_CHANNEL,
    PER_TENSOR,
    JobSpec,
    preset_rules,
)
from qtapp.engine.errors import UserError
from qtapp.engine.model.sources import ModelInfo
from qtapp.engine.planning.budget import job_bytes

# GGUF types from smaller to closer to the source (the llama.cpp quantize table's order)
GGUF_LADDER = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_S",
               "Q5_K_M", "Q6_K", "Q8_0")
MORE_SAMPLES_UP_TO = 512  # calibration past this rarely changes a 4-bit result
PRESET = "attn8-ffn4"  # config.PRESETS: attention q/k/v/o at 8 bit, the FFN at the job's bits
KEYS = ("group", "awq", "attention8", "budget", "calibration", "gguf_type", "imatrix")


@dataclass(frozen=True)
class Remedy:
    key: str  # one of KEYS: what changes
    job: JobSpec  # the run's job with that change
    size_bytes: int | None = None  # the planner's output size for `job`; None when unknown


def remedies(job: JobSpec, info: ModelInfo | None = None, size_bytes: int = 0) -> list[Remedy]:
    """The changes worth trying after `job` gave a degraded or broken result, most promising
    first; `size_bytes` is what the run wrote (the size budget's target keeps it). With
    `info`, each carries the planner's size of its output."""
    found: list[tuple[str, JobSpec]] = []
    if job.method == "gguf":
        ladder = GGUF_LADDER.index(job.gguf.type) if job.gguf.type in GGUF_LADDER else None
        if ladder is not None and ladder + 1 < len(GGUF_LADDER):
            found.append(("gguf_type", dataclasses.replace(
                job, gguf=dataclasses.replace(job.gguf, type=GGUF_LADDER[ladder + 1]))))
        if job.gguf.imatrix == "none":
            found.append(("imatrix", dataclasses.replace(
                job, gguf=dataclasses.replace(job.gguf, imatrix="auto"))))
    else:
        group = _smaller_group(job.scheme.group_size)
        if group is not None:
            found.append(("group", dataclasses.replace(
                job, scheme=dataclasses.replace(job.scheme, group_size=group))))
        if job.method != "awq" and job.scheme.bits == 4:
            found.append(("awq", dataclasses.replace(job, method="awq")))
        if not job.rules and job.scheme.bits < 8:
            found.append(("attention8", dataclasses.replace(
                job, rules=preset_rules(PRESET, job.scheme))))
    if not job.target_bytes and not job.target_bpw and size_bytes > 0 and job.method != "rtn":
        found.append(("budget", dataclasses.replace(job, target_bytes=size_bytes)))
    if job.method != "rtn" and job.calibration.samples < MORE_SAMPLES_UP_TO and (
            job.method != "gguf" or job.gguf.imatrix != "none"):
        found.append(("calibration", dataclasses.replace(
            job, calibration=dataclasses.replace(
                job.calibration, samples=min(job.calibration.samples * 2,
                                             MORE_SAMPLES_UP_TO)))))
    return [Remedy(key, changed, predicted_size(changed, info)) for key, changed in found]


def _smaller_group(group_size: int) -> int | None:
    """The next smaller group size (per-channel or per-tensor scales: 128), or None at the
    smallest."""
    if group_size in (PER_CHANNEL, PER_TENSOR):
        return 128
    smaller = [g for g in GROUP_SIZES if g < group_size]
    return smaller[-1] if smaller and smaller[-1] >= 32 else None


def predicted_size(job: JobSpec, info: ModelInfo | None) -> int | None:
    """The planner's output size of `job` (its target under a size budget); None without
    `info` or when the planner cannot tell."""
    if job.target_bytes:
        return job.target_bytes  # the planner allocates bits to fill exactly this
    if info is None:
        return None
    try:
        return job_bytes(job, info)
    except (UserError, OSError, ValueError, KeyError):
        return None
