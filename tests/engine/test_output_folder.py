"""An output folder that cannot be written is refused before any work, in those words
(issue 17, item 8).

It used to be refused by the planner as "0.0 GiB are free" (/proc and read-only mounts
report no free space), and with --ignore-plan `/proc/x` failed only after every block as
"internal error: FileNotFoundError". The check creates and removes a hidden folder where
the output will go: os.access says yes to root on /proc.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from qtapp.cli import main
from qtapp.engine.config import JobSpec, QuantScheme
from qtapp.engine.outputs import partial_path
from qtapp.engine.planning.hardware import Hardware

GiB = 2**30
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
PROC_LINE = ("quantdesk quantize: error: cannot write into /proc: it is not a writable folder "
             "(creating a folder in it failed: No such file or directory); choose an output "
             "folder you can write to")


@pytest.fixture()
def isolated(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTDESK_CACHE", str(cache))
    return cache


def quantize(capfd, model: Path, out: Path, *extra: str) -> tuple[int, list[str], str]:
    capfd.readouterr()
    code = main(["quantize", "--model", str(model), "--method", "rtn", "--out", str(out),
                 "--group-size", "64", "--samples", "4", "--seq-len", "32", "--no-eval", *extra])
    err = capfd.readouterr().err
    return code, [line for line in err.splitlines() if "error" in line.lower()], err


def read_only(folder: Path, monkeypatch) -> None:
    """`folder` read-only: by its mode, or for root (whom modes do not stop) as a read-only
    file system would answer."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        if Path(kwargs.get("dir") or "") == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


@needs_proc
@pytest.mark.parametrize("extra", [[], ["--ignore-plan"]], ids=["planned", "ignore-plan"])
def test_proc_is_refused_as_not_writable_before_any_work(extra, tiny_llama_dir, isolated,
                                                         capfd):
    code, errors, err = quantize(capfd, tiny_llama_dir, Path("/proc/x"), *extra)
    assert code == 2, err
    assert errors == [PROC_LINE], err
    assert "GiB are free" not in err and "quantizing" not in err and "Traceback" not in err
    assert not isolated.exists()  # no checkpoint: nothing ran


@pytest.mark.parametrize("extra", [[], ["--ignore-plan"]], ids=["planned", "ignore-plan"])
def test_a_read_only_folder_is_refused_as_not_writable(extra, tiny_llama_dir, tmp_path,
                                                       isolated, capfd, monkeypatch):
    folder = tmp_path / "ro"
    read_only(folder, monkeypatch)
    out = folder / "q4"
    code, errors, err = quantize(capfd, tiny_llama_dir, out, *extra)
    why = "the file system is read-only" if os.geteuid() == 0 else "permission denied"
    assert code == 2, err
    assert errors == [(f"quantdesk quantize: error: cannot write into {folder}: it is not a "
                       f"writable folder ({why}); choose an output folder you can write to")], err
    assert "GiB are free" not in err and "Traceback" not in err
    assert list(folder.iterdir()) == [] and not isolated.exists()


def test_a_file_in_the_way_is_named(tiny_llama_dir, tmp_path, isolated, capfd):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    out = file / "q4"
    code, errors, err = quantize(capfd, tiny_llama_dir, out, "--ignore-plan")
    assert code == 2, err
    assert errors == [(f"quantdesk quantize: error: cannot write into {file}: {file} is a file, "
                       "not a folder; choose an output folder you can write to")], err
    assert file.read_text() == "keep me" and not partial_path(out).exists()


def test_missing_folders_above_the_output_are_fine(tmp_path):
    from qtapp.engine.outputs import output_folder_problem

    assert output_folder_problem(tmp_path / "new" / "deeper" / "q4") == ""
    assert not (tmp_path / "new").exists()  # the check creates nothing that stays
    assert [p.name for p in tmp_path.iterdir()] == []


@needs_proc
def test_the_planner_says_not_writable_instead_of_no_free_space(tmp_path):
    from qtapp.engine.planning.planner import plan_job

    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 259}
    info = SimpleNamespace(name="tiny", config=config, n_params=100_000, size_bytes=400_000,
                           n_layers=2)
    job = JobSpec(model="x", method="rtn", out="/proc/x", scheme=QuantScheme(4, 32),
                  evaluate=False)
    plan = plan_job(job, info,
                    Hardware("Fake CPU", 2, 2, 64 * GiB, 64 * GiB, "TestOS", ()))
    assert plan.problems == [PROC_LINE.removeprefix("quantdesk quantize: error: ")]
    assert plan.fixes == ["choose an output folder you can write to (--out)"]
    assert "are free" not in " ".join(plan.problems)
