"""The worker command line: `python -m qtapp.engine.jobs.worker`, or the frozen app's own
executable; the one client that runs it; and its plan mode, which speaks the same event
stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qtapp.cli import build_parser
from qtapp.commands import quantize
from qtapp.engine import events as ev
from qtapp.engine.jobs import client, worker
from qtapp.engine.jobs.worker import worker_command

ROOT = Path(__file__).resolve().parents[2]


def test_python_runs_the_worker_module(monkeypatch):
    monkeypatch.delattr(sys, "frozen", raising=False)
    job = Path("/tmp/job.json")
    assert worker_command(job) == [sys.executable, "-m", "qtapp.engine.jobs.worker", "--job",
                                   str(job)]


def test_frozen_app_runs_itself_in_worker_mode(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/QuantDesk/quantdesk")
    assert worker_command("/tmp/q/job.json") == ["/opt/QuantDesk/quantdesk", "worker", "--job",
                                                 "/tmp/q/job.json"]


def test_frozen_arguments_reach_the_worker_through_the_cli(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    args = build_parser().parse_args(worker_command("/tmp/q/job.json")[1:])
    assert (args.command, args.job) == ("worker", "/tmp/q/job.json")


def test_cli_window_and_plan_probe_share_one_worker_client():
    assert quantize.WorkerClient is client.WorkerClient
    assert client.WorkerClient.__init__.__kwdefaults__["command"] is worker.worker_command
    engine_process = pytest.importorskip("qtapp.gui.engine_process")
    assert engine_process.WorkerClient is client.WorkerClient
    assert engine_process.EngineProcess().command is worker.worker_command


def test_only_the_client_starts_workers():
    """worker_command is called in one place, the client; the window, the command line and
    the plan probe all go through it (issue 19, item 5: the worker was driven three ways)."""
    callers = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "qtapp").rglob("*.py")
                     if "worker_command(" in f.read_text(encoding="utf-8"))
    assert callers == ["qtapp/engine/jobs/client.py", "qtapp/engine/jobs/worker.py"]
    worker_py = (ROOT / "qtapp/engine/jobs/worker.py").read_text(encoding="utf-8")
    assert worker_py.count("worker_command(") == 1  # its definition


def test_plan_mode_answers_a_bad_job_file_with_one_failed_event(tmp_path):
    job = tmp_path / "job.json"
    job.write_text("{not json", encoding="utf-8")
    proc = subprocess.run(worker_command(job, plan=True), check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    (event,) = [ev.decode(line) for line in proc.stdout.splitlines()]
    assert isinstance(event, ev.Failed) and event.kind == "user"
    assert event.message.startswith(f"the job file {job} is invalid")


def test_frozen_style_command_runs_the_worker(tmp_path):
    """`<app> worker --job FILE`, with `python -m qtapp` standing in for the frozen executable:
    the worker answers a bad job file with one `failed` event and exit code 2."""
    job = tmp_path / "job.json"
    job.write_text("{not json", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "qtapp", "worker", "--job", str(job)],
                          check=False, capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 2
    assert [e["type"] for e in events] == ["failed"]
    assert str(job) in events[0]["message"]


@pytest.mark.slow
def test_worker_plan_mode_prints_one_probed_plan(tmp_path, make_tiny_model):
    from qtapp.engine.config import JobSpec, QuantScheme

    folder = make_tiny_model(tmp_path / "tiny", "llama", hidden_size=128,
                             intermediate_size=256)
    job = JobSpec(model=str(folder), method="rtn", out=str(tmp_path / "out"),
                  scheme=QuantScheme(4, 64, True))
    job_file = tmp_path / "job.json"
    job_file.write_text(job.to_json())
    r = subprocess.run(worker_command(job_file, plan=True), capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    # fd 1 carries events alone: the plan, then the final event (nothing was written)
    plan_event, final = [ev.decode(line) for line in r.stdout.splitlines()]
    assert isinstance(plan_event, ev.Plan) and isinstance(final, ev.Result)
    assert final.out == "" and final.seconds > 0
    plan = plan_event.plan
    assert plan["probed"] and plan["block_seconds"] > 0 and plan["fits"]
    assert not (tmp_path / "out").exists()  # planning writes no output
    # the probe's client reads the same plan
    probed = client.plan_in_worker(job)
    assert probed.probed and probed.fits and probed.block_seconds > 0
    assert probed.final_disk == plan["final_disk"]

    job_file.write_text(job.to_json().replace(str(folder), str(tmp_path / "missing")))
    r = subprocess.run(worker_command(job_file, plan=True), capture_output=True, text=True,
                       timeout=600, check=False)
    (failed,) = [ev.decode(line) for line in r.stdout.splitlines()]
    assert r.returncode == 2 and isinstance(failed, ev.Failed) and "missing" in failed.message
