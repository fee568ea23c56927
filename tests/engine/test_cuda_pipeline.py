"""The layer-streaming pipeline on a CUDA device: same result as on the CPU, memory as planned.

Runs only where PyTorch sees a GPU (the lent H100/H200 machine); skipped elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qtapp.engine import events as ev
from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.quant.pipeline import quantize_blocks
from qtapp.engine.quant.qstore import QuantStore

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _run(folder: Path, method: str, device: str, store_dir: Path, n: int = 8, seq: int = 128,
         **streaming):
    info = resolve_model(str(folder))
    job = JobSpec(model=str(folder), method=method, out=str(store_dir / "out"),
                  scheme=QuantScheme(4, 32, method != "awq"), evaluate=False, resume=False,
                  calibration=CalibrationSpec(samples=n, seq_len=seq))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 250, (n, seq), generator=g)
    store = QuantStore(store_dir / f"{method}-{device}-{sorted(streaming.items())}")
    errors: dict[str, float] = {}

    def emit(e) -> None:
        if isinstance(e, ev.Layer):
            errors[e.module] = e.rel_error

    torch.cuda.reset_peak_memory_stats()
    quantize_blocks(job, info, tokens, store, emit, lambda: False, torch.device(device), batch=4,
                    **streaming)
    return store, torch.cuda.max_memory_allocated(), errors


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_cuda_quality_matches_cpu(method: str, make_tiny_model, tmp_path: Path) -> None:
    """Same per-layer output error on the GPU as on the CPU; RTN gives the same codes.

    GPTQ's scales come from the weights as its error feedback leaves them and AWQ picks a
    scale from losses that can nearly tie, so float32 sums taken in another order on the GPU
    may change individual codes or the α chosen: the errors are what must agree.
    """
    folder = make_tiny_model(tmp_path / "m", hidden_size=128, intermediate_size=256)
    cpu, _, cpu_errors = _run(folder, method, "cpu", tmp_path)
    gpu, peak, gpu_errors = _run(folder, method, "cuda", tmp_path)
    assert peak > 0
    assert cpu_errors.keys() == gpu_errors.keys() and len(cpu_errors) == 14
    for name, err in cpu_errors.items():
        assert abs(gpu_errors[name] - err) <= 0.1 * err + 1e-6, (name, err, gpu_errors[name])
    if method == "rtn":
        for i in range(2):
            a, _, _ = cpu.load_block(i)
            b, _, _ = gpu.load_block(i)
            for name in a:
                assert (a[name].q == b[name].q).float().mean().item() > 0.999, (i, name)


def test_peak_vram_does_not_grow_with_depth(make_tiny_model, tmp_path: Path) -> None:
    """Peak VRAM is one block + the calibration activations: 8 blocks need what 2 need."""
    peaks = {}
    for layers in (2, 8):
        folder = make_tiny_model(tmp_path / f"m{layers}", hidden_size=512,
                                 intermediate_size=2048, num_hidden_layers=layers)
        _, peaks[layers], _ = _run(folder, "gptq", "cuda", tmp_path / f"r{layers}", n=16, seq=256)
    block = (2 * 512 * 512 + 2 * 512 * 256 + 3 * 512 * 2048) * 4
    assert peaks[8] < peaks[2] + block, peaks


@pytest.mark.slow
def test_job_with_max_vram_8gib_stays_under_it(make_tiny_model, tmp_path: Path) -> None:
    """A job given --max-vram 8GiB on a model whose fast mode needs more (two blocks of the
    Llama-8B shape, 128 × 2048 calibration tokens: 8 GiB of activations alone) runs in lean
    mode, says so, and PyTorch's peak counter stays under 8 GiB."""
    from qtapp.engine.jobs.job import run_job

    folder = make_tiny_model(tmp_path / "m", hidden_size=4096, intermediate_size=14336,
                             num_attention_heads=32, num_key_value_heads=8,
                             num_hidden_layers=2, dtype=torch.bfloat16)
    job = JobSpec(model=str(folder), method="gptq", out=str(tmp_path / "out"),
                  scheme=QuantScheme(4, 128, True), evaluate=False, resume=False,
                  device="cuda", max_vram=8 * 2**30,
                  calibration=CalibrationSpec(samples=128, seq_len=2048))
    tokens = torch.randint(3, 250, (128, 2048), generator=torch.Generator().manual_seed(0))
    logs: list[str] = []

    def emit(e) -> None:
        if isinstance(e, ev.Log):
            logs.append(e.message)

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run_job(job, emit, lambda: False, tokens=tokens)
    peak = torch.cuda.max_memory_allocated()
    assert any(m.startswith("VRAM mode lean:") for m in logs), logs
    assert 0 < peak <= 8 * 2**30, peak / 2**30


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_lean_mode_keeps_resident_samples_on_the_gpu(method: str, make_tiny_model,
                                                     tmp_path: Path) -> None:
    """Lean mode with 4 of 8 samples kept on the GPU: those are device memory, the other 4
    page-locked host memory of their exact size (host_buffer registers it; torch's pinned
    cache would round it up and keep it), the prefetch staging buffer is page-locked too;
    the layer errors match fast mode's and lean mode's with every sample streamed."""
    from qtapp.engine.quant.streaming import LayerStreamer

    folder = make_tiny_model(tmp_path / "m", hidden_size=128, intermediate_size=256)
    streamer = LayerStreamer(resolve_model(str(folder)), torch.device("cuda"))
    try:
        tokens = torch.randint(3, 250, (8, 128), generator=torch.Generator().manual_seed(0))
        inputs = streamer.capture_inputs(tokens, 4, lean=True, resident=4)
        assert inputs.resident == 4 and inputs.x_device is not None and inputs.x_device.is_cuda
        assert inputs.x.shape[0] == 4 and inputs.x.device.type == "cpu" and inputs.x.is_pinned()
        streamer.prefetch(streamer.block_prefix(1))
        streamer.materialize(streamer.blocks[1], streamer.block_prefix(1))
        assert streamer._slots[0] is not None and streamer._slots[0].is_pinned()
    finally:
        streamer.close()
    _, _, fast = _run(folder, method, "cuda", tmp_path)
    _, _, streamed = _run(folder, method, "cuda", tmp_path, lean=True)
    _, _, resident = _run(folder, method, "cuda", tmp_path, lean=True, resident=4)
    assert fast.keys() == resident.keys() == streamed.keys() and len(fast) == 14
    for name, err in fast.items():
        assert abs(resident[name] - err) <= 1e-3 * err, (name, err, resident[name])
        assert abs(streamed[name] - err) <= 1e-3 * err, (name, err, streamed[name])
