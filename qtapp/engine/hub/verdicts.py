"""Will it fit? One answer per method for a Hub model on this machine, from config.json alone.

    fit_verdicts(model, machine=None) -> list[FitVerdict]   GGUF Q4_K_M, GGUF Q8_0, GPTQ W4,
                                                            AWQ W4
    compat_verdict(model) -> FitVerdict                     the compatibility check's answer

``model`` is a HubModel whose config is config.json itself (search.with_full_config; a search
answer's trimmed config has no widths: every verdict then says so, fits None). ``machine`` is
a planning.hardware.Hardware (default: this machine, detected without torch).

Each verdict joins two of the planner's answers: can this machine quantize it
(planner.quantize_fit: the job's peak memory on the GPU, else in RAM, against the limits the
planner refuses a job by), and where does the result run (advisor.run_bytes at RUN_CTX
tokens against advisor.fits: the GPU, RAM, or nowhere). The output's size is the planner's
formula from the shape (planner.formula_bytes). For GPTQ and AWQ on a GPU the text names the
longest context in CONTEXTS whose KV cache still fits the card. Sizes are in binary units
(GiB), as everywhere in QuantDesk (qtapp/engine/units.py).

    fits True   it can be quantized here and the result runs here
    fits False  too large (the text names the need), or the method refuses the family
    fits None   unknown (neither config.json widths nor a parameter count)

Each verdict carries its facts (kind among KINDS, the byte figures, the context) beside the
English ``text`` the CLI prints; the window composes the sentence in its own language from the
facts (gui/widgets/hub_browser.verdict_text).

A gated model whose licence is not accepted yet has no readable config.json: its verdicts are
counted from the parameter count of the search answer (sizes and the runtime's overhead, no
KV cache) and say "(from the parameter count)".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qtapp.engine.config import GGUFOptions, JobSpec
from qtapp.engine.hub.search import HubModel
from qtapp.engine.planning import hardware
from qtapp.engine.planning.advisor import (
    RUN_CTX,
    RUNTIME_OVERHEAD_FIXED,
    RUNTIME_OVERHEAD_FRACTION,
    SAMPLES_CPU,
    SAMPLES_GPU,
    fits,
    run_bytes,
)
from qtapp.engine.planning.compat import config_checks
from qtapp.engine.planning.hardware import Hardware
from qtapp.engine.planning.planner import GGUF_BPW, VRAM_USABLE, formula_bytes, quantize_fit
from qtapp.engine.planning.shape import ModelShape, bits_per_weight, shape_of, weight_bytes
from qtapp.engine.units import format_size

CONTEXTS = (131072, 65536, 32768, 16384, 8192, 4096, 2048)
# (method, label, bits, GGUF type)
METHODS: tuple[tuple[str, str, int, str], ...] = (
    ("gguf", "GGUF Q4_K_M", 4, "Q4_K_M"),
    ("gguf", "GGUF Q8_0", 8, "Q8_0"),
    ("gptq", "GPTQ W4", 4, ""),
    ("awq", "AWQ W4", 4, ""),
)


# what a verdict says, as facts (FitVerdict.kind); the English `text` is composed from them by
# describe(), and the window composes its own sentence in its language from the same facts
KINDS = ("fits_gpu",         # quantized here, runs on the GPU (context: GPTQ/AWQ's longest)
         "runs_in_ram",      # quantized here, runs in RAM (no GPU, or the GPU is too small)
         "too_large",        # running it needs need_bytes, more than the GPU or RAM has
         "cannot_quantize",  # it would run here, but quantizing it needs need_bytes of memory
         "unsupported",      # the method refuses the family (reason), or compat: no method
         "supported",        # compat: the methods in `supported`, not those in `refused`
         "unknown")          # no config.json widths and no parameter count / no model_type


@dataclass
class FitVerdict:
    method: str        # "gguf", "gptq", "awq"; "compat" for compat_verdict
    label: str         # "GGUF Q4_K_M", "GPTQ W4", … ("compatibility")
    fits: bool | None
    text: str          # the English sentence (the CLI prints it): describe() of the facts below
    kind: str = "unknown"            # one of KINDS
    size_bytes: int | None = None    # the output's size
    need_bytes: int | None = None    # too_large: running it; cannot_quantize: the job's peak
    context: int | None = None       # fits_gpu for GPTQ/AWQ: the longest context that fits
    from_params: bool = False        # counted from the parameter count (no widths, no KV)
    reason: str = ""                 # unsupported: the refusal (English, from FAMILIES)
    family: str = ""                 # compat: model_type, else the first architecture
    supported: tuple[str, ...] = ()  # compat: the methods that take it ("RTN", "GPTQ", …)
    refused: tuple[tuple[str, str], ...] = ()  # compat: (method, reason) of those that don't


def describe(v: FitVerdict) -> str:
    """The English sentence of a verdict's facts (gui/widgets/hub_browser.verdict_text is the
    same sentence through tr())."""
    if v.method == "compat":
        if v.kind == "unknown":
            return "unknown: the Hub gave no model_type or architectures"
        if v.kind == "unsupported":
            return f"{v.family} not supported yet: {v.reason}"
        return f"{v.family}: supported ({', '.join(v.supported)})" + "".join(
            f"; not {m}: {r}" for m, r in v.refused)
    if v.kind == "unknown":
        return f"{v.label}: unknown (no config.json widths and no parameter count)"
    if v.kind == "unsupported":
        return f"{v.label}: {v.reason}"
    head = f"{v.label} ≈ {format_size(v.size_bytes or 0)}" + (
        " (from the parameter count)" if v.from_params else "")
    if v.kind == "too_large":
        return f"{head}: too large: needs {format_size(v.need_bytes or 0)}"
    if v.kind == "cannot_quantize":
        return (f"{head}: runs here, but quantizing it needs {format_size(v.need_bytes or 0)} "
                "of memory, more than this machine has")
    if v.kind == "fits_gpu":
        if v.context is not None:
            return f"{head} on the GPU: fits with {ctx_label(v.context)} context"
        return f"{head}: runs on the GPU"
    if through_transformers(v):
        return f"{head}: no GPU for it here; runs in RAM (slowly, through transformers)"
    return f"{head}: runs in RAM"


def through_transformers(v: FitVerdict) -> bool:
    """A GPTQ/AWQ output that runs in RAM runs through transformers on the CPU (slowly)."""
    return v.kind == "runs_in_ram" and v.method in ("gptq", "awq") and not v.from_params


def _verdict(method: str, label: str, fits: bool | None, kind: str, **facts: Any) -> FitVerdict:
    v = FitVerdict(method, label, fits, "", kind, **facts)
    v.text = describe(v)
    return v


def _shape(model: HubModel) -> ModelShape | None:
    return shape_of(model.config, model.repo_id, model.params or None)


def ctx_label(ctx: int) -> str:
    """'8k': a context length in thousands of tokens (of 1024)."""
    return f"{ctx // 1024}k"


def _one(method: str, label: str, bits: int, gguf_type: str, shape: ModelShape,
         hw: Hardware, refusal: str) -> FitVerdict:
    if refusal:
        return _verdict(method, label, False, "unsupported", reason=refusal)
    job = JobSpec(model=shape.name, method=method, out="-",
                  gguf=GGUFOptions(type=gguf_type or "Q4_K_M"))
    size = formula_bytes(job, shape)
    # what running the output needs at RUN_CTX: the advisor's formula, at the GGUF type's
    # bits per weight (formula_bytes) rather than the nominal bits
    need = run_bytes(shape, bits, RUN_CTX) - weight_bytes(shape, bits) + size
    samples = SAMPLES_GPU if hw.best_gpu is not None else SAMPLES_CPU
    where_q, peak = quantize_fit(shape, method, samples, hw)
    where = fits(need, hw)
    if where == "none":  # first: the answer that matters most
        return _verdict(method, label, False, "too_large", size_bytes=size, need_bytes=need)
    if where_q == "none":
        return _verdict(method, label, False, "cannot_quantize", size_bytes=size,
                        need_bytes=peak)
    gpu = hw.best_gpu
    if where == "gpu" and gpu is not None:
        room = gpu.vram_total * VRAM_USABLE
        ctx = max((c for c in CONTEXTS
                   if run_bytes(shape, bits, c) - weight_bytes(shape, bits) + size <= room),
                  default=RUN_CTX)
        return _verdict(method, label, True, "fits_gpu", size_bytes=size,
                        context=None if method == "gguf" else ctx)
    return _verdict(method, label, True, "runs_in_ram", size_bytes=size)


def _from_params(method: str, label: str, bits: int, gguf_type: str, params: int,
                 hw: Hardware) -> FitVerdict:
    """The verdict from the parameter count alone (a gated model's config.json cannot be read
    before its licence is accepted): the output's size and the runtime's overhead, without
    the KV cache, which needs the widths; "about" says so."""
    size = int(params * GGUF_BPW[gguf_type] / 8) if gguf_type else \
        int(params * bits_per_weight(bits) / 8)
    need = int(size + RUNTIME_OVERHEAD_FIXED + RUNTIME_OVERHEAD_FRACTION * size)
    where = fits(need, hw)
    if where == "none":
        return _verdict(method, label, False, "too_large", size_bytes=size, need_bytes=need,
                        from_params=True)
    return _verdict(method, label, True, "fits_gpu" if where == "gpu" else "runs_in_ram",
                    size_bytes=size, from_params=True)


def fit_verdicts(model: HubModel, machine: Hardware | None = None) -> list[FitVerdict]:
    """One FitVerdict per method of METHODS for ``model`` on ``machine`` (see the module
    docstring). Needs no request: give a model with its full config.json."""
    shape = _shape(model)
    hw = machine or hardware.detect(use_torch=False)
    if shape is None and model.params:
        return [_from_params(m, label, bits, t, model.params, hw) for m, label, bits, t in METHODS]
    if shape is None:
        return [_verdict(m, label, None, "unknown") for m, label, _, _ in METHODS]
    refusals = {c.method: ("" if c.ok else c.reason) for c in config_checks(model.config or {})}
    return [_one(m, label, bits, t, shape, hw, refusals.get(m, ""))
            for m, label, bits, t in METHODS]


def compat_verdict(model: HubModel) -> FitVerdict:
    """Whether QuantDesk can quantize the model's family at all, and with which methods (the
    compatibility check from config.json: the FAMILIES table and each method's refusal)."""
    config = model.config or {}
    if not (config.get("model_type") or config.get("architectures")):
        return _verdict("compat", "compatibility", None, "unknown")
    checks = config_checks(config)
    family = str(config.get("model_type") or (config.get("architectures") or ["?"])[0])
    ok = tuple(c.method.upper() for c in checks if c.ok)
    if not ok:
        return _verdict("compat", "compatibility", False, "unsupported", family=family,
                        reason=checks[0].reason)
    return _verdict("compat", "compatibility", True, "supported", family=family, supported=ok,
                    refused=tuple((c.method.upper(), c.reason) for c in checks if not c.ok))
