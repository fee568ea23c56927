"""Memory, disk and time plan of a quantization job before it starts.

    plan_job(job, info, hw=None, probe=False) -> Plan

Memory (bytes; P parameters, h hidden, i intermediate, V vocabulary, N×L calibration tokens):

    base      = BASE_RSS                       (Python, torch, transformers, the tokenizer)
    work      = one block in fp32 + the activations entering and leaving it (2·N·L·h·4) +
                what the method keeps per block: GPTQ its Hessians H = 2XXᵀ ((2h² + (n_heads
                · head_dim)² + i²)·4: q/k/v and gate/up share one), AWQ three (tokens, FFN)
                tensors of its reruns on at most 4096 tokens (3·min(N·L, 4096)·i·4; on a
                mixture-of-experts block also each expert's clip rows, down_proj Gram matrix
                and quantized gate/up: awq_expert_bytes), GGUF a
                quantized copy of the block (the imatrix is one vector per tensor), RTN a
                dequantized copy of the block; an RTN job streams only N = RTN_CHART_SAMPLES
                samples (its error chart), a GGUF job without an imatrix none (working_bytes);
                true-sequential GPTQ keeps the attention output across its passes,
                N·L·n_heads·head_dim·4 more (attention_reuse_bytes; on a GPU only where it
                fits: vram_mode's fast-recompute does without)
    quantize  = base + V·h·4 (embeddings, fp32) + work + one block in the source dtype (the
                prefetched next block)
    evaluate  = base + P·4 (the quantized model loaded dequantized in fp32; for GGUF the file,
                mapped) + 3·ctx·V·4 (logits, their log-softmax and the top-k pass; for GGUF
                2·ctx·V·4 more: llama.cpp's output buffer and llama-cpp-python's scores)
    peak RAM  = max(quantize, evaluate) on CPU; on a GPU the quantize term moves to VRAM
                (less the embeddings, which stay in RAM)

VRAM mode on a GPU (vram_mode): fast when `work` fits under the card's usable memory and
--max-vram (JobSpec.max_vram), else lean: the activations (N·L·h·4) move to host memory
(added to peak RAM) and the device holds one block in fp32 + max(one mini-batch's forward:
(3h + 3i)·b·4 for b = batch·L tokens, the method's solve: GPTQ 3 K² + 3 K·N floats for the
widest linear (K inputs, N outputs), AWQ its reruns) (lean_working_bytes;
docs/reliability.md#lean-vram-mode). In lean mode the first R samples stay on the GPU, R
the whole mini-batches that fit in the budget (the card's usable memory or --max-vram)
beside that working set (or the float32 embeddings, V·h·4, while block 0's inputs are
captured) and LEAN_HEADROOM of the budget: R·L·h·4 is added to peak VRAM and taken off
peak RAM (resident_samples). R is 0 on GPUs for now (RESIDENT_SAMPLES_ON_GPU).

With probe=True the job's own pipeline runs its first two blocks on the real calibration
tokens in this process (its checkpoint goes to a temporary folder) and the measured peak RSS
replaces the quantize formula when larger; the first block's seconds are counted once and
the second's give the rate of the others (the first carries one-time start-up costs).

Disk: final = budget.job_bytes(job, info), the exact bytes of every tensor the job writes
(per-module rules and skips included) and of the files beside them, counted as the size
budget counts them; a job with a size budget, the budget (its allocation fills at most
that). A plan made from config.json alone, with no tensors at hand (`quantdesk check`),
uses the formula shape.weight_bytes(shape, bits, group) instead (GGUF: GGUF_BPW, bits per
weight of the type). Temporary = the block checkpoint (≈ final) plus the hidden output
folder (final) at once.

Time: setup (measured or 0) + first block + (n_layers − 1) · seconds per block (measured
by a probe of this job, now or recorded from an earlier one on this machine, else from FLOPs
at this machine's matmul rate, measured once; both kept in the cache's TIMING_FILE, so the
window, the worker's log and --dry-run show one figure: docs/quality.md, "Plan before
start") + export (final / 200 MB/s) +
evaluation on the CPU (a pass over the evaluation text, 2·P FLOPs per token, and 144 greedy
tokens reading P·4 bytes each at 5 GB/s, for the quantized model, and for the source too
when its distributions are not cached yet).

A plan that does not fit (RAM beyond RAM_USABLE of the total or beyond what is available
now, VRAM beyond VRAM_USABLE of the card or beyond what is free on it now, disk beyond the
free space) lists the problems with the numbers and fixes that would fit. It is the one
check before a job: the command line and the window show it, and the job runner refuses
such a job before it starts (jobs/job.py, check_plan) unless the user overrode the plan
(--ignore-plan, the window's "Start anyway": JobSpec.ignore_plan). The advisor asks
`quantize_fit` where quantizing a model fits, by the same memory model and limits. Two
problems come before the numbers: a group size that does not divide the input width of a
layer it quantizes (arch.group_size_problem, with the group size that does), and an output
folder that cannot be written (outputs.output_folder_problem; its free space is then not
reported as a disk that is too small).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtapp.engine import events as ev
from qtapp.engine.config import CalibrationSpec, JobSpec
from qtapp.engine.errors import Cancelled, UserError
from qtapp.engine.events import Emit
from qtapp.engine.model.arch import group_size_problem
from qtapp.engine.outputs import output_folder_problem
from qtapp.engine.planning import hardware
from qtapp.engine.planning.hardware import GPU, Hardware
from qtapp.engine.planning.shape import ModelShape, weight_bytes
from qtapp.engine.units import format_duration, format_size

# torch, and the modules that import it (model.sources, planning.budget, quality.gate, the
# quantizing pipeline), are imported inside the functions that use them: the advisor imports this
# module, and the window and the command line start without torch.

if TYPE_CHECKING:
    from qtapp.engine.model.sources import ModelInfo

BASE_RSS = 600 * 2**20
RAM_USABLE = 0.80  # the OS and other programs take the rest
VRAM_USABLE = 0.90  # the driver, the desktop and fragmentation take the rest
EVAL_TOKENS = 18_000  # the built-in evaluation text, in tokens of a 49k BPE vocabulary
EVAL_CTX = 512
GENERATED_TOKENS = 2 * 3 * 48
EXPORT_BYTES_PER_S = 200e6
# llama.cpp's evaluation of a K-quant file, as a fraction of this CPU's fp32 matmul rate
# (measured on the demo, Q4_K_M, repacked kernels off: 50 s where the float gate took 30 s)
LLAMA_CPP_EVAL_RATE = 0.6
MEMORY_BYTES_PER_S = 5e9
# bits per weight of each GGUF file type: formula_bytes only, for a plan without the tensors
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
    ram_usable: int = 0  # the limits the peaks were checked against (ram_limit, vram_limit)
    vram_usable: int = 0
    vram_mode: str = ""  # "fast" | "lean" on a GPU (vram_mode), "" on the CPU
    vram_reason: str = ""  # why, in words, for the plan card
    # lean mode: calibration samples kept on the GPU (resident_samples) and streamed
    resident_samples: int = 0
    streamed_samples: int = 0
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The plan `to_dict` described (`fits` follows from the problems)."""
        return cls(**{k: v for k, v in data.items() if k != "fits"})

    def table(self) -> str:
        rows = [
            (f"plan for {self.model}, {self.method.upper()} on {self.device}"
             f"{' (timed on its first blocks)' if self.probed else ' (estimated)'}:"),
            f"  peak RAM        {format_size(self.peak_ram):>10} of {format_size(self.ram_total)}",
        ]
        if self.device != "cpu":
            rows.append(f"  peak VRAM       {format_size(self.peak_vram):>10} of "
                        f"{format_size(self.vram_total)}")
            if self.vram_reason:
                rows.append(f"  VRAM mode       {self.vram_reason}")
        rows += [
            (f"  temporary disk  {format_size(self.temp_disk):>10}, final "
             f"{format_size(self.final_disk)} ({format_size(self.disk_free)} free)"),
            f"  wall time       {format_duration(self.seconds)}",
        ]
        rows += [f"  DOES NOT FIT: {p}" for p in self.problems]
        rows += [f"  fix: {f}" for f in self.fixes]
        return "\n".join(rows)

    def refusal(self) -> UserError:
        """The error a job that does not fit is refused with (before it starts), on the
        command line and in the job runner alike."""
        return UserError(f"the job does not fit on this machine ({'; '.join(self.problems)}). "
                         f"Fixes: {'; '.join(self.fixes) or 'none found'}. To start anyway, "
                         "pass --ignore-plan (in the window: Start anyway).")


def _shape(info: ModelInfo) -> ModelShape:
    return ModelShape.from_config(info.config, info.name, info.n_params)


def formula_bytes(job: JobSpec, shape: ModelShape) -> int:
    """The output's size from the shape alone (no tensors at hand, see the module docstring):
    shape.weight_bytes at the job's scheme, or GGUF_BPW bits per weight of the GGUF type.
    Per-module rules are not counted."""
    if job.method == "gguf":
        return int(shape.n_params * GGUF_BPW.get(job.gguf.type, 16) / 8)
    return weight_bytes(shape, job.scheme.bits, job.scheme.group_size)


_FINAL_BYTES: dict[tuple, int] = {}


def final_bytes(job: JobSpec, info: ModelInfo) -> int:
    """Bytes of the job's output (see the module docstring): the size budget's exact count
    (budget.job_bytes) when the model's safetensors are at hand, the budget of a job with a
    size budget, else `formula_bytes`. Remembered per model and size-relevant settings (the
    window plans again on every change of the form)."""
    from qtapp.engine.planning.budget import job_bytes, target_bytes

    if job.target_bytes or job.target_bpw:
        return target_bytes(job, info)
    path = getattr(info, "path", None)
    files = tuple(getattr(info, "weight_files", ()) or ())
    if path is None or not files or any(f.suffix != ".safetensors" for f in files):
        return formula_bytes(job, _shape(info))
    d = job.to_dict()
    for k in ("out", "evaluate", "resume", "overwrite", "device", "ignore_plan", "max_vram"):
        d.pop(k, None)
    key = (str(path), repr(sorted(d.items())),
           tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _FINAL_BYTES:
        try:
            _FINAL_BYTES[key] = job_bytes(job, info)
        except UserError:  # a format that cannot hold the job: the job itself says why
            return formula_bytes(job, _shape(info))
        if len(_FINAL_BYTES) > 256:
            _FINAL_BYTES.pop(next(iter(_FINAL_BYTES)))
    return _FINAL_BYTES[key]


def _source_bytes_per_param(info: ModelInfo) -> float:
    return info.size_bytes / max(info.n_params, 1)


def working_bytes(shape: ModelShape, method: str, samples: int, seq_len: int,
                  lean: bool = False, batch: int = 8, reuse: bool = False,
                  resident: int = 0) -> int:
    """The quantize stage's working memory on its device, `work` of the module docstring.
    `lean`: the calibration activations are in host memory (vram_mode), and the device
    holds two mini-batch buffers of `batch` samples and one mini-batch's forward instead,
    besides the `resident` samples kept on it (resident_samples).
    `reuse` (GPTQ, not lean): plus the attention output kept across the passes after
    o_proj's, N·L·(n_heads·head_dim)·4 (quant/attention_reuse.AttentionReuse)."""
    h, i = shape.hidden_size, shape.intermediate_size
    tokens = samples * seq_len
    block = shape.block_linear_params * 4  # fp32
    acts = 2 * tokens * h * 4  # block input and output
    if lean:
        return lean_working_bytes(shape, method, min(samples, batch) * seq_len, tokens) + \
            resident * seq_len * h * 4
    if reuse and method == "gptq":
        return working_bytes(shape, method, samples, seq_len, batch=batch) + \
            attention_reuse_bytes(shape, samples * seq_len)
    if method == "gptq" and shape.n_experts:
        # lean mode's working set and the activations, once: measured on an H100,
        # Qwen3-30B-A3B shape, 128 × 2048 tokens: 10.28 GiB (this: 10.42)
        return lean_working_bytes(shape, method, min(samples, batch) * seq_len) + \
            tokens * h * 4
    attn_out = shape.n_heads * shape.head_dim
    if method == "gptq":
        extra = (2 * h * h + attn_out * attn_out + i * i) * 4  # qkv, gate/up, o, down
    elif method == "awq":
        # attention / MLP reruns on at most 4096 tokens (methods.awq.LOSS_TOKENS), three
        # (tokens, FFN) tensors live at once; measured on an H100 with 128 × 2048 tokens:
        # 4.41 GiB (Llama-1B shape, this formula + 0.5 GiB 4.64), 9.33 GiB (8B shape, 9.6)
        extra = 3 * min(tokens, 4096) * i * 4 + awq_expert_bytes(shape, tokens)
    elif method == "gguf":
        extra = block  # a quantized copy; the imatrix itself is one vector per tensor
    else:  # rtn: the dequantized block, held until its error chart is measured
        extra = block
    return int(block + acts + extra)


# Lean mode's device memory (bytes; b = batch · seq_len tokens of one mini-batch, K × N the
# widest linear's inputs × outputs). Measured on an H100 with 128 × 2048 tokens, batch 8
# (benchmarks/gpu_quantize.py, benchmarks/README.md), predicted beside measured:
#   8B GPTQ 5.46 / 5.71 GiB, 8B AWQ 6.10 / 6.15, 70B GPTQ 18.06 / 17.26,
#   Qwen3-30B-A3B GPTQ 8.38 / 8.53.
# - the block in fp32;
# - a mini-batch's forward: the two input buffers, the residual stream and the normed
#   hidden states (5·h floats a token) and the MLP's gate, up and act(gate)·up (3·i); GPTQ's
#   pass for down_proj holds down's Hessian (i² floats) meanwhile; AWQ's capture runs the
#   whole block (the attention's repeated keys/values too: 8·h) and keeps its MLP reruns'
#   inputs and outputs (3 · 4096 · i, methods.awq.LOSS_TOKENS);
# - GPTQ's solve of the widest linear: its Hessian, the gathered copy, the Cholesky factor
#   and its inverse, with cuSOLVER's workspace (4·K², methods/gptq.inverse_hessian_cholesky)
#   and the weight's transposed copy, codes and dequantized copy (3·K·N);
# - mixture of experts (GPTQ): every expert's Hessians of a group at once (E·(h² + i_e²))
#   and the routed tokens' inputs and intermediates, kept per expert for the mini-batch
#   (LEAN_ROUTED · b·k·(h + 3·i_e); LEAN_ROUTED is fitted to the measured 8.53 GiB).
LEAN_ROUTED = 1.5


def attention_reuse_bytes(shape: ModelShape, tokens: int) -> int:
    """Device memory of the attention output kept in fast mode (AttentionReuse): o_proj's
    input, n_heads·head_dim float32 per calibration token."""
    return tokens * shape.n_heads * shape.head_dim * 4


def reuses_attention(job: JobSpec, mode: str) -> bool:
    """Whether `job` keeps the attention output across passes in VRAM mode `mode` (""
    on the CPU): true-sequential GPTQ, fast mode with room for it, or the CPU."""
    return job.method == "gptq" and job.gptq.true_sequential and mode in ("fast", "")


def awq_expert_bytes(shape: ModelShape, tokens: int | None = None) -> int:
    """What AWQ's search of a mixture-of-experts block keeps on the device besides the dense
    terms, for `tokens` calibration tokens (None: enough that every expert fills its clip
    sample), in float32 (the block runs in float32); 0 for a dense model. Per expert of E,
    with r = tokens·k/E routed rows (methods/awq.awq_search_block and its _capture):

        clip    min(r, CLIP_TOKENS)·(2h + i_e)·4   gate's, up's and down's input rows for the
                                                   clip search (keep_tokens; CLIP_TOKENS 2048)
        down    i_e²·4 when i_e ≤ LOSS_TOKENS      its Gram matrix (add_gram; LOSS_TOKENS 4096)
                else min(r, LOSS_TOKENS)·(i_e + h)·4   its routed inputs and reference outputs
                                                   (keep_call's 2-D rows, _Loss.reference)
        scales  2·h·i_e·4                          every expert's quantized gate and up at once
                                                   while the norm's one scale is searched on
                                                   the whole MoE block (_search_group's changed)

    all held from the capture to the clip search (the norm pair is searched while the clip
    rows and Grams are kept). Checked on two measured points of one shape only, not fitted
    (NVIDIA H200, benchmarks/gpu_quantize.py, Qwen3-30B-A3B shape, 128 × 2048 tokens, W4
    g128, batch 8; benchmarks/README.md): fast 13.27 GiB measured, 13.13 predicted (6.60
    without this term); lean 11.33 measured, 11.26 predicted (4.73 without). A fused
    gate_up expert (gpt-oss) is counted as two linears, a slight over-estimate."""
    if not shape.n_experts:
        return 0
    h, ie, e = shape.hidden_size, shape.expert_intermediate_size, shape.n_experts
    routed = tokens * shape.experts_per_token // e if tokens is not None else 1 << 62
    clip = min(routed, 2048) * (2 * h + ie) * 4
    down = ie * ie * 4 if ie <= 4096 else min(routed, 4096) * (ie + h) * 4
    return int(e * (clip + down + 2 * h * ie * 4))


def lean_working_bytes(shape: ModelShape, method: str, batch_tokens: int,
                       tokens: int | None = None) -> int:
    """Device memory of the quantize stage in lean mode (see working_bytes); `tokens`, the
    whole calibration set's, sizes AWQ's per-expert terms (awq_expert_bytes)."""
    h, i, b = shape.hidden_size, shape.intermediate_size, batch_tokens
    block = shape.block_linear_params * 4
    if shape.n_experts and method == "gptq":
        ie, k = shape.expert_intermediate_size, shape.experts_per_token
        return int(block + shape.n_experts * (h * h + ie * ie) * 4 + 5 * h * b * 4
                   + LEAN_ROUTED * b * k * (h + 3 * ie) * 4)
    if method == "awq":
        return int(block + (3 * i + 8 * h) * b * 4 + 3 * 4096 * i * 4
                   + awq_expert_bytes(shape, tokens))
    forward = (3 * i + 5 * h) * b * 4
    if method == "gptq":
        widest, other = max(h, i), min(h, i)
        solve = (4 * widest * widest + 3 * widest * other) * 4
        return int(block + max(forward + i * i * 4, solve))
    return int(block + forward + block)  # rtn, gguf: a dequantized copy of the block


def vram_mode(job: JobSpec, shape: ModelShape, gpu: GPU | None) -> tuple[str, str]:
    """("fast" | "fast-recompute" | "lean", why) for `job` on `gpu`: fast mode (the
    calibration activations on the GPU, and for true-sequential GPTQ the attention output
    kept across passes: reuses_attention) when its working memory fits under the card's
    usable memory and under job.max_vram; else fast-recompute (the same without the kept
    attention output) when that fits; else lean mode (the activations in host memory,
    streamed to the GPU per mini-batch: quant/streaming.BlockInputs). ("", "") on the CPU."""
    if gpu is None:
        return "", ""
    limit, whose = vram_budget(job, gpu)
    samples = job.quantize_samples
    fast = working_bytes(shape, job.method, samples, job.calibration.seq_len)
    if reuses_attention(job, "fast"):
        kept = working_bytes(shape, job.method, samples, job.calibration.seq_len, reuse=True)
        if kept <= limit:
            return "fast", (f"fast: calibration activations and the attention output kept "
                            f"on the GPU ({format_size(kept)}; {whose})")
        if fast <= limit:
            return "fast-recompute", (
                f"fast: calibration activations on the GPU, the attention recomputed in "
                f"each pass ({format_size(fast)}; keeping its output would need "
                f"{format_size(kept)}; {whose})")
    if fast <= limit:
        return "fast", (f"fast: calibration activations on the GPU ({format_size(fast)}; "
                        f"{whose})")
    on_gpu = resident_samples(job, shape, gpu)
    where = (f"{on_gpu} of {samples} calibration samples kept on the GPU, the other "
             f"{samples - on_gpu} in host memory, streamed to it" if on_gpu else
             "calibration activations in host memory, streamed to the GPU")
    return "lean", (f"lean: {where} (fast mode needs {format_size(fast)}; {whose}; "
                    f"{_resident_why(job, shape, gpu)})")


def vram_budget(job: JobSpec, gpu: GPU) -> tuple[int, str]:
    """(bytes, whose in words) the job may take on `gpu`: the card's usable memory
    (vram_limit: the desktop's share is kept free), or --max-vram when smaller."""
    limit = vram_limit(gpu)
    if job.max_vram and job.max_vram < limit:
        return job.max_vram, f"--max-vram is {format_size(job.max_vram)}"
    return limit, f"your {format_size(gpu.vram_total)} card allows {format_size(limit)}"


# Lean mode keeps part of the calibration activations on the GPU (resident_samples), up to
# the budget less this share of it: the lean formula's error (within 5 % on the runs in
# benchmarks/README.md) and the allocator's reserved but unused memory, which --max-vram's
# ceiling (pipeline._vram_ceiling) counts too.
LEAN_HEADROOM = 0.10
LEAN_BATCH = 8  # samples per mini-batch (quant/pipeline.quantize_blocks' batch)
# Resident samples are switched off on GPUs until a failure is explained: on an H200 (8B
# shape, 128 × 2048 tokens, --max-vram 8GiB, 48 of 128 samples resident) GPTQ lean stopped
# at the first solve with "HessianError: The calibration inputs of a layer with 4096 inputs
# contain NaN or Inf values", and AWQ lean went over the 8 GiB ceiling; lean mode with every
# sample streamed ran fine. The split (quant/streaming.BlockInputs) is proven only on the CPU
# (tests/engine/test_lean_vram.py). A likely cause of the NaN (an unordered cross-stream
# reuse of freed memory) is fixed in quant/streaming._HostStream but not yet checked on a
# GPU: tests/engine/test_cuda_pipeline.py's resident-samples test is the check to run before
# turning this on; docs/reliability.md#lean-vram-mode.
RESIDENT_SAMPLES_ON_GPU = False


def _resident_room(job: JobSpec, shape: ModelShape, gpu: GPU) -> tuple[int, int, int]:
    """(bytes left for resident samples, the lean working set, bytes per sample)."""
    limit, _ = vram_budget(job, gpu)
    seq = job.calibration.seq_len
    work = lean_working_bytes(shape, job.method, min(job.quantize_samples, LEAN_BATCH) * seq,
                              job.quantize_samples * seq)
    capture = shape.vocab_size * shape.hidden_size * 4  # the float32 embeddings, while
    # block 0's inputs are captured (the resident samples are written meanwhile)
    room = limit - max(work, capture) - int(LEAN_HEADROOM * limit)
    return max(room, 0), work, seq * shape.hidden_size * 4


def resident_samples(job: JobSpec, shape: ModelShape, gpu: GPU | None) -> int:
    """Lean mode: how many calibration samples stay on the GPU (the first ones, in whole
    mini-batches of LEAN_BATCH), the others being streamed from host memory
    (quant/streaming.BlockInputs): as many as fit in the budget (vram_budget) beside the
    lean working set and LEAN_HEADROOM. Each one costs seq_len · hidden · 4 bytes of VRAM
    and saves as much host memory and a copy per pass. 0 while RESIDENT_SAMPLES_ON_GPU is
    off."""
    if gpu is None or not RESIDENT_SAMPLES_ON_GPU:
        return 0
    room, _work, per_sample = _resident_room(job, shape, gpu)
    return min(job.quantize_samples, room // per_sample // LEAN_BATCH * LEAN_BATCH)


def _resident_why(job: JobSpec, shape: ModelShape, gpu: GPU) -> str:
    room, work, per_sample = _resident_room(job, shape, gpu)
    if not RESIDENT_SAMPLES_ON_GPU:
        return (f"lean mode's working set takes {format_size(work)}; keeping samples on the "
                f"GPU is switched off until a failure seen on a GPU is explained")
    return (f"lean mode's working set takes {format_size(work)}, which leaves "
            f"{format_size(room)} beside a {int(LEAN_HEADROOM * 100)} % margin: "
            f"{format_size(per_sample)} a sample, in whole mini-batches of {LEAN_BATCH}")


def job_vram_mode(job: JobSpec, info: ModelInfo, hw: Hardware | None = None,
                  ) -> tuple[str, str, int]:
    """vram_mode of `job` on the GPU this machine would run it on, and in lean mode the
    samples kept on it (resident_samples; 0 otherwise): the job runner asks this right
    before quantizing on a GPU."""
    hw = hw or hardware.detect()
    shape = _shape(info)
    mode, why = vram_mode(job, shape, hw.best_gpu)
    return mode, why, resident_samples(job, shape, hw.best_gpu) if mode == "lean" else 0


def peak_memory(job: JobSpec, shape: ModelShape, gpu: bool,
                source_bytes_per_param: float = 2.0, gguf_bytes: int = 0,
                lean: bool = False, reuse: bool | None = None,
                resident: int = 0) -> tuple[int, int]:
    """(peak RAM, peak VRAM) of `job` on a model of `shape` by the formulas of the module
    docstring; `gguf_bytes` is the GGUF file the quality gate maps (GGUF jobs); `lean`:
    lean VRAM mode (vram_mode) on the GPU, `resident` of its samples kept on the GPU
    (resident_samples); `reuse`: the attention output kept (working_bytes;
    None: as the job keeps it in that mode, reuses_attention)."""
    c = job.calibration
    if reuse is None:
        reuse = reuses_attention(job, "lean" if gpu and lean else "fast" if gpu else "")
    embed = shape.vocab_size * shape.hidden_size * 4
    method, samples = job.method, job.quantize_samples
    if method == "gguf" and job.gguf.imatrix != "auto":
        method, samples = "rtn", 0  # no calibration pass
    lean = gpu and lean
    resident = min(resident, samples) if lean else 0
    work = working_bytes(shape, method, samples, c.seq_len, lean=lean, reuse=reuse,
                         resident=resident)
    prefetch = int(shape.block_linear_params * source_bytes_per_param)
    logits = 3 * EVAL_CTX * shape.vocab_size * 4
    if job.method == "gguf":  # llama.cpp's output buffer and llama-cpp-python's score array
        logits += 2 * EVAL_CTX * shape.vocab_size * 4
    model = shape.n_params * 4 if job.method != "gguf" else gguf_bytes
    evaluate = BASE_RSS + model + logits if job.evaluate else 0
    if gpu:  # lean: the activations of the samples not kept on the GPU, in host memory
        host_acts = (samples - resident) * c.seq_len * shape.hidden_size * 4 if lean else 0
        return max(BASE_RSS + embed + 2 * prefetch + host_acts, evaluate), work
    return max(BASE_RSS + embed + work + prefetch, evaluate), 0


def memory(job: JobSpec, info: ModelInfo, gpu: bool, lean: bool = False,
           reuse: bool | None = None, resident: int = 0) -> tuple[int, int]:
    """(peak RAM, peak VRAM) of `job` on `info` (`peak_memory` with the model's source dtype
    and, for GGUF, its file size from `final_bytes`)."""
    gguf = final_bytes(job, info) if job.method == "gguf" and job.evaluate else 0
    return peak_memory(job, _shape(info), gpu, _source_bytes_per_param(info), gguf, lean,
                       reuse, resident)


def ram_limit(hw: Hardware) -> int:
    """The RAM a job may take: RAM_USABLE of the total, or what is available now if less."""
    cap = int(hw.ram_total * RAM_USABLE)
    return min(cap, int(hw.ram_available)) if hw.ram_available > 0 else cap


def vram_limit(gpu: GPU | None) -> int:
    """The GPU memory a job may take: VRAM_USABLE of the card, or what is free now if less."""
    if gpu is None:
        return 0
    cap = int(gpu.vram_total * VRAM_USABLE)
    return min(cap, int(gpu.vram_free)) if gpu.vram_free > 0 else cap


def memory_problems(ram: int, vram: int, hw: Hardware, gpu: GPU | None) -> list[str]:
    """Why peaks of `ram` (and `vram` on `gpu`) do not fit `hw`: [] when they do."""
    problems = []
    if ram > ram_limit(hw):
        problems.append(f"needs {format_size(ram)} of RAM; {format_size(ram_limit(hw))} of "
                        f"{format_size(hw.ram_total)} are usable")
    if gpu is not None and vram > vram_limit(gpu):
        problems.append(f"needs {format_size(vram)} of GPU memory; "
                        f"{format_size(vram_limit(gpu))} of {format_size(gpu.vram_total)} "
                        "are usable")
    return problems


def quantize_fit(shape: ModelShape, method: str, samples: int, hw: Hardware,
                 seq_len: int = CalibrationSpec.seq_len) -> tuple[str, int]:
    """Where quantizing a model of `shape` with `method` fits on `hw`, and its peak there:
    ("gpu", peak VRAM) when the GPU takes its working memory and RAM the rest, else ("ram",
    peak RAM) on the CPU, else ("none", peak RAM). The quantize stage alone (no quality
    gate), 16-bit source weights: what the advisor shows and recommends by."""
    job = JobSpec(model=shape.name, method=method, out="-", evaluate=False,
                  calibration=CalibrationSpec(samples=samples, seq_len=seq_len))
    gpu = hw.best_gpu
    if gpu is not None:
        for mode in ("fast", "fast-recompute", "lean"):  # in vram_mode's order
            ram, vram = peak_memory(job, shape, True, lean=mode == "lean",
                                    reuse=reuses_attention(job, mode),
                                    resident=resident_samples(job, shape, gpu))
            if not memory_problems(ram, vram, hw, gpu):
                return "gpu", vram
    ram, _ = peak_memory(job, shape, False)
    return ("ram" if not memory_problems(ram, 0, hw, None) else "none"), ram


_best_flops = 0.0
TIMING_FILE = "timing.json"  # in QuantDesk's cache: this machine's measured speed
MAX_TIMED_JOBS = 64  # probes kept in it, the most recent


def _timing_file() -> Path:
    from qtapp.engine.model.sources import cache_root

    return cache_root() / TIMING_FILE


def _read_timing() -> dict[str, Any]:
    try:
        data = json.loads(_timing_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_timing(data: dict[str, Any]) -> None:
    """Replace the timing file whole (a reader never sees half of it); a cache that cannot
    be written only means the next process measures again."""
    path = _timing_file()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _machine_key() -> str:
    import platform

    import torch

    return (f"{platform.node()} {platform.machine()} × {os.cpu_count()}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads")


def machine_flops() -> float:
    """The fp32 matmul rate every plan on this machine uses (matmul_flops, the best of three
    runs), measured once and kept in QuantDesk's cache (TIMING_FILE): the window, the
    worker's log and `quantize --dry-run` run in different processes, and a rate measured by
    each at its own moment (the machine idle, or busy with other programs) gave the same job
    three different times."""
    data = _read_timing()
    record = data.get("matmul")
    key = _machine_key()
    if isinstance(record, dict) and record.get("key") == key and record.get("flops", 0) > 0:
        return float(record["flops"])
    flops = max(matmul_flops() for _ in range(3))
    _write_timing({**_read_timing(), "matmul": {"key": key, "flops": flops}})
    return flops


def _time_key(job: JobSpec, info: ModelInfo, device: str) -> str:
    """What a job's block time depends on: the model (its folder and weight files), the
    method and its options, the scheme and rules, the calibration, the device."""
    d = job.to_dict()
    for k in ("out", "evaluate", "resume", "overwrite", "ignore_plan", "max_vram",
              "target_bytes", "target_bpw", "device"):
        d.pop(k, None)
    files = tuple(getattr(info, "weight_files", ()) or ())
    weights = [(str(f), f.stat().st_size) for f in files if f.exists()]
    model = getattr(info, "path", None) or getattr(info, "name", "")
    text = json.dumps([str(model), weights, device, d],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def record_probe(job: JobSpec, info: ModelInfo, device: str,
                 timing: tuple[float, float, float, int]) -> None:
    """Keep a probe's (setup, first block, later block seconds, peak RSS) for this job on
    this machine: every later plan of the same job uses it (recorded_probe)."""
    data = _read_timing()
    probes = data.get("probes") if isinstance(data.get("probes"), dict) else {}
    key = _time_key(job, info, device)
    probes.pop(key, None)
    probes[key] = list(timing)
    while len(probes) > MAX_TIMED_JOBS:
        probes.pop(next(iter(probes)))
    _write_timing({**data, "probes": probes})


def recorded_probe(job: JobSpec, info: ModelInfo,
                   device: str) -> tuple[float, float, float, int] | None:
    """The last probe of this job on this machine (record_probe), if any."""
    probes = _read_timing().get("probes")
    found = probes.get(_time_key(job, info, device)) if isinstance(probes, dict) else None
    if not (isinstance(found, list) and len(found) == 4):
        return None
    setup, first, later, rss = found
    return float(setup), float(first), float(later), int(rss)


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


def _block_seconds_estimate(job: JobSpec, shape: ModelShape, flops: float) -> float:
    tokens = job.quantize_samples * job.calibration.seq_len  # RTN: RTN_CHART_SAMPLES only
    forward = 2 * shape.block_active_params * tokens  # MoE: a token meets top-k experts
    # RTN: the block's forward, and X·Wᵀ and X·(W − Ŵ)ᵀ for its error chart
    factor = {"rtn": 3.0, "gptq": 3.0, "awq": 2.0 + job.awq.grid / 4, "gguf": 2.0}[job.method]
    return forward * factor / flops


def evaluation_seconds(job: JobSpec, info: ModelInfo, shape: ModelShape,
                       cpu_flops: float) -> float:
    """The quality gate (on the CPU): a pass over the evaluation text and the generation
    check for the quantized model, and for the source too unless its distributions are
    cached (they are after the first job on a model). A GGUF result runs in llama.cpp."""
    from qtapp.engine.quality.gate import source_is_cached

    def one(flops: float) -> float:
        return (EVAL_TOKENS * 2 * shape.active_params / flops
                + GENERATED_TOKENS / 2 * shape.active_params * 4 / MEMORY_BYTES_PER_S)

    path = getattr(info, "path", None)  # plans for a config alone (compatibility) have none
    source = 0.0 if path is not None and source_is_cached(path) else one(cpu_flops)
    return source + one(cpu_flops * (LLAMA_CPP_EVAL_RATE if job.method == "gguf" else 1))


def peak_rss() -> int:
    """Peak resident memory of this process so far, bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


class StagePeaks:
    """Peak RSS of the process at the end of each progress stage (ru_maxrss only grows, so
    the first stage whose figure equals the job's peak is where the peak happened), and the
    seconds each stage took."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.stage: str | None = None
        self.t0 = time.perf_counter()

    def see(self, stage: str) -> None:
        if stage != self.stage:
            self.finish()
            self.stage = stage

    def finish(self) -> None:
        now = time.perf_counter()
        if self.stage is not None:
            self.peaks[self.stage] = peak_rss()
            self.seconds[self.stage] = round(self.seconds.get(self.stage, 0) + now - self.t0, 2)
        self.t0 = now


def track_stage_peaks(emit: Emit) -> tuple[Emit, StagePeaks]:
    """`emit` wrapped so that each Progress event's stage is timed and its peak RSS noted."""
    peaks = StagePeaks()

    def tracked(e: ev.Event) -> None:
        if isinstance(e, ev.Progress):
            peaks.see(e.stage)
        emit(e)

    return tracked, peaks


def probe_block(job: JobSpec, info: ModelInfo) -> tuple[float, float, float, int]:
    """(setup seconds, seconds of the first block, seconds of a later block, peak RSS) of the
    job's own pipeline, run up to the end of block 1 (block 0 for a one-block model) in this
    process.

    The first block carries one-time costs (embedding the calibration set, thread pools,
    kernel and solver start-up, CUDA graph captures) that later blocks do not pay: timing
    only the first and multiplying it by the depth over-predicted GPTQ and AWQ jobs by 37 %
    on the demo. A later block is the rate; the first is counted once.
    """
    from qtapp.engine.quant.calibration import calibration_tokens
    from qtapp.engine.quant.pipeline import collect_input_stats, quantize_blocks
    from qtapp.engine.quant.qstore import QuantStore
    from qtapp.engine.quant.streaming import pick_device

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

    hw = hw or hardware.detect()
    gpu = hw.best_gpu if job.device in ("auto", "cuda") else None
    shape = _shape(info)
    mode, reason = vram_mode(job, shape, gpu)
    resident = resident_samples(job, shape, gpu) if mode == "lean" else 0
    ram, vram = memory(job, info, gpu is not None, lean=mode == "lean",
                       reuse=reuses_attention(job, mode), resident=resident)
    final = final_bytes(job, info)
    temp = 2 * final if job.method != "gguf" else final
    cpu_flops = machine_flops()
    flops = cpu_flops * (20 if gpu is not None else 1)
    setup, per_block, probed = 0.0, _block_seconds_estimate(job, shape, flops), False
    first_block = per_block
    device = "cuda" if gpu else "cpu"
    if job.method == "gguf" and job.gguf.imatrix != "auto":
        per_block = first_block = 2 * shape.block_linear_params * 4 / EXPORT_BYTES_PER_S
    else:  # a probe now, else the last probe of this job on this machine
        timing = probe_block(job, info) if probe else recorded_probe(job, info, device)
        if timing is not None and timing[2] > 0:
            if probe:
                record_probe(job, info, device, timing)
            setup, first_block, per_block, rss = timing
            probed = True
            if gpu is None:
                ram = max(ram, rss)
    seconds = (setup + first_block + max(shape.n_layers - 1, 0) * per_block
               + final / EXPORT_BYTES_PER_S)
    if job.evaluate:
        seconds += evaluation_seconds(job, info, shape, cpu_flops)
    target = Path(out or job.out).expanduser().resolve()
    unwritable = output_folder_problem(target)
    while not target.exists() and target != target.parent:
        target = target.parent
    disk_free = min(shutil.disk_usage(target).free, shutil.disk_usage(
        _existing(cache_root())).free)
    plan = Plan(model=info.name, method=job.method, device="cuda" if gpu else "cpu",
                peak_ram=int(ram), peak_vram=int(vram), temp_disk=int(temp),
                final_disk=int(final), seconds=float(seconds), ram_total=hw.ram_total,
                vram_total=gpu.vram_total if gpu else 0, disk_free=int(disk_free),
                probed=probed, block_seconds=float(per_block), ram_usable=ram_limit(hw),
                vram_usable=min(vram_limit(gpu), job.max_vram or vram_limit(gpu)),
                vram_mode=mode, vram_reason=reason, resident_samples=resident,
                streamed_samples=job.quantize_samples - resident if mode == "lean" else 0)
    groups = group_size_problem(job, info.config)
    if groups is not None:
        plan.problems.append(groups.problem)
        plan.fixes.append(groups.fix())
    if unwritable:  # before the disk check: an unwritable folder is not a full disk
        plan.problems.append(unwritable)
        plan.fixes.append("choose an output folder you can write to (--out)")
    _check(plan, job, info, hw, gpu, disk=not unwritable)
    return plan


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check(plan: Plan, job: JobSpec, info: ModelInfo, hw: Hardware, gpu: GPU | None,
           disk: bool = True) -> None:
    """Add the memory and disk problems to plan.problems, and fixes to plan.fixes (each
    memory fix re-planned with the formulas); `disk` False skips the free-space check."""
    memory = memory_problems(plan.peak_ram, plan.peak_vram, hw, gpu)
    if gpu is not None and job.max_vram and plan.peak_vram > job.max_vram:
        memory.append(f"needs {format_size(plan.peak_vram)} of GPU memory even in lean mode; "
                      f"--max-vram is {format_size(job.max_vram)}")
    plan.problems += memory
    memory_short = bool(memory)
    if disk and plan.temp_disk > plan.disk_free:
        plan.problems.append(f"needs {format_size(plan.temp_disk)} of disk while running; "
                             f"{format_size(plan.disk_free)} are free")
        plan.fixes.append(f"free {format_size(plan.temp_disk - plan.disk_free)} on the "
                          "output's disk or choose an output folder on another disk")
    if memory_short:
        _fixes(plan, job, info, hw, gpu)


def _fixes(plan: Plan, job: JobSpec, info: ModelInfo, hw: Hardware, gpu: GPU | None) -> None:
    """Settings that would fit, each re-planned by the memory formulas."""
    on_gpu = gpu is not None

    def fits(ram: int, vram: int, device: GPU | None = gpu) -> bool:
        return not memory_problems(ram, vram, hw, device)

    def vram_text(vram: int) -> str:
        return f", {format_size(vram)} VRAM" if on_gpu else ""

    earlier = len(plan.fixes)
    c = job.calibration
    for samples, seq_len in ((c.samples // 2, c.seq_len), (c.samples // 4, c.seq_len),
                             (c.samples // 2, c.seq_len // 2)):
        if samples < 1 or seq_len < 32 or job.method == "rtn":
            continue
        trial = replace(job, calibration=replace(c, samples=samples, seq_len=seq_len))
        ram, vram = memory(trial, info, on_gpu)
        if fits(ram, vram):
            plan.fixes.append(f"calibrate on {samples} samples × {seq_len} tokens: "
                              f"{format_size(ram)} RAM" + vram_text(vram))
            break
    if on_gpu:
        ram, _ = memory(job, info, False)
        if fits(ram, 0, None):
            plan.fixes.append(f"run on the CPU (--device cpu; activations in RAM): "
                              f"{format_size(ram)} RAM, slower")
    for method in ("rtn", "gguf"):
        if method != job.method:
            ram, vram = memory(replace(job, method=method), info, on_gpu)
            if fits(ram, vram):
                plan.fixes.append(f"method {method.upper()} (no per-block search): "
                                  f"{format_size(ram)} RAM")
    if job.evaluate:
        ram, vram = memory(replace(job, evaluate=False), info, on_gpu)
        if fits(ram, vram):
            plan.fixes.append(f"skip the quality gate (--no-eval; it loads the whole model): "
                              f"{format_size(ram)} RAM")
    if len(plan.fixes) == earlier:
        need = max(plan.peak_ram - ram_limit(hw), 0)
        plan.fixes.append(f"no setting fits: this model needs about {format_size(need)} "
                          "more RAM")
