"""Lean VRAM mode: the planner's choice, and the lean path's numbers against the fast path's.

Lean mode keeps the calibration activations in host memory and streams each mini-batch to
the compute device through two reused buffers (quant/pipeline.BlockInputs, _HostStream).
On the CPU the same buffers, slices and write-back run with plain copies, so the per-layer
errors of a job run both ways must agree; the GPU half (copy streams, the --max-vram
ceiling) is in test_cuda_pipeline.py.
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
from qtapp.engine.quant import pipeline
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


def test_plan_card_names_the_mode_and_refuses_below_max_vram(tmp_path: Path) -> None:
    from tests.shapes import model_info

    info = model_info(tmp_path, "Llama-8B-test", config=LLAMA_8B, n_params=8_030_261_248)
    plan = planner.plan_job(_job("gptq"), info, hw=hardware(8), out=tmp_path / "o")
    assert plan.vram_mode == "lean" and "VRAM mode       lean:" in plan.table(), plan.table()
    assert plan.peak_vram == planner.working_bytes(ModelShape.from_config(LLAMA_8B), "gptq",
                                                   128, 2048, lean=True)
    # host memory holds the activations in lean mode: 128 × 2048 × 4096 float32
    fast_ram, _ = planner.memory(_job("gptq"), info, True)
    assert plan.peak_ram - fast_ram == 128 * 2048 * 4096 * 4
    tight = planner.plan_job(_job("gptq", max_vram=2 * GiB), info, hw=hardware(80),
                             out=tmp_path / "o")
    assert not tight.fits and any("--max-vram is 2.00 GiB" in p for p in tight.problems)


def _errors(folder: Path, method: str, lean: bool, tmp: Path) -> dict[str, float]:
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
    quantize_blocks(job, info, tokens, QuantStore(tmp / f"{method}-{lean}"), emit,
                    lambda: False, torch.device("cpu"), batch=4, lean=lean)
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
    real = pipeline._HostStream.batches

    def stale(self, x, batch, kwargs):
        first = None
        for xb, kw in real(self, x, batch, kwargs):
            first = xb.clone() if first is None else first
            yield first[: xb.shape[0]], kw

    fast = _errors(tiny, "gptq", False, tmp_path)
    monkeypatch.setattr(pipeline._HostStream, "batches", stale)
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
