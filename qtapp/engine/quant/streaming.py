"""Streaming a model through memory one block at a time, and its calibration activations
through the device (quant/pipeline.py quantizes with them).

    LayerStreamer     the model skeleton on meta; a block's weights read from safetensors
                      (the next block prefetched on a thread) and materialised on the device
    capture_inputs    the embeddings' output for the calibration tokens: block 0's inputs,
                      and the arguments every block gets (masks, rotary embeddings, …)
    BlockInputs       those activations: on the device (fast mode) or in page-locked host
                      memory streamed to it per mini-batch (lean mode, _HostStream)
    stream_blocks     the loop of every streamed pass: materialise block i, hand it out,
                      X_{i+1} = block i (X_i), free it
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qtapp.engine.errors import UserError, check_cancel
from qtapp.engine.model.moe import unfuse_experts
from qtapp.engine.model.safetensors_files import SafetensorsReader
from qtapp.engine.model.sources import ModelInfo
from qtapp.engine.quant.attention import gpu_attention, supports_sdpa
from qtapp.engine.quant.batching import first_output, fit_batch

# accelerate and transformers are imported where the model skeleton is built (LayerStreamer), not
# with this module: they take about a second to import, and pick_device and the block helpers are
# used without them.


class StopForward(Exception):
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
            raise StopForward
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
                    except StopForward:
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


def block_linear(block: nn.Module, name: str) -> nn.Linear:
    module = block.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise UserError(f"{name} is not a linear layer in this model; the architecture table "
                        "does not match the model files")
    return module
