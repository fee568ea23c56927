"""Which method to use on this machine, and whether the model fits.

The best-practice table (docs/formats.md#advisor-tables): GPU inference + speed → AWQ; GPU
inference + accuracy → GPTQ; CPU inference → GGUF; edge device → GGUF Q4_K_M. INT8 is
near-lossless, INT4 is the high-compression choice.

Memory rule of thumb, in bytes (GB means 10^9 bytes, as in docs/formats.md#advisor-tables):

    weights(b)  = P_lin · (b + (16 + b)/G) / 8  +  P_rest · 2     (b < 16: fp16 scale and a
                  b-bit zero per group of G weights; embeddings, norms, lm_head stay 16-bit)
    weights(16) = P · 2
    kv(ctx)     = n_layers · n_kv_heads · head_dim · 2 (K and V) · ctx · 2 bytes (fp16)
    run(b, ctx) = weights(b) + kv(ctx) + 512 MiB + 5 % of weights (runtime, activations)

Quantizing streams one decoder block at a time, so its peak is about one block in fp32, the
calibration activations entering and leaving it (N · L · hidden · 4 bytes each), plus what
the method keeps per block: GPTQ's Hessians H = 2XXᵀ (in² · 4 bytes per distinct input),
AWQ's captured FFN input (N · L · intermediate · 4 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qtapp.engine.config import QuantScheme
from qtapp.engine.planning.hardware import Hardware
from qtapp.engine.units import format_size

GB = 10**9
GiB = 2**30
GOALS = ("speed", "accuracy")
TARGETS = ("gpu", "cpu", "edge")
PRECISIONS: dict[str, int] = {"FP16": 16, "INT8": 8, "INT4": 4}
DEFAULT_CTX = 4096
DEFAULT_GROUP = 128
RUNTIME_OVERHEAD_FIXED = 512 * 2**20
RUNTIME_OVERHEAD_FRACTION = 0.05
VRAM_USABLE = 0.90  # the driver, the desktop and fragmentation take the rest
RAM_USABLE = 0.80  # the OS and other programs take the rest
SAMPLES_GPU = 512
SAMPLES_CPU = 128
SEQ_LEN = 512


@dataclass(frozen=True)
class ModelShape:
    """The facts of a decoder-only transformer that memory depends on."""

    name: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool = False
    n_params: int = 0

    def __post_init__(self) -> None:
        if self.n_params <= 0:
            object.__setattr__(self, "n_params", self.counted_params)

    @property
    def block_linear_params(self) -> int:
        """q, k, v, o + gate, up, down of one block (Llama layout)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * self.n_heads * d * 2 + h * self.n_kv_heads * d * 2
        return attn + 3 * h * self.intermediate_size

    @property
    def embed_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def counted_params(self) -> int:
        norms = (2 * self.n_layers + 1) * self.hidden_size
        return self.n_layers * self.block_linear_params + self.embed_params + norms

    @property
    def linear_params(self) -> int:
        """Parameters that get quantized (everything but embeddings, norms, lm_head)."""
        lin = self.n_layers * self.block_linear_params
        if self.n_params != self.counted_params:  # MoE or an unusual layout: trust the count
            lin = max(self.n_params - self.embed_params - (2 * self.n_layers + 1)
                      * self.hidden_size, 0)
        return lin

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "",
                    n_params: int | None = None) -> ModelShape:
        """From a Hugging Face config.json dict (text_config of multimodal models is used)."""
        c = config.get("text_config") or config

        def first(*keys: str, default: Any = None) -> Any:
            for k in keys:
                if c.get(k) is not None:
                    return c[k]
            return default

        hidden = int(first("hidden_size", "n_embd", "d_model", default=0))
        n_heads = int(first("num_attention_heads", "n_head", "num_heads", default=1))
        return cls(
            name=name or str(config.get("_name_or_path") or c.get("model_type") or "model"),
            n_layers=int(first("num_hidden_layers", "n_layer", "num_layers", default=0)),
            hidden_size=hidden,
            intermediate_size=int(first("intermediate_size", "n_inner", "ffn_dim",
                                        default=4 * hidden)),
            n_heads=n_heads,
            n_kv_heads=int(first("num_key_value_heads", "num_kv_heads", default=n_heads)),
            head_dim=int(first("head_dim", default=hidden // max(n_heads, 1))),
            vocab_size=int(first("vocab_size", default=0)),
            tie_embeddings=bool(config.get("tie_word_embeddings",
                                           c.get("tie_word_embeddings", False))),
            n_params=int(n_params or 0),
        )


# Llama 2 shapes: the 7B / 13B / 70B rows of docs/formats.md#advisor-tables.
REFERENCE_SHAPES: tuple[ModelShape, ...] = (
    ModelShape("7B", 32, 4096, 11008, 32, 32, 128, 32000),
    ModelShape("13B", 40, 5120, 13824, 40, 40, 128, 32000),
    ModelShape("70B", 80, 8192, 28672, 64, 8, 128, 32000),
)


def weight_bytes(shape: ModelShape, bits: int, group_size: int = DEFAULT_GROUP) -> int:
    if bits >= 16:
        return shape.n_params * 2
    per_weight = bits + (16 + bits) / group_size if group_size > 0 else bits
    lin = shape.linear_params
    return int(lin * per_weight / 8 + (shape.n_params - lin) * 2)


def kv_cache_bytes(shape: ModelShape, ctx: int = DEFAULT_CTX) -> int:
    return shape.n_layers * shape.n_kv_heads * shape.head_dim * 2 * ctx * 2


def run_bytes(shape: ModelShape, bits: int, ctx: int = DEFAULT_CTX) -> int:
    w = weight_bytes(shape, bits)
    overhead = RUNTIME_OVERHEAD_FIXED + RUNTIME_OVERHEAD_FRACTION * w
    return int(w + kv_cache_bytes(shape, ctx) + overhead)


def quantize_peak_bytes(shape: ModelShape, method: str, samples: int = SAMPLES_CPU,
                        seq_len: int = SEQ_LEN) -> int:
    """Peak working memory of a layer-streaming job on its device (see module docstring)."""
    h, i = shape.hidden_size, shape.intermediate_size
    tokens = samples * seq_len
    block = shape.block_linear_params * 4  # fp32
    acts = 2 * tokens * h * 4  # block input and output
    attn_out = shape.n_heads * shape.head_dim
    if method == "gptq":
        extra = (2 * h * h + attn_out * attn_out + i * i) * 4  # qkv, gate/up, o, down
    elif method == "awq":
        # attention / MLP reruns on at most 4096 tokens (methods.awq.LOSS_TOKENS), three
        # (tokens, FFN) tensors live at once; measured on an H100 with 128 × 2048 tokens:
        # 4.41 GiB (Llama-1B shape, this formula 4.64), 9.33 GiB (8B shape, 9.6)
        extra = 3 * min(tokens, 4096) * i * 4
    elif method == "gguf":
        extra = block  # a quantized copy; the imatrix itself is one vector per tensor
    else:  # rtn
        extra, acts = block, 0
    return int(block + acts + extra + RUNTIME_OVERHEAD_FIXED)


def fits(need: int, hw: Hardware) -> str:
    """Where `need` bytes fit on this machine: "gpu", "ram" or "none"."""
    gpu = hw.best_gpu
    if gpu is not None and need <= gpu.vram_total * VRAM_USABLE:
        return "gpu"
    if need <= hw.ram_total * RAM_USABLE:
        return "ram"
    return "none"


def format_params(n: int) -> str:
    if n >= 10**9:
        return f"{n / 10**9:.1f}B"
    return f"{n / 10**6:.0f}M"


@dataclass(frozen=True)
class SizeRow:
    """One row of the memory table: a model at FP16 / INT8 / INT4 and where it fits."""

    label: str
    n_params: int
    weights: dict[str, int]
    run: dict[str, int]
    run_fit: dict[str, str]
    quantize_peak: int
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


def size_row(shape: ModelShape, hw: Hardware, ctx: int = DEFAULT_CTX, method: str = "gptq",
             samples: int = SAMPLES_CPU, selected: bool = False) -> SizeRow:
    weights = {p: weight_bytes(shape, b) for p, b in PRECISIONS.items()}
    run = {p: run_bytes(shape, b, ctx) for p, b in PRECISIONS.items()}
    peak = quantize_peak_bytes(shape, method, samples)
    return SizeRow(shape.name, shape.n_params, weights, run,
                   {p: fits(n, hw) for p, n in run.items()}, peak, fits(peak, hw), selected)


def advise(hw: Hardware, shape: ModelShape | None = None, goal: str = "speed",
           target: str | None = None, ctx: int = DEFAULT_CTX) -> Advice:
    """The recommendation for this machine and (optionally) a model, plus the memory table."""
    if goal not in GOALS:
        raise ValueError(f"goal {goal!r}: choose one of {', '.join(GOALS)}")
    if target is not None and target not in TARGETS:
        raise ValueError(f"target {target!r}: choose one of {', '.join(TARGETS)}")
    rec = recommend(hw, shape, goal, target, ctx)
    rows = [size_row(s, hw, ctx, rec.method, rec.samples) for s in REFERENCE_SHAPES]
    if shape is not None:
        rows.append(size_row(shape, hw, ctx, rec.method, rec.samples, selected=True))
    return Advice(rec, tuple(rows), ctx, hw, hw.notes)


def recommend(hw: Hardware, shape: ModelShape | None = None, goal: str = "speed",
              target: str | None = None, ctx: int = DEFAULT_CTX) -> Recommendation:
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

    if shape is not None:
        need = run_bytes(shape, bits if method != "gguf" else 4, ctx)
        if fits(need, hw) == "none" and target != "edge":
            warnings.append(
                f"Even at 4 bits, {name} needs about {format_size(need)} to run with a "
                f"{ctx}-token context; this machine has "
                f"{format_size(gpu.vram_total) + ' of GPU memory and ' if gpu else ''}"
                f"{format_size(hw.ram_total)} of RAM. Pick a smaller model or a shorter "
                "context.")
        if device == "cuda" and fits(quantize_peak_bytes(shape, method, samples), hw) != "gpu":
            samples = SAMPLES_CPU  # fewer samples before giving up the GPU
            if fits(quantize_peak_bytes(shape, method, samples), hw) != "gpu":
                device = "cpu"
        peak = quantize_peak_bytes(shape, method, samples)
        where = fits(peak, hw)
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


def recommended_group_size(shape: ModelShape | None) -> int:
    """DEFAULT_GROUP (128) when it divides the input width of every quantized layer of
    `shape`, else 64 or 32 (arch.auto_group_size); 64 for the 576-wide demo."""
    from qtapp.engine.model.arch import auto_group_size

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
