"""How the window writes numbers and jobs for people: sizes, parameter counts, durations,
perplexities, percentages, quality verdicts, job titles and job-spec errors. Every page and
widget formats through here. Sizes, parameter counts and durations are qtapp/engine/units.py's,
the one convention the engine's messages and the command line use too; the window only
translates the words of a duration."""

from __future__ import annotations

import re

from qtapp.engine import units
from qtapp.engine.config import JobSpec
from qtapp.engine.results import Quality
from qtapp.engine.units import format_params, format_size
from qtapp.gui.i18n import tr

__all__ = [
    "format_count",
    "format_duration",
    "format_params",
    "format_ppl",
    "format_size",
    "friendly_error",
    "job_title",
    "ppl_change",
    "quality_text",
    "size_share",
]

MISSING = "—"


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 07 s', '1 h 05 min' in the window's language (units.format_duration)."""
    return units.format_duration(seconds, (tr("{s} s"), tr("{m} min {s:02d} s"),
                                           tr("{h} h {m:02d} min")))


def format_count(n: int) -> str:
    """'950', '35k', '1.2M': a download or like count, as the Hub's pages write it."""
    if n >= 10**6:
        return f"{n / 10**6:.1f}M"
    if n >= 10**4:
        return f"{n / 10**3:.0f}k"
    if n >= 10**3:
        return f"{n / 10**3:.1f}k"
    return str(n)


def format_ppl(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def ppl_change(ppl: float | None, reference: float | None) -> str:
    """A perplexity against the original's, as a signed percentage ('+3.1 %'); '' without
    both."""
    if ppl is None or not reference:
        return ""
    return f"{(ppl / reference - 1) * 100:+.1f} %"


def size_share(size: float, reference: float) -> str:
    """' (33%)': a size as a share of the original's; '' without the original's."""
    return f" ({size / reference:.0%})" if reference else ""


def quality_text(quality: Quality | None) -> str:
    """KL divergence, top-1 agreement and the verdict's reasons of a run's quality gate
    (JobResult.quality)."""
    if quality is None or quality.kld_mean is None:
        return MISSING
    text = tr("KL divergence {kld:.4f} (99th percentile {p99:.3f}), top-1 agreement "
              "{top1:.1f} %").format(kld=quality.kld_mean, p99=quality.kld_p99 or 0.0,
                                     top1=quality.top1_agree or 0.0)
    return text + "".join(f"\n• {x}" for x in quality.reasons)


def job_title(job: JobSpec) -> str:
    """'GPTQ W4 g128 sym', 'GGUF Q4_K_M + mixed precision'."""
    settings = job.gguf.type if job.method == "gguf" else job.scheme.label
    mixed = tr(" + mixed precision") if job.rules else ""
    return f"{job.method.upper()} {settings}{mixed}"


def friendly_error(message: str) -> str:
    """A job spec's ConfigError paths in words a user knows from the method page."""
    message = re.sub(r"job\.rules\[(\d+)\]\.?", lambda m: tr("Mixed-precision rule {n}").format(
        n=int(m.group(1)) + 1) + " ", message)
    message = message.replace("job.scheme.", "").replace("job.calibration.", "calibration ")
    return message.replace("job.", "").replace(" :", ":").replace(" scheme.", " ")
