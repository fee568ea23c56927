"""Faults during a job on the tiny model: cancel, SIGKILL of the worker, disk full, out of memory,
a crashed worker under the window's EngineProcess, two jobs on one output, SIGTERM / SIGHUP /
SIGKILL to the command (with and without --worker), cancel during the quality gate.

After each: the source model is byte-identical, no output folder and no hidden partial folder is
left, the resumable checkpoint is valid (every block file complete, and the next run resumes
from it and gives the same bytes as an uninterrupted run) or absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from digests import tree_digest

from qtapp.engine import events as ev
from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme
from qtapp.engine.errors import Busy, Cancelled, UserError
from qtapp.engine.jobs.job import run_job
from qtapp.engine.outputs import lock_output, partial_path, sweep_job_dirs
from qtapp.engine.quant.qstore import safetensors_complete

ROOT = Path(__file__).resolve().parents[2]
CALIB = CalibrationSpec(samples=4, seq_len=32)



@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    c = tmp_path / "cache"
    monkeypatch.setenv("QUANTDESK_CACHE", str(c))
    return c


@pytest.fixture(scope="module")
def source(tiny_llama_dir, tmp_path_factory) -> Path:
    """One copy for the module; every test checks that it leaves it byte-identical."""
    dst = tmp_path_factory.mktemp("faults") / "src"
    shutil.copytree(tiny_llama_dir, dst)
    return dst


def job_for(source: Path, out: Path, **kw) -> JobSpec:
    base = {"model": str(source), "method": "rtn", "out": str(out), "calibration": CALIB,
            "scheme": QuantScheme(4, 64, True), "evaluate": False}
    base.update(kw)
    return JobSpec(**base)


def checkpoint_blocks(cache: Path) -> list[int]:
    """Blocks in the job checkpoints; every block file must be complete (asserted)."""
    blocks = []
    for f in sorted((cache / "jobs").glob("*/blocks/block-*.safetensors")):
        assert safetensors_complete(f), f
        blocks.append(int(f.stem.split("-")[1]))
    return blocks


def assert_nothing_lost(source: Path, digest: str, out: Path) -> None:
    assert tree_digest(source) == digest
    assert not out.exists()
    assert not partial_path(out).exists()
    assert not list(out.parent.glob(f".{out.name}.*"))


def run(job: JobSpec, cancel_on=None, seen: list[ev.Event] | None = None,
        ) -> tuple[dict, list[ev.Event]]:
    """(the job's result, its events); `seen` collects them as they come (also when the job
    raises)."""
    seen = [] if seen is None else seen
    flag = [False]

    def emit(e: ev.Event) -> None:
        seen.append(e)
        if cancel_on is not None and cancel_on(e, seen):
            flag[0] = True

    return run_job(job, emit, lambda: flag[0]), seen


def n_layers(seen: list[ev.Event]) -> int:
    return sum(isinstance(e, ev.Layer) for e in seen)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted run (its checkpoint is removed on success)."""
    tmp = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTDESK_CACHE", str(tmp / "cache"))
        run(job_for(source, tmp / "out", resume=False))
    assert not checkpoint_blocks(tmp / "cache")
    return {p.name: p.read_bytes() for p in (tmp / "out").iterdir() if p.name != "README.md"}


def assert_same_output(out: Path, reference: dict[str, bytes]) -> None:
    got = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "README.md"}
    assert got.keys() == reference.keys()
    assert all(got[k] == reference[k] for k in got), [k for k in got if got[k] != reference[k]]


# ----------------------------------------------------------------------------- cancel

CANCEL_POINTS = {
    "at start": lambda e, seen: isinstance(e, ev.Started),
    "after calibration": lambda e, seen: isinstance(e, ev.Log) and "calibration:" in e.message,
    "first module of block 0": lambda e, seen: isinstance(e, ev.Layer),
    "inside block 1": lambda e, seen: n_layers(seen) == 8,
    "during export": lambda e, seen: isinstance(e, ev.Progress) and e.stage == "export",
}


@pytest.mark.parametrize("point", list(CANCEL_POINTS))
def test_cancel_at_any_point_loses_nothing_and_resumes(point, source, tmp_path, cache, reference):
    digest = tree_digest(source)
    out = tmp_path / "out"
    job = job_for(source, out)
    first: list[ev.Event] = []
    with pytest.raises(Cancelled):
        run(job, CANCEL_POINTS[point], first)
    assert_nothing_lost(source, digest, out)
    saved = checkpoint_blocks(cache)
    assert saved == {"at start": [], "after calibration": [], "first module of block 0": [],
                     "inside block 1": [0], "during export": [0, 1]}[point]
    _, seen = run(job)
    logs = [e.message for e in seen if isinstance(e, ev.Log)]
    if saved:
        assert any(f"resuming: {len(saved)} of 2 blocks" in m for m in logs), logs
    assert n_layers(seen) == 7 * 2  # the resumed blocks' too, for the chart

    def errors(events: list[ev.Event]) -> dict[tuple[int, str], float]:
        return {(e.block, e.module): e.rel_error for e in events
                if isinstance(e, ev.Layer) and e.block in saved}

    assert errors(seen) == errors(first)  # as recorded in the checkpoint
    assert len(errors(first)) == 7 * len(saved)
    assert_same_output(out, reference)
    assert tree_digest(source) == digest
    assert not checkpoint_blocks(cache)  # removed after the successful run


# ----------------------------------------------------------------------------- SIGKILL


def cli_worker(source: Path, out: Path, cache: Path, evaluate: bool, *, worker: bool = True,
               json: bool = True, tmp: Path | None = None) -> subprocess.Popen:
    """`python -m qtapp quantize` of job_for's job (with --worker and --json unless told
    otherwise; `tmp` is its temporary folder, TMPDIR)."""
    args = [sys.executable, "-m", "qtapp", "quantize", "--model",
            str(source), "--method", "rtn", "--bits", "4", "--group-size", "64",
            "--samples", "4", "--seq-len", "32", "--out", str(out)]
    args += ["--worker"] * worker + ["--json"] * json
    if not evaluate:
        args.append("--no-eval")
    env = dict(os.environ, PYTHONPATH=str(ROOT), QUANTDESK_CACHE=str(cache))
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)


KILL_POINTS = {
    "first module of block 0": (False, lambda e, n: e.type == "layer"),
    "inside block 1": (False, lambda e, n: n == 8),
    "while evaluating (partial output on disk)": (
        True, lambda e, n: e.type == "progress" and e.stage == "evaluate"),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_of_the_worker_loses_nothing_and_resumes(point, source, tmp_path, cache,
                                                         reference):
    evaluate, at = KILL_POINTS[point]
    digest = tree_digest(source)
    out = tmp_path / "out"
    proc = cli_worker(source, out, cache, evaluate)
    assert proc.stdout is not None
    lines, layers, killed = [], 0, None
    for line in proc.stdout:
        lines.append(line)
        event = ev.decode(line)
        layers += event.type == "layer"
        if killed is None and at(event, layers):
            (child,) = psutil.Process(proc.pid).children()
            if evaluate:
                assert partial_path(out).is_dir()  # the export is on disk, not yet renamed
            os.kill(child.pid, signal.SIGKILL)
            killed = child
    code = proc.wait(timeout=60)
    assert killed is not None and code == 1
    last = ev.decode(lines[-1])
    assert last.type == "failed"
    assert "the worker stopped without a result (killed by signal 9 (Killed))" in last.message
    assert f"Nothing was written to {out}" in last.message
    assert_nothing_lost(source, digest, out)
    saved = checkpoint_blocks(cache)
    assert set(saved) <= {0, 1}
    _, seen = run(job_for(source, out))  # the same job again, in this process
    logs = [e.message for e in seen if isinstance(e, ev.Log)]
    if saved:
        assert any(f"resuming: {len(saved)} of 2 blocks" in m for m in logs), logs
    assert n_layers(seen) == 7 * 2  # the resumed blocks' recorded errors too, for the chart
    assert_same_output(out, reference)


# ----------------------------------------------------------------------------- disk full


@pytest.mark.slow
def test_disk_full_on_a_small_tmpfs(source, tmp_path, cache, reference):
    """A real full disk: the output goes to a 64 KiB tmpfs (mounted in a user namespace)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not available")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=64k none {tmp_path}"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode()[-200:]}")
    digest = tree_digest(source)
    small = tmp_path / "small"
    small.mkdir()
    out = small / "out"
    quantize = (f"{sys.executable} -m qtapp quantize --model {source} --method rtn --bits 4 "
                f"--group-size 64 --samples 4 --seq-len 32 --no-eval --out {out}")
    # first the plan refuses (the disk is too small); with --ignore-plan the write runs into
    # the full disk for real
    cmd = (f"mount -t tmpfs -o size=64k none {small} && {quantize}; echo planned=$?; "
           f"{quantize} --ignore-plan; echo rc=$?; echo left:; ls -A {small}")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, check=False,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), QUANTDESK_CACHE=str(cache)))
    assert "planned=2" in r.stdout and "rc=1" in r.stdout, r.stdout + r.stderr
    assert "does not fit" in r.stderr and "--ignore-plan" in r.stderr
    assert r.stdout.split("left:")[1].strip() == ""  # nothing left on the full disk
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error")]
    assert "The disk is full" in line and "No space left on device" in line
    assert f"output folder {small}" in line and f"Nothing was kept in {out}" in line
    assert tree_digest(source) == digest
    assert checkpoint_blocks(cache) == [0, 1]  # the quantized blocks survive the failure
    _, seen = run(job_for(source, tmp_path / "retry"))
    assert any("resuming: 2 of 2 blocks" in e.message for e in seen if isinstance(e, ev.Log))
    assert_same_output(tmp_path / "retry", reference)


def test_disk_full_while_exporting(source, tmp_path, cache, reference, monkeypatch):
    """Without a tmpfs: the export fails with ENOSPC after writing its files."""
    from qtapp.engine import export

    real = export.export_checkpoint

    def full(fmt, src, store, job, partial):
        real(fmt, src, store, job, partial)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "export_checkpoint", full)
    digest = tree_digest(source)
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        run(job_for(source, out))
    msg = str(err.value)
    assert msg.startswith("The disk is full: writing the job's files failed ([Errno 28] No "
                          "space left on device)")
    assert f"output folder {tmp_path}" in msg and "free space" in msg.lower()
    assert_nothing_lost(source, digest, out)
    assert checkpoint_blocks(cache) == [0, 1]
    monkeypatch.setattr(export, "export_checkpoint", real)
    run(job_for(source, out))
    assert_same_output(out, reference)


def test_disk_full_while_checkpointing(source, tmp_path, cache, reference, monkeypatch):
    """The cache disk fills while block 1 is saved: block 0 stays valid, no temp file stays."""
    from qtapp.engine.quant import qstore

    real = qstore.save_file
    calls = [0]

    def full(tensors, filename, metadata=None):
        calls[0] += 1
        if calls[0] == 2:
            Path(filename).write_bytes(b"\0" * 100)  # a torn write, then the error
            raise RuntimeError("Error while serializing: I/O error: No space left on device "
                               "(os error 28)")  # what safetensors' Rust writer raises
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(qstore, "save_file", full)
    digest = tree_digest(source)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="The disk is full"):
        run(job_for(source, out))
    assert_nothing_lost(source, digest, out)
    assert checkpoint_blocks(cache) == [0]
    assert not list((cache / "jobs").glob("*/blocks/.*tmp*"))
    monkeypatch.setattr(qstore, "save_file", real)
    _, seen = run(job_for(source, out))
    # block 0 comes from the checkpoint: its 7 recorded layer errors are sent again (for the
    # chart) with the seconds they took in the first run, and only block 1 is quantized anew
    layers = [e for e in seen if isinstance(e, ev.Layer)]
    assert [e.block for e in layers] == [0] * 7 + [1] * 7
    assert_same_output(out, reference)


# ----------------------------------------------------------------------------- memory


def test_out_of_memory_is_predicted_and_refused_before_starting(source, tmp_path, cache):
    digest = tree_digest(source)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "qtapp", "quantize", "--model", str(source),
            "--method", "gptq", "--group-size", "64", "--samples", "100000",
            "--seq-len", "32768", "--out", str(out), "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), QUANTDESK_CACHE=str(cache))
    # the plan refuses first, with the numbers and what to change
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120,
                       check=False, env=env)
    assert r.returncode == 2
    assert "does not fit" in r.stderr and "TiB of RAM" in r.stderr
    assert "--ignore-plan" in r.stderr
    assert_nothing_lost(source, digest, out)
    # the job runner makes the same check (here the worker, as the window starts it): it
    # refuses before `started`, in the plan's words. --ignore-plan / the window's Start
    # anyway (JobSpec.ignore_plan) lifts both; not run here, the job would really start.
    job = job_for(source, out, method="gptq",
                  calibration=CalibrationSpec(samples=100000, seq_len=32768))
    spec = tmp_path / "job.json"
    spec.write_text(job.to_json(), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "qtapp.engine.jobs.worker", "--job", str(spec)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
                       env=env)
    assert r.returncode == 1, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert [e["type"] for e in events] == ["failed"]  # refused before `started`
    msg = events[0]["message"]
    assert re.search(r"the job does not fit on this machine \(needs [\d.]+ TiB of RAM; "
                     r"[\d.]+ GiB of [\d.]+ GiB are usable\)", msg), msg
    assert "--ignore-plan" in msg
    assert_nothing_lost(source, digest, out)
    # no job or checkpoint folder; the cache holds at most the machine's measured rate, which
    # every plan shares (planning/planner.py: one time estimate)
    assert not cache.exists() or sorted(p.name for p in cache.iterdir()) == ["timing.json"]


def test_memory_check_uses_what_is_available_now(source, tmp_path, cache, monkeypatch):
    """The plan's RAM limit is 80 % of the total, or what is available now when less."""
    from collections import namedtuple

    vm = namedtuple("vm", "total available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm(64 * 2**30, 100 * 2**20))
    with pytest.raises(UserError, match=r"needs [\d.]+ MiB of RAM; 100\.0 MiB of 64\.00 GiB "
                       "are usable"):
        run(job_for(source, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # overriding the plan lifts the check: the job runs
    result, seen = run(job_for(source, tmp_path / "out", ignore_plan=True))
    assert Path(result.out).is_dir() and seen[0].type == "started"


# ----------------------------------------------------------------------------- the window


@pytest.mark.slow
def test_window_engine_shows_a_killed_worker_and_starts_again(qtbot, source, tmp_path, cache,
                                                               reference):
    from qtapp.gui.engine_process import EngineProcess

    digest = tree_digest(source)
    out = tmp_path / "out"
    job = job_for(source, out, evaluate=True)
    engine = EngineProcess()
    evaluating: list[ev.Event] = []
    engine.progress.connect(lambda e: evaluating.append(e) if e.stage == "evaluate" else None)
    with qtbot.waitSignal(engine.finished, timeout=120_000) as blocker:
        engine.start(job)
        qtbot.waitUntil(lambda: bool(evaluating), timeout=100_000)
        assert partial_path(out).is_dir()
        engine.process.kill()
    outcome = blocker.args[0]
    assert outcome.status == "crashed"
    assert "The engine worker stopped unexpectedly (it was killed or crashed" in outcome.message
    assert "You can start the job again" in outcome.message
    assert_nothing_lost(source, digest, out)
    assert checkpoint_blocks(cache) == [0, 1]
    with qtbot.waitSignal(engine.finished, timeout=120_000) as blocker:
        engine.start(job_for(source, out))
    assert blocker.args[0].status == "result", blocker.args[0]
    assert_same_output(out, reference)


# ----------------------------------------------------------------------------- two jobs, one output


def test_a_job_on_a_locked_output_is_refused_with_exit_code_2(source, tmp_path, cache, capfd):
    """The output's lock held by another open file, as another process would hold it."""
    from qtapp.cli import main

    digest = tree_digest(source)
    out = tmp_path / "out"
    with lock_output(out):
        with pytest.raises(Busy) as err:
            run(job_for(source, out))
        assert str(err.value) == (f"another job is writing {out} (process {os.getpid()}); wait "
                                  "for it to finish or choose another output folder")
        capfd.readouterr()
        code = main(["quantize", "--model", str(source), "--method", "rtn", "--bits", "4",
                     "--group-size", "64", "--samples", "4", "--seq-len", "32", "--no-eval",
                     "--out", str(out)])
        lines = [x for x in capfd.readouterr().err.splitlines() if "error" in x]
    assert code == 2
    assert lines == [(f"error: another job is writing {out} (process {os.getpid()}); wait for "
                     "it to finish or choose another output folder")]
    assert_nothing_lost(source, digest, out)
    assert checkpoint_blocks(cache) == []
    assert not list(tmp_path.glob(".*"))  # the lock file went with its holder


@pytest.mark.slow
def test_two_processes_on_one_output(source, tmp_path, cache, reference):
    """The first job is frozen (SIGSTOP) while it quantizes, holding its output and its
    checkpoint; a second job on the same output (in-process) and a third with the same
    settings on another output (--worker) are refused with exit code 2, and the first then
    finishes with exactly its own files."""
    out, other = tmp_path / "out", tmp_path / "other"
    first = cli_worker(source, out, cache, evaluate=False, worker=False)
    assert first.stdout is not None
    for line in first.stdout:
        if ev.decode(line).type == "layer":
            break
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = cli_worker(source, out, cache, evaluate=False, worker=False, json=False)
        _, second_err = second.communicate(timeout=120)
        third = cli_worker(source, other, cache, evaluate=False, json=False)
        _, third_err = third.communicate(timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    rest, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert ev.decode(rest.splitlines()[-1]).type == "result"
    assert second.returncode == 2, second_err
    assert [x for x in second_err.splitlines() if "error" in x] == [
        (f"error: another job is writing {out} (process {first.pid}); wait for it to finish or "
        "choose another output folder")]
    assert third.returncode == 2, third_err
    (line,) = [x for x in third_err.splitlines() if "error" in x]
    assert line.startswith(f"error: another job is writing the checkpoint {cache / 'jobs'}")
    assert "(the same model, method and settings, process" in line and "Traceback" not in \
        second_err + third_err
    assert_same_output(out, reference)  # the winner's files, and nothing else
    assert not other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"]  # no lock, partial
    assert not list((cache / "jobs").iterdir())  # checkpoint and its lock removed


def test_stray_temporary_files_never_reach_the_output(source, tmp_path, cache, reference,
                                                      monkeypatch):
    from qtapp.engine import export

    real = export.export_checkpoint

    def leaves_temp_files(fmt, src, store, job, partial):
        exported = real(fmt, src, store, job, partial)
        (partial / ".tmp8f3k2l").write_bytes(b"\0" * 1000)  # another writer's temp file
        (partial / "model.safetensors.tmp-123").write_bytes(b"\0" * 1000)
        return exported

    monkeypatch.setattr(export, "export_checkpoint", leaves_temp_files)
    out = tmp_path / "out"
    _, seen = run(job_for(source, out))
    assert_same_output(out, reference)
    assert any("removed temporary files from the output: .tmp8f3k2l, "
               "model.safetensors.tmp-123" in e.message for e in seen if isinstance(e, ev.Log))


# ----------------------------------------------------------------------------- stop signals


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_job_folders_of_killed_runs_are_swept(tmp_path):
    stale = tmp_path / f"quantdesk-job-{_dead_pid()}-x1"
    live = tmp_path / f"quantdesk-job-{os.getpid()}-x2"
    old, recent = tmp_path / "quantdesk-job-x3", tmp_path / "quantdesk-job-x4"
    for d in (stale, live, old, recent):
        d.mkdir()
        (d / "job.json").write_text("{}")
    os.utime(old, (0, 0))  # an unnamed folder of an older version, long ago
    assert sorted(sweep_job_dirs(tmp_path)) == sorted([stale, old])
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, recent.name]


SIGNAL_WORDS = {"SIGTERM": "SIGTERM (a request to stop)",
                "SIGHUP": "SIGHUP (the terminal was closed)"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in-process", "worker"])
@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_to_the_command_while_evaluating(mode, name, source, tmp_path, cache):
    """SIGTERM or SIGHUP to `quantdesk quantize` (with --worker or without) during the
    quality gate: one message, no traceback, partial output removed, checkpoint kept, no
    worker left running and no job folder left (a stale one of a killed run is swept)."""
    digest = tree_digest(source)
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    stale = tmp / f"quantdesk-job-{_dead_pid()}-stale"
    stale.mkdir()
    (stale / "job.json").write_text("{}")
    proc = cli_worker(source, out, cache, evaluate=True, worker=mode == "worker", json=False,
                      tmp=tmp)
    assert proc.stderr is not None
    lines, workers, t0 = [], [], None
    for line in proc.stderr:
        lines.append(line)
        if t0 is None and "] evaluate " in line:
            assert partial_path(out).is_dir()
            workers = psutil.Process(proc.pid).children()
            assert len(workers) == (mode == "worker")
            t0 = time.monotonic()
            proc.send_signal(getattr(signal, name))
    code = proc.wait(timeout=60)
    seconds = time.monotonic() - t0
    err = "".join(lines)
    assert code == 128 + getattr(signal, name), err
    assert [x for x in lines if "cancel" in x] == [
        f"cancelled by {SIGNAL_WORDS[name]}; no output was written\n"], err
    assert "Traceback" not in err and "Error" not in err, err
    assert_nothing_lost(source, digest, out)
    assert checkpoint_blocks(cache) == [0, 1]
    assert not any(w.is_running() for w in workers)
    assert not list(tmp.glob("quantdesk-job-*"))
    assert seconds < 15  # about 2 s in-process and 3 s with a worker, on 2 busy cores


@pytest.mark.slow
def test_sigkill_of_the_command_stops_its_worker(source, tmp_path, cache):
    """kill -9 of `quantdesk quantize --worker` while evaluating: the orphaned worker sees
    it, stops quietly, removes the partial output and the job folder, keeps the checkpoint."""
    digest = tree_digest(source)
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    proc = cli_worker(source, out, cache, evaluate=True, tmp=tmp)
    assert proc.stdout is not None and proc.stderr is not None
    worker = None
    for line in proc.stdout:
        e = ev.decode(line)
        if e.type == "progress" and e.stage == "evaluate":
            (worker,) = psutil.Process(proc.pid).children()
            assert len(list(tmp.glob("quantdesk-job-*"))) == 1
            os.kill(proc.pid, signal.SIGKILL)
            break
    assert worker is not None
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs([worker], timeout=30)
    assert not alive
    err = proc.stderr.read()  # the worker's stderr too: it ends when the worker ends
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert_nothing_lost(source, digest, out)
    assert checkpoint_blocks(cache) == [0, 1]
    assert not list(tmp.glob("quantdesk-job-*"))


# ----------------------------------------------------------------------------- cancel while evaluating


def test_cancel_during_evaluation_stops_within_seconds(source, tmp_path, cache):
    """The quality gate polls for cancel per window and per generated token (the whole gate
    takes over a minute on the tiny model on 2 busy cores; tests/engine/test_quality.py
    cancels each of its stages)."""
    digest = tree_digest(source)
    out = tmp_path / "out"
    seen: list[ev.Event] = []
    cancelled_at: list[float] = []

    def emit(e: ev.Event) -> None:
        seen.append(e)
        if not cancelled_at and isinstance(e, ev.Progress) and e.stage == "evaluate":
            cancelled_at.append(time.monotonic())

    with pytest.raises(Cancelled):
        run_job(job_for(source, out, evaluate=True), emit, lambda: bool(cancelled_at))
    seconds = time.monotonic() - cancelled_at[0]
    first = next(i for i, e in enumerate(seen) if isinstance(e, ev.Progress)
                 and e.stage == "evaluate")
    after = seen[first + 1:]
    # not one more window or answer after the cancel: at most the gate's opening progress
    # event (step 0, the stage's own bar) that was already on its way
    assert all(isinstance(e, ev.Progress) and e.stage == "evaluate" and e.step == 0
               for e in after), after
    assert seconds < 5
    assert_nothing_lost(source, digest, out)
    assert checkpoint_blocks(cache) == [0, 1]


# ----------------------------------------------------------------------------- resume


def test_the_command_line_says_it_resumes(source, tmp_path, cache, capfd):
    from qtapp.cli import main

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        run(job_for(source, out), CANCEL_POINTS["inside block 1"])
    assert checkpoint_blocks(cache) == [0]
    capfd.readouterr()
    code = main(["quantize", "--model", str(source), "--method", "rtn", "--bits", "4",
                 "--group-size", "64", "--samples", "4", "--seq-len", "32", "--no-eval",
                 "--out", str(out)])
    err = capfd.readouterr().err
    assert code == 0, err
    assert "\nresuming: 1 of 2 blocks from the checkpoint\n" in err
