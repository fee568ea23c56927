"""The memory, disk and time plan: numbers from the formulas, refusal with fixes, the CLI's
dry run (timed on one block) and refusal, predicted against measured in a job's result."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from shapes import LLAMA_7B, GiB

from qtapp.engine.config import CalibrationSpec, JobSpec
from qtapp.engine.planning import advisor as A
from qtapp.engine.planning.hardware import Hardware
from qtapp.engine.planning.planner import BASE_RSS, memory, plan_job, working_bytes


def machine(ram_gib: float) -> Hardware:
    return Hardware("Fake CPU", 2, 2, int(ram_gib * GiB), int(ram_gib * GiB), "TestOS", ())


def llama7b() -> SimpleNamespace:
    return SimpleNamespace(name="Llama-7B", config=LLAMA_7B, n_params=6_738_415_616,
                           size_bytes=13_476_831_232, n_layers=32)


def test_memory_follows_the_documented_formulas():
    info = llama7b()
    job = JobSpec(model="x", method="gptq", out="o", evaluate=False,
                  calibration=CalibrationSpec(samples=128, seq_len=512))
    shape = A.ModelShape.from_config(LLAMA_7B, "Llama-7B", info.n_params)
    ram, vram = memory(job, info, gpu=False)
    work = working_bytes(shape, "gptq", 128, 512, reuse=True)
    # one fp32 block + the activations in and out + the Hessians of q/k/v, o, gate/up, down
    # + the attention output kept across the passes (o_proj's input, heads × head_dim wide)
    assert work == (shape.block_linear_params * 4 + 2 * 128 * 512 * 4096 * 4
                    + (2 * 4096**2 + 4096**2 + 11008**2) * 4 + 128 * 512 * 4096 * 4)
    block16 = int(shape.block_linear_params * 2)  # bf16 source: 2 bytes per parameter
    assert vram == 0
    assert ram == pytest.approx(BASE_RSS + 32000 * 4096 * 4 + work + block16, rel=1e-3)
    evaluating = memory(JobSpec(model="x", method="gptq", out="o"), info, gpu=False)[0]
    assert evaluating == pytest.approx(BASE_RSS + info.n_params * 4
                                       + 3 * 512 * 32000 * 4, rel=1e-3)  # the whole model
    ram_gpu, vram_gpu = memory(job, info, gpu=True)
    assert vram_gpu == work and ram_gpu < ram
    # GGUF: the file is mapped, and llama.cpp's output buffer and llama-cpp-python's scores
    # come on top of the three logits-sized arrays of the comparison
    gguf = JobSpec.from_dict({"model": "x", "method": "gguf", "out": "o",
                              "gguf": {"type": "Q4_K_M", "imatrix": "none"}})
    assert memory(gguf, info, gpu=False)[0] == pytest.approx(
        BASE_RSS + info.n_params * 4.85 / 8 + 5 * 512 * 32000 * 4, rel=1e-3)


def test_a_plan_that_does_not_fit_says_so_with_numbers_and_fixes(tmp_path):
    plan = plan_job(JobSpec(model="x", method="gptq", out=str(tmp_path / "o")), llama7b(),
                    machine(16))
    assert not plan.fits
    assert "RAM" in plan.problems[0] and "12.80 GiB of 16.00 GiB" in plan.problems[0]
    assert any("--no-eval" in f for f in plan.fixes)
    assert all("GiB" in f for f in plan.fixes)
    table = plan.table()
    assert "DOES NOT FIT" in table and "fix:" in table
    small = plan_job(JobSpec(model="x", method="gptq", out=str(tmp_path / "o")), llama7b(),
                     machine(64))
    assert small.fits and small.final_disk == A.weight_bytes(
        A.ModelShape.from_config(LLAMA_7B, "", 6_738_415_616), 4, 128)


def test_cli_refuses_a_job_that_does_not_fit_and_writes_nothing(tiny_llama_dir, tmp_path,
                                                                monkeypatch, capsys):
    from qtapp.cli import main
    from qtapp.engine.planning import hardware

    monkeypatch.setattr(hardware, "detect", lambda use_torch=True: machine(0.25))
    out = tmp_path / "o"
    code = main(["quantize", "--model", str(tiny_llama_dir), "--method", "rtn", "--out",
                 str(out), "--samples", "2", "--seq-len", "32"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit" in err and "--ignore-plan" in err
    # 80 % of 256 MiB, in the one unit convention (qtapp/engine/units.py)
    assert re.search(r"needs \d+\.\d MiB of RAM; 204\.8 MiB of 256\.0 MiB are usable", err), err
    assert not out.exists() and not list(tmp_path.glob(".o*"))


def test_cli_dry_run_times_one_block(tiny_llama_dir, tmp_path, capsys):
    from qtapp.cli import main

    out = tmp_path / "o"
    assert main(["quantize", "--model", str(tiny_llama_dir), "--method", "gptq", "--out",
                 str(out), "--samples", "4", "--seq-len", "32", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "timed on its first blocks" in captured.err and "peak RAM" in captured.err
    assert JobSpec.from_json(captured.out).method == "gptq"
    assert not out.exists()


def test_a_job_records_predicted_against_measured(tiny_llama_dir, tmp_path):
    import dataclasses

    from qtapp.engine.config import ModuleRule, QuantScheme
    from qtapp.engine.jobs.job import run_job
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.planning.budget import job_bytes
    from qtapp.engine.planning.planner import final_bytes, formula_bytes

    # 8-bit, with the MLP at 2 bits by a per-module rule
    job = JobSpec(model=str(tiny_llama_dir), method="rtn", out=str(tmp_path / "o"),
                  scheme=QuantScheme(bits=8, group_size=32), evaluate=False,
                  rules=(ModuleRule("*.mlp.*", QuantScheme(bits=2, group_size=32)),),
                  calibration=CalibrationSpec(samples=2, seq_len=32))
    result = run_job(job, lambda e: None, lambda: False)
    r = result.resources
    assert r.predicted["final_disk"] > 0 and r.predicted["peak_ram"] > BASE_RSS
    # the final size is the size budget's exact count, the rule included: what was written
    # (every file but the model card, as a budget counts), up to the config.json allowance
    info = resolve_model(str(tiny_llama_dir))
    predicted = r.predicted["final_disk"]
    assert predicted == job_bytes(job, info)
    written = sum(p.stat().st_size for p in Path(result.out).iterdir()
                  if p.is_file() and p.name != "README.md")
    assert 0 <= predicted - written < 16 * 1024
    # without the rule the file is bigger; the bits-per-weight formula (for a config.json
    # alone) cannot tell the two apart
    plain = dataclasses.replace(job, rules=())
    assert final_bytes(plain, info) > predicted
    shape = A.ModelShape.from_config(info.config, info.name, info.n_params)
    assert formula_bytes(job, shape) == formula_bytes(plain, shape)
    assert r.measured.peak_ram > 0 and r.measured.seconds == result.seconds
    # where the peak happened and how long each stage took, for plan-vs-measured tables
    stages = r.measured.stage_peak_ram
    assert list(stages) == ["calibration", "quantize", "export"]
    assert max(stages.values()) <= r.measured.peak_ram
    assert list(stages.values()) == sorted(stages.values())  # ru_maxrss only grows
    assert set(r.measured.stage_seconds) == set(stages)
    assert sum(r.measured.stage_seconds.values()) <= result.seconds
    assert Path(result.out).is_dir()


def test_the_job_runner_refuses_what_the_plan_refuses_unless_overridden(tiny_llama_dir,
                                                                        tmp_path, monkeypatch):
    """One check before a job, the planner's: run_job refuses a job that does not fit with
    the plan's words, before `started`; job.ignore_plan (--ignore-plan, the window's Start
    anyway) skips exactly that refusal."""
    import dataclasses

    from qtapp.engine.config import QuantScheme
    from qtapp.engine.errors import UserError
    from qtapp.engine.jobs.job import run_job
    from qtapp.engine.planning import hardware

    monkeypatch.setattr(hardware, "detect", lambda use_torch=True: machine(0.25))
    job = JobSpec(model=str(tiny_llama_dir), method="rtn", out=str(tmp_path / "o"),
                  scheme=QuantScheme(bits=4, group_size=32), evaluate=False,
                  calibration=CalibrationSpec(samples=2, seq_len=32))
    events = []
    with pytest.raises(UserError, match=r"does not fit on this machine \(needs .* of RAM; "
                       r"204\.8 MiB of 256\.0 MiB are usable\).*--ignore-plan"):
        run_job(job, events.append, lambda: False)
    assert events == [] and not (tmp_path / "o").exists()
    result = run_job(dataclasses.replace(job, ignore_plan=True), events.append, lambda: False)
    assert Path(result.out).is_dir() and events[0].type == "started"
    # the plan is still made and logged for the record, the override changes nothing else
    assert result.resources.predicted["peak_ram"] > 256 * 2**20


def test_ram_limit_is_what_is_available_now_when_less(tmp_path):
    from qtapp.engine.planning.planner import ram_limit

    busy = Hardware("Fake CPU", 2, 2, 16 * GiB, 2 * GiB, "TestOS", ())
    assert ram_limit(busy) == 2 * GiB and ram_limit(machine(16)) == int(0.8 * 16 * GiB)
    plan = plan_job(JobSpec(model="x", method="gptq", out=str(tmp_path / "o"), evaluate=False),
                    llama7b(), busy)
    assert not plan.fits and plan.ram_usable == 2 * GiB
    assert "of RAM; 2.00 GiB of 16.00 GiB are usable" in plan.problems[0]


# Qwen3-30B-A3B's shape as benchmarks/gpu_quantize.py builds it (SHAPES["qwen3-30b-a3b"])
QWEN3_30B_A3B = {"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
                 "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
                 "num_experts_per_tok": 8, "head_dim": 128, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "tie_word_embeddings": False, "vocab_size": 151936}


def test_awq_vram_on_a_mixture_of_experts_block_matches_the_gpu_measurements():
    """AWQ's peak VRAM on the Qwen3-30B-A3B shape (128 × 2048 tokens, batch 8) is within
    10 % of what an H200 measured (benchmarks/README.md): 13.27 GiB fast, 11.33 lean. Without
    the per-expert term (clip rows, down's Gram, quantized gate/up: awq_expert_bytes) the
    planner said 6.60 and 4.73. Dense AWQ is unchanged: 8B shape 9.47 fast (9.65 measured)."""
    from qtapp.engine.planning.planner import awq_expert_bytes
    from qtapp.engine.planning.shape import ModelShape

    moe = ModelShape.from_config(QWEN3_30B_A3B)
    fast = working_bytes(moe, "awq", 128, 2048) / GiB
    lean = working_bytes(moe, "awq", 128, 2048, lean=True) / GiB
    assert abs(fast - 13.27) <= 0.10 * 13.27, fast
    assert abs(lean - 11.33) <= 0.10 * 11.33, lean
    # every expert fills its 2048 clip rows here (16 384 routed rows each on average)
    assert awq_expert_bytes(moe, 128 * 2048) == awq_expert_bytes(moe)
    # few tokens: an expert keeps only its routed rows for the clip search
    assert awq_expert_bytes(moe, 8 * 2048) < awq_expert_bytes(moe)
    dense = ModelShape.from_config({**LLAMA_7B, "hidden_size": 4096, "intermediate_size": 14336,
                                    "num_hidden_layers": 32, "num_attention_heads": 32,
                                    "num_key_value_heads": 8, "vocab_size": 128256})
    assert awq_expert_bytes(dense, 128 * 2048) == 0
    assert round(working_bytes(dense, "awq", 128, 2048) / GiB, 2) == 9.47
