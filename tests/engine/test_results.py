"""The job's result: one typed value, serialised once (`to_dict`), versioned like the events,
read back unchanged through the worker's `result` event; the unversioned flat dicts of
earlier versions still read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from qtapp.engine import events as ev
from qtapp.engine.results import (
    SCHEMA_VERSION,
    ExportResult,
    GGUFDetails,
    JobResult,
    Measured,
    Quality,
    Resources,
    ResultDecodeError,
    Sizes,
)

GENERATION = [{"prompt": "What is the capital of France?", "text": "Paris.", "flags": []}]


def full_result() -> JobResult:
    """Every field set, nested parts included (a budgeted, evaluated GPTQ job)."""
    return JobResult(
        model="tiny", source="/models/tiny", method="gptq",
        export=ExportResult(format="gptq", files=["README.md", "config.json",
                                                  "model.safetensors"],
                            checkpoint_format="gptq_v2",
                            modules={"schemes": {"W4 g32 sym": {"bits": 4, "modules": 14,
                                                                "params": 73728,
                                                                "patterns": ["*.mlp.*"]}},
                                     "float_linears": ["lm_head"], "act_order": False},
                            notes=["this checkpoint uses format gptq_v2"]),
        scheme="W4 g32 sym", mixed=True, calibration=[8, 64], quantize_seconds=1.31,
        sizes=Sizes(bytes=184088, source_bytes=430944),
        quality=Quality(ppl=12.5, ppl_source=12.0, kld_mean=0.0123, kld_p99=0.2,
                        top1_agree=91.25, verdict="degraded",
                        reasons=["top-1 agreement 91.2 % < 92 %"], generation=GENERATION),
        plan={"budget_bytes": 200000, "predicted_bytes": 190000, "schemes": {"W4 g32 sym": 14},
              "rules": [{"pattern": "*.mlp.*", "scheme": None, "skip": True, "gguf_type": ""}]},
        out="/out/tiny-gptq", seconds=10.2,
        resources=Resources(predicted={"device": "cpu", "peak_ram": 631165696},
                            measured=Measured(peak_ram=521605120, seconds=10.2,
                                              stage_peak_ram={"quantize": 521605120},
                                              stage_seconds={"quantize": 0.05})))


def test_a_result_round_trips_through_the_result_event():
    result = full_result()
    line = ev.encode(ev.Result(out=result.out, seconds=result.seconds,
                               summary=result.to_dict()))
    event = ev.decode(line)
    assert isinstance(event, ev.Result)
    assert event.summary["v"] == SCHEMA_VERSION
    assert JobResult.from_dict(event.summary) == result
    # nested parts are JSON objects on the wire, not flat keys
    body = json.loads(line)["summary"]
    assert body["quality"]["ppl"] == 12.5 and body["export"]["files"][0] == "README.md"
    assert "ppl" not in body and "files" not in body


def test_a_gguf_result_without_quality_round_trips():
    result = JobResult(model="m", source="/m", method="gguf",
                       export=ExportResult(format="gguf", files=["Modelfile", "README.md",
                                                                 "m-Q4_K_M.gguf"]),
                       mixed=False, quantize_seconds=7.0, sizes=Sizes(100, 300),
                       gguf=GGUFDetails(type="Q4_K_M", file="m-Q4_K_M.gguf",
                                        tensor_types={"Q4_K": 30, "F32": 61}, imatrix=False))
    assert result.quality is None and result.calibration is None
    assert JobResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_an_unversioned_flat_result_of_an_earlier_version_still_reads():
    """The dict a GGUF job returned before JobResult (from a real run, generation and
    resources left out)."""
    old = {"method": "gguf", "format": "gguf", "model": "SmolLM2-135M-Instruct",
           "source": "/cache/models/SmolLM2-135M-Instruct", "gguf_type": "Q4_K_M",
           "gguf_file": "SmolLM2-135M-Instruct-Q4_K_M.gguf",
           "tensor_types": {"Q8_0": 121, "F32": 61, "Q4_K": 30, "Q5_0": 60}, "imatrix": True,
           "overrides": {"*.self_attn.*": "Q8_0", "*.mlp.*": "Q4_K"},
           "quantize_seconds": 7.01, "mixed": True, "size_bytes": 111633568,
           "source_size_bytes": 269060552, "ppl": 10.8341, "ppl_source": 10.6842,
           "kld_mean": 0.01825, "kld_p99": 0.12392, "top1_agree": 92.59, "verdict": "good",
           "verdict_reasons": [], "files": ["Modelfile", "README.md",
                                            "SmolLM2-135M-Instruct-Q4_K_M.gguf", "imatrix.gguf"],
           "out": "/out/gguf", "seconds": 761.73}
    assert JobResult.from_dict(old) == JobResult(
        model="SmolLM2-135M-Instruct", source="/cache/models/SmolLM2-135M-Instruct",
        method="gguf",
        export=ExportResult(format="gguf", files=old["files"]),
        mixed=True, quantize_seconds=7.01, sizes=Sizes(111633568, 269060552),
        quality=Quality(ppl=10.8341, ppl_source=10.6842, kld_mean=0.01825, kld_p99=0.12392,
                        top1_agree=92.59, verdict="good"),
        gguf=GGUFDetails(type="Q4_K_M", file="SmolLM2-135M-Instruct-Q4_K_M.gguf",
                         tensor_types=old["tensor_types"], imatrix=True,
                         overrides=old["overrides"]),
        out="/out/gguf", seconds=761.73)
    # a GPTQ job's: export details, verdict reasons and measured resources land in place
    old = {"method": "rtn", "format": "gptq", "checkpoint_format": "gptq", "scheme": "W4",
           "format_notes": ["n"], "calibration": [8, 64], "modules": {"float_linears": []},
           "verdict": "broken", "verdict_reasons": ["r"], "generation": GENERATION,
           "resources": {"predicted": {"peak_ram": 1}, "measured": {
               "peak_ram": 2, "seconds": 3.0, "stage_peak_ram": {"export": 2},
               "stage_seconds": {"export": 0.5}}}}
    r = JobResult.from_dict(old)
    assert r.export == ExportResult(format="gptq", checkpoint_format="gptq", notes=["n"],
                                    modules={"float_linears": []})
    assert r.quality == Quality(verdict="broken", reasons=["r"], generation=GENERATION)
    assert r.resources == Resources(predicted={"peak_ram": 1}, measured=Measured(
        peak_ram=2, seconds=3.0, stage_peak_ram={"export": 2}, stage_seconds={"export": 0.5}))
    assert r.calibration == [8, 64] and r.sizes is None and r.gguf is None
    # one without measurements has none, rather than made-up zeros
    bare = JobResult.from_dict({"method": "rtn", "format": "gptq"})
    assert bare.quality is None and bare.sizes is None and bare.resources is None


def test_results_of_another_version_or_shape_are_refused():
    newer = {**full_result().to_dict(), "v": SCHEMA_VERSION + 1}
    with pytest.raises(ResultDecodeError, match=f"schema version {SCHEMA_VERSION + 1}"):
        JobResult.from_dict(newer)
    with pytest.raises(ResultDecodeError, match="JSON object"):
        JobResult.from_dict(["not", "a", "result"])
    with pytest.raises(ResultDecodeError, match="not a job result"):
        JobResult.from_dict({"v": SCHEMA_VERSION, "model": "m", "source": "s",
                             "method": "rtn", "export": ["gptq"]})


def test_the_command_line_prints_the_result_it_reads_back():
    import io

    from qtapp.commands.quantize import ProgressPrinter

    def printed(summary: dict) -> list[str]:
        stream = io.StringIO()
        ProgressPrinter(stream)(ev.Result(out="/out/tiny-gptq", seconds=10.2, summary=summary))
        return stream.getvalue().splitlines()

    lines = ["done in 10 s: /out/tiny-gptq", "  size 179.8 KiB (source 420.8 KiB)",
             "  perplexity 12.500 (source 12.000)"]
    # the quality verdict the model card has, and the planned time beside the time taken
    verdict = "  quality degraded: top-1 agreement 91.2 % < 92 %"
    assert printed(full_result().to_dict()) == [*lines, verdict]
    planned = full_result()
    planned = dataclasses.replace(planned, resources=dataclasses.replace(
        planned.resources, predicted={**planned.resources.predicted, "seconds": 9.0}))
    assert printed(planned.to_dict()) == [*lines, "  time 10 s (planned 9 s)", verdict]
    # an unversioned result of an earlier worker reads the same (it had no verdict)
    assert printed({"size_bytes": 184088, "source_size_bytes": 430944, "ppl": 12.5,
                    "ppl_source": 12.0}) == lines
    assert printed({}) == lines[:1]  # a plan run's result: nothing written, nothing measured
