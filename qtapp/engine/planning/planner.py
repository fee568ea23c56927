"""Memory, disk and time plan of a quantization job before it starts.

    plan_job(job, info, hw=None, probe=False) -> Plan

Memory (bytes; P parameters, h hidden, i intermediate, V vocabulary, N×L calibration tokens):

    base      = BASE_RSS                       (Python, torch, transformers, the tokenizer)
    quantize  = base + V·h·4 (embeddings, fp32) + advisor.quantize_peak_bytes(shape, method,
                N, L) + one block in the source dtype (the prefetched next block)
    evaluate  = base + P·4 (the quantized model loaded dequantized in fp32; for GGUF the file,
                mapped) + 3·ctx·V·4 (logits, their log-softmax and the top-k pass; for GGUF
                2·ctx·V·4 more: llama.cpp's output buffer and llama-cpp-python's scores)
    peak RAM  = max(quantize, evaluate) on CPU; on a GPU the quantize term moves to VRAM
                (less the embeddings, which stay in RAM)

With probe=True the job's own pipeline runs its first two blocks on the real calibration
tokens in this process (its checkpoint goes to a temporary folder) and the measured peak RSS
replaces the quantize formula when larger; the first block's seconds are counted once and
the second's give the rate of the others (the first carries one-time start-up costs).

Disk: final = advisor.weight_bytes(shape, bits, group) (GGUF: bits per weight of the type);
temporary = the block checkpoint (≈ final) plus the hidden output folder (final) at once.

Time: setup (measured or 0) + first block + (n_layers − 1) · seconds per block (measured,
or from FLOPs at this machine's measured matmul rate) + export (final / 200 MB/s) +
evaluation on the CPU (a pass over the evaluation text, 2·P FLOPs per token, and 144 greedy
tokens reading P·4 bytes each at 5 GB/s, for the quantized model, and for the source too
when its distributions are not cached yet).

A plan that does not fit (RAM beyond advisor.RAM_USABLE of the total, VRAM beyond
advisor.VRAM_USABLE, disk beyond the free space) lists the problems with the numbers and
fixes that would fit; the job runner refuses such a job unless the user overrides. Two
problems come before the numbers: a group size that does not divide the input width of a
layer it quantizes (arch.group_size_problem, with the group size that does), and an output
folder that cannot be written (outputs.output_folder_problem; its free space is then not
reported as a disk that is too small).
"""

from __future__ import annotations

import math
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtapp.engine.config import JobSpec
from qtapp.engine.planning import advisor as A
from qtapp.engine.planning.hardware import Hardware

if TYPE_CHECKING:
    from qtapp.engine.model.sources import ModelInfo

BASE_RSS = 600 * 2**20
EVAL_TOKENS = 18_000  # the built-in evaluation text, in tokens of a 49k BPE vocabulary
EVAL_CTX = 512
GENERATED_TOKENS = 2 * 3 * 48
EXPORT_BYTES_PER_S = 200e6
# llama.cpp's evaluation of a K-quant file, as a fraction of this CPU's fp32 matmul rate
# (measured on the demo, Q4_K_M, repacked kernels off: 50 s where the float gate took 30 s)
LLAMA_CPP_EVAL_RATE = 0.6
MEMORY_BYTES_PER_S = 5e9
GGUF_BPW = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69,
            "Q5_K_S": 5.54, "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.85, "Q4_K_S": 4.58,
            "Q4_1": 5.0, "Q4_0": 4.5, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5,
            "Q2_K": 3.0}


@dataclass
class Plan:
    model: str
    method: str
    device: str
    peak_ram: int
    peak_vram: int
    temp_disk: int
    final_disk: int
    seconds: float
    ram_total: int
    vram_total: int
    disk_free: int
    probed: bool = False
    block_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}

    def table(self) -> str:
        gib = 2**30
        rows = [
            (f"plan for {self.model}, {self.method.upper()} on {self.device}"
             f"{' (timed on its first blocks)' if self.probed else ' (estimated)'}:"),
            f"  peak RAM        {self.peak_ram / gib:6.2f} GiB of {self.ram_total / gib:.1f} GiB",
        ]
        if self.device != "cpu":
            rows.append(f"  peak VRAM       {self.peak_vram / gib:6.2f} GiB of "
                        f"{self.vram_total / gib:.1f} GiB")
        rows += [
            (f"  temporary disk  {self.temp_disk / gib:6.2f} GiB, final "
             f"{self.final_disk / gib:.2f} GiB ({self.disk_free / gib:.1f} GiB free)"),
            f"  wall time       {_duration(self.seconds)}",
        ]
        rows += [f"  DOES NOT FIT: {p}" for p in self.problems]
        rows += [f"  fix: {f}" for f in self.fixes]
        return "\n".join(rows)


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else \
        f"{s // 60} min {s % 60:02d} s"


def _shape(info: ModelInfo) -> A.ModelShape:
    return A.ModelShape.from_config(info.config, info.name, info.n_params)


def final_bytes(job: JobSpec, shape: A.ModelShape) -> int:
    if job.method == "gguf":
        return int(shape.n_params * GGUF_BPW.get(job.gguf.type, 16) / 8)
    return A.weight_bytes(shape, job.scheme.bits, job.scheme.group_size)


def _source_bytes_per_param(info: ModelInfo) -> float:
    return info.size_bytes / max(info.n_params, 1)


def memory(job: JobSpec, info: ModelInfo, gpu: bool) -> tuple[int, int]:
    """(peak RAM, peak VRAM) by the formulas of the module docstring."""
    shape = _shape(info)
    c = job.calibration
    embed = shape.vocab_size * shape.hidden_size * 4
    method = job.method
    if method == "gguf" and job.gguf.imatrix != "auto":
        method = "rtn"  # no calibration pass
    work = A.quantize_peak_bytes(shape, method, c.samples, c.seq_len) - A.RUNTIME_OVERHEAD_FIXED
    prefetch = int(shape.block_linear_params * _source_bytes_per_param(info))
    logits = 3 * EVAL_CTX * shape.vocab_size * 4
    if job.method == "gguf":  # llama.cpp's output buffer and llama-cpp-python's score array
        logits += 2 * EVAL_CTX * shape.vocab_size * 4
    model = shape.n_params * 4 if job.method != "gguf" else final_bytes(job, shape)
    evaluate = BASE_RSS + model + logits if job.evaluate else 0
    if gpu:
        return max(BASE_RSS + embed + 2 * prefetch, evaluate), work
    return max(BASE_RSS + embed + work + prefetch, evaluate), 0


_best_flops = 0.0


def matmul_flops(seconds: float = 0.2) -> float:
    """FLOP/s of fp32 matrix products on this CPU (a 256×1024 · 1024×1024 product, repeated):
    the best rate measured in this process, so that a moment when other programs were busy
    does not make every later plan in the window slower than the one before."""
    import torch

    global _best_flops
    a, b = torch.randn(256, 1024), torch.randn(1024, 1024)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    _best_flops = max(_best_flops, 2 * 256 * 1024 * 1024 * n / (time.perf_counter() - t0))
    return _best_flops


def _block_seconds_estimate(job: JobSpec, shape: A.ModelShape, flops: float) -> float:
    tokens = job.calibration.samples * job.calibration.seq_len
    forward = 2 * shape.block_linear_params * tokens
    factor = {"rtn": 1.0, "gptq": 3.0, "awq": 2.0 + job.awq.grid / 4, "gguf": 2.0}[job.method]
    return forward * factor / flops


def evaluation_seconds(job: JobSpec, info: ModelInfo, shape: A.ModelShape,
                       cpu_flops: float) -> float:
    """The quality gate (on the CPU): a pass over the evaluation text and the generation
    check for the quantized model, and for the source too unless its distributions are
    cached (they are after the first job on a model). A GGUF result runs in llama.cpp."""
    from qtapp.engine.quality.gate import source_is_cached

    def one(flops: float) -> float:
        return (EVAL_TOKENS * 2 * shape.n_params / flops
                + GENERATED_TOKENS / 2 * shape.n_params * 4 / MEMORY_BYTES_PER_S)

    path = getattr(info, "path", None)  # plans for a config alone (compatibility) have none
    source = 0.0 if path is not None and source_is_cached(path) else one(cpu_flops)
    return source + one(cpu_flops * (LLAMA_CPP_EVAL_RATE if job.method == "gguf" else 1))


def peak_rss() -> int:
    """Peak resident memory of this process so far, bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def probe_block(job: JobSpec, info: ModelInfo) -> tuple[float, float, float, int]:
    """(setup seconds, seconds of the first block, seconds of a later block, peak RSS) of the
    job's own pipeline, run up to the end of block 1 (block 0 for a one-block model) in this
    process.

    The first block carries one-time costs (embedding the calibration set, thread pools,
    kernel and solver start-up, CUDA graph captures) that later blocks do not pay: timing
    only the first and multiplying it by the depth over-predicted GPTQ and AWQ jobs by 37 %
    on the demo. A later block is the rate; the first is counted once.
    """
    from qtapp.engine import events as ev
    from qtapp.engine.errors import Cancelled
    from qtapp.engine.quant.calibration import calibration_tokens
    from qtapp.engine.quant.pipeline import collect_input_stats, pick_device, quantize_blocks
    from qtapp.engine.quant.qstore import QuantStore

    marks: list[float] = []  # calibration start, then the end of each block
    wanted = 1 + min(2, max(info.n_layers, 1))

    def emit(e: ev.Event) -> None:
        if isinstance(e, ev.Progress) and e.stage in ("quantize", "imatrix", "calibration"):
            marks.append(time.perf_counter())

    t0 = time.perf_counter()
    tokens = calibration_tokens(job, info, lambda e: None)
    device = pick_device(job.device)
    with tempfile.TemporaryDirectory(prefix="quantdesk-probe-") as tmp:
        try:
            if job.method == "gguf":
                collect_input_stats(info, tokens, lambda name, x: None, emit,
                                    lambda: len(marks) >= wanted, device)
            else:
                store = QuantStore(Path(tmp) / "blocks", fingerprint="probe")
                quantize_blocks(replace(job, resume=False), info, tokens, store, emit,
                                lambda: len(marks) >= wanted, device)
        except Cancelled:
            pass
    if len(marks) < 2:
        return time.perf_counter() - t0, 0.0, 0.0, peak_rss()
    first = marks[1] - marks[0]
    later = marks[2] - marks[1] if len(marks) >= 3 else first
    return marks[0] - t0, first, later, peak_rss()


def plan_job(job: JobSpec, info: ModelInfo, hw: Hardware | None = None, probe: bool = False,
             out: Path | None = None) -> Plan:
    """The plan of `job` on `info` (see the module docstring); `out` decides which disk."""
    from qtapp.engine.model.sources import cache_root
    from qtapp.engine.planning.hardware import detect

    hw = hw or detect()
    gpu = hw.best_gpu if job.device in ("auto", "cuda") else None
    shape = _shape(info)
    ram, vram = memory(job, info, gpu is not None)
    final = final_bytes(job, shape)
    temp = 2 * final if job.method != "gguf" else final
    cpu_flops = matmul_flops()
    flops = cpu_flops * (20 if gpu is not None else 1)
    setup, per_block, probed = 0.0, _block_seconds_estimate(job, shape, flops), False
    first_block = per_block
    if job.method == "gguf" and job.gguf.imatrix != "auto":
        per_block = first_block = 2 * shape.block_linear_params * 4 / EXPORT_BYTES_PER_S
    elif probe:
        setup, first, later, rss = probe_block(job, info)
        if later > 0:
            first_block, per_block, probed = first, later, True
            if gpu is None:
                ram = max(ram, rss)
    seconds = (setup + first_block + max(shape.n_layers - 1, 0) * per_block
               + final / EXPORT_BYTES_PER_S)
    if job.evaluate:
        seconds += evaluation_seconds(job, info, shape, cpu_flops)
    from qtapp.engine.model.arch import group_size_problem
    from qtapp.engine.outputs import output_folder_problem

    target = Path(out or job.out).expanduser().resolve()
    unwritable = output_folder_problem(target)
    while not target.exists() and target != target.parent:
        target = target.parent
    disk_free = min(shutil.disk_usage(target).free, shutil.disk_usage(
        _existing(cache_root())).free)
    plan = Plan(model=info.name, method=job.method, device="cuda" if gpu else "cpu",
                peak_ram=int(ram), peak_vram=int(vram), temp_disk=int(temp),
                final_disk=int(final), seconds=round(seconds, 1), ram_total=hw.ram_total,
                vram_total=gpu.vram_total if gpu else 0, disk_free=int(disk_free),
                probed=probed, block_seconds=round(per_block, 3))
    groups = group_size_problem(job, info.config)
    if groups is not None:
        plan.problems.append(groups.problem)
        plan.fixes.append(groups.fix())
    if unwritable:  # before the disk check: an unwritable folder is not a full disk
        plan.problems.append(unwritable)
        plan.fixes.append("choose an output folder you can write to (--out)")
    _check(plan, job, info, gpu is not None, disk=not unwritable)
    return plan


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _check(plan: Plan, job: JobSpec, info: ModelInfo, gpu: bool, disk: bool = True) -> None:
    """Add the memory and disk problems to plan.problems, and fixes to plan.fixes (each
    memory fix re-planned with the formulas); `disk` False skips the free-space check."""
    ram_ok = plan.ram_total * A.RAM_USABLE
    memory_short = False
    if plan.peak_ram > ram_ok:
        memory_short = True
        plan.problems.append(f"needs {_gib(plan.peak_ram)} of RAM; {_gib(ram_ok)} of "
                             f"{_gib(plan.ram_total)} are usable")
    if gpu and plan.peak_vram > plan.vram_total * A.VRAM_USABLE:
        memory_short = True
        plan.problems.append(f"needs {_gib(plan.peak_vram)} of GPU memory; "
                             f"{_gib(plan.vram_total * A.VRAM_USABLE)} are usable")
    if disk and plan.temp_disk > plan.disk_free:
        plan.problems.append(f"needs {_gib(plan.temp_disk)} of disk while running; "
                             f"{_gib(plan.disk_free)} are free")
        plan.fixes.append(f"free {_gib(plan.temp_disk - plan.disk_free)} on the output's disk "
                          "or choose an output folder on another disk")
    if not memory_short:
        return
    limit_ram, limit_vram = ram_ok, plan.vram_total * A.VRAM_USABLE
    earlier = len(plan.fixes)
    c = job.calibration
    for samples, seq_len in ((c.samples // 2, c.seq_len), (c.samples // 4, c.seq_len),
                             (c.samples // 2, c.seq_len // 2)):
        if samples < 1 or seq_len < 32 or job.method == "rtn":
            continue
        trial = replace(job, calibration=replace(c, samples=samples, seq_len=seq_len))
        ram, vram = memory(trial, info, gpu)
        if ram <= limit_ram and (not gpu or vram <= limit_vram):
            plan.fixes.append(f"calibrate on {samples} samples × {seq_len} tokens: "
                              f"{_gib(ram)} RAM" + (f", {_gib(vram)} VRAM" if gpu else ""))
            break
    if gpu:
        ram, _ = memory(job, info, False)
        if ram <= limit_ram:
            plan.fixes.append(f"run on the CPU (--device cpu; activations in RAM): "
                              f"{_gib(ram)} RAM, slower")
    for method in ("rtn", "gguf"):
        if method != job.method:
            ram, vram = memory(replace(job, method=method), info, gpu)
            if ram <= limit_ram and (not gpu or vram <= limit_vram):
                plan.fixes.append(f"method {method.upper()} (no per-block search): "
                                  f"{_gib(ram)} RAM")
    if job.evaluate:
        ram, vram = memory(replace(job, evaluate=False), info, gpu)
        if ram <= limit_ram:
            plan.fixes.append(f"skip the quality gate (--no-eval; it loads the whole model): "
                              f"{_gib(ram)} RAM")
    if len(plan.fixes) == earlier:
        need = math.ceil((plan.peak_ram - ram_ok) / 2**30)
        plan.fixes.append(f"no setting fits: this model needs about {need} GiB more RAM")
