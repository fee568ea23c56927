"""How much each module's quantization would degrade the model, for every candidate scheme,
from one streamed calibration pass over the float model.

Estimator. For a linear y = W x inside block l and a candidate c with quantized weight
Ŵ_c, the error it adds to the module's output over the calibration tokens is

    E_m(c) = (1/n) Σ_t ‖(W − Ŵ_c) x_t‖² = ½ tr((W − Ŵ_c) H (W − Ŵ_c)ᵀ),   H = (2/n) Σ_t x_t x_tᵀ

(H is the pipeline's GPTQ Hessian; GGUF's importance matrix is its diagonal / 2).

How much of that reaches the block's output depends on the module: o_proj and down_proj
add their output to the residual stream directly, q/k pass through the softmax, gate
through the activation, v through the attention average. It is measured once per module
on the block itself: with only module m replaced by a reference candidate (the one
nearest 3 bits), a forward of the block on a few calibration samples gives, per residual
channel i,

    g_m,i = Σ_t (Y_l(Ŵ_ref) − Y_l(W))_{t,i}² / Σ_t ‖(W − Ŵ_ref) x_t‖².

How much a change of the residual stream after block l changes the model's prediction
is the Fisher information there. Its diagonal, F_l,i = mean_t (∂L/∂h_{t,i})² with L the
negative log-likelihood of the calibration tokens, comes from one streamed backward pass
(the head on the last block's outputs, then block by block back to the first, each block
re-run on its saved inputs; one block in memory). To second order the mean KL divergence
of the model's next-token distribution is ½ E[δᵀ F δ] for a small change δ of the
residual stream, so, taking residual channels as independent,

    D_m(c) = ½ E_m(c) Σ_i g_m,i F_l,i        (nats per token),

and a plan's prediction is Σ_m D_m(c_m) (errors of different modules taken as
independent and additive). The Fisher factor matters: on the de-gridded demo the ratio of
measured KLD to the unweighted g_m · E_m falls about 40× from the first blocks to the last
(later blocks carry a residual stream ~10⁵× larger, with massive activations), so without
it a plan spends its bits on the last blocks (benchmarks/size_budget.py measures the rank
correlations of each form with the end-to-end KLD).

Ŵ_c is what the job's method would produce, so the estimate includes how well the method
compensates: GPTQ candidates are solved with GPTQ on H (the solve is cheap next to the
forwards), GGUF candidates are quantized by ggml itself with the importance matrix diag(H)/2,
AWQ and RTN candidates are rounded to nearest (AWQ's scale search, which needs the whole
block, is not repeated per candidate; its gain over RTN is similar across modules).

Cost: one streamed pass (a Hessian pass and a forward per block, as GPTQ does) plus, per
block, one forward of GAIN_SAMPLES samples per linear, and one streamed backward of
FISHER_SAMPLES samples. No pass is repeated per candidate.
Profiles are cached under the QuantDesk cache by model, method, scheme and calibration.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.errors import UserError, check_cancel
from qtapp.engine.events import Emit
from qtapp.engine.model.sources import ModelInfo, cache_root
from qtapp.engine.planning.budget import Candidate, ModuleSlot
from qtapp.engine.quant.batching import first_output, fit_batch
from qtapp.engine.quant.methods.gptq import gptq_quantize
from qtapp.engine.quant.methods.rtn import rtn
from qtapp.engine.quant.pipeline import collect_hessians
from qtapp.engine.quant.streaming import LayerStreamer, forward_block, stream_blocks

# The gguf package and ggml_quant are imported inside quantized_weight, for GGUF candidates only:
# other methods' profiles are measured without them.

GAIN_SAMPLES = 4
FISHER_SAMPLES = 4


@dataclass
class ModuleSensitivity:
    """E_m(c) per candidate key and the gain g_m of one module."""

    name: str
    gain: float  # g_m: block-output error per unit of module-output error
    error: dict[str, float]  # E_m(c)
    reference: str = ""
    fisher_gain: float = 0.0  # ½ Σ_i g_m,i F_l,i: predicted KLD per unit of E_m

    def degradation(self, key: str) -> float:
        """D_m(c): predicted mean KL divergence (nats per token) of candidate `key`."""
        return self.fisher_gain * self.error[key]


@dataclass
class SensitivityProfile:
    """Every module's sensitivity for one (model, method, scheme, calibration)."""

    key: str
    method: str
    tokens: int
    modules: dict[str, ModuleSensitivity]
    block_energy: list[float] = field(default_factory=list)  # mean ‖x‖² entering each block
    fisher: list[float] = field(default_factory=list)  # tr F_l / d at each block's output

    def cost(self, name: str, key: str) -> float:
        return self.modules[name].degradation(key)

    def predicted(self, choice: dict[str, str]) -> float:
        """Σ_m D_m(c_m) for a plan {module: candidate key}."""
        return sum(self.cost(n, k) for n, k in choice.items())

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SensitivityProfile:
        d = json.loads(text)
        d["modules"] = {n: ModuleSensitivity(**m) for n, m in d["modules"].items()}
        return cls(**d)


def profile_key(job: JobSpec, info: ModelInfo, slots: list[ModuleSlot]) -> str:
    """What the estimates depend on: weights, method (+GPTQ settings), candidates, calibration."""
    d = {"model": str(info.path.resolve()),
         "weights": [(p.name, p.stat().st_size, int(p.stat().st_mtime))
                     for p in info.weight_files],
         "method": job.method, "gptq": asdict(job.gptq) if job.method == "gptq" else None,
         "calibration": asdict(job.calibration),
         "candidates": sorted({(c.key, str(c.scheme)) for s in slots for c in s.options}),
         "gain_samples": GAIN_SAMPLES, "fisher_samples": FISHER_SAMPLES, "version": 2}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cache_file(key: str) -> Path:
    return cache_root() / "sensitivity" / f"{key}.json"


def cached_profile(key: str) -> SensitivityProfile | None:
    path = cache_file(key)
    if not path.is_file():
        return None
    try:
        return SensitivityProfile.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError):
        path.unlink(missing_ok=True)
        return None


def quantized_weight(method: str, W: torch.Tensor, H: torch.Tensor, c: Candidate,
                     job: JobSpec) -> torch.Tensor:
    """Ŵ_c: W (N, K) as the job's method would quantize it to candidate `c` (float32)."""
    if c.kept:
        return W
    if method == "gguf":
        import gguf

        from qtapp.engine.gguf import ggml_quant

        t = gguf.GGMLQuantizationType[c.gguf_type]
        imatrix = (torch.diagonal(H) / 2).clamp_min(0).cpu().numpy().astype(np.float32)
        data = ggml_quant.quantize(W.cpu().numpy(), t, imatrix)
        return torch.from_numpy(gguf.quants.dequantize(data, t).astype(np.float32)).to(W)
    assert c.scheme is not None
    if method == "gptq":
        return gptq_quantize(W, H, c.scheme, job.gptq).dequantize()
    return rtn(W, c.scheme).dequantize()


def output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """E = ½ tr(ΔW H ΔWᵀ): the mean over calibration tokens of ‖(W − Ŵ) x‖²."""
    dW = W - W_hat
    return float(((dW @ H) * dW).sum()) / 2


def _reference(options: tuple[Candidate, ...]) -> Candidate | None:
    quantized = [c for c in options if not c.kept]
    return min(quantized, key=lambda c: (abs(c.bits - 3), c.bits)) if quantized else None


def measure_profile(job: JobSpec, info: ModelInfo, tokens: torch.Tensor,
                    slots: list[ModuleSlot], emit: Emit, should_cancel: Callable[[], bool],
                    device: torch.device, batch: int = 8) -> SensitivityProfile:
    """Stream the float model once and estimate every slot's candidates (see module doc)."""
    by_name = {s.name: s for s in slots}
    names = list(info.arch.linears)
    streamer = LayerStreamer(info, device)
    modules: dict[str, ModuleSensitivity] = {}
    energy: list[float] = []
    saved: list[torch.Tensor] = []  # block inputs of the Fisher samples, for the backward
    spread: dict[str, torch.Tensor] = {}  # g_m,i per module

    def progress(i: int, _seconds: float) -> None:
        emit(ev.Progress(step=i + 1, total=streamer.n_blocks, stage="sensitivity",
                         message=f"block {i + 1}/{streamer.n_blocks}"))

    try:
        inputs = streamer.capture_inputs(tokens, batch)
        for b in stream_blocks(streamer, inputs, should_cancel, progress):
            prefix, block = b.prefix, b.module
            todo = [n for n in names if prefix + n in by_name]
            energy.append(float(inputs.x.pow(2).sum(-1).mean()))
            saved.append(inputs.x[:FISHER_SAMPLES].to("cpu", copy=True))
            hessians = collect_hessians(block, todo, inputs, should_cancel)
            sub = replace(inputs, x=inputs.x[:GAIN_SAMPLES])  # with each block's arguments
            y_ref = forward_block(block, sub, out=torch.empty_like(sub.x),
                                  should_cancel=should_cancel)
            for n in todo:
                check_cancel(should_cancel)
                slot = by_name[prefix + n]
                H = hessians.pop(n).H
                linear = block.get_submodule(n)
                W = linear.weight.data.float().clone()
                errors, ref_w = {}, None
                ref = _reference(slot.options)
                with _solver_threads(device):
                    for c in slot.options:
                        check_cancel(should_cancel)
                        W_hat = quantized_weight(job.method, W, H, c, job)
                        errors[c.key] = 0.0 if c.kept else output_error(W, W_hat, H)
                        if ref is not None and c.key == ref.key:
                            ref_w = W_hat
                per_dim = torch.zeros(inputs.x.shape[-1])
                if ref_w is not None:
                    per_dim = _block_gain(block, linear, W, ref_w, sub, y_ref)
                spread[slot.name] = per_dim
                modules[slot.name] = ModuleSensitivity(slot.name, float(per_dim.sum()), errors,
                                                       ref.key if ref else "")
                del H
        fisher = fisher_diagonals(streamer, saved, inputs, tokens[:FISHER_SAMPLES], emit,
                                  should_cancel)
    finally:
        streamer.close()
    for name, m in modules.items():
        block = int(name[len(info.arch.layers_prefix) + 1:].split(".")[0])
        m.fisher_gain = 0.5 * float((spread[name] * fisher[block]).sum())
    return SensitivityProfile("", job.method, int(tokens.numel()), modules, energy,
                              [float(f.mean()) for f in fisher])


@contextmanager
def _solver_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the candidate solves on a CPU: GPTQ's column loop is many
    small operations, which OpenMP threads slow down (measured on 2 busy cores: 9.4 s
    with 2 threads, 0.17 s with 1, for one 1536×576 solve)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _block_gain(block: torch.nn.Module, linear: torch.nn.Linear, W: torch.Tensor,
                W_hat: torch.Tensor, sub, y_ref: torch.Tensor) -> torch.Tensor:
    """g_i = Σ_t ΔY_{t,i}² / Σ_t ‖ΔW x_t‖² per output channel i of the block, with only
    `linear` replaced by Ŵ (see module doc); Σ_i g_i is the scalar gain g_m."""
    dW = (W - W_hat).to(linear.weight.dtype)
    module_err = [0.0]

    def hook(_m: torch.nn.Module, args: tuple, _out: torch.Tensor) -> None:
        module_err[0] += float((args[0].float() @ dW.float().T).pow(2).sum())

    handle = linear.register_forward_hook(hook)
    linear.weight.data.copy_(W_hat.to(linear.weight.dtype))
    try:
        y = forward_block(block, sub, out=torch.empty_like(sub.x))
    finally:
        handle.remove()
        linear.weight.data.copy_(W.to(linear.weight.dtype))
    d = y.shape[-1]
    if module_err[0] <= 0:
        return torch.zeros(d)
    return ((y - y_ref).double().pow(2).reshape(-1, d).sum(0) / module_err[0]).float().cpu()


def fisher_diagonals(streamer, saved: list[torch.Tensor], inputs, tokens: torch.Tensor,
                     emit: Emit, should_cancel: Callable[[], bool]) -> list[torch.Tensor]:
    """F_l,i = mean_t (∂L/∂h_{t,i})² at the output of every block, L = Σ_t −log p(x_{t+1}).

    A streamed backward: the head (final norm, lm_head) on the last block's outputs gives
    ∂L/∂h_L; then block by block, from the last, the block is run again on its saved
    inputs and the gradient is carried to its input. One block in memory at a time, as in
    the forward pass; `saved[l]` holds block l's inputs for the Fisher samples.
    """
    if inputs.states:  # the saved per-sample inputs carry no keys and values of earlier blocks
        raise UserError("the sensitivity pass does not support models whose blocks reuse the "
                        "keys and values of earlier blocks (Gemma 4's num_kv_shared_layers) "
                        "yet; give the bits per layer yourself instead of a size target")
    arch = streamer.info.arch
    device = streamer.device
    norm = streamer.materialize(streamer.resolve(arch.final_norm), arch.final_norm + ".")
    reader = streamer.reader
    head = arch.lm_head + ".weight" if reader.has(arch.lm_head + ".weight") \
        else arch.embed + ".weight"
    W_out = reader.get(head).to(device, torch.float32)
    n = tokens.shape[0]
    grads = []
    h_last = inputs.x[:n].detach()
    for b in range(n):  # one sample at a time: the logits are (L, vocabulary)
        h = h_last[b:b + 1].clone().requires_grad_(True)
        with torch.enable_grad():
            logits = norm(h) @ W_out.T
            labels = tokens[b:b + 1, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0],
                                                     reduction="sum")
            loss.backward()
        grads.append(h.grad.detach())
    del W_out
    streamer.release(norm)
    grad = torch.cat(grads)  # ∂L/∂h at the last block's output
    fisher: list[torch.Tensor] = [torch.zeros(0)] * streamer.n_blocks
    for i in range(streamer.n_blocks - 1, -1, -1):
        check_cancel(should_cancel)
        fisher[i] = grad.pow(2).reshape(-1, grad.shape[-1]).mean(0).cpu()
        if i == 0:
            break
        block = streamer.materialize(streamer.blocks[i], streamer.block_prefix(i))
        for p in block.parameters():
            p.requires_grad_(False)
        new = torch.empty_like(grad)
        inputs.use_block(i)
        for b in range(n):
            x = saved[i][b:b + 1].to(device).requires_grad_(True)
            with torch.enable_grad():
                y = first_output(block(x, **fit_batch(inputs.kwargs, inputs.batch, 1),
                                       **inputs.sample_kwargs(b, 1)))
                y.backward(grad[b:b + 1])
            new[b:b + 1] = x.grad
        grad = new
        streamer.release(block)
        emit(ev.Progress(step=streamer.n_blocks - i, total=streamer.n_blocks,
                         stage="sensitivity", message=f"output sensitivity: block {i + 1}"))
    return fisher


def sensitivity_profile(job: JobSpec, info: ModelInfo, tokens: torch.Tensor,
                        slots: list[ModuleSlot], emit: Emit,
                        should_cancel: Callable[[], bool], device: torch.device,
                        ) -> SensitivityProfile:
    """The cached profile for (job, model, slots), or a measured one (then cached)."""
    key = profile_key(job, info, slots)
    profile = cached_profile(key)
    if profile is not None and all(s.name in profile.modules for s in slots):
        emit(ev.Log(level="info", message=f"sensitivity profile from the cache ({key})"))
        return profile
    profile = measure_profile(job, info, tokens, slots, emit, should_cancel, device)
    profile.key = key
    path = cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")  # two jobs may profile the same model
    try:
        tmp.write_text(profile.to_json(), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return profile
