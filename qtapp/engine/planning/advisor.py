"""Which method to use on this machine, and whether the model fits.

The best-practice table (docs/formats.md#advisor-tables): GPU inference + speed → AWQ; GPU
inference + accuracy → GPTQ; CPU inference → GGUF; edge device → GGUF Q4_K_M. INT8 is
near-lossless, INT4 is the high-compression choice.

Memory of running a model, in bytes (weights(b) by the formula of planning/shape.py; the
reference table of docs/formats.md#advisor-tables quotes GB = 10^9 bytes, the window and
the command line print binary units, qtapp/engine/units.py):

    kv(ctx)     = n_layers · n_kv_heads · head_dim · 2 (K and V) · ctx · 2 bytes (fp16), over
                  the layers that keep their own keys and values (shape.ModelShape.kv_values)
    run(b, ctx) = weights(b) + kv(ctx) + 512 MiB + 5 % of weights (runtime, activations)

What quantizing needs, and where it fits, is the planner's answer (planner.quantize_fit:
the job's peak memory on the GPU, else in RAM, against the same limits the planner refuses
a job by), not a formula of the advisor's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qtapp.engine.config import QuantScheme
from qtapp.engine.model.arch import auto_group_size
from qtapp.engine.planning.hardware import Hardware
from qtapp.engine.planning.planner import RAM_USABLE, VRAM_USABLE, quantize_fit
from qtapp.engine.planning.shape import DEFAULT_GROUP, ModelShape, weight_bytes
from qtapp.engine.units import format_size

GB = 10**9  # the unit of the reference table in docs/formats.md#advisor-tables
GOALS = ("speed", "accuracy")
TARGETS = ("gpu", "cpu", "edge")
PRECISIONS: dict[str, int] = {"FP16": 16, "INT8": 8, "INT4": 4}
RUN_CTX = 4096  # context length a quantized model is run with (KV cache size); not the
#                evaluation window (config.EVAL_CTX)
RUNTIME_OVERHEAD_FIXED = 512 * 2**20
RUNTIME_OVERHEAD_FRACTION = 0.05
SAMPLES_GPU = 512
SAMPLES_CPU = 128
SEQ_LEN = 512


# Llama 2 shapes: the 7B / 13B / 70B rows of docs/formats.md#advisor-tables.
REFERENCE_SHAPES: tuple[ModelShape, ...] = (
    ModelShape("7B", 32, 4096, 11008, 32, 32, 128, 32000),
    ModelShape("13B", 40, 5120, 13824, 40, 40, 128, 32000),
    ModelShape("70B", 80, 8192, 28672, 64, 8, 128, 32000),
)


def kv_cache_bytes(shape: ModelShape, ctx: int = RUN_CTX) -> int:
    """16-bit keys and values of `ctx` tokens, plus the fixed recurrent state of
    linear-attention layers."""
    return shape.kv_values_per_token * ctx * 2 + shape.state_bytes


def run_bytes(shape: ModelShape, bits: int, ctx: int = RUN_CTX) -> int:
    w = weight_bytes(shape, bits)
    overhead = RUNTIME_OVERHEAD_FIXED + RUNTIME_OVERHEAD_FRACTION * w
    return int(w + kv_cache_bytes(shape, ctx) + overhead)


def fits(need: int, hw: Hardware) -> str:
    """Where running a model that needs `need` bytes fits on this machine: "gpu", "ram" or
    "none" (the planner's usable fractions of the totals: it is about the machine, not what
    is free at this moment)."""
    gpu = hw.best_gpu
    if gpu is not None and need <= gpu.vram_total * VRAM_USABLE:
        return "gpu"
    if need <= hw.ram_total * RAM_USABLE:
        return "ram"
    return "none"


@dataclass(frozen=True)
class SizeRow:
    """One row of the memory table: a model at FP16 / INT8 / INT4 and where it fits."""

    label: str
    n_params: int
    weights: dict[str, int]
    run: dict[str, int]
    run_fit: dict[str, str]
    quantize_peak: int  # the planner's peak of quantizing (no quality gate) where it fits
    quantize_fit: str
    selected: bool = False


@dataclass(frozen=True)
class Recommendation:
    method: str
    bits: int
    group_size: int
    sym: bool
    gguf_type: str
    goal: str
    target: str
    device: str
    samples: int
    reason: str
    warnings: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        if self.method == "gguf":
            return f"GGUF {self.gguf_type}"
        return f"{self.method.upper()} {self.bits}-bit, group {self.group_size}"

    @property
    def scheme(self) -> QuantScheme:
        return QuantScheme(self.bits, self.group_size, self.sym)


@dataclass(frozen=True)
class Advice:
    recommendation: Recommendation
    rows: tuple[SizeRow, ...]
    ctx: int
    hardware: Hardware
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        r = self.recommendation
        return {
            "recommendation": {
                "method": r.method, "bits": r.bits, "group_size": r.group_size, "sym": r.sym,
                "gguf_type": r.gguf_type, "goal": r.goal, "target": r.target,
                "device": r.device, "samples": r.samples, "summary": r.summary,
                "reason": r.reason, "warnings": list(r.warnings),
            },
            "ctx": self.ctx,
            "rows": [
                {"label": row.label, "n_params": row.n_params, "weights": row.weights,
                 "run": row.run, "run_fit": row.run_fit, "quantize_peak": row.quantize_peak,
                 "quantize_fit": row.quantize_fit, "selected": row.selected}
                for row in self.rows
            ],
            "hardware": self.hardware.to_dict(),
        }


def size_row(shape: ModelShape, hw: Hardware, ctx: int = RUN_CTX, method: str = "gptq",
             samples: int = SAMPLES_CPU, selected: bool = False) -> SizeRow:
    weights = {p: weight_bytes(shape, b) for p, b in PRECISIONS.items()}
    run = {p: run_bytes(shape, b, ctx) for p, b in PRECISIONS.items()}
    where, peak = quantize_fit(shape, method, samples, hw)
    return SizeRow(shape.name, shape.n_params, weights, run,
                   {p: fits(n, hw) for p, n in run.items()}, peak, where, selected)


def advise(hw: Hardware, shape: ModelShape | None = None, goal: str = "speed",
           target: str | None = None, ctx: int = RUN_CTX,
           config: dict[str, Any] | None = None) -> Advice:
    """The recommendation for this machine and (optionally) a model, plus the memory table;
    `config` (the model's config.json) rules out the methods its family refuses."""
    if goal not in GOALS:
        raise ValueError(f"goal {goal!r}: choose one of {', '.join(GOALS)}")
    if target is not None and target not in TARGETS:
        raise ValueError(f"target {target!r}: choose one of {', '.join(TARGETS)}")
    rec = recommend(hw, shape, goal, target, ctx, config)
    rows = [size_row(s, hw, ctx, rec.method, rec.samples) for s in REFERENCE_SHAPES]
    if shape is not None:
        rows.append(size_row(shape, hw, ctx, rec.method, rec.samples, selected=True))
    return Advice(rec, tuple(rows), ctx, hw, hw.notes)


def recommend(hw: Hardware, shape: ModelShape | None = None, goal: str = "speed",
              target: str | None = None, ctx: int = RUN_CTX,
              config: dict[str, Any] | None = None) -> Recommendation:
    gpu = hw.best_gpu
    target = target or ("gpu" if gpu is not None else "cpu")
    device = "cuda" if gpu is not None else "cpu"
    samples = SAMPLES_GPU if gpu is not None else SAMPLES_CPU
    warnings: list[str] = []
    name = shape.name if shape else "the model"

    if target == "edge":
        method, bits, gtype = "gguf", 4, "Q4_K_M"
        reason = ("For an edge device, GGUF Q4_K_M is the usual choice: llama.cpp runs it "
                  "on small CPUs and phones, and Q4_K_M keeps quality close to 8-bit at about "
                  "a quarter of the 16-bit size.")
    elif target == "cpu":
        method, bits = "gguf", 4
        gtype = "Q5_K_M" if goal == "accuracy" else "Q4_K_M"
        where = "the CPU and Apple GPUs" if hw.has_mps else "the CPU"
        reason = (f"Without an NVIDIA GPU to run on, GGUF is the best fit: llama.cpp is the "
                  f"fastest runtime on {where}. {gtype} is "
                  + ("the accuracy-leaning K-quant." if goal == "accuracy"
                     else "the usual balance of size and quality."))
    else:
        method, bits, gtype, reason = _gpu_choice(hw, shape, goal, ctx, name)
    refused = _refusals(config)
    if method in refused:
        method, bits, gtype, reason = _allowed_choice(method, bits, gtype, reason, refused,
                                                      target)

    if shape is not None:
        need = run_bytes(shape, bits if method != "gguf" else 4, ctx)
        if fits(need, hw) == "none" and target != "edge":
            warnings.append(
                f"Even at 4 bits, {name} needs about {format_size(need)} to run with a "
                f"{ctx}-token context; this machine has "
                f"{format_size(gpu.vram_total) + ' of GPU memory and ' if gpu else ''}"
                f"{format_size(hw.ram_total)} of RAM. Pick a smaller model or a shorter "
                "context.")
        if device == "cuda" and quantize_fit(shape, method, samples, hw)[0] != "gpu":
            samples = SAMPLES_CPU  # fewer samples before giving up the GPU
            if quantize_fit(shape, method, samples, hw)[0] != "gpu":
                device = "cpu"
        where, peak = quantize_fit(shape, method, samples, hw)
        if where == "none":
            warnings.append(
                f"Quantizing {name} with {method.upper()} needs about {format_size(peak)} "
                f"of working memory at {samples} calibration samples; this machine has "
                f"{format_size(hw.ram_total)} of RAM. Use fewer samples or a shorter "
                "sequence length.")
    if gpu is None and target == "gpu":
        warnings.append("No usable NVIDIA GPU was found here; the advice assumes the GPU "
                        "you will run the model on, and quantizing runs on the CPU (slow).")
    return Recommendation(method, bits, recommended_group_size(shape), method != "awq", gtype,
                          goal, target, device, samples, reason, tuple(warnings))


# what to recommend instead of a method the model's family refuses, in order: GGUF → GPTQ
# (transformers runs it on any device); AWQ ↔ GPTQ; RTN, which every supported family takes
FALLBACKS = {"gguf": ("gptq", "awq", "rtn"), "awq": ("gptq", "rtn"), "gptq": ("awq", "rtn"),
             "rtn": ()}


def _refusals(config: dict[str, Any] | None) -> dict[str, str]:
    """method → why the model's family refuses it (the compatibility check's answer from
    config.json alone: the FAMILIES table); {} without a config, without importing compat,
    which imports the gguf package."""
    if not config:
        return {}
    from qtapp.engine.planning.compat import refusals

    return refusals(config)


def _allowed_choice(method: str, bits: int, gtype: str, reason: str, refused: dict[str, str],
                    target: str) -> tuple[str, int, str, str]:
    """The first fallback of `method` that the family takes, with why."""
    other = next((m for m in FALLBACKS[method] if m not in refused), None)
    if other is None:  # nothing to offer: say so with the refusal (check tells the rest)
        return method, bits, gtype, reason + f" {method.upper()}: {refused[method]}"
    where = "the GPU" if target == "gpu" else "a CPU with transformers (slower than llama.cpp)"
    return other, bits, "", (
        f"{method.upper()} would be the usual choice, but not for this model: "
        f"{refused[method].rstrip('.')}. {other.upper()} at {bits} bits runs on {where}.")


def recommended_group_size(shape: ModelShape | None) -> int:
    """DEFAULT_GROUP (128) when it divides the input width of every quantized layer of
    `shape`, else 64 or 32 (arch.auto_group_size); 64 for the 576-wide demo."""
    if shape is None or shape.hidden_size <= 0:
        return DEFAULT_GROUP
    return auto_group_size((shape.hidden_size, shape.n_heads * shape.head_dim,
                            shape.intermediate_size))


def _gpu_choice(hw: Hardware, shape: ModelShape | None, goal: str, ctx: int,
                name: str) -> tuple[str, int, str, str]:
    gpu = hw.best_gpu
    method = "awq" if goal == "speed" else "gptq"
    why = ("AWQ's 4-bit kernels are the fastest on NVIDIA GPUs" if goal == "speed"
           else "GPTQ's error-correcting solver keeps the most accuracy")
    if shape is None or gpu is None:
        return method, 4, "", (f"For GPU inference with a focus on {goal}, {why}; 4-bit "
                               "weights take about a quarter of the 16-bit size.")
    vram = gpu.vram_total * VRAM_USABLE
    int4 = run_bytes(shape, 4, ctx)
    if int4 > vram:
        return "gguf", 4, "Q4_K_M", (
            f"{name} needs about {format_size(int4)} at 4 bits with a {ctx}-token context, "
            f"more than the {format_size(gpu.vram_total)} of your {gpu.name}. GGUF Q4_K_M "
            "lets llama.cpp keep as many layers as fit on the GPU and run the rest from RAM.")
    int8 = run_bytes(shape, 8, ctx)
    if goal == "accuracy" and int8 <= vram:
        return method, 8, "", (
            f"For GPU inference with a focus on accuracy, {why}. 8-bit is near-lossless and "
            f"{name} fits in your {gpu.name} at 8 bits ({format_size(int8)} with a "
            f"{ctx}-token context).")
    extra = (f" 8-bit would need {format_size(int8)}, more than your GPU has."
             if goal == "accuracy" else "")
    return method, 4, "", (
        f"For GPU inference with a focus on {goal}, {why}. At 4 bits {name} needs about "
        f"{format_size(int4)} with a {ctx}-token context, which fits in your "
        f"{gpu.name}.{extra}")
