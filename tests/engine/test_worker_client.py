"""The one worker client (qtapp.engine.jobs.client) against the scripted fake worker: the
event stream, exactly one final event whatever the worker does, cancel forwarding and its
kill fallback, the job folder and the partial output, the plan probe, and the command line's
`quantize --worker` on top of it (messages and exit codes)."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from qtapp.commands import quantize
from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec, QuantScheme
from qtapp.engine.errors import UserError
from qtapp.engine.jobs.client import WorkerClient, plan_in_worker
from qtapp.engine.outputs import partial_path
from qtapp.engine.planning.planner import Plan

FAKE_WORKER = Path(__file__).resolve().parents[1] / "gui" / "fake_worker.py"
_spec = importlib.util.spec_from_file_location("fake_worker", FAKE_WORKER)
assert _spec is not None and _spec.loader is not None
fake_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_worker)


def fake(mode: str, *extra: str):
    def command(job_path: str, plan: bool = False) -> list[str]:
        return [sys.executable, str(FAKE_WORKER), "--job", job_path, "--mode", mode, *extra,
                *(["--plan"] if plan else [])]

    return command


@pytest.fixture
def tmp(tmp_path, monkeypatch) -> Path:
    """The temporary folder the client makes its job folders in."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def job(tmp_path) -> JobSpec:
    return JobSpec(model="demo", method="gptq", out=str(tmp_path / "out"),
                   scheme=QuantScheme(4))


def run_all(client: WorkerClient) -> list[ev.Event]:
    client.start()
    return list(client.events())


def test_events_in_order_then_the_workers_own_final_event(job, tmp):
    client = WorkerClient(job, command=fake("ok", "--blocks", "2"))
    seen = run_all(client)
    assert [e.type for e in seen[:2]] == ["started", "log"]
    assert sum(e.type == "layer" for e in seen) == 14
    assert [e.type for e in seen[-2:]] == ["artifact", "result"]
    assert client.ending.from_worker and client.ending.status == "result"
    assert client.ending.final is seen[-1] and client.ending.exit_code == 0
    assert list(tmp.iterdir()) == []  # the job folder is gone


def test_the_job_file_is_the_job(job, tmp):
    script = "import json, sys; print(json.dumps({'out': json.load(open(sys.argv[1]))['out']}))"
    client = WorkerClient(job, command=lambda path: [sys.executable, "-c", script, path])
    seen = run_all(client)
    # a JSON line that is not an event becomes a warning; then the client's own final event
    assert seen[0].type == "log" and seen[0].level == "warning"
    assert seen[0].message == ("the worker wrote a line that is not an event (schema version "
                               f"None, expected 1): {{\"out\": \"{job.out}\"}}")
    assert seen[-1].type == "failed" and "exit code 0" in seen[-1].message


def test_a_killed_worker_ends_in_one_failed_event_and_its_partial_is_removed(job, tmp):
    partial = partial_path(Path(job.out))
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    client = WorkerClient(job, command=fake("crash", "--blocks", "3"), capture_stderr=True)
    seen = run_all(client)
    finals = [e for e in seen if e.type in ev.FINAL_TYPES]
    assert finals == [seen[-1]] and isinstance(seen[-1], ev.Failed)
    assert seen[-1].kind == "internal"
    assert seen[-1].message == (
        "the worker stopped without a result (killed by signal 9 (Killed)); its partial output "
        f"was removed. Nothing was written to {job.out}; start the job again (finished blocks "
        "are resumed from the checkpoint)")
    ending = client.ending
    assert not ending.from_worker and ending.status == "crashed"
    assert ending.signal == signal.SIGKILL and ending.exit_code is None
    assert "MemoryError: boom in block 1" in ending.stderr_tail
    assert not partial.exists() and list(tmp.iterdir()) == []


def test_exit_without_a_final_event_names_the_exit_code(job, tmp):
    client = WorkerClient(job, command=fake("exit", "--blocks", "1"), capture_stderr=True)
    seen = run_all(client)
    assert seen[-1].message.startswith("the worker stopped without a result (exit code 1). "
                                       "Nothing was written")
    assert client.ending.exit_code == 1 and client.ending.stderr_tail == "something went wrong"


def test_a_worker_that_fails_is_not_a_crash(job, tmp):
    client = WorkerClient(job, command=fake("fail"))
    seen = run_all(client)
    assert seen[-1] == client.ending.final and client.ending.status == "failed"
    assert seen[-1].message == "the model folder has no tokenizer; copy it in"
    assert client.ending.from_worker and client.ending.exit_code == 1


def test_nothing_after_the_final_event_counts(job, tmp):
    seen = run_all(WorkerClient(job, command=fake("after", "--blocks", "1")))
    assert seen[-1].type == "result"
    assert not any(getattr(e, "message", "") == "written after the result" for e in seen)


def test_cancel_reaches_the_worker_with_its_reason(job, tmp):
    client = WorkerClient(job, command=fake("cooperative", "--blocks", "1"), kill_after_s=30)
    client.start()
    seen = []
    t0 = None
    for event in client.events():
        seen.append(event)
        if event.type == "progress" and t0 is None:
            t0 = time.monotonic()
            client.cancel("SIGTERM")  # written as `cancel SIGTERM`
    assert time.monotonic() - t0 < 10
    assert client.ending.from_worker and client.ending.status == "cancelled"
    assert client.ending.cancel_reason == "SIGTERM" and client.ending.exit_code == 3
    assert seen[-1].message == "cancelled by the user; no output was written"


def test_a_worker_that_ignores_cancel_is_killed(job, tmp):
    client = WorkerClient(job, command=fake("hang", "--blocks", "1"), term_after_s=0.5,
                          kill_after_s=1.0)
    client.start()
    t0 = None
    for event in client.events():
        if event.type == "started":
            t0 = time.monotonic()
            client.cancel("SIGHUP")
    assert 1.4 <= time.monotonic() - t0 < 10  # SIGTERM is ignored: only the kill ends it
    final = client.ending.final
    assert isinstance(final, ev.Cancelled) and not client.ending.from_worker
    assert final.message == ("cancelled by SIGHUP; the worker did not stop within 2 s and was "
                             "ended; no output was written")
    assert client.ending.signal == signal.SIGKILL and list(tmp.iterdir()) == []


def test_timeout_kills_the_worker(job, tmp):
    client = WorkerClient(job, command=fake("hang", "--blocks", "1"), timeout_s=1)
    seen = run_all(client)
    assert seen[-1] == ev.Failed(message="the worker did not finish within 1 s and was ended",
                                 kind="internal", t=seen[-1].t)
    assert client.ending.status == "failed" and client.ending.timed_out


def test_a_worker_that_cannot_start(job, tmp):
    client = WorkerClient(job, command=lambda path: ["/nonexistent/quantdesk-worker", path])
    (failed,) = run_all(client)
    assert failed.message == ("could not start the engine worker (/nonexistent/quantdesk-"
                              "worker): No such file or directory")
    assert client.ending.start_error and client.ending.exit_code is None
    assert list(tmp.iterdir()) == []


def test_a_reader_that_stops_early_ends_the_worker(job, tmp):
    client = WorkerClient(job, command=fake("hang", "--blocks", "1"))
    client.start()
    events = client.events()
    assert next(events).type == "started"
    events.close()
    assert client.process.returncode is not None
    assert list(tmp.iterdir()) == []


def test_job_folders_of_killed_clients_are_swept_on_start(job, tmp):
    dead = tmp / f"quantdesk-job-{_dead_pid()}-x"
    dead.mkdir()
    run_all(WorkerClient(job, command=fake("ok", "--blocks", "1")))
    assert list(tmp.iterdir()) == []


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- the plan probe


def test_plan_probe_reads_the_plan_event(job, tmp):
    plan = plan_in_worker(job, command=fake("ok"))
    assert plan == Plan.from_dict(fake_worker.PLAN) and plan.probed and plan.fits
    assert list(tmp.iterdir()) == []


def test_plan_probe_failure_is_the_workers_message(job, tmp):
    with pytest.raises(UserError, match="^the model folder has no tokenizer; copy it in$"):
        plan_in_worker(job, command=fake("fail"))


def test_plan_probe_crash_says_so_with_the_last_stderr_line(job, tmp):
    with pytest.raises(UserError) as err:
        plan_in_worker(job, command=fake("exit", "--blocks", "1"))
    assert str(err.value) == ("the worker stopped without a plan (exit code 1); its last "
                              "words: something went wrong")


def test_plan_probe_stops_when_asked(job, tmp):
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(UserError, match="^cancelled by the user; the worker did not stop"):
        plan_in_worker(job, command=fake("hang", "--blocks", "1"), stop=stop)
    assert time.monotonic() - t0 < 10
    assert list(tmp.iterdir()) == []


# ----------------------------------------------------------------------------- the command line


@pytest.fixture
def cli_worker(monkeypatch):
    """quantize._run_in_worker with the fake worker in `mode`; returns (exit code, events)."""
    def run(job: JobSpec, mode: str, *extra: str, stop_with: str | None = None):
        def client(j, **kw):
            return WorkerClient(j, command=fake(mode, *extra), **kw)

        monkeypatch.setattr(quantize, "WorkerClient", client)
        seen: list[ev.Event] = []

        def render(e: ev.Event) -> None:
            seen.append(e)
            if stop_with and e.type == "started":
                os.kill(os.getpid(), getattr(signal, stop_with))

        return quantize._run_in_worker(job, render), seen

    return run


def test_cli_exit_codes_of_a_result_a_failure_and_a_crash(job, tmp, cli_worker):
    assert cli_worker(job, "ok", "--blocks", "1")[0] == 0
    code, seen = cli_worker(job, "fail")
    assert code == 1 and seen[-1].kind == "user"
    code, seen = cli_worker(job, "crash", "--blocks", "2")
    assert code == 1 and seen[-1].message.startswith(
        "the worker stopped without a result (killed by signal 9 (Killed)). Nothing was "
        f"written to {job.out}")


def test_cli_stop_signal_cancels_the_worker(job, tmp, cli_worker):
    before = signal.getsignal(signal.SIGTERM)
    code, seen = cli_worker(job, "cooperative", "--blocks", "1", stop_with="SIGTERM")
    assert code == 128 + signal.SIGTERM
    assert seen[-1] == ev.Cancelled(t=seen[-1].t)  # the worker's own
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_cli_kills_a_worker_that_does_not_stop(job, tmp, cli_worker, monkeypatch):
    monkeypatch.setattr(quantize, "CANCEL_GRACE_S", 1.0)
    code, seen = cli_worker(job, "hang", "--blocks", "1", stop_with="SIGHUP")
    assert code == 128 + signal.SIGHUP
    assert seen[-1].message == ("cancelled by SIGHUP; the worker did not stop within 1 s and "
                                "was ended; no output was written")
    assert list(tmp.iterdir()) == []
