"""The results store keeps each run's JobResult across restarts: what arrives in the worker's
result event is what the next start reads back; runs saved by earlier versions (flat fields
and an unversioned summary) still load; a newer version's runs are kept, not dropped."""

from __future__ import annotations

import json
from pathlib import Path

from qtapp.engine import events as ev
from qtapp.engine.results import (
    SCHEMA_VERSION,
    ExportResult,
    GGUFDetails,
    JobResult,
    Measured,
    Quality,
    Resources,
    Sizes,
)
from qtapp.gui.results_store import ResultsStore, RunRecord

RESULT = JobResult(
    model="tiny", source="/models/tiny", method="gptq",
    export=ExportResult(format="compressed-tensors", files=["README.md", "model.safetensors"],
                        checkpoint_format="compressed-tensors",
                        modules={"float_linears": ["lm_head"]}, notes=["a note"]),
    scheme="W4 g32 sym", mixed=True, calibration=[8, 64], quantize_seconds=1.5,
    sizes=Sizes(90_000_000, 270_000_000),
    quality=Quality(ppl=12.5, ppl_source=12.0, kld_mean=0.01, kld_p99=0.1, top1_agree=95.0,
                    verdict="good", generation=[{"prompt": "p", "text": "t", "flags": []}]),
    plan={"budget_bytes": 100_000_000, "rules": []}, out="/out/tiny-gptq", seconds=9.5,
    resources=Resources(predicted={"peak_ram": 10}, measured=Measured(peak_ram=20, seconds=9.5)))

# a results.json entry as QuantDesk wrote it before records held a JobResult (a GGUF run)
OLD_RECORD = {
    "model": "SmolLM2-135M-Instruct", "source": "/cache/models/SmolLM2-135M-Instruct",
    "method": "gguf", "settings": "Q4_K_M + mixed", "out": "/out/smol-gguf",
    "size_bytes": 111633568, "source_size_bytes": 269060552, "ppl": 10.8341,
    "ppl_source": 10.6842, "seconds": 761.73, "format": "gguf", "verdict": "good",
    "finished": 1732000000.5, "id": "0123456789ab",
    "summary": {"method": "gguf", "format": "gguf", "model": "SmolLM2-135M-Instruct",
                "source": "/cache/models/SmolLM2-135M-Instruct", "gguf_type": "Q4_K_M",
                "gguf_file": "SmolLM2-135M-Instruct-Q4_K_M.gguf",
                "tensor_types": {"Q8_0": 121, "F32": 61}, "imatrix": True,
                "overrides": {"*.self_attn.*": "Q8_0"}, "quantize_seconds": 7.01,
                "mixed": True, "size_bytes": 111633568, "source_size_bytes": 269060552,
                "ppl": 10.8341, "ppl_source": 10.6842, "kld_mean": 0.01825, "kld_p99": 0.12392,
                "top1_agree": 92.59, "verdict": "good", "verdict_reasons": [],
                "files": ["Modelfile", "README.md", "SmolLM2-135M-Instruct-Q4_K_M.gguf"],
                "out": "/out/smol-gguf", "seconds": 761.73}}
# older still: no quality gate yet, and a summary without sizes (the record had them)
OLDEST_RECORD = {"model": "tiny", "source": "/models/tiny", "method": "rtn",
                 "settings": "W8 g128 sym", "out": "/out/tiny-rtn", "size_bytes": 10,
                 "source_size_bytes": 20, "ppl": 10.1, "ppl_source": None, "seconds": 3.0,
                 "format": "gptq", "verdict": "", "finished": 1700000000.0, "id": "oldest",
                 "summary": {"method": "rtn", "format": "gptq", "files": ["config.json"]}}


def test_a_result_round_trips_through_the_event_and_the_store(tmp_path: Path):
    line = ev.encode(ev.Result(out=RESULT.out, seconds=RESULT.seconds,
                               summary=RESULT.to_dict()))
    arrived = JobResult.from_dict(ev.decode(line).summary)
    store = ResultsStore(tmp_path / "results.json")
    record = store.add(RunRecord.from_result(arrived, {"model": "/models/tiny",
                                                       "method": "gptq"}))
    assert record.settings == "W4 g32 sym + mixed"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved[0]["result"]["v"] == SCHEMA_VERSION
    reloaded = ResultsStore(tmp_path / "results.json")
    assert reloaded.records == [record] and reloaded.records[0].result == RESULT
    r = reloaded.records[0]
    assert (r.model, r.method, r.out, r.format) == ("tiny", "gptq", "/out/tiny-gptq",
                                                   "compressed-tensors")
    assert (r.size_bytes, r.ppl, r.ppl_source, r.verdict, r.seconds) == (
        90_000_000, 12.5, 12.0, "good", 9.5)


def test_runs_saved_by_earlier_versions_still_load(tmp_path: Path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([OLD_RECORD, OLDEST_RECORD]), encoding="utf-8")
    store = ResultsStore(path)
    old, oldest = store.records
    assert (old.id, old.finished, old.settings) == ("0123456789ab", 1732000000.5,
                                                    "Q4_K_M + mixed")
    assert old.result == JobResult(
        model="SmolLM2-135M-Instruct", source="/cache/models/SmolLM2-135M-Instruct",
        method="gguf",
        export=ExportResult(format="gguf", files=OLD_RECORD["summary"]["files"]),
        mixed=True, quantize_seconds=7.01, sizes=Sizes(111633568, 269060552),
        quality=Quality(ppl=10.8341, ppl_source=10.6842, kld_mean=0.01825, kld_p99=0.12392,
                        top1_agree=92.59, verdict="good"),
        gguf=GGUFDetails(type="Q4_K_M", file="SmolLM2-135M-Instruct-Q4_K_M.gguf",
                         tensor_types={"Q8_0": 121, "F32": 61}, imatrix=True,
                         overrides={"*.self_attn.*": "Q8_0"}),
        out="/out/smol-gguf", seconds=761.73)
    # the record's own fields fill what its summary lacked
    assert (oldest.model, oldest.out, oldest.size_bytes, oldest.source_size_bytes) == (
        "tiny", "/out/tiny-rtn", 10, 20)
    assert (oldest.ppl, oldest.ppl_source, oldest.verdict) == (10.1, None, "")
    assert oldest.result.export.files == ["config.json"] and oldest.result.calibration is None
    # saving writes them in this version's form; they read back the same
    store.save()
    assert all(item["result"]["v"] == SCHEMA_VERSION
               for item in json.loads(path.read_text(encoding="utf-8")))
    assert ResultsStore(path).records == [old, oldest]


def test_a_newer_versions_run_is_kept_not_dropped(tmp_path: Path):
    path = tmp_path / "results.json"
    newer = {"id": "future", "finished": 2e9, "settings": "W4",
             "result": {**RESULT.to_dict(), "v": SCHEMA_VERSION + 1}}
    path.write_text(json.dumps([OLD_RECORD, newer]), encoding="utf-8")
    store = ResultsStore(path)
    assert [r.id for r in store.records] == ["0123456789ab"]
    store.add(RunRecord.from_result(RESULT, {}))
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert newer in saved and len(saved) == 3
