"""RTN's calibration pass only draws the per-layer error chart.

RTN's weights do not depend on calibration data, so an RTN job streams only
RTN_CHART_SAMPLES samples through the model, and measures each linear's relative output
error directly (no Hessians). Its output bytes must not depend on the calibration set.
"""

from __future__ import annotations

import hashlib

import torch

from qtapp.engine import events as ev
from qtapp.engine.config import RTN_CHART_SAMPLES, CalibrationSpec, JobSpec, QuantScheme
from qtapp.engine.jobs.job import run_job
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.quant import streaming
from qtapp.engine.quant.methods.gptq import relative_output_error
from qtapp.engine.quant.methods.rtn import rtn
from qtapp.engine.quant.pipeline import collect_hessians, measure_output_errors
from qtapp.engine.quant.streaming import LayerStreamer

NAMES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_chart_errors_equal_the_hessian_formula(tiny_llama_dir):
    info = resolve_model(str(tiny_llama_dir))
    streamer = LayerStreamer(info, torch.device("cpu"))
    try:
        tokens = torch.randint(0, 200, (6, 32), generator=torch.Generator().manual_seed(0))
        inputs = streamer.capture_inputs(tokens, batch=2)
        block = streamer.materialize(streamer.blocks[0], streamer.block_prefix(0))
        scheme = QuantScheme(4, 64, True)
        hats = {n: rtn(block.get_submodule(n).weight.data, scheme).dequantize() for n in NAMES}
        errors = measure_output_errors(block, hats, inputs)
        hessians = collect_hessians(block, NAMES, inputs)
    finally:
        streamer.close()
    for n in NAMES:
        W = block.get_submodule(n).weight.data
        expected = relative_output_error(W, hats[n], hessians[n].H)
        assert expected > 0
        assert abs(errors[n] - expected) <= 1e-4 * expected, n


def _sha256s(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.safetensors"))}


def test_rtn_job_streams_only_its_chart_samples_and_its_bytes_ignore_calibration(
        tiny_llama_dir, tmp_path, monkeypatch):
    streamed: list[int] = []
    capture = LayerStreamer.capture_inputs

    def counting(self, tokens, batch, **kwargs):
        streamed.append(int(tokens.shape[0]))
        return capture(self, tokens, batch, **kwargs)

    monkeypatch.setattr(streaming.LayerStreamer, "capture_inputs", counting)
    outputs, charts = {}, {}
    for name, calibration in (("many", CalibrationSpec(samples=40, seq_len=32, seed=0)),
                              ("one", CalibrationSpec(samples=1, seq_len=32, seed=7))):
        seen: list[ev.Event] = []
        job = JobSpec(model=str(tiny_llama_dir), method="rtn", out=str(tmp_path / name),
                      calibration=calibration, scheme=QuantScheme(4, 64, True),
                      evaluate=False)
        result = run_job(job, seen.append, lambda: False)
        outputs[name] = _sha256s(tmp_path / name)
        charts[name] = [e for e in seen if isinstance(e, ev.Layer)]
        assert result.calibration[0] == min(calibration.samples, RTN_CHART_SAMPLES)
    assert streamed == [RTN_CHART_SAMPLES, 1]
    assert outputs["many"] and outputs["many"] == outputs["one"]
    for layers in charts.values():
        assert len(layers) == 2 * len(NAMES)
        assert all(0 < e.rel_error < 1 for e in layers)
