"""One time estimate (issue 22, item 6): the method page (plan_job in the window's process),
the worker's log (the job's own plan) and `quantize --dry-run` (another process, two blocks
timed) show the same planner figure for the same job, and the job records it beside the
measured time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qtapp.engine import events as ev
from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme
from qtapp.engine.units import format_duration

ROOT = Path(__file__).resolve().parents[2]


def _wall_time(table: str) -> str:
    m = re.search(r"wall time\s+(.+)", table)
    assert m, table
    return m.group(1).strip()


@pytest.mark.slow
def test_window_worker_log_and_dry_run_show_one_figure(tiny_llama_dir, tmp_path,
                                                       monkeypatch) -> None:
    from qtapp.engine.jobs.job import run_job
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.planning import planner

    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTDESK_CACHE", str(cache))
    out = tmp_path / "out"
    job = JobSpec(model=str(tiny_llama_dir), method="gptq", out=str(out), evaluate=False,
                  scheme=QuantScheme(4, 64, True),
                  calibration=CalibrationSpec(samples=4, seq_len=32))
    info = resolve_model(job.model)

    # before any probe: the formulas at the machine's rate, measured once and kept, so that
    # another process (here: the rate forgotten by this one) plans the same figure
    first = planner.plan_job(job, info)
    monkeypatch.setattr(planner, "_best_flops", 0.0)
    assert planner.plan_job(job, info).seconds == first.seconds
    assert not first.probed

    # --dry-run in its own process times two blocks; the window then shows that figure
    env = dict(os.environ, PYTHONPATH=str(ROOT), QUANTDESK_CACHE=str(cache),
               HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "qtapp", "quantize", "--model", job.model,
                        "--method", "gptq", "--out", str(out), "--group-size", "64", "--samples",
                        "4", "--seq-len", "32", "--no-eval", "--dry-run"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert "timed on its first blocks" in r.stderr
    dry_run = _wall_time(r.stderr)
    window = planner.plan_job(job, info)
    assert window.probed and format_duration(window.seconds) == dry_run

    # the worker's log: the job's own plan, the same figure, kept beside the measured time
    seen: list[ev.Event] = []
    result = run_job(job, seen.append, lambda: False)
    logged = next(e.message for e in seen if isinstance(e, ev.Log)
                  and e.message.startswith("plan for "))
    assert _wall_time(logged) == dry_run
    predicted = result.resources.predicted
    assert predicted["seconds"] == window.seconds and predicted["probed"] is True
    assert result.resources.measured.seconds == result.seconds > 0
