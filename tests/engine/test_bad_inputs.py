"""Bad inputs through the command line: one clear error line, a non-zero exit, nothing written.

Each case damages a copy of the tiny model (or its calibration / imatrix / rules file) and runs
`quantdesk quantize` in-process through `qtapp.cli.main`, the function `python -m qtapp` exits
with. After each: exactly one error line naming the input and what to do, no Traceback, no
output folder, no hidden partial folder, no checkpoint in the cache, and the source model
byte-identical.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from damage import edit_config, lie_about_shape, pickle_only, split_into_absent_shards, truncate
from digests import tree_digest

from qtapp.cli import main
from qtapp.engine.outputs import partial_path


def calibration(content: bytes) -> Callable[[Path, Path], list[str]]:
    def make(model: Path, tmp: Path) -> list[str]:
        f = tmp / "calib.txt"
        f.write_bytes(content)
        return ["--calibration", str(f)]
    return make


def truncated_imatrix(model: Path, tmp: Path) -> list[str]:
    import numpy as np

    from qtapp.engine.gguf.imatrix import Imatrix, write_imatrix

    f = tmp / "imatrix.gguf"
    write_imatrix(Imatrix({"blk.0.attn_q.weight": np.ones(64, dtype=np.float32)},
                          {"blk.0.attn_q.weight": 4}, "test", 64), f)
    truncate(f)
    return ["--method", "gguf", "--type", "Q4_K_M", "--imatrix", str(f)]


def gguf_as_model(model: Path, tmp: Path) -> list[str]:
    f = tmp / "model.gguf"
    f.write_bytes(b"GGUF" + bytes(60))
    return ["--model", str(f)]


def rules_not_json(model: Path, tmp: Path) -> list[str]:
    f = tmp / "rules.json"
    f.write_text("[{pattern: *.mlp.*}")
    return ["--rules", str(f)]


# (id, damage to the model copy, extra arguments, words the one error line must hold)
CASES: list[tuple[str, Callable[[Path], None] | None,
                  Callable[[Path, Path], list[str]] | None, tuple[str, ...]]] = [
    ("missing path", lambda m: shutil.rmtree(m), None,
     ("does not exist", "Check the path")),
    ("empty folder", lambda m: [p.unlink() for p in m.iterdir()], None,
     ("is empty", "Copy or download")),
    ("config.json not JSON", lambda m: (m / "config.json").write_text("{'model_type': llama"),
     None, ("config.json is not valid JSON", "Restore the file")),
    ("config.json without model_type", lambda m: edit_config(
        m, lambda c: [c.pop("model_type"), c.pop("architectures")]),
     None, ("names neither 'model_type' nor 'architectures'", "config.json")),
    ("config.json without num_hidden_layers", lambda m: edit_config(
        m, lambda c: c.pop("num_hidden_layers")),
     None, ("lacks valid 'num_hidden_layers'", "Restore the file")),
    ("unsupported architecture", lambda m: edit_config(
        m, lambda c: c.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])),
     None, ("gpt_neox",)),
    ("tokenizer missing", lambda m: [(m / f).unlink() for f in
                                      ("tokenizer.json", "tokenizer_config.json")],
     None, ("No tokenizer", "Copy the tokenizer files")),
    ("safetensors truncated", lambda m: truncate(m / "model.safetensors"), None,
     ("model.safetensors is damaged", "truncated", "download or copy the model again")),
    ("safetensors header lies about sizes", lie_about_shape, None,
     ("model.safetensors is damaged", "model.norm.weight", "has shape [128]")),
    ("shard in the index but absent", split_into_absent_shards, None,
     ("lists 2 weight shards but 1 are missing", "model-00002-of-00002.safetensors",
      "download the model again")),
    ("pickle weights without --allow-pickle", pickle_only, None,
     ("pytorch_model.bin", "refused for safety", "--allow-pickle")),
    ("GGUF file given as the model", None, gguf_as_model,
     ("is a file, not a model folder", "original Hugging Face folder")),
    ("calibration file empty", None, calibration(b""), ("calib.txt is empty",)),
    ("calibration file binary", None, calibration(b"\x00\x01\x02PK\x03\x04" * 50),
     ("calib.txt looks binary",)),
    ("calibration file not UTF-8", None, calibration("naïve café".encode("latin-1") * 40),
     ("calib.txt is not UTF-8",)),
    ("imatrix truncated", None, truncated_imatrix,
     ("imatrix.gguf is truncated or damaged", "end before the data its header describes",
      "copy or compute it again")),
    ("rules file not JSON", None, rules_not_json, ("rules.json: is not valid JSON",)),
    ("Hub id malformed", None, lambda m, t: ["--model", "org/model name"],
     ("'org/model name' is neither an existing folder nor a valid Hugging Face model id",)),
    ("Hub id not in the offline cache", None, lambda m, t: ["--model", "nobody-xyz/no-model"],
     ("'nobody-xyz/no-model' is not in the local Hugging Face cache",
      "quantdesk download nobody-xyz/no-model")),
]


@pytest.fixture()
def isolated(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTDESK_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def quantize(capfd, *args: str) -> tuple[int, list[str], str]:
    capfd.readouterr()
    code = main(["quantize", "--method", "rtn", "--bits", "4", "--group-size", "64",
                 "--samples", "4", "--seq-len", "32", "--no-eval", *args])
    err = capfd.readouterr().err
    return code, [line for line in err.splitlines() if "error" in line.lower()], err


@pytest.mark.parametrize("name,damage,extra,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_nothing_is_written(
        name, damage, extra, words, tiny_llama_dir, tmp_path, isolated, capfd):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    if damage is not None:
        damage(model)
    args = ["--model", str(model)]
    if extra is not None:
        args += extra(model, tmp_path)  # a later --model/--method wins in argparse
    before = tree_digest(model) if model.exists() else None
    out = tmp_path / "out"
    listed = sorted(tmp_path.iterdir())
    code, errors, err = quantize(capfd, *args, "--out", str(out))
    assert code != 0
    assert len(errors) == 1, err
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert "Traceback" not in err
    assert not out.exists() and not partial_path(out).exists()
    assert sorted(tmp_path.iterdir()) == listed
    assert not isolated.exists()  # no checkpoint, no converted copy
    if before is not None:
        assert tree_digest(model) == before


def test_cli_process_exit_code_is_non_zero(tiny_llama_dir, tmp_path):
    """The real `python -m qtapp quantize` process: exit code 2 (the calibration file is read
    before the job starts, as every input is) and the same single line."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    calib = tmp_path / "calib.txt"
    calib.write_bytes(b"\xff\xfe\x00\x00binary")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "qtapp", "quantize", "--model", str(tiny_llama_dir),
                        "--method", "rtn", "--out", str(out), "--calibration", str(calib),
                        "--group-size", "64", "--no-eval"], capture_output=True, text=True, cwd=root, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(root),
                                QUANTDESK_CACHE=str(tmp_path / "cache")), check=False)
    assert r.returncode == 2, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "error" in x.lower()]
    assert "looks binary" in line and str(calib) in line
    assert not out.exists() and not partial_path(out).exists()


# ----------------------------------------------------------------------------- output paths


def _existing_output(folder: Path) -> str:
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"old output")
    return tree_digest(folder)


@pytest.mark.parametrize("case,words", [
    ("exists", "already exists; choose a new name or pass --overwrite to replace it"),
    ("inside source", "is inside the source model folder"),
    ("source itself", "is inside the source model folder"),
    ("contains source", "contains the source model"),
    ("a file", "is an existing file, not a folder"),
    ("not a model folder", "is not a model folder (no config.json or .gguf file in it)"),
])
def test_output_path_refusals(case, words, tiny_llama_dir, tmp_path, isolated, capfd):
    model = tmp_path / "models" / "src"
    shutil.copytree(tiny_llama_dir, model)
    before = tree_digest(model)
    extra: list[str] = []
    out = {"exists": tmp_path / "old", "inside source": model / "q4",
           "source itself": model, "contains source": tmp_path / "models",
           "a file": tmp_path / "file", "not a model folder": tmp_path / "docs"}[case]
    if case == "exists":
        _existing_output(out)
    elif case == "a file":
        out.write_text("keep me")
    elif case == "not a model folder":
        out.mkdir()
        (out / "thesis.tex").write_text("keep me")
        extra = ["--overwrite"]
    listed = sorted(tmp_path.rglob("*"))
    code, errors, err = quantize(capfd, "--model", str(model), "--out", str(out), *extra)
    assert code != 0 and len(errors) == 1 and words in errors[0], err
    assert sorted(tmp_path.rglob("*")) == listed  # nothing written, nothing removed
    assert tree_digest(model) == before


def test_overwrite_replaces_only_when_the_new_output_is_complete(tiny_llama_dir, tmp_path,
                                                                  isolated, capfd):
    out = tmp_path / "out"
    old = _existing_output(out)
    bad = tmp_path / "calib.txt"
    bad.write_bytes(b"")
    code, _, _ = quantize(capfd, "--model", str(tiny_llama_dir), "--out", str(out),
                          "--overwrite", "--calibration", str(bad))
    assert code != 0 and tree_digest(out) == old  # a failed job keeps the old output
    code, _, err = quantize(capfd, "--model", str(tiny_llama_dir), "--out", str(out),
                            "--overwrite")
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() != b"old output"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------- no code from models


def test_unsafe_options_are_off_by_default():
    from qtapp.cli import build_parser
    from qtapp.commands.quantize import job_from_args
    from qtapp.engine.config import JobSpec

    spec = JobSpec(model="demo", method="rtn", out="x")
    assert not spec.allow_pickle and not spec.trust_remote_code
    args = build_parser().parse_args(["quantize", "--model", "demo", "--method", "rtn",
                                      "--out", "x"])
    job = job_from_args(args)
    assert not job.allow_pickle and not job.trust_remote_code


class _Payload:
    """Unpickling this runs os.system: what a malicious .bin file does."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.sentinel}",)


def test_malicious_pickle_never_runs_even_when_pickle_is_allowed(tiny_llama_dir, tmp_path,
                                                                   isolated, capfd):
    import torch

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    (model / "model.safetensors").unlink()
    sentinel = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _Payload(sentinel)}, model / "pytorch_model.bin")
    out = tmp_path / "out"
    code, errors, err = quantize(capfd, "--model", str(model), "--out", str(out))
    assert code != 0 and "refused for safety" in errors[0]
    code, errors, err = quantize(capfd, "--model", str(model), "--out", str(out),
                                 "--allow-pickle")
    assert code != 0 and len(errors) == 1, err
    assert "Refused to load the pickle weights" in errors[0] and "pytorch_model.bin" in errors[0]
    assert "(it asks to call " in errors[0] and ".system)" in errors[0]  # os.system
    assert "weights_only=False" not in err  # never the advice to run the file's code
    assert not sentinel.exists()
    assert not out.exists() and not partial_path(out).exists()


def test_allowed_pickle_weights_quantize_with_a_warning(tiny_llama_dir, tmp_path, isolated,
                                                        capfd):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    pickle_only(model)
    before = tree_digest(model)
    out = tmp_path / "out"
    code, _, err = quantize(capfd, "--model", str(model), "--out", str(out), "--allow-pickle")
    assert code == 0, err
    assert "warning: pickle weights are allowed (--allow-pickle)" in err
    assert "torch.load(weights_only=True)" in err
    assert (out / "model.safetensors").is_file() and tree_digest(model) == before


CUSTOM_TOKENIZER = '''
from pathlib import Path
from transformers import PreTrainedTokenizerFast

Path(__file__).resolve().parents[0].joinpath("ran").touch()
Path({sentinel!r}).touch()


class CustomTokenizer(PreTrainedTokenizerFast):
    pass
'''


def test_remote_code_runs_only_with_trust_remote_code(tiny_llama_dir, tmp_path, isolated,
                                                       capfd, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    sentinel = tmp_path / "code-ran"
    (model / "custom_tok.py").write_text(CUSTOM_TOKENIZER.format(sentinel=str(sentinel)))
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "CustomTokenizer"
    cfg["auto_map"] = {"AutoTokenizer": [None, "custom_tok.CustomTokenizer"]}
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    code, errors, err = quantize(capfd, "--model", str(model), "--out", str(out))
    assert code != 0 and len(errors) == 1, err
    assert "is custom Python code shipped with the model" in errors[0]
    assert "pass --trust-remote-code" in errors[0]
    assert not sentinel.exists() and not out.exists()
    code, _, err = quantize(capfd, "--model", str(model), "--out", str(out),
                            "--trust-remote-code")
    assert "warning: trust_remote_code is ON: Python code shipped with the model" in err
    assert "custom_tok.py" in err
    assert code == 0 and sentinel.exists(), err  # asked for: the model's code did run


@pytest.mark.llama_cpp
def test_truncated_gguf_is_refused_by_chat(tmp_path, capfd):
    pytest.importorskip("llama_cpp")
    from qtapp.engine.model.sources import demo_gguf_path

    gguf = tmp_path / "model.gguf"
    with open(demo_gguf_path(), "rb") as f:
        gguf.write_bytes(f.read(3 * 2**20))  # the header and the first tensors only
    capfd.readouterr()
    code = main(["chat", str(gguf), "--prompt", "hi"])
    err = capfd.readouterr().err
    (line,) = [x for x in err.splitlines() if "error" in x]
    assert code == 2 and "llama.cpp cannot open model.gguf" in line
    assert "damaged, truncated" in line and "download or convert it again" in line
