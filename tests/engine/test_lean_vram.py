"""Lean VRAM mode: the planner's choice, and the lean path's numbers against the fast path's.

Lean mode keeps the calibration activations in host memory and streams each mini-batch to
the compute device through two reused buffers (quant/streaming.BlockInputs, _HostStream).
On the CPU the same buffers, slices and write-back run with plain copies, so the per-layer
errors of a job run both ways must agree; the GPU half (copy streams, the --max-vram
ceiling, page-locked host memory) is in test_cuda_pipeline.py.

Part of the samples can stay on the device (planner.resident_samples): with 4, 8 or all 10
of 10 samples resident the errors equal fast mode's bit for bit (Llama GPTQ and AWQ, and
Gemma 4 with its per-sample and per-mini-batch arguments); a split one sample off is shown
to fail the comparison. The prefetch staging buffers are shown to be reused, not grown.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qtapp.engine import events as ev
from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.planning import planner
from qtapp.engine.planning.shape import ModelShape
from qtapp.engine.quant import streaming
from qtapp.engine.quant.pipeline import quantize_blocks
from qtapp.engine.quant.qstore import QuantStore
from tests.shapes import GiB, hardware
from tests.tiny_models import build_tiny_model

LLAMA_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
            "vocab_size": 128256}
LLAMA_70B = {**LLAMA_8B, "hidden_size": 8192, "intermediate_size": 28672,
             "num_attention_heads": 64, "num_hidden_layers": 80}


def _job(method: str, max_vram: int = 0, samples: int = 128, seq: int = 2048) -> JobSpec:
    return JobSpec(model="m", method=method, out="-", evaluate=False, max_vram=max_vram,
                   calibration=CalibrationSpec(samples=samples, seq_len=seq))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_planner_picks_lean_on_an_8gb_card_and_fast_on_a_24gb_card(method: str) -> None:
    shape = ModelShape.from_config(LLAMA_8B)
    job = _job(method)
    mode, why = planner.vram_mode(job, shape, hardware(8).best_gpu)
    assert mode == "lean" and "host memory" in why and "8.00 GiB card" in why, why
    mode, why = planner.vram_mode(job, shape, hardware(24).best_gpu)
    assert mode == "fast", why
    assert planner.vram_mode(job, shape, None) == ("", "")
    # what lean mode needs must fit the 8 GB card's usable share, fast mode must not
    lean = planner.working_bytes(shape, method, 128, 2048, lean=True)
    fast = planner.working_bytes(shape, method, 128, 2048)
    assert lean <= 7.5 * GiB < fast, (lean / GiB, fast / GiB)


def test_max_vram_forces_lean_mode_and_says_so() -> None:
    shape = ModelShape.from_config(LLAMA_8B)
    mode, why = planner.vram_mode(_job("gptq", max_vram=8 * GiB), shape, hardware(80).best_gpu)
    assert mode == "lean" and "--max-vram is 8.00 GiB" in why, why
    # a ceiling above what fast mode needs changes nothing
    assert planner.vram_mode(_job("gptq", max_vram=40 * GiB), shape,
                             hardware(80).best_gpu)[0] == "fast"


def test_70b_block_fits_24gb_in_lean_mode() -> None:
    shape = ModelShape.from_config(LLAMA_70B)
    mode, _ = planner.vram_mode(_job("gptq"), shape, hardware(24).best_gpu)
    assert mode == "lean"
    assert planner.working_bytes(shape, "gptq", 128, 2048, lean=True) <= 22 * GiB


def test_default_lean_plan_streams_every_sample_on_a_gpu(tmp_path: Path) -> None:
    """Resident samples are off on GPUs (planner.RESIDENT_SAMPLES_ON_GPU: a GPU run failed
    with them): the default plan on an 8 GB card keeps none there, streams all 128 and
    counts their activations in host memory, and the job runner's count is 0 too."""
    from tests.shapes import model_info

    info = model_info(tmp_path, "Llama-8B-test", config=LLAMA_8B, n_params=8_030_261_248)
    plan = planner.plan_job(_job("gptq"), info, hw=hardware(8), out=tmp_path / "o")
    assert plan.vram_mode == "lean"
    assert (plan.resident_samples, plan.streamed_samples) == (0, 128)
    assert "calibration activations in host memory, streamed to the GPU" in plan.table()
    assert plan.peak_vram == planner.working_bytes(ModelShape.from_config(LLAMA_8B), "gptq",
                                                   128, 2048, lean=True)
    fast_ram, _ = planner.memory(_job("gptq"), info, True)
    assert plan.peak_ram - fast_ram == 128 * 2048 * 4096 * 4
    assert planner.job_vram_mode(_job("gptq"), info, hardware(8))[2] == 0
    assert planner.resident_samples(_job("gptq", max_vram=8 * GiB),
                                    ModelShape.from_config(LLAMA_8B), hardware(80).best_gpu) == 0


def test_plan_card_names_the_mode_and_refuses_below_max_vram(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.shapes import model_info

    monkeypatch.setattr(planner, "RESIDENT_SAMPLES_ON_GPU", True)  # the split, when enabled
    info = model_info(tmp_path, "Llama-8B-test", config=LLAMA_8B, n_params=8_030_261_248)
    plan = planner.plan_job(_job("gptq"), info, hw=hardware(8), out=tmp_path / "o")
    assert plan.vram_mode == "lean" and "VRAM mode       lean:" in plan.table(), plan.table()
    # the room the 8 GB card leaves beside lean mode's working set keeps 32 samples on it
    sample = 2048 * 4096 * 4
    assert (plan.resident_samples, plan.streamed_samples) == (32, 96)
    assert "32 of 128 calibration samples kept on the GPU, the other 96" in plan.table()
    assert plan.peak_vram == planner.working_bytes(ModelShape.from_config(LLAMA_8B), "gptq",
                                                   128, 2048, lean=True) + 32 * sample
    # host memory holds the activations of the other 96 samples in lean mode
    fast_ram, _ = planner.memory(_job("gptq"), info, True)
    assert plan.peak_ram - fast_ram == 96 * sample
    tight = planner.plan_job(_job("gptq", max_vram=2 * GiB), info, hw=hardware(80),
                             out=tmp_path / "o")
    assert not tight.fits and any("--max-vram is 2.00 GiB" in p for p in tight.problems)


def _errors(folder: Path, method: str, lean: bool, tmp: Path, resident: int = 0,
            ) -> dict[str, float]:
    info = resolve_model(str(folder))
    job = JobSpec(model=str(folder), method=method, out=str(tmp / "out"),
                  scheme=QuantScheme(4, 32, method != "awq"), evaluate=False, resume=False,
                  calibration=CalibrationSpec(samples=10, seq_len=32))
    tokens = torch.randint(3, 250, (10, 32), generator=torch.Generator().manual_seed(0))
    errors: dict[str, float] = {}

    def emit(e: ev.Event) -> None:
        if isinstance(e, ev.Layer):
            errors[e.module] = e.rel_error

    # batch 4 over 10 samples: the buffers take turns and the last mini-batch is short
    quantize_blocks(job, info, tokens, QuantStore(tmp / f"{method}-{lean}-{resident}"), emit,
                    lambda: False, torch.device("cpu"), batch=4, lean=lean, resident=resident)
    return errors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("lean") / "m", num_hidden_layers=3)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_lean_path_gives_the_fast_paths_layer_errors(method: str, tiny: Path,
                                                     tmp_path: Path) -> None:
    fast = _errors(tiny, method, False, tmp_path)
    lean = _errors(tiny, method, True, tmp_path)
    assert fast.keys() == lean.keys() and len(fast) == 21
    for name, err in fast.items():
        assert abs(lean[name] - err) <= 1e-3 * err, (name, err, lean[name])


def test_stale_mini_batch_in_the_lean_path_is_caught(tiny: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above fails when the streaming is broken: here every mini-batch after
    the first reuses the first one's data (a buffer that was never refilled)."""
    real = streaming._HostStream.batches

    def stale(self, x, batch, kwargs):
        first = None
        for xb, kw in real(self, x, batch, kwargs):
            first = xb.clone() if first is None else first
            yield first[: xb.shape[0]], kw

    fast = _errors(tiny, "gptq", False, tmp_path)
    monkeypatch.setattr(streaming._HostStream, "batches", stale)
    lean = _errors(tiny, "gptq", True, tmp_path)
    assert max(abs(lean[n] - e) / e for n, e in fast.items()) > 1e-3


def test_cli_max_vram_reaches_the_job_and_bad_sizes_are_refused(tiny: Path, tmp_path: Path,
                                                               ) -> None:
    from qtapp.cli import build_parser
    from qtapp.commands.quantize import job_from_args
    from qtapp.engine.config import ConfigError
    from qtapp.engine.errors import UserError

    base = ["quantize", "--model", str(tiny), "--method", "gptq", "--group-size", "32",
            "--out", str(tmp_path / "o")]
    job = job_from_args(build_parser().parse_args([*base, "--max-vram", "8GiB"]))
    assert job.max_vram == 8 * GiB
    assert job_from_args(build_parser().parse_args(base)).max_vram == 0
    with pytest.raises(UserError, match="not a size"):
        job_from_args(build_parser().parse_args([*base, "--max-vram", "lots"]))
    with pytest.raises(ConfigError, match="max_vram"):
        JobSpec(model="m", method="gptq", out="o", max_vram=-1).validate()
    # the job file round-trips it; it does not change the checkpoint (same blocks either mode)
    assert JobSpec.from_dict(job.to_dict()).max_vram == 8 * GiB


# --- part of the samples kept on the device (planner.resident_samples) -------------------


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_samples_kept_on_the_device_give_the_fast_paths_numbers(method: str, tiny: Path,
                                                                tmp_path: Path) -> None:
    """10 samples in mini-batches of 4: 4 or 8 kept on the device (the rest streamed, the
    last host mini-batch short), or all 10: every layer error equals fast mode's exactly
    (the same mini-batches of the same values reach the same kernels; AWQ's search sees
    them through BlockInputs.batches)."""
    fast = _errors(tiny, method, False, tmp_path)
    for resident in (4, 8, 10):
        lean = _errors(tiny, method, True, tmp_path, resident=resident)
        assert lean == fast, (resident, {n: (e, lean[n]) for n, e in fast.items()
                                         if lean[n] != e})


def test_a_split_off_by_one_is_caught(tiny: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The equality above fails when the split is one sample off: here the host part
    starts one sample early (sample 3 is seen twice, sample 9 never), shapes unchanged."""
    real = streaming.LayerStreamer.capture_inputs

    def off_by_one(self, tokens, batch, lean=False, resident=0):
        inputs = real(self, tokens, batch, lean=lean, resident=resident)
        inputs.x = torch.cat([inputs.x_device[-1:], inputs.x[:-1]])
        return inputs

    fast = _errors(tiny, "gptq", False, tmp_path)
    monkeypatch.setattr(streaming.LayerStreamer, "capture_inputs", off_by_one)
    lean = _errors(tiny, "gptq", True, tmp_path, resident=4)
    assert max(abs(lean[n] - e) / e for n, e in fast.items()) > 1e-3


def test_split_inputs_stream_every_sample_once_in_fast_modes_mini_batches(tiny: Path) -> None:
    """capture_inputs keeps the first whole mini-batches on the device (5 asked for, batch 4:
    4 kept), the others in host memory; batches() hands out exactly fast mode's mini-batches
    and forward_block writes each output back where its sample lives. A split that is not
    a whole number of mini-batches is refused, not silently regrouped."""
    from qtapp.engine.quant.streaming import BlockInputs, LayerStreamer, forward_block

    info = resolve_model(str(tiny))
    streamer = LayerStreamer(info, torch.device("cpu"))
    tokens = torch.randint(3, 250, (10, 32), generator=torch.Generator().manual_seed(1))
    try:
        fast = streamer.capture_inputs(tokens, 4)
        lean = streamer.capture_inputs(tokens, 4, lean=True, resident=5)
        assert lean.resident == 4 and lean.x.shape[0] == 6 and lean.shape == fast.x.shape
        assert [(s, len(p), host) for s, p, host in lean.parts()] == [(0, 4, False),
                                                                       (4, 6, True)]
        got = [xb.clone() for xb, _ in lean.batches()]
        want = [xb for xb, _ in fast.batches()]
        assert [len(b) for b in got] == [4, 4, 2]
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        block = streamer.materialize(streamer.blocks[0], streamer.block_prefix(0))
        ref = forward_block(block, fast, out=torch.empty_like(fast.x))
        forward_block(block, lean, out=lean)
        assert torch.equal(torch.cat([lean.x_device, lean.x]), ref)
        broken = BlockInputs(fast.x[3:], fast.kwargs, 4, device=torch.device("cpu"),
                             x_device=fast.x[:3])
        with pytest.raises(ValueError, match="not a whole number of mini-batches of 4"):
            list(broken.batches())
    finally:
        streamer.close()


def test_planner_keeps_as_many_samples_on_the_gpu_as_the_budget_leaves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The resident samples fill the budget (card or --max-vram) less the lean working set
    and LEAN_HEADROOM, in whole mini-batches: one mini-batch more would not fit (with
    RESIDENT_SAMPLES_ON_GPU turned on; it is off by default)."""
    monkeypatch.setattr(planner, "RESIDENT_SAMPLES_ON_GPU", True)
    sample = 2048 * 4096 * 4
    for method, max_vram, card in (("gptq", 0, 8), ("gptq", 8 * GiB, 80), ("awq", 8 * GiB, 80),
                                   ("gptq", 0, 12)):
        job = _job(method, max_vram=max_vram)
        gpu = hardware(card).best_gpu
        shape = ModelShape.from_config(LLAMA_8B)
        if planner.vram_mode(job, shape, gpu)[0] != "lean":
            continue
        kept = planner.resident_samples(job, shape, gpu)
        limit, _ = planner.vram_budget(job, gpu)
        peak = planner.working_bytes(shape, method, 128, 2048, lean=True, resident=kept)
        spare = limit - planner.LEAN_HEADROOM * limit
        assert kept % planner.LEAN_BATCH == 0 and 0 < kept < 128, (method, card, kept)
        assert peak <= spare < peak + planner.LEAN_BATCH * sample, (method, card, kept)
    # --max-vram 8GiB (the CUDA runner's test) keeps 48 samples: 1.5 GiB of activations
    job = _job("gptq", max_vram=8 * GiB)
    assert planner.resident_samples(job, ModelShape.from_config(LLAMA_8B),
                                    hardware(80).best_gpu) == 48
    # the 70B shape on a 24 GB card keeps 16 samples (0.5 GiB) beside its 18 GiB
    shape70 = ModelShape.from_config(LLAMA_70B)
    kept70 = planner.resident_samples(_job("gptq"), shape70, hardware(24).best_gpu)
    assert kept70 == 16
    assert planner.working_bytes(shape70, "gptq", 128, 2048, lean=True,
                                 resident=kept70) <= 22 * GiB
    assert planner.resident_samples(_job("gptq"), shape70, None) == 0


def test_prefetch_staging_buffers_are_reused_not_grown(tiny: Path) -> None:
    """A prefetched block is read straight into one of two staging buffers that take turns
    (page-locked on a GPU: host_buffer); the third block reuses the first block's buffer
    instead of allocating (torch's pinned cache grew by every block it pinned)."""
    from qtapp.engine.model.safetensors_files import SafetensorsReader
    from qtapp.engine.quant.streaming import LayerStreamer

    info = resolve_model(str(tiny))
    streamer = LayerStreamer(info, torch.device("cpu"))
    reader = SafetensorsReader(tiny)
    try:
        slots = []
        for i in range(3):  # the values the files hold, as views of slot i % 2
            prefix = streamer.block_prefix(i)
            got = streamer._read(prefix, slot=i % 2)
            slot = streamer._slots[i % 2]
            assert slot is not None
            slots.append(slot)
            assert got.keys() == reader.state_dict(prefix).keys()
            for name, t in got.items():
                assert torch.equal(t, reader.get(prefix + name)), (i, name)
                assert slot.data_ptr() <= t.data_ptr() < slot.data_ptr() + slot.numel()
        assert slots[2] is slots[0] and slots[1] is not slots[0]  # block 2 reused block 0's
        with pytest.raises(ValueError, match="bytes given"):
            reader.get(reader.names()[0], out=torch.empty(3, dtype=torch.uint8))
    finally:
        streamer.close()


@pytest.mark.slow
def test_gemma4_split_keeps_each_mini_batchs_own_arguments(tmp_path: Path) -> None:
    """Gemma 4 gives every sample its own per-layer input (SAMPLE_KWARGS) and every
    mini-batch its own shared keys and values (STATE_KWARGS, filled by earlier layers):
    with 4 of 12 samples on the device and the rest streamed, mini-batch k still gets
    samples 4k … 4k + 3's inputs and its own state, so every layer error equals fast mode's."""
    from family_helpers import build_family_model
    from test_gemma_multimodal import EMBED, GEMMA4_TEXT

    folder = build_family_model(tmp_path / "gemma4_text", "gemma4_text",
                                embed_std=EMBED["gemma4"], vocab_size_per_layer_input=259,
                                **GEMMA4_TEXT)
    info = resolve_model(str(folder))
    tokens = torch.randint(3, 250, (12, 32), generator=torch.Generator().manual_seed(0))
    runs = []
    for lean, resident in ((False, 0), (True, 4)):
        job = JobSpec(model=str(folder), method="gptq", out=str(tmp_path / "out"),
                      scheme=QuantScheme(4, 32, True), evaluate=False, resume=False,
                      calibration=CalibrationSpec(samples=12, seq_len=32))
        errors: dict[str, float] = {}
        quantize_blocks(job, info, tokens, QuantStore(tmp_path / f"g-{lean}"),
                        lambda e, errors=errors: errors.__setitem__(e.module, e.rel_error)
                        if isinstance(e, ev.Layer) else None,
                        lambda: False, torch.device("cpu"), batch=4, lean=lean,
                        resident=resident)
        runs.append(errors)
    assert runs[0] and runs[0] == runs[1]


def test_host_buffer_locks_exactly_its_bytes_and_unlocks_them_when_freed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, host_buffer registers ordinary memory of exactly the size asked for with
    the driver (torch's pin_memory would lock the next power of two and keep it cached) and
    unregisters it once the tensor is freed, after the device is synchronised. The driver
    is a stand-in here: what is checked is the bookkeeping."""
    import gc
    from types import SimpleNamespace

    calls: list[tuple] = []
    fake = SimpleNamespace(
        cudaError=SimpleNamespace(success=0),
        cudaHostRegister=lambda ptr, size, flags: calls.append(("lock", ptr, size)) or 0,
        cudaHostUnregister=lambda ptr: calls.append(("unlock", ptr)) or 0)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append(("sync",)))
    t = streaming.host_buffer((80, 2048, 3), torch.device("cuda"))  # 1.875 MiB, not 2 MiB
    ptr = t.data_ptr()
    assert t.device.type == "cpu" and calls == [("lock", ptr, 80 * 2048 * 3 * 4)]
    del t
    gc.collect()
    assert calls[1:] == [("sync",), ("unlock", ptr)]
    assert streaming.host_buffer((4,), torch.device("cpu")) is not None and len(calls) == 3
