"""Size budgets: size strings, the knapsack against brute force, written sizes against the
budget (real files of tiny random models), impossible budgets refused before any work."""

from __future__ import annotations

import dataclasses
import itertools
import random
from pathlib import Path

import pytest
import torch

from qtapp.engine.config import JobSpec, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.jobs import job as job_module
from qtapp.engine.jobs.job import run_job
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.planning.allocate import budget_model, rules_for, solve_mckp
from qtapp.engine.planning.budget import size_model
from qtapp.engine.results import JobResult
from qtapp.engine.units import parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("90MiB", 90 * 2**20), ("90 MiB", 90 * 2**20), ("1.5GB", 1_500_000_000),
    ("700KB", 700_000), ("2GiB", 2 * 2**30), ("4096", 4096), ("10B", 10), ("3kib", 3072),
    ("0.5 MB", 500_000),
])
def test_parse_size_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["ninety", "90XB", "-5MB", "0", "MB", "90 M iB"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(UserError, match="not a size"):
        parse_size(text)


def _brute(costs, values, capacity):
    best = None
    for combo in itertools.product(*[range(len(c)) for c in costs]):
        if sum(c[j] for c, j in zip(costs, combo)) <= capacity:
            v = sum(val[j] for val, j in zip(values, combo))
            best = v if best is None else min(best, v)
    return best


def test_knapsack_is_optimal_on_a_non_convex_instance() -> None:
    # Greedy by error per byte / the Lagrangian walk the convex hull: item 0's middle option
    # (cost 5) is off the hull, yet the optimum at capacity 10 takes it twice.
    costs = [[1, 5, 9], [1, 5, 9]]
    values = [[10.0, 2.0, 0.0], [10.0, 2.0, 0.0]]
    choice = solve_mckp(costs, values, 10)
    assert choice == [1, 1]
    assert sum(v[j] for v, j in zip(values, choice)) == _brute(costs, values, 10) == 4.0


def test_knapsack_matches_brute_force_on_random_instances() -> None:
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 5)
        costs = [[rng.randint(1, 30) for _ in range(rng.randint(1, 4))] for _ in range(n)]
        values = [[rng.uniform(0, 10) for _ in c] for c in costs]
        low, high = sum(map(min, costs)), sum(map(max, costs))
        capacity = rng.randint(low, high)
        choice = solve_mckp(costs, values, capacity)
        used = sum(c[j] for c, j in zip(costs, choice))
        got = sum(v[j] for v, j in zip(values, choice))
        assert used <= capacity
        assert got == pytest.approx(_brute(costs, values, capacity), abs=1e-9)


def test_knapsack_with_coarse_units_stays_within_capacity() -> None:
    rng = random.Random(1)
    costs = [[rng.randint(10_000, 2_000_000) for _ in range(5)] for _ in range(60)]
    values = [[rng.uniform(0, 1) for _ in c] for c in costs]
    capacity = (sum(map(min, costs)) + sum(map(max, costs))) // 2
    choice = solve_mckp(costs, values, capacity, max_cells=1000)
    used = sum(c[j] for c, j in zip(costs, choice))
    assert capacity - 200_000 < used <= capacity


def test_knapsack_refuses_impossible_capacity() -> None:
    with pytest.raises(ValueError):
        solve_mckp([[5, 9], [4]], [[1.0, 0.0], [0.0]], 8)


# ---------------------------------------------------------------- real files, tiny models

@pytest.fixture(scope="module")
def tiny128(tmp_path_factory, make_tiny_model) -> Path:
    """2 blocks of (128, 256) linears: every candidate width fits the formats at group 64."""
    return make_tiny_model(tmp_path_factory.mktemp("alloc") / "tiny128", "llama",
                           hidden_size=128, intermediate_size=256, num_attention_heads=4,
                           num_key_value_heads=2)


TOKENS = torch.randint(3, 259, (4, 64), generator=torch.Generator().manual_seed(0))


def _written(out: Path, result: JobResult) -> int:
    if result.gguf is not None:
        return (out / result.gguf.file).stat().st_size
    return sum(p.stat().st_size for p in out.iterdir() if p.name != "README.md")


def _base(model: Path, method: str, out: Path, fmt: str = "auto") -> JobSpec:
    return JobSpec(model=str(model), method=method, out=str(out), evaluate=False,
                   scheme=QuantScheme(4, 64, True), export_format=fmt)


@pytest.mark.parametrize(("method", "fmt"), [("rtn", "auto"), ("gptq", "gptq")])
def test_allocation_meets_the_budget_in_the_written_folder(tiny128, tmp_path, method, fmt):
    base = _base(tiny128, method, tmp_path / "x", fmt)
    model = size_model(base, resolve_model(str(tiny128)))
    for frac in (0.0, 0.4):
        budget = int(model.smallest() + frac * (model.largest() - model.smallest()))
        job = dataclasses.replace(base, target_bytes=budget, out=str(tmp_path / f"o{frac}"))
        s = run_job(job, lambda e: None, lambda: False, tokens=TOKENS)
        real = _written(Path(s.out), s)
        assert real <= budget
        # the prediction is an upper bound, tight to the config.json allowance
        assert s.plan["predicted_bytes"] <= budget
        assert 0 <= s.plan["predicted_bytes"] - real < 16 * 1024
        if frac > 0:  # a real budget is used, not left idle
            largest_step = max(max(m.nbytes) - min(m.nbytes) for m in model.modules)
            assert real > budget - largest_step - 16 * 1024


@pytest.mark.slow
def test_gguf_allocation_meets_the_budget_in_the_written_file(tmp_path, make_tiny_model,
                                                              demo_dir):
    from gguf_helpers import build_model256

    model_dir = build_model256(tmp_path / "m", make_tiny_model, demo_dir, n_layer=2)
    base = _base(model_dir, "gguf", tmp_path / "x")
    model = size_model(base, resolve_model(str(model_dir)))
    assert [c.key for c in model.modules[0].options] == [
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16"]
    for frac in (0.0, 0.4):
        budget = int(model.smallest() + frac * (model.largest() - model.smallest()))
        job = dataclasses.replace(base, target_bytes=budget, out=str(tmp_path / f"o{frac}"))
        s = run_job(job, lambda e: None, lambda: False,
                    tokens=torch.randint(3, 1000, (4, 64),
                                         generator=torch.Generator().manual_seed(0)))
        real = _written(Path(s.out), s)
        assert real <= s.plan["predicted_bytes"] <= budget
        assert s.plan["predicted_bytes"] - real < 2048  # GGUF headers are computed exactly
        types = {t for t in s.plan["schemes"]}
        assert types <= {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16"}
        assert s.gguf.overrides and len(s.gguf.overrides) == len(model.modules)


def test_impossible_budget_is_refused_before_any_work(tiny128, tmp_path, monkeypatch):
    base = _base(tiny128, "gptq", tmp_path / "out")
    smallest = size_model(base, resolve_model(str(tiny128))).smallest()

    def no_calibration(*_a, **_k):
        raise AssertionError("calibration ran for an impossible budget")

    monkeypatch.setattr(job_module, "calibration_tokens", no_calibration)
    job = dataclasses.replace(base, target_bytes=smallest - 1)
    with pytest.raises(UserError, match=f"{smallest:,} bytes") as e:
        run_job(job, lambda e: None, lambda: False)
    assert "smallest file" in str(e.value)
    assert not (tmp_path / "out").exists()
    # bits per weight: the same check, in the same terms
    info = resolve_model(str(tiny128))
    with pytest.raises(UserError, match="--target-bpw 1"):
        budget_model(dataclasses.replace(base, target_bytes=0, target_bpw=1.0), info)


def test_plan_rules_reproduce_the_choice(tiny128, tmp_path):
    base = _base(tiny128, "rtn", tmp_path / "x", "gptq")
    model = size_model(base, resolve_model(str(tiny128)))
    keys = ["W2", "W3", "W4", "W8", "16-bit"]
    choice = {m.name: keys[i % len(keys)] for i, m in enumerate(model.modules)}
    planned = rules_for(dataclasses.replace(base, target_bytes=10**9), model, choice)
    assert planned.target_bytes == 0 and planned.export_format == "gptq"
    for name, key in choice.items():
        scheme = planned.scheme_for(name)
        assert (scheme is None) if key == "16-bit" else (f"W{scheme.bits}" == key)
    again = JobSpec.from_json(planned.to_json())
    assert all(again.scheme_for(n) == planned.scheme_for(n) for n in choice)


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_the_planner_sizes_a_job_as_the_budget_does(tiny128, tmp_path, fmt):
    """One size model: a job carrying an allocation as rules is planned at exactly the size
    the budget's SizeModel gives that choice; a budgeted job not yet allocated at its
    budget."""
    from qtapp.engine.planning.planner import final_bytes

    base = _base(tiny128, "rtn", tmp_path / "x", fmt)
    info = resolve_model(str(tiny128))
    model = size_model(base, info)
    choice = {m.name: m.options[i % len(m.options)].key for i, m in enumerate(model.modules)}
    assert len(set(choice.values())) == 5  # W2, W3, W4, W8 and 16-bit all appear
    planned = rules_for(dataclasses.replace(base, target_bytes=10**9), model, choice)
    assert final_bytes(planned, info) == model.total(choice)
    budget = (model.smallest() + model.largest()) // 2
    assert final_bytes(dataclasses.replace(base, target_bytes=budget), info) == budget


def test_cli_refuses_an_impossible_target_and_dry_runs_a_plan(tiny128, tmp_path, capsys):
    from qtapp.cli import main

    args = ["quantize", "--model", str(tiny128), "--method", "rtn", "--group-size", "64",
            "--out", str(tmp_path / "o"), "--samples", "2", "--seq-len", "32"]
    assert main([*args, "--target-size", "10KiB"]) == 2
    err = capsys.readouterr().err
    assert "smallest file" in err and "10.0 KiB" in err
    smallest = size_model(_base(tiny128, "rtn", tmp_path / "o"), resolve_model(str(tiny128)))
    assert f"{smallest.smallest():,} bytes" in err
    assert parse_size(err.split("Ask for at least ")[1].rstrip(".\n")) >= smallest.smallest()
    assert main([*args, "--target-bpw", "12", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "predicted file size" in out.err  # the plan, shown before anything runs
    planned = JobSpec.from_json(out.out)
    assert planned.rules and planned.target_bpw == 0
    info = resolve_model(str(tiny128))
    assert size_model(planned, info).total(
        {m.name: "16-bit" if planned.scheme_for(m.name) is None
         else f"W{planned.scheme_for(m.name).bits}"
         for m in size_model(planned, info).modules}) <= 12 * info.n_params / 8
    assert not (tmp_path / "o").exists()


def test_sensitivity_orders_candidates_and_weights_by_the_fisher(tiny128, tmp_path):
    from qtapp.engine.planning.sensitivity import measure_profile
    from qtapp.engine.quant.streaming import pick_device

    job = _base(tiny128, "rtn", tmp_path / "x", "gptq")
    info = resolve_model(str(tiny128))
    slots = size_model(job, info).modules
    profile = measure_profile(job, info, TOKENS, slots, lambda e: None, lambda: False,
                              pick_device("cpu"))
    assert set(profile.modules) == {s.name for s in slots}
    assert len(profile.fisher) == info.n_layers and all(f > 0 for f in profile.fisher)
    for m in profile.modules.values():
        e = m.error
        assert e["16-bit"] == 0 < e["W8"] < e["W4"] < e["W3"] < e["W2"]
        assert m.gain > 0 and m.fisher_gain > 0
        assert m.degradation("W2") == pytest.approx(m.fisher_gain * e["W2"])
