"""What to try after a degraded or broken result: the right changes for the job, each with
the output size the planner predicts for it."""

from __future__ import annotations

import dataclasses

from qtapp.engine.config import GGUFOptions, JobSpec, QuantScheme
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.planning.budget import job_bytes
from qtapp.engine.planning.remedies import remedies


def test_gptq_w4_remedies_and_their_predicted_sizes(tiny_llama_dir, tmp_path) -> None:
    info = resolve_model(str(tiny_llama_dir))
    job = JobSpec(model=str(tiny_llama_dir), method="gptq", out=str(tmp_path / "o"),
                  scheme=QuantScheme(4, 64, True))
    size = job_bytes(job, info)
    found = {r.key: r for r in remedies(job, info, size)}
    assert list(found) == ["group", "awq", "attention8", "budget", "calibration"]
    assert found["group"].job.scheme.group_size == 32
    assert found["awq"].job.method == "awq"
    assert found["attention8"].job.scheme_for("model.layers.0.self_attn.q_proj").bits == 8
    assert found["attention8"].job.scheme_for("model.layers.0.mlp.down_proj").bits == 4
    assert found["calibration"].job.calibration.samples == 2 * job.calibration.samples
    # the planner's sizes: finer groups and 8-bit attention cost bytes, a budget keeps them
    assert found["group"].size_bytes > size
    assert found["attention8"].size_bytes > found["group"].size_bytes
    assert found["budget"].size_bytes == found["budget"].job.target_bytes == size
    # the same bits in the AWQ format (no act-order index): about the same size
    assert abs(found["awq"].size_bytes / size - 1) < 0.05
    assert all(r.size_bytes is None for r in remedies(job, None, size) if r.key != "budget")


def test_what_is_already_done_is_not_suggested(tmp_path) -> None:
    base = JobSpec(model="m", method="gptq", out=str(tmp_path / "o"),
                   scheme=QuantScheme(8, 32, True))
    keys = [r.key for r in remedies(base)]
    assert keys == ["calibration"]  # 8-bit, group 32, no size known for a budget
    rtn = dataclasses.replace(base, method="rtn", scheme=QuantScheme(4, -1, True))
    assert [r.key for r in remedies(rtn, size_bytes=10)] == ["group", "awq", "attention8"]
    assert remedies(rtn)[0].job.scheme.group_size == 128


def test_gguf_remedies_climb_the_type_ladder(tmp_path) -> None:
    job = JobSpec(model="m", method="gguf", out=str(tmp_path / "o"),
                  gguf=GGUFOptions(type="Q4_K_M", imatrix="none"))
    found = {r.key: r.job for r in remedies(job, size_bytes=100)}
    assert list(found) == ["gguf_type", "imatrix", "budget"]
    assert found["gguf_type"].gguf.type == "Q5_K_S"
    assert found["imatrix"].gguf.imatrix == "auto"
    top = dataclasses.replace(job, gguf=GGUFOptions(type="Q8_0", imatrix="auto"))
    assert [r.key for r in remedies(top)] == ["calibration"]
