"""Layer-streaming quantization: one decoder block in memory at a time.

    embeddings(calibration tokens) → X₀
    for each block i:
        load block i from the safetensors files           (only its weights)
        quantize its linears on X_i (RTN / GPTQ / AWQ)    → QuantStore block i (checkpoint)
        X_{i+1} = quantized block i (X_i)                  (errors propagate, as in GPTQ)
        free block i

Peak memory ≈ one block in float32 + the calibration activations X (n × L × hidden) +
one Hessian per linear being solved, not the whole model. The model skeleton is built on
the meta device; the block's forward is the transformers module itself, so every
architecture transformers implements runs unchanged. The inputs of block 0 and the
keyword arguments blocks need (rotary position embeddings, attention mask, …) are captured
by letting the model's own forward run up to block 0 and stopping it there.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec, QuantScheme
from qtapp.engine.errors import UserError, check_cancel
from qtapp.engine.events import Emit
from qtapp.engine.model.arch import method_refusal
from qtapp.engine.model.moe import min_expert_tokens, unfuse_experts
from qtapp.engine.model.sources import ModelInfo, SafetensorsReader
from qtapp.engine.quant.attention import gpu_attention, supports_sdpa
from qtapp.engine.quant.batching import first_output, fit_batch
from qtapp.engine.quant.methods.awq import AwqBlockResult, awq_apply_block, awq_search_block
from qtapp.engine.quant.methods.gptq import (
    HessianAccumulator,
    error_ratio,
    gptq_quantize,
    output_error_terms,
    release_graphs,
)
from qtapp.engine.quant.methods.rtn import rtn, rtn_searched
from qtapp.engine.quant.primitives import QuantizedWeight
from qtapp.engine.quant.qstore import QuantStore

# accelerate and transformers are imported where the model skeleton is built (LayerStreamer), not
# with this module: they take about a second to import, and pick_device and the block helpers are
# used without them.

# On a GPU, float32 matrix products (block forwards, Hessians XᵀX, the GPTQ sweep) may use
# TF32 tensor cores. Measured on an H100, Llama-8B shape, W4 g128, 128 × 2048 tokens:
# GPTQ 16.8 → 8.2 s per block, AWQ 12.9 → 3.5 s, mean relative layer error unchanged
# (0.0094 / 0.0095 both ways); peers run these passes in bf16, coarser still.
GPU_TF32 = True


@contextmanager
def _gpu_precision(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = GPU_TF32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class _StopForward(Exception):
    """Raised by the catcher once block 0's inputs are recorded."""


# Block arguments that are not alike for every block and sample. Each block gets its own
# arguments (sliding and global layers differ in mask and rotary embeddings, Gemma 4's global
# layers also in head width); SAMPLE_KWARGS differ per calibration sample (Gemma 4's
# per-layer inputs, a function of the tokens) and are kept for every sample; STATE_KWARGS are
# filled by the blocks themselves (Gemma 4's shared_kv_states: the last layer of each type
# that has its own keys and values stores them, the later layers read them), one per
# mini-batch, kept from block to block.
SAMPLE_KWARGS = ("per_layer_input",)
STATE_KWARGS = ("shared_kv_states",)


class _Recorder(nn.Module):
    """Stands in for block i while the model's own forward runs on the calibration tokens:
    records the block's input (block 0) and arguments, passes the hidden states on, and
    stops the forward at the last block."""

    def __init__(self, block: nn.Module, last: bool) -> None:
        super().__init__()
        import inspect

        self.attention_type = getattr(block, "attention_type", "full_attention")
        self.params = [n for n in inspect.signature(block.forward).parameters
                       if n not in ("self", "args", "kwargs")]
        self.last = last
        self.hidden: torch.Tensor | None = None
        self.kwargs: dict[str, Any] = {}

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.hidden = hidden_states
        self.kwargs = {**dict(zip(self.params[1:], args, strict=False)), **kwargs}
        if self.last:
            raise _StopForward
        return hidden_states


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available to PyTorch; "
                        "use --device auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class BlockInputs:
    """Calibration activations entering the current block, and the kwargs blocks need.

    Fast mode: `x` lives on the compute device. Lean mode (`device` given): the first
    samples, as many as the planner leaves room for (planner.resident_samples, a whole
    number of mini-batches), stay on the device (`x_device`) and are used as in fast mode;
    the others (`x`) are in host memory, page-locked when the device is a GPU, and
    `batches` streams each of their mini-batches to the device through two reused device
    buffers, the copy of mini-batch k + 1 running on a copy stream while mini-batch k is
    computed (docs/reliability.md#lean-vram-mode); forward_block sends a block's outputs
    back to where each sample lives. The numbers are the same in both modes: the same
    mini-batches of the same float32 values reach the same kernels.
    """

    x: torch.Tensor  # (n, L, hidden) float32; lean: the samples after x_device's, on the host
    kwargs: dict[str, Any]
    batch: int
    device: torch.device | None = None  # the compute device, when it is not x's (lean)
    x_device: torch.Tensor | None = None  # lean: the first samples, kept on the device
    # every block's own arguments (use_block sets kwargs to block i's), their SAMPLE_KWARGS
    # for all n samples, and the STATE_KWARGS objects of each mini-batch
    per_block: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, torch.Tensor]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    block: int = 0

    def use_block(self, i: int) -> None:
        """Make block i's arguments the ones `batches` hands out."""
        self.block = i
        if self.per_block:
            self.kwargs = self.per_block[i]

    def sample_kwargs(self, start: int, m: int) -> dict[str, Any]:
        """The current block's SAMPLE_KWARGS for samples start … start + m."""
        if not self.samples:
            return {}
        return {n: t[start:start + m].to(self.compute_device)
                for n, t in self.samples[self.block].items()}

    def _own(self, k: int, start: int, m: int) -> dict[str, Any]:
        """The arguments of mini-batch k (samples start … start + m) that are its own."""
        return {**self.sample_kwargs(start, m), **(self.states[k] if self.states else {})}

    @property
    def compute_device(self) -> torch.device:
        return self.device if self.device is not None else self.x.device

    @property
    def lean(self) -> bool:
        return self.device is not None

    @property
    def resident(self) -> int:
        """How many samples (the first ones) live on the compute device."""
        if not self.lean:
            return self.x.shape[0]
        return self.x_device.shape[0] if self.x_device is not None else 0

    @property
    def shape(self) -> tuple[int, ...]:
        """(n, L, hidden) of all samples, wherever they live."""
        return (self.resident + self.x.shape[0] if self.lean else self.x.shape[0],
                *self.x.shape[1:])

    def parts(self) -> list[tuple[int, torch.Tensor, bool]]:
        """(first sample, activations, whether they are in host memory) of each place the
        samples live, in sample order: fast mode x; lean mode x_device, then x."""
        if not self.lean:
            return [(0, self.x, False)]
        kept = self.resident
        if kept % self.batch and kept != self.shape[0]:  # a mini-batch would straddle them
            raise ValueError(f"{kept} samples on the device is not a whole number of "
                             f"mini-batches of {self.batch}")
        return [p for p in ((0, self.x_device, False), (kept, self.x, True))
                if p[1] is not None and p[1].shape[0]]

    def batches(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        k = i = 0  # mini-batch k starts at sample i
        for _start, part, host in self.parts():
            if host:
                each: Iterator[tuple[torch.Tensor, dict[str, Any]]] = _HostStream(
                    self.compute_device).batches(part, self.batch, self.kwargs)
            else:
                each = ((part[j : j + self.batch],
                         fit_batch(self.kwargs, self.batch, min(self.batch, len(part) - j)))
                        for j in range(0, len(part), self.batch))
            for xb, kw in each:
                yield xb, {**kw, **self._own(k, i, xb.shape[0])}
                k, i = k + 1, i + xb.shape[0]


class _HostStream:
    """Mini-batches between host memory and the compute device for lean mode.

    To the device: two device buffers take turns; mini-batch k + 1 is copied on a side
    stream (from page-locked memory, so the copy runs beside the kernels) as soon as
    mini-batch k is handed out, and the compute stream waits for its copy's event only when
    it gets to it. A buffer is overwritten only after the compute stream has passed the
    event recorded when its previous mini-batch was given back. To the host: each output is
    copied on another side stream after an event on the compute stream; `finish` waits for
    those copies (the next pass reads what they wrote). On a CPU the same buffers and slices
    are used with plain copies (what the tests exercise)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.h2d = torch.cuda.Stream(device)
            self.d2h = torch.cuda.Stream(device)

    def batches(self, x: torch.Tensor, batch: int, kwargs: dict[str, Any],
                ) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        n = x.shape[0]
        starts = list(range(0, n, batch))
        bufs = [torch.empty((min(batch, n), *x.shape[1:]), dtype=x.dtype, device=self.device)
                for _ in range(min(2, len(starts)))]
        if self.cuda:
            # The caching allocator hands out memory freed on the compute stream at once,
            # trusting that only the compute stream uses it, in order: kernels queued there
            # may still read or write it (the previous mini-batch's intermediates, when the
            # device-resident samples came just before). The side stream's first copies must
            # wait for them, or they race (docs/reliability.md#lean-vram-mode).
            self.h2d.wait_stream(torch.cuda.current_stream(self.device))
        ready: list[Any] = [None] * len(bufs)
        free: list[Any] = [None] * len(bufs)

        def load(k: int) -> None:
            slot, i = k % len(bufs), starts[k]
            m = min(batch, n - i)
            if not self.cuda:
                bufs[slot][:m].copy_(x[i : i + m])
                return
            with torch.cuda.stream(self.h2d):
                if free[slot] is not None:
                    self.h2d.wait_event(free[slot])
                bufs[slot][:m].copy_(x[i : i + m], non_blocking=True)
                ready[slot] = torch.cuda.Event()
                ready[slot].record(self.h2d)

        if starts:
            load(0)
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        for k, i in enumerate(starts):
            if k + 1 < len(starts):
                load(k + 1)
            slot, m = k % len(bufs), min(batch, n - i)
            if compute is not None:
                compute.wait_event(ready[slot])
            yield bufs[slot][:m], fit_batch(kwargs, batch, m)
            if compute is not None:
                free[slot] = torch.cuda.Event()
                free[slot].record(compute)
        if self.cuda:
            for b in bufs:
                b.record_stream(self.h2d)

    def write(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """out (host) ← y (device), after the kernels that compute y."""
        if not self.cuda:
            out.copy_(y)
            return
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.d2h):
            self.d2h.wait_event(done)
            out.copy_(y, non_blocking=True)
        y.record_stream(self.d2h)

    def finish(self) -> None:
        if self.cuda:
            self.d2h.synchronize()


def host_buffer(shape: tuple[int, ...], device: torch.device,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Host memory for copies to and from `device` (lean mode's activations, the prefetch
    staging of LayerStreamer): page-locked when the device is a GPU, so the copies run
    beside the kernels, and of exactly the size asked for.

    Not torch's pin_memory(): its caching host allocator rounds every block up to a power
    of two, all of it locked (2.5 GiB of activations would take 4 GiB), and keeps freed
    blocks for later instead of returning them to the system, so every pinned one-shot
    copy stays in the process's resident memory (docs/reliability.md#lean-vram-mode).
    Here ordinary memory is registered with the CUDA driver and unregistered when the
    tensor is freed; if registering fails the copies still work, only synchronously."""
    t = torch.empty(shape, dtype=dtype)
    if device.type == "cuda" and t.numel():
        cudart = torch.cuda.cudart()
        ptr = t.data_ptr()
        if cudart.cudaHostRegister(ptr, t.numel() * t.element_size(), 0) == \
                cudart.cudaError.success:
            weakref.finalize(t, _page_unlock, ptr).atexit = False
    return t


def _page_unlock(ptr: int) -> None:
    torch.cuda.synchronize()  # no copy may still read or write the memory
    torch.cuda.cudart().cudaHostUnregister(ptr)


def release_host_cache() -> None:
    """Return the page-locked blocks torch's caching host allocator keeps (pin_memory(),
    non_blocking copies to the CPU) to the system. torch 2.13 names it
    torch.accelerator.empty_host_cache, torch 2.11 torch._C._host_emptyCache."""
    for owner, name in ((getattr(torch, "accelerator", None), "empty_host_cache"),
                        (torch._C, "_host_emptyCache")):
        empty = getattr(owner, name, None)
        if empty is not None:
            empty()
            return


class LayerStreamer:
    """The model skeleton on meta; blocks materialised one at a time from safetensors.

    `prefetch(prefix)` reads a block's tensors from disk on a background thread while the
    current block is being quantized, so the GPU does not wait for the disk between blocks;
    on a GPU straight into one of two page-locked staging buffers that take turns and are
    reused for every block (host_buffer: page-locked memory torch would otherwise keep
    growing). One-shot reads (the embeddings, block 0) go to ordinary memory, freed as soon
    as they are copied. The copy to the device and the cast to the compute dtype happen in
    `materialize`, on the device: half the bytes cross the bus for bf16 models, and only
    one block is ever on the GPU.
    """

    def __init__(self, info: ModelInfo, device: torch.device, dtype: torch.dtype = torch.float32):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.info = info
        self.device = device
        self.dtype = dtype
        self.reader = SafetensorsReader(info.path)
        config = AutoConfig.from_pretrained(info.path, trust_remote_code=False)
        config.use_cache = False
        extra = {}
        if device.type == "cuda" and getattr(config, "_attn_implementation", None) in (
                None, "sdpa") and supports_sdpa(config):  # gpt-oss: its own eager (sinks)
            extra["attn_implementation"] = gpu_attention()
        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
        self.model.eval()
        self.blocks = self.resolve(info.arch.layers_prefix)
        self.n_blocks = len(self.blocks)
        if info.arch.n_experts:  # per-expert nn.Linear modules (model/moe.py)
            unfuse_experts(self.model)
        for i, block in enumerate(self.blocks):  # the family table against the module graph
            info.arch.check_block(block, i)
        self._reader_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        # prefix → (its read, the staging slot it reads into: None for ordinary memory)
        self._pending: dict[str, tuple[Future[dict[str, torch.Tensor]], int | None]] = {}
        self._buffers: dict[str, dict[str, torch.Tensor]] = {}  # see materialize
        # GPU: the two staging buffers (_read), the event after the copies that read each
        # one last, and the slot the next prefetch takes
        self._slots: list[torch.Tensor | None] = [None, None]
        self._copied: list[Any] = [None, None]
        self._next_slot = 0

    def close(self) -> None:
        self._reader_thread.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self._slots = [None, None]  # unregistered as they are freed (host_buffer)

    def _read(self, prefix: str, slot: int | None = None) -> dict[str, torch.Tensor]:
        """The tensors under `prefix`, each in fresh ordinary memory; with `slot`, views of
        that staging buffer instead (grown when a block needs more), once the copies of the
        block it held before are done."""
        if slot is None:
            return self.reader.state_dict(prefix)
        names = [n for n in self.reader.names() if n.startswith(prefix)]
        at = [0]
        for n in names:  # each tensor 64-byte aligned (a view of any dtype)
            at.append(at[-1] + -(-self.reader.nbytes(n) // 64) * 64)
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()
        buf = self._slots[slot]
        if buf is None or buf.numel() < at[-1]:
            self._slots[slot] = None  # the old one is freed first
            buf = self._slots[slot] = host_buffer((at[-1],), self.device, torch.uint8)
        return {n[len(prefix):]: self.reader.get(n, out=buf[a : a + self.reader.nbytes(n)])
                for n, a in zip(names, at, strict=False)}

    def prefetch(self, prefix: str) -> None:
        """Start reading a block's weights from disk in the background."""
        if prefix not in self._pending:
            slot = None
            if self.device.type == "cuda":
                slot, self._next_slot = self._next_slot, 1 - self._next_slot
                # a read into this slot that was never used (a pass stopped early) is stale
                self._pending = {p: v for p, v in self._pending.items() if v[1] != slot}
            self._pending[prefix] = (self._reader_thread.submit(self._read, prefix, slot),
                                     slot)

    def resolve(self, dotted: str) -> Any:
        """The (meta) submodule of the model at a dotted path ("model.norm")."""
        obj: Any = self.model
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def materialize(self, module: nn.Module, prefix: str, keep_dtype: bool = False,
                    ) -> nn.Module:
        """Give a meta module real weights from the safetensors files (prefix 'model.layers.3.')."""
        pending, slot = self._pending.pop(prefix, (None, None))
        state = pending.result() if pending is not None else self._read(prefix)
        # Buffers the files do not hold (Gemma's embed_scale, rotary inv_freq) were computed
        # from the config when the skeleton was built; to_empty would leave them as
        # uninitialised memory (Gemma's block inputs came out as zeros), so they are kept
        # from the first time the module is materialised and put back each time.
        kept = self._buffers.setdefault(prefix, {
            n: b.detach().clone() for n, b in module.named_buffers() if b.device.type != "meta"})
        module.to_empty(device=self.device)  # untouched memory: costs no RSS until written
        for name, value in kept.items():
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = value.to(self.device)
        # Each source tensor is dropped as soon as it is converted, and the converted tensors
        # become the parameters (assign) instead of being copied into the empty ones: the
        # old way held the source, its conversion and the written copy at once (for the 1B
        # shape's float32 embeddings, 200 + 400 + 400 MB).
        converted = {}
        for k in list(state):
            t = state.pop(k).to(self.device, non_blocking=True)
            converted[k] = t if keep_dtype else t.to(self.dtype)
        if slot is not None:  # the staging buffer is refilled once these copies are done
            self._copied[slot] = torch.cuda.Event()
            self._copied[slot].record(torch.cuda.current_stream(self.device))
        missing, _unexpected = module.load_state_dict(converted, strict=False, assign=True)
        del converted
        missing = [m for m in missing if not m.endswith("inv_freq")]
        if missing:
            raise UserError(f"the model files lack weights for {prefix}{missing[0]} "
                            f"({len(missing)} missing); the download may be incomplete")
        return module if keep_dtype else module.to(self.dtype)

    def release(self, module: nn.Module) -> None:
        module.to("meta")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def block_prefix(self, i: int) -> str:
        return f"{self.info.arch.layers_prefix}.{i}."

    def capture_inputs(self, tokens: torch.Tensor, batch: int, lean: bool = False,
                       resident: int = 0) -> BlockInputs:
        """Run the embeddings on the calibration tokens and capture block 0's inputs and
        every block's arguments (SAMPLE_KWARGS, STATE_KWARGS); with `lean`, into host memory,
        except the first `resident` samples (rounded down to whole mini-batches), which stay
        on the device (BlockInputs, lean mode).

        The model's own forward runs with every block replaced by a _Recorder, so each block
        gets the mask and rotary embeddings of its own layer type. Besides the token
        embeddings, the other modules the language model runs before its blocks (Gemma 4's
        per-layer embeddings and their projection) are materialised for this pass."""
        arch = self.info.arch
        inner_name = arch.layers_prefix.rsplit(".", 1)[0]
        inner = self.resolve(inner_name)
        final_norm = self.resolve(arch.final_norm)
        before = [(name, child) for name, child in inner.named_children()
                  if child is not self.blocks and child is not final_norm
                  and any(True for _ in child.parameters())]
        for name, child in before:  # other embedding tables as stored (Gemma 4's per-layer
            # table is most of E2B's language model: 4.7 GB in bfloat16, 9.4 GB in float32);
            # the rows it looks up join the float32 computation exactly (their scale, √256 =
            # 16 for the released models, is exact in bfloat16 too)
            self.materialize(child, f"{inner_name}.{name}.",
                             keep_dtype=isinstance(child, nn.Embedding)
                             and f"{inner_name}.{name}" != arch.embed)
        originals = list(self.blocks)
        recorders = [_Recorder(b, last=j == len(originals) - 1) for j, b in enumerate(originals)]
        for j, r in enumerate(recorders):
            self.blocks[j] = r
        xs: list[torch.Tensor] = []
        n = tokens.shape[0]
        on_device = min(n, resident // batch * batch) if lean else n
        dev: torch.Tensor | None = None  # lean: samples 0 … on_device
        host: torch.Tensor | None = None  # lean: the others
        stream = _HostStream(self.device)
        per_block: list[dict[str, Any]] = []
        samples: list[dict[str, list[torch.Tensor]]] = [{} for _ in recorders]
        states: list[dict[str, Any]] = []
        try:
            with torch.no_grad():
                for i in range(0, tokens.shape[0], batch):
                    try:
                        inner(input_ids=tokens[i : i + batch].to(self.device), use_cache=False)
                    except _StopForward:
                        pass
                    h = recorders[0].hidden.to(torch.float32)
                    if not lean:
                        xs.append(h)
                    elif i < on_device:
                        if dev is None:
                            dev = torch.empty((on_device, *h.shape[1:]), dtype=h.dtype,
                                              device=h.device)
                        dev[i : i + h.shape[0]] = h
                    else:
                        if host is None:
                            host = host_buffer((n - on_device, *h.shape[1:]), self.device)
                        stream.write(host[i - on_device : i - on_device + h.shape[0]], h)
                    for j, r in enumerate(recorders):
                        for key in SAMPLE_KWARGS:
                            if isinstance(r.kwargs.get(key), torch.Tensor):
                                t = r.kwargs[key].to(torch.float32)
                                samples[j].setdefault(key, []).append(
                                    t.cpu() if lean else t.clone())
                    states.append({key: type(v)() for key, v in recorders[0].kwargs.items()
                                   if key in STATE_KWARGS and v is not None})
                    if i == 0:
                        per_block = [
                            {k: v for k, v in r.kwargs.items()
                             if k not in ("cache", "past_key_values", *SAMPLE_KWARGS,
                                          *STATE_KWARGS)} | {"use_cache": False}
                            for r in recorders]
                stream.finish()
        finally:
            for j, b in enumerate(originals):
                self.blocks[j] = b
            for _name, child in before:
                self.release(child)
        kept = [{k: torch.cat(v) for k, v in d.items()} for d in samples]
        extra = {"per_block": per_block, "samples": kept if any(kept) else [],
                 "states": states if any(states) else []}
        if lean:
            if host is None:  # every sample stays on the device
                assert dev is not None
                host = torch.empty((0, *dev.shape[1:]))
            return BlockInputs(host, per_block[0], batch, device=self.device, x_device=dev,
                               **extra)
        return BlockInputs(torch.cat(xs), per_block[0], batch, **extra)


def forward_block(block: nn.Module, inputs: BlockInputs,
                  out: torch.Tensor | BlockInputs | None = None,
                  should_cancel: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """Run a block over all calibration inputs; write the outputs into `out` if given: a
    tensor for all samples, or `inputs` itself (X ← block(X), each sample written back
    where it lives: BlockInputs.parts). should_cancel() is polled before each mini-batch
    (raises Cancelled)."""
    compute = inputs.compute_device
    if out is inputs:
        dests = inputs.parts()
    elif isinstance(out, torch.Tensor):
        dests = [(0, out, out.device.type != compute.type)]
    else:
        dests = []
    to_host = _HostStream(compute) if any(host for *_, host in dests) else None
    i = 0
    try:
        with torch.no_grad():
            for xb, kw in inputs.batches():
                check_cancel(should_cancel)
                y = first_output(block(xb.to(block_dtype(block)), **kw))
                m = xb.shape[0]
                for start, dest, host in reversed(dests):  # the part sample i is in
                    if start <= i:
                        if host:  # lean mode: back to host memory, beside the kernels
                            assert to_host is not None
                            to_host.write(dest[i - start : i - start + m], y.to(dest.dtype))
                        else:
                            dest[i - start : i - start + m] = y.to(dest.dtype)
                        break
                i += m
    finally:
        if to_host is not None:
            to_host.finish()
    return out if isinstance(out, torch.Tensor) else None


def block_dtype(block: nn.Module) -> torch.dtype:
    return next(block.parameters()).dtype


@dataclass
class StreamedBlock:
    """One block of `stream_blocks`, materialised on the device."""

    index: int
    prefix: str  # "model.layers.3."
    module: nn.Module
    hooks: list[Any] = field(default_factory=list)  # handles removed after the block's forward


def stream_blocks(streamer: LayerStreamer, inputs: BlockInputs,
                  should_cancel: Callable[[], bool],
                  after_block: Callable[[int, float], None]) -> Iterator[StreamedBlock]:
    """The loop of every streamed pass over the model (quantizing, the importance matrix,
    the sensitivity pass), one block in memory at a time:

        for each block i:
            should_cancel()?  → raise Cancelled
            materialise block i; start reading block i + 1 from disk (prefetch)
            yield it            (the caller quantizes or measures it, and may register
                                 forward hooks, listed in `hooks`)
            X_{i+1} = block i (X_i), written over X_i; the hooks are removed
            free block i; after_block(i, seconds since block i was started)
    """
    for i in range(streamer.n_blocks):
        check_cancel(should_cancel)
        t0 = time.perf_counter()
        inputs.use_block(i)
        prefix = streamer.block_prefix(i)
        block = StreamedBlock(i, prefix, streamer.materialize(streamer.blocks[i], prefix))
        if i + 1 < streamer.n_blocks:
            streamer.prefetch(streamer.block_prefix(i + 1))
        yield block
        try:
            forward_block(block.module, inputs, out=inputs, should_cancel=should_cancel)
        finally:
            for h in block.hooks:
                h.remove()
        streamer.release(block.module)
        after_block(i, time.perf_counter() - t0)


def _linear(block: nn.Module, name: str) -> nn.Linear:
    module = block.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise UserError(f"{name} is not a linear layer in this model; the architecture table "
                        "does not match the model files")
    return module


def collect_hessians(block: nn.Module, names: list[str], inputs: BlockInputs,
                     should_cancel: Callable[[], bool] | None = None,
                     ) -> dict[str, HessianAccumulator]:
    """Accumulate H = 2/n Σ x xᵀ for each named linear over the calibration set.

    Linears that are called on the very same input tensor (q/k/v on the normed hidden
    states, gate/up) share one accumulator object: their H is the same, so it is summed
    once. The sharing is seen on the first mini-batch.

    Inputs are taken before each linear runs (forward pre-hooks), and each mini-batch's
    forward stops as soon as every named linear has its input: the rest of the block would
    only compute outputs nobody reads. True-sequential GPTQ runs this once per group, so on
    later mini-batches the q/k/v pass computes only the norm, gate/up stops before the FFN
    and down before its own product (about a third less forward work per block on a CPU).
    """
    acc = {n: HessianAccumulator(_linear(block, n).in_features, inputs.compute_device)
           for n in names}
    shares: dict[str, str] = {}  # name → the earlier name whose input it gets
    pending: set[str] = set()
    seen: list[tuple[str, torch.Tensor]] = []  # this mini-batch's inputs, in call order
    first_batch = True

    def hook(name: str, x: torch.Tensor) -> None:
        same = next((n for n, y in seen if y is x and n != name), None)
        if first_batch and same is not None:
            shares[name] = shares.get(same, same)
            acc[name] = acc[shares[name]]
        elif name in shares:
            if same is None or shares.get(same, same) != shares[name]:
                raise RuntimeError(f"{name} got a different input from {shares[name]} on a "
                                   "later mini-batch, though they shared it on the first")
        else:
            acc[name].add_batch(x.detach())
        seen.append((name, x))
        pending.discard(name)
        if not first_batch:  # the linears that share this input need not be waited for
            pending.difference_update([n for n, target in shares.items() if target == name])
        if not pending:
            raise _StopForward

    hooks = [
        _linear(block, n).register_forward_pre_hook(lambda _m, args, n=n: hook(n, args[0]))
        for n in names
    ]
    try:
        with torch.no_grad():
            for xb, kw in inputs.batches():
                check_cancel(should_cancel)
                pending.update(names)
                seen.clear()
                try:
                    block(xb.to(block_dtype(block)), **kw)
                except _StopForward:
                    pass
                first_batch = False
    finally:
        seen.clear()
        for h in hooks:
            h.remove()
    return acc


def mixer_output(groups: tuple[tuple[str, ...], ...]) -> str | None:
    """The token mixer's output projection of a block from its true-sequential groups (the
    family table, ArchSpec.present): the second group when it is one linear under the same
    module as linears of the first ("self_attn.o_proj" after q/k/v, Gated DeltaNet's
    "linear_attn.out_proj" after its input projections); None when the groups are otherwise."""
    if len(groups) < 2 or len(groups[1]) != 1:
        return None
    parent = groups[1][0].rpartition(".")[0]
    return groups[1][0] if parent and any(n.rpartition(".")[0] == parent
                                          for n in groups[0]) else None


class AttentionReuse:
    """Fast mode's kept attention output (docs/reliability.md#attention-output-reuse).

    True-sequential GPTQ runs the block once per group; after o_proj (the mixer's output
    projection, `mixer_output`) is quantized, the attention's output no longer changes, yet
    the gate/up pass, the down pass and the next block's forward would each recompute q/k/v
    and the attention. Instead the o pass keeps o_proj's input for every calibration sample
    on the device (`keep`: n × L × width floats), and once o_proj is quantized (`start`) the
    mixer module's forward is replaced by o_proj(kept input) of the mini-batch at hand: the
    same kernel on the same values, so every later number is bit-identical.

    The first call after `start` runs the real module and compares: only when its output
    is exactly o_proj(kept) (and nothing else it returns is set) is the replacement used;
    otherwise it logs once and the block recomputes. The mini-batches come in
    BlockInputs.batches order in every pass (call k is mini-batch k mod their count; a
    pass starts with `rewind`); a call whose batch size is not that mini-batch's is an
    error, not a silent mix-up. `remove` puts the module's forward back and frees the kept
    inputs (stream_blocks calls it after the block's forward)."""

    def __init__(self, block: nn.Module, linear: str, inputs: BlockInputs,
                 log: Callable[[str], None]) -> None:
        self.name = linear
        self.linear = _linear(block, linear)
        self.parent_name = linear.rpartition(".")[0]
        self.parent = block.get_submodule(self.parent_name)
        self.batch = inputs.batch
        self.n = inputs.x.shape[0]
        self.n_batches = -(-self.n // self.batch)
        self.kept: torch.Tensor | None = None
        self.calls = 0
        self.state = "off"  # keeping → checking → on, or off
        self.log = log
        self._hook: Any = None
        self._rest = 0  # how many None the module returns after its output (a tuple's)

    def _rows(self, k: int) -> tuple[int, int]:
        start = (k % self.n_batches) * self.batch
        return start, min(self.batch, self.n - start)

    def keep(self) -> None:
        """Keep o_proj's input of every mini-batch in the pass that follows (the o pass)."""
        self.state, self.calls, self.kept = "keeping", 0, None

        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            start, m = self._rows(self.calls)
            self.calls += 1
            if self.state != "keeping" or x.shape[0] != m or self.calls > self.n_batches:
                self.state, self.kept = "off", None
                return
            if self.kept is None:
                self.kept = torch.empty((self.n, *x.shape[1:]), dtype=x.dtype,
                                        device=x.device)
            self.kept[start:start + m].copy_(x.detach())

        self._hook = self.linear.register_forward_pre_hook(hook)

    def start(self) -> None:
        """o_proj is quantized: later passes take the attention's output from the kept
        inputs (after the check on the first mini-batch)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.state != "keeping" or self.calls != self.n_batches or self.kept is None:
            self.state, self.kept = "off", None
            return
        self.state, self.calls = "checking", 0
        self.parent.forward = self._forward  # an instance attribute: removed by `remove`

    def rewind(self) -> None:
        self.calls = 0

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        start, m = self._rows(self.calls)
        self.calls += 1
        if hidden is None or hidden.shape[0] != m:
            raise RuntimeError(f"attention output reuse: {self.parent_name} got a batch of "
                               f"{None if hidden is None else hidden.shape[0]} samples where "
                               f"mini-batch {start // self.batch} has {m}")
        assert self.kept is not None
        y = self.linear(self.kept[start:start + m])
        if self.state == "on":
            return (y, *[None] * self._rest) if self._rest else y
        out = type(self.parent).forward(self.parent, *args, **kwargs)  # the check
        rest = out[1:] if isinstance(out, tuple) else ()
        if start == 0 and all(r is None for r in rest) and torch.equal(first_output(out), y):
            self.state, self._rest = "on", len(rest)
        else:
            self.log(f"{self.parent_name}'s output is not {self.name}(its input) for this "
                     "model: the attention is recomputed in the later passes")
            self.remove()
        return out

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.parent.__dict__.pop("forward", None)
        self.state, self.kept = "off", None


def measure_output_errors(block: nn.Module, quantized: dict[str, torch.Tensor],
                          inputs: BlockInputs,
                          should_cancel: Callable[[], bool] | None = None) -> dict[str, float]:
    """‖X(W − Ŵ)ᵀ‖²_F / ‖XWᵀ‖²_F for each named linear of `block` (still holding its float
    weights W), X being the linear's inputs over the calibration set and Ŵ = quantized[name]:
    the quantity gptq.relative_output_error computes from a Hessian, summed directly over the
    token rows. Each mini-batch's forward stops once every named linear has seen its input."""
    if not quantized:
        return {}
    num = dict.fromkeys(quantized, 0.0)
    den = dict.fromkeys(quantized, 0.0)
    pending: set[str] = set()

    def hook(name: str, linear: nn.Linear, x: torch.Tensor) -> None:
        W = linear.weight.float()
        xf = x.detach().reshape(-1, W.shape[1]).float()
        num[name] += float((xf @ (W - quantized[name].to(W.device, torch.float32)).T)
                           .square().sum())
        den[name] += float((xf @ W.T).square().sum())
        pending.discard(name)
        if not pending:
            raise _StopForward

    hooks = []
    for n in quantized:
        linear = _linear(block, n)
        hooks.append(linear.register_forward_pre_hook(
            lambda _m, args, n=n, linear=linear: hook(n, linear, args[0])))
    try:
        with torch.no_grad():
            for xb, kw in inputs.batches():
                check_cancel(should_cancel)
                pending.update(quantized)
                try:
                    block(xb.to(block_dtype(block)), **kw)
                except _StopForward:
                    pass
    finally:
        for h in hooks:
            h.remove()
    return {n: (num[n] / den[n] if den[n] > 0 else (0.0 if num[n] <= 0 else float("inf")))
            for n in quantized}


@dataclass
class BlockReport:
    index: int
    modules: dict[str, QuantizedWeight]
    floats: dict[str, torch.Tensor]  # float tensors the method changed (AWQ-scaled norms)
    meta: dict[str, Any]
    search: Any = None  # AWQ: the block's AwqBlockResult (scales and clips), plain data
    # fast-mode GPTQ: the kept attention output, in use until the block's forward is done
    reuse: AttentionReuse | None = None


AWQ_SEARCH_FILE = "awq-search-{:05d}.safetensors"  # beside the checkpoint blocks


class BlockQuantizer:
    """Quantizes the linears of one materialised block with the job's method."""

    def __init__(self, job: JobSpec, info: ModelInfo, emit: Emit,
                 should_cancel: Callable[[], bool]) -> None:
        self.job = job
        self.info = info
        self.emit = emit
        self.should_cancel = should_cancel
        # fast mode (quantize_blocks): keep the attention output across the passes after
        # o_proj's (AttentionReuse); reuse_said: its fallback was logged once
        self.reuse_attention = False
        self.reuse_said = False
        refusal = method_refusal(job.method, info.config)
        if refusal:
            raise UserError(refusal)

    def scheme(self, block_prefix: str, name: str) -> QuantScheme | None:
        return self.job.scheme_for(block_prefix + name)

    def _check_cancel(self) -> None:
        check_cancel(self.should_cancel)

    def quantize(self, i: int, block: nn.Module, prefix: str, inputs: BlockInputs) -> BlockReport:
        method = self.job.method
        floats: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        search = None
        if method == "awq":
            floats, meta, search = self._awq_scale(i, block, prefix, inputs)
        if method == "rtn":
            return BlockReport(i, self._rtn_block(i, block, prefix, inputs), floats, meta)
        sequential = self.info.arch.present(i, block)[0]
        groups = sequential if method == "gptq" and self.job.gptq.true_sequential else \
            (tuple(n for g in sequential for n in g),)
        modules: dict[str, QuantizedWeight] = {}
        reuse = self._attention_reuse(i, block, prefix, groups, inputs)
        try:
            for group in groups:
                todo = [n for n in group if self.scheme(prefix, n) is not None]
                if not todo:
                    continue
                self._check_cancel()
                keeping = reuse is not None and todo == [reuse.name]
                if keeping:
                    reuse.keep()  # type: ignore[union-attr]
                elif reuse is not None:
                    reuse.rewind()
                hessians = collect_hessians(block, todo, inputs, self.should_cancel)
                few = self._few_tokens(i, prefix, todo, hessians, meta)
                while todo:
                    self._check_cancel()
                    first = todo.pop(0)
                    stack = [first] + [n for n in todo if hessians[n] is hessians[first]
                                       and self.scheme(prefix, n) == self.scheme(prefix, first)
                                       and (n in few) == (first in few)]
                    todo = [n for n in todo if n not in stack]
                    modules.update(self._quantize_linears(i, block, prefix, stack,
                                                          hessians[first].H, first in few))
                del hessians  # before the next group's are made (down_proj's is K² floats)
                if keeping:
                    reuse.start()  # type: ignore[union-attr]
        except BaseException:
            if reuse is not None:
                reuse.remove()
            raise
        if reuse is not None:
            reuse.rewind()  # the block's forward (stream_blocks) is a pass of its own
        return BlockReport(i, modules, floats, meta, search,
                           reuse if reuse is not None and reuse.state != "off" else None)

    def _attention_reuse(self, i: int, block: nn.Module, prefix: str,
                         groups: tuple[tuple[str, ...], ...], inputs: BlockInputs,
                         ) -> AttentionReuse | None:
        """The AttentionReuse of block i when fast-mode true-sequential GPTQ quantizes its
        mixer's output projection in a pass of its own; None otherwise (lean mode: the
        activations live in host memory)."""
        if not self.reuse_attention or inputs.lean or len(groups) < 3:
            return None
        name = mixer_output(groups)
        if name is None or self.scheme(prefix, name) is None:
            return None

        def log(message: str) -> None:
            if not self.reuse_said:
                self.reuse_said = True
                self.emit(ev.Log(level="info", message=f"block {i}: {message}"))

        return AttentionReuse(block, name, inputs, log)

    def _few_tokens(self, i: int, prefix: str, names: list[str],
                    hessians: dict[str, HessianAccumulator], meta: dict[str, Any]) -> set[str]:
        """The expert linears of `names` whose Hessian was built from fewer calibration tokens
        than min_expert_tokens (model/moe.py): they are rounded with the range search instead
        of being solved. A log event names the experts of each kind, with their tokens;
        meta["experts"] keeps every expert linear's token count and the fallbacks."""
        arch = self.info.arch
        few: set[str] = set()
        tokens: dict[str, int] = {}
        for n in names:
            if arch.expert_of(n) is None:
                continue
            scheme = self.scheme(prefix, n)
            assert scheme is not None
            tokens[n] = hessians[n].n_samples
            if tokens[n] < min_expert_tokens(scheme.group_size):
                few.add(n)
        if not tokens:
            return few
        record = meta.setdefault("experts", {"tokens": {}, "fallback": []})
        record["tokens"].update(tokens)
        record["fallback"] += sorted(few)
        if few:
            kinds = sorted({n.rsplit(".", 1)[-1] for n in few})
            ids = sorted({arch.expert_of(n) for n in few})  # type: ignore[type-var]
            counts = ", ".join(f"{e} ({tokens[next(n for n in few if arch.expert_of(n) == e)]})"
                               for e in ids)
            scheme = self.scheme(prefix, next(iter(few)))
            assert scheme is not None
            self.emit(ev.Log(level="notice", message=(
                f"block {i}: experts {counts} got fewer than "
                f"{min_expert_tokens(scheme.group_size)} calibration tokens for "
                f"{', '.join(kinds)}: rounded to nearest with the range search (rtn), not "
                f"{self.job.method}; the other {arch.n_experts - len(ids)} experts use their "
                "own tokens")))
        return few

    def _rtn_block(self, i: int, block: nn.Module, prefix: str, inputs: BlockInputs,
                   ) -> dict[str, QuantizedWeight]:
        """RTN: round each linear (no calibration data), then measure the relative output
        errors for the chart on the float block's inputs in one forward (no Hessians)."""
        todo = [n for g in self.info.arch.present(i, block)[0] for n in g
                if self.scheme(prefix, n) is not None]
        qws: dict[str, QuantizedWeight] = {}
        hats: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        for name in todo:
            self._check_cancel()
            scheme = self.scheme(prefix, name)
            assert scheme is not None
            t0 = time.perf_counter()
            qws[name] = rtn(_linear(block, name).weight.data.float(), scheme)
            hats[name] = qws[name].dequantize()
            seconds[name] = time.perf_counter() - t0
        errors = measure_output_errors(block, hats, inputs, self.should_cancel)
        for name in todo:
            self._check_cancel()  # a cancel seen at a module's layer event stops the block
            scheme = self.scheme(prefix, name)
            assert scheme is not None
            linear = _linear(block, name)
            linear.weight.data.copy_(hats.pop(name).to(linear.weight.dtype))
            self.emit(ev.Layer(
                block=i, module=prefix + name, kind=ev.module_kind(name), bits=scheme.bits,
                group_size=scheme.group_size, rel_error=float(errors[name]),
                seconds=round(seconds[name], 4), method=self.job.method,
            ))
        self._check_cancel()
        return qws

    def _quantize_linears(self, i: int, block: nn.Module, prefix: str, names: list[str],
                          H: torch.Tensor, fallback: bool = False,
                          ) -> dict[str, QuantizedWeight]:
        """Quantize linears that share an input and a scheme.

        GPTQ treats every output row alike given H, so the weights of q/k/v (or gate/up) are
        stacked and solved in one column sweep: the same result as one sweep each, with one
        Hessian inverse and a third of the per-column steps (on a GPU, whose sweep is
        bound by kernel launches, that is most of its time).
        """
        scheme = self.scheme(prefix, names[0])
        assert scheme is not None
        linears = [_linear(block, n) for n in names]
        t0 = time.perf_counter()
        Ws = [lin.weight.data.float() for lin in linears]
        if fallback:  # an expert with too few calibration tokens (_few_tokens)
            qws = [rtn_searched(W, scheme) for W in Ws]
        elif self.job.method == "gptq":
            stacked = gptq_quantize(torch.cat(Ws) if len(Ws) > 1 else Ws[0], H, scheme,
                                    self.job.gptq)
            edges = [0, *itertools.accumulate(W.shape[0] for W in Ws)]
            qws = [stacked.rows(a, b) for a, b in itertools.pairwise(edges)]
        else:
            qws = [rtn(W, scheme) for W in Ws]
        terms = []
        for linear, W, qw in zip(linears, Ws, qws, strict=True):
            W_hat = qw.dequantize()
            terms.append(output_error_terms(W, W_hat, H))
            linear.weight.data.copy_(W_hat.to(linear.weight.dtype))
        # one read of every linear's error terms: the only wait for the device here
        errors = [error_ratio(num, den) for num, den in torch.stack(terms).tolist()]
        share = (time.perf_counter() - t0) / sum(W.shape[0] for W in Ws)
        out = {}
        for name, W, qw, err in zip(names, Ws, qws, errors, strict=True):
            self.emit(ev.Layer(
                block=i, module=prefix + name, kind=ev.module_kind(name), bits=scheme.bits,
                group_size=scheme.group_size, rel_error=float(err),
                seconds=round(share * W.shape[0], 4),
                method="rtn" if fallback else self.job.method,
            ))
            out[name] = qw
        return out

    def _awq_scale(self, i: int, block: nn.Module, prefix: str, inputs: BlockInputs,
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
        groups = self.info.arch.present(i, block)[1]
        arch = self.info.arch

        def min_tokens(name: str) -> int:  # MoE experts: the GPTQ fallback's minimum
            scheme = self.scheme(prefix, name)
            if arch.expert_of(name) is None or scheme is None:
                return 0
            return min_expert_tokens(scheme.group_size)

        # lean mode's samples live in two places: the search reads x's shape only, the
        # values come from the pipeline's mini-batches (with each block's arguments)
        x = inputs.x if not inputs.lean else torch.empty(inputs.shape, device="meta")
        result = awq_search_block(
            block, x, inputs.kwargs, groups,
            lambda n: self.scheme(prefix, n), self.job.awq, batch_size=inputs.batch,
            batches=inputs.batches(), min_tokens=min_tokens if arch.n_experts else None,
        )
        self._check_cancel()
        awq_apply_block(block, result, groups, self.info.arch.norm_offset)
        # The scaled previous ops (norms, v/up rows) and the compensated float modules (a
        # MoE router) differ from the source: keep them.
        changed = {m for g in groups if g.prev in result.scales for m in (g.prev, *g.also)}
        floats = {}
        for prev in changed:
            for pname, p in block.get_submodule(prev).named_parameters():
                floats[f"{prefix}{prev}.{pname}"] = p.detach().to("cpu", torch.float32).clone()
        meta = {"awq": {k: {kk: (float(vv) if isinstance(vv, (int, float)) else vv)
                            for kk, vv in v.items()} for k, v in result.losses.items()}}
        return floats, meta, result


def quantize_blocks(
    job: JobSpec,
    info: ModelInfo,
    tokens: torch.Tensor,
    store: QuantStore,
    emit: Emit,
    should_cancel: Callable[[], bool],
    device: torch.device,
    batch: int = 8,
    lean: bool = False,
    reuse_attention: bool = True,
    resident: int = 0,
) -> None:
    """Stream the model block by block, quantizing each; resume from `store` when possible.
    An RTN job streams only the first job.quantize_samples of `tokens` (its weights need no
    calibration; the samples are for its error chart: config.RTN_CHART_SAMPLES).
    `lean`: the calibration activations stay in host memory and are streamed to the device
    per mini-batch (BlockInputs; the planner chooses the mode: planning/planner.vram_mode),
    except the first `resident` samples (whole mini-batches: planner.resident_samples),
    which stay on the device.
    `reuse_attention` (not lean): true-sequential GPTQ keeps the attention output across
    the passes after o_proj's (AttentionReuse; the planner counts its memory and turns it
    off where it does not fit the card)."""
    tokens = tokens[: job.quantize_samples]
    streamer = LayerStreamer(info, device)
    layers: list[ev.Layer] = []  # the block's Layer events, kept in its checkpoint

    def recording(event: ev.Event) -> None:
        if isinstance(event, ev.Layer):
            layers.append(event)
        emit(event)

    quantizer = BlockQuantizer(job, info, recording, should_cancel)
    quantizer.reuse_attention = reuse_attention and not lean
    done = set(store.completed()) if job.resume else set()
    emit(ev.Progress(step=0, total=streamer.n_blocks, stage="calibration",
                     message=f"embedding {tokens.shape[0]} samples × {tokens.shape[1]} tokens"))
    inputs: BlockInputs | None = None
    try:
        with _gpu_precision(device), _vram_ceiling(device, job.max_vram):
            inputs = streamer.capture_inputs(tokens, batch, lean=lean, resident=resident)
            if done:
                emit(ev.Log(level="notice", message=f"resuming: {len(done)} of "
                            f"{streamer.n_blocks} blocks from the checkpoint"))
            _quantize_streamed(streamer, quantizer, inputs, store, done, emit, should_cancel,
                               layers)
    finally:
        inputs = None  # lean mode's page-locked activations go back to the system
        streamer.close()
        release_graphs()
        if device.type == "cuda":
            release_host_cache()


@contextmanager
def _vram_ceiling(device: torch.device, max_vram: int) -> Iterator[None]:
    """Hold PyTorch's allocator under `max_vram` bytes on a GPU (JobSpec.max_vram): an
    allocation beyond it fails with a message that says what to change, instead of the job
    taking memory the user kept for something else."""
    if device.type != "cuda" or not max_vram:
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, max_vram / total), index)
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"the job needed more than --max-vram {max_vram / 2**30:.1f} GiB of GPU memory; "
            "raise --max-vram, or use fewer calibration samples (--samples) or shorter "
            "ones (--seq-len)") from None
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)


def _quantize_streamed(streamer: LayerStreamer, quantizer: BlockQuantizer, inputs: BlockInputs,
                       store: QuantStore, done: set[int], emit: Emit,
                       should_cancel: Callable[[], bool], layers: list[ev.Layer]) -> None:
    """Quantize the blocks not `done`, saving each with its Layer events (`layers`, filled
    by the quantizer's emit) under meta["layers"]; a block from the checkpoint emits its
    recorded Layer events again, so a resumed job's chart shows every block."""
    t_start = time.perf_counter()
    timed = 0

    def progress(i: int, seconds: float) -> None:
        elapsed = time.perf_counter() - t_start
        left = streamer.n_blocks - i - 1
        eta = elapsed / max(timed, 1) * left if timed else None
        emit(ev.Progress(step=i + 1, total=streamer.n_blocks, stage="quantize",
                         message=f"block {i + 1}/{streamer.n_blocks} ({seconds:.1f} s)",
                         eta_s=eta))

    writer = CheckpointWriter(store)
    try:
        for b in stream_blocks(streamer, inputs, should_cancel, progress):
            writer.check()  # a failed write of the previous block stops the job here
            i, prefix, block = b.index, b.prefix, b.module
            if i in done:
                modules, meta, floats = store.load_block(i)
                for name, qw in modules.items():
                    _linear(block, name).weight.data.copy_(
                        qw.dequantize().to(block_dtype(block)))
                _load_floats(block, prefix, floats)
                for recorded in meta.get("layers", []):  # none in a checkpoint of an older
                    emit(ev.Layer(**recorded))  # version
            else:
                layers.clear()
                report = quantizer.quantize(i, block, prefix, inputs)
                if report.reuse is not None:  # removed after the block's forward
                    b.hooks.append(report.reuse)
                if report.search is not None:  # before the block: a saved block has its search
                    report.search.save(store.root / AWQ_SEARCH_FILE.format(i))
                meta = {**report.meta, "layers": [_layer_record(e) for e in layers]}
                writer.save(i, report.modules, meta, report.floats)
                timed += 1
        writer.wait()  # the last block is on disk before the caller exports
    finally:
        writer.close()


class CheckpointWriter:
    """Writes each block's checkpoint (QuantStore.save_block) on a background thread while
    the next block is quantized (docs/reliability.md#checkpoint-writes).

    `save` starts the copies of the block's tensors to host memory on the calling thread
    (after the kernels that made them, without waiting for them on a GPU), waits for the
    previous block's write, and hands this one to the thread, which waits for the copies
    and writes. save_block writes a temporary file and renames it when complete, so a
    block counts as done (QuantStore.completed) only once its file is whole: a crash or a
    cancel mid-write leaves that block to be quantized again on resume. One write at a
    time; an error in it is raised by the next `check`, `save` or `wait` (the job's error);
    `close` waits for a write in progress (so a cancel leaves no half-written temporary)."""

    def __init__(self, store: QuantStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future[None] | None = None

    def check(self) -> None:
        if self._pending is not None and self._pending.done():
            self.wait()

    def save(self, index: int, modules: dict[str, QuantizedWeight], meta: dict[str, Any],
             floats: dict[str, torch.Tensor]) -> None:
        def host(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", non_blocking=True)

        copied = {n: replace(qw, q=host(qw.q), scale=host(qw.scale), zero=host(qw.zero),
                             g_idx=host(qw.g_idx)) for n, qw in modules.items()}
        floats = {k: host(v) for k, v in floats.items()}
        devices = {t.device for qw in modules.values() for t in (qw.q, qw.scale)}
        done = None
        if any(d.type == "cuda" for d in devices):
            done = torch.cuda.Event()
            done.record()
        self.wait()
        self._pending = self._pool.submit(self._write, index, copied, meta, floats, done)

    def _write(self, index: int, modules: dict[str, QuantizedWeight], meta: dict[str, Any],
               floats: dict[str, torch.Tensor], done: Any) -> None:
        if done is not None:
            done.synchronize()  # the copies to host memory are complete
        self.store.save_block(index, modules, meta, floats)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        if self._pending is not None:
            wait_futures([self._pending])
        self._pool.shutdown(wait=True)


def _layer_record(event: ev.Layer) -> dict[str, Any]:
    """A Layer event as checkpoint metadata: its fields without the time it was sent."""
    return {f.name: getattr(event, f.name) for f in fields(event) if f.name != "t"}


def gather_awq_search(store: QuantStore, n_blocks: int, prefix_of: Callable[[int], str],
                      out: Path) -> Path | None:
    """Write every block's AWQ search (scales per group, clip values per linear) into one
    `out` safetensors file (names prefixed with the block, "model.layers.3.scales.…") and its
    `.json` twin, so the search can be inspected or re-applied without searching again.
    The caller puts it in a subfolder: loaders such as vLLM read every *.safetensors file at
    the top of a model folder as weights."""
    merged = AwqBlockResult()
    for i in range(n_blocks):
        f = store.root / AWQ_SEARCH_FILE.format(i)
        if not f.exists():
            return None
        r = AwqBlockResult.load(f)
        p = prefix_of(i)
        merged.scales.update({p + k: v for k, v in r.scales.items()})
        merged.clips.update({p + k: v for k, v in r.clips.items()})
        merged.group_sizes.update({p + k: v for k, v in r.group_sizes.items()})
        merged.losses.update({p + k: v for k, v in r.losses.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    merged.save(out)
    return out


def _load_floats(block: nn.Module, prefix: str, floats: dict[str, torch.Tensor]) -> None:
    params = dict(block.named_parameters())
    for full, value in floats.items():
        params[full[len(prefix):]].data.copy_(value.to(params[full[len(prefix):]].dtype))


def collect_input_stats(
    info: ModelInfo,
    tokens: torch.Tensor,
    add: Callable[[str, torch.Tensor], None],
    emit: Emit,
    should_cancel: Callable[[], bool],
    device: torch.device,
    batch: int = 8,
) -> None:
    """Stream the float model block by block, calling add(full_linear_name, x) with the
    input of every linear (the importance matrix of GGUF K-quants is built from these)."""
    streamer = LayerStreamer(info, device)
    try:
        with _gpu_precision(device):
            _collect_streamed(streamer, streamer.capture_inputs(tokens, batch), info, add,
                              emit, should_cancel)
    finally:
        streamer.close()


def _collect_streamed(streamer: LayerStreamer, inputs: BlockInputs, info: ModelInfo,
                      add: Callable[[str, torch.Tensor], None], emit: Emit,
                      should_cancel: Callable[[], bool]) -> None:
    def progress(i: int, _seconds: float) -> None:
        emit(ev.Progress(step=i + 1, total=streamer.n_blocks, stage="imatrix",
                         message=f"importance matrix: block {i + 1}/{streamer.n_blocks}"))

    for b in stream_blocks(streamer, inputs, should_cancel, progress):
        b.hooks.extend(  # the inputs of the block's forward that stream_blocks runs next
            _linear(b.module, n).register_forward_hook(
                lambda _m, args, _out, full=b.prefix + n: add(full, args[0].detach())
            )
            for g in info.arch.present(b.index, b.module)[0] for n in g
        )
