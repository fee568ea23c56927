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

The streaming (blocks from disk, activations through the device) is quant/streaming.py;
this module is what happens to each block: the Hessians, the methods, the layer errors,
the checkpoint (BlockQuantizer, quantize_blocks, CheckpointWriter).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec, QuantScheme
from qtapp.engine.errors import UserError, check_cancel
from qtapp.engine.events import Emit
from qtapp.engine.model.arch import method_refusal
from qtapp.engine.model.moe import min_expert_tokens
from qtapp.engine.model.sources import ModelInfo
from qtapp.engine.quant.attention_reuse import AttentionReuse, mixer_output
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
from qtapp.engine.quant.streaming import (
    BlockInputs,
    LayerStreamer,
    StopForward,
    block_dtype,
    block_linear,
    release_host_cache,
    stream_blocks,
)

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
    acc = {n: HessianAccumulator(block_linear(block, n).in_features, inputs.compute_device)
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
            raise StopForward

    hooks = [
        block_linear(block, n).register_forward_pre_hook(lambda _m, args, n=n: hook(n, args[0]))
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
                except StopForward:
                    pass
                first_batch = False
    finally:
        seen.clear()
        for h in hooks:
            h.remove()
    return acc




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
            raise StopForward

    hooks = []
    for n in quantized:
        linear = block_linear(block, n)
        hooks.append(linear.register_forward_pre_hook(
            lambda _m, args, n=n, linear=linear: hook(n, linear, args[0])))
    try:
        with torch.no_grad():
            for xb, kw in inputs.batches():
                check_cancel(should_cancel)
                pending.update(quantized)
                try:
                    block(xb.to(block_dtype(block)), **kw)
                except StopForward:
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
            qws[name] = rtn(block_linear(block, name).weight.data.float(), scheme)
            hats[name] = qws[name].dequantize()
            seconds[name] = time.perf_counter() - t0
        errors = measure_output_errors(block, hats, inputs, self.should_cancel)
        for name in todo:
            self._check_cancel()  # a cancel seen at a module's layer event stops the block
            scheme = self.scheme(prefix, name)
            assert scheme is not None
            linear = block_linear(block, name)
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
        linears = [block_linear(block, n) for n in names]
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
                    block_linear(block, name).weight.data.copy_(
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
            block_linear(b.module, n).register_forward_hook(
                lambda _m, args, _out, full=b.prefix + n: add(full, args[0].detach())
            )
            for g in info.arch.present(b.index, b.module)[0] for n in g
        )
