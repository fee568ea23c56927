"""Group sizes that split every quantized layer's inputs into whole groups (issue 17, item 7).

The demo (SmolLM2-135M) is 576 wide with 1536-wide FFN inputs: 128 does not divide 576, so
the old default (--group-size 128) started a job that failed in the export. Now:

- `--group-size auto` (the default) picks 128 when it divides every width, else 64 or 32
  (64 for the demo), and the job runs with the defaults;
- an explicit group size that does not divide is refused before anything runs (exit 2, one
  line naming the layers and the group size that does), with or without --ignore-plan;
- the planner lists it as a problem with that fix; `quantdesk check` names the group size;
- a rules file's scheme without a group size, and a preset, follow --group-size.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from shapes import DEMO, LLAMA_7B, GiB

from qtapp.cli import main
from qtapp.engine.config import JobSpec, ModuleRule, QuantScheme, preset_rules
from qtapp.engine.outputs import partial_path
from qtapp.engine.planning.hardware import Hardware


@pytest.fixture(scope="module")
def tiny576(tmp_path_factory, make_tiny_model) -> Path:
    """One block of the demo's widths (576 in, 1536 into down_proj), 9 heads of 64."""
    return make_tiny_model(tmp_path_factory.mktemp("g") / "tiny576", "llama", hidden_size=576,
                           intermediate_size=1536, num_attention_heads=9,
                           num_key_value_heads=3, num_hidden_layers=1)


@pytest.fixture()
def isolated(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTDESK_CACHE", str(cache))
    return cache


SMALL = ["--samples", "4", "--seq-len", "32", "--no-eval"]


def test_auto_group_size_divides_every_width():
    from qtapp.engine.model.arch import auto_group_size, linear_input_widths

    assert linear_input_widths(DEMO)["self_attn.q_proj"] == 576
    assert linear_input_widths(DEMO)["mlp.down_proj"] == 1536
    assert auto_group_size(linear_input_widths(DEMO).values()) == 64
    assert auto_group_size(linear_input_widths(LLAMA_7B).values()) == 128
    assert auto_group_size([96, 288]) == 32
    assert auto_group_size([600, 1600]) == -1  # no group of 128, 64 or 32: per channel
    # o_proj takes num_heads * head_dim, which need not be hidden_size (Qwen3)
    widths = linear_input_widths({**LLAMA_7B, "num_attention_heads": 30, "head_dim": 80})
    assert widths["self_attn.o_proj"] == 2400 and auto_group_size(widths.values()) == 32


def test_the_problem_names_the_layers_and_the_group_size_that_divides():
    from qtapp.engine.model.arch import group_size_problem

    found = group_size_problem(JobSpec(model="demo", method="gptq", out="o"), DEMO)
    assert found is not None
    assert found.problem == (
        "group size 128 does not divide the 576 input features of q_proj, k_proj, v_proj, "
        "o_proj, gate_proj, up_proj in every block (576 / 128 = 4.5); GPTQ, AWQ and "
        "compressed-tensors need whole groups")
    assert found.fix() == "use --group-size 64 (576 = 9 × 64, 1536 = 24 × 64)"
    ok = JobSpec(model="demo", method="gptq", out="o", scheme=QuantScheme(4, 64))
    assert group_size_problem(ok, DEMO) is None
    assert group_size_problem(JobSpec(model="demo", method="gguf", out="o"), DEMO) is None
    # a rule's own group size is checked on the modules it matches, and the fix names it
    rule = ModuleRule("model.layers.3.mlp.*", QuantScheme(8, 128))
    found = group_size_problem(JobSpec(model="demo", method="rtn", out="o",
                                       scheme=QuantScheme(4, 64), rules=(rule,)), DEMO)
    assert found is not None and found.rule == 0 and found.blocks == (3,)
    assert "gate_proj, up_proj in block 3" in found.problem
    assert found.fix() == ("give rule 1 ('model.layers.3.mlp.*') group size 64 "
                           "(576 = 9 × 64, 1536 = 24 × 64)")
    # a preset follows the scheme's group size
    mixed = JobSpec(model="demo", method="gptq", out="o", scheme=QuantScheme(4, 64),
                    rules=preset_rules("attn8-ffn4", QuantScheme(4, 64)))
    assert group_size_problem(mixed, DEMO) is None


def test_the_planner_refuses_the_group_size_with_the_fix(tmp_path):
    info = SimpleNamespace(name="demo-shaped", config=DEMO, n_params=134_515_008,
                           size_bytes=269_030_016, n_layers=30)
    big = Hardware("Fake CPU", 2, 2, 64 * GiB, 64 * GiB, "TestOS", ())
    from qtapp.engine.model.arch import group_size_problem
    from qtapp.engine.planning.planner import plan_job

    plan = plan_job(JobSpec(model="x", method="gptq", out=str(tmp_path / "o")), info, big)
    assert not plan.fits
    assert plan.problems == [group_size_problem(JobSpec(model="x", method="gptq", out="o"),
                                                DEMO).problem]
    assert plan.fixes == ["use --group-size 64 (576 = 9 × 64, 1536 = 24 × 64)"]
    good = plan_job(JobSpec(model="x", method="gptq", out=str(tmp_path / "o"),
                            scheme=QuantScheme(4, 64)), info, big)
    assert good.fits, good.problems


def test_check_names_the_group_size_for_the_demo(demo_dir, tmp_path, capsys):
    from qtapp.engine.planning.compat import check_model

    report = check_model("demo", Hardware("Fake CPU", 2, 2, 64 * GiB, 64 * GiB, "TestOS", ()))
    gptq = next(m for m in report.methods if m.method == "gptq")
    assert gptq.ok and gptq.group_size == 64
    assert "group size 64 (128 does not divide 576; 576 = 9 × 64, 1536 = 24 × 64)" in \
        gptq.reason


@pytest.mark.parametrize("extra", [[], ["--ignore-plan"]], ids=["planned", "ignore-plan"])
def test_cli_refuses_a_group_size_that_does_not_divide_before_anything_runs(
        extra, tiny576, tmp_path, isolated, capfd):
    out = tmp_path / "out"
    code = main(["quantize", "--model", str(tiny576), "--method", "gptq", "--group-size",
                 "128", "--out", str(out), *SMALL, *extra])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2, err
    assert errors == [(
        "quantdesk quantize: error: group size 128 does not divide the 576 input features of "
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj in every block (576 / 128 = 4.5); "
        "GPTQ, AWQ and compressed-tensors need whole groups. Fix: use --group-size 64 "
        "(576 = 9 × 64, 1536 = 24 × 64)")], err
    assert "quantizing" not in err and "Traceback" not in err
    assert not out.exists() and not partial_path(out).exists() and not isolated.exists()


def test_cli_defaults_pick_a_group_size_that_divides(tiny576, tmp_path, isolated, capfd):
    """`quantize --method gptq` with the default --group-size runs on a 576-wide model."""
    out = tmp_path / "out"
    code = main(["quantize", "--model", str(tiny576), "--method", "gptq", "--out", str(out),
                 *SMALL])
    err = capfd.readouterr().err
    assert code == 0, err
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["group_size"] == 64 and q["bits"] == 4


def test_rules_without_a_group_size_follow_the_cli_group_size(tiny576, tmp_path, isolated):
    from qtapp.cli import build_parser
    from qtapp.commands.quantize import job_from_args

    rules = tmp_path / "rules.json"
    rules.write_text('[{"pattern": "*.mlp.down_proj", "scheme": {"bits": 8}}]')
    args = build_parser().parse_args(["quantize", "--model", str(tiny576), "--method", "rtn",
                                      "--out", str(tmp_path / "o"), "--rules", str(rules),
                                      "--preset", "attn8-ffn4"])
    job = job_from_args(args)
    assert job.scheme.group_size == 64
    assert {r.scheme.group_size for r in job.rules} == {64}
    assert job.scheme_for("model.layers.0.mlp.down_proj").bits == 8
    args.group_size = 32
    assert {r.scheme.group_size for r in job_from_args(args).rules} == {32}
