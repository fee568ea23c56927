"""Faults during a job on the tiny model: cancel, SIGKILL of the worker, disk full, out of memory,
a crashed worker under the window's EngineProcess.

After each: the source model is byte-identical, no output folder and no hidden partial folder is
left, the resumable checkpoint is valid (every block file complete, and the next run resumes
from it and gives the same bytes as an uninterrupted run) or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from digests import tree_digest

from qtapp.engine import events as ev
from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme
from qtapp.engine.errors import Cancelled, UserError
from qtapp.engine.job import run_job
from qtapp.engine.outputs import partial_path
from qtapp.engine.qstore import safetensors_complete

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


def run(job: JobSpec, cancel_on=None) -> tuple[dict, list[ev.Event]]:
    seen: list[ev.Event] = []
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
    with pytest.raises(Cancelled):
        run(job, CANCEL_POINTS[point])
    assert_nothing_lost(source, digest, out)
    saved = checkpoint_blocks(cache)
    assert saved == {"at start": [], "after calibration": [], "first module of block 0": [],
                     "inside block 1": [0], "during export": [0, 1]}[point]
    _, seen = run(job)
    logs = [e.message for e in seen if isinstance(e, ev.Log)]
    if saved:
        assert any(f"resuming: {len(saved)} of 2 blocks" in m for m in logs), logs
    assert n_layers(seen) == 7 * (2 - len(saved))
    assert_same_output(out, reference)
    assert tree_digest(source) == digest
    assert not checkpoint_blocks(cache)  # removed after the successful run


# ----------------------------------------------------------------------------- SIGKILL


def cli_worker(source: Path, out: Path, cache: Path, evaluate: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "qtapp", "quantize", "--worker", "--json", "--model",
            str(source), "--method", "rtn", "--bits", "4", "--group-size", "64",
            "--samples", "4", "--seq-len", "32", "--out", str(out)]
    if not evaluate:
        args.append("--no-eval")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                               QUANTDESK_CACHE=str(cache)))


KILL_POINTS = {
    "first module of block 0": (False, lambda e, n: e.type == "layer"),
    "inside block 1": (False, lambda e, n: n == 8),
    "while evaluating (partial output on disk)": (
        True, lambda e, n: e.type == "progress" and e.stage == "evaluate"),
}


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
    assert n_layers(seen) == 7 * (2 - len(saved))
    assert_same_output(out, reference)


# ----------------------------------------------------------------------------- disk full


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

    def full(fmt, src, store, job, partial, summary):
        real(fmt, src, store, job, partial, summary)
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
    from qtapp.engine import qstore

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
    assert n_layers(seen) == 7
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
    assert "does not fit" in r.stderr and "GiB" in r.stderr and "--ignore-plan" in r.stderr
    assert_nothing_lost(source, digest, out)
    # overriding the plan still meets the job's own check against available memory
    r = subprocess.run([*args, "--ignore-plan"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120, check=False, env=env)
    assert r.returncode == 1
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert [e["type"] for e in events] == ["failed"]  # refused before `started`
    msg = events[0]["message"]
    assert "100000 calibration samples × 32768 tokens needs about 1.7 TB of working memory, " \
           "but this machine has" in msg and "GB of available RAM" in msg
    assert "Use fewer samples (--samples)" in msg
    assert_nothing_lost(source, digest, out)
    assert not cache.exists()


def test_memory_check_uses_what_is_available_now(source, tmp_path, cache, monkeypatch):
    from collections import namedtuple

    vm = namedtuple("vm", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm(100 * 2**20))
    with pytest.raises(UserError, match=r"needs about 537 MB of working memory, but this machine has 105 MB of "
                       "available RAM"):
        run(job_for(source, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the window


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
