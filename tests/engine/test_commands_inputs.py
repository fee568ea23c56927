"""`chat` and `eval` check their inputs as `quantize` does, and never run a model's code.

- Code shipped with a model (a custom tokenizer named by auto_map) never runs without
  --trust-remote-code, whatever stdin answers: transformers is always told
  trust_remote_code explicitly, so it never asks. Checked with real `quantdesk` processes
  whose stdin says "yes", and through open_chat, the function the window's chat page calls.
- A config.json auto_map is not written into a quantized output (its .py files are not
  copied), and the job says so.
- Damaged inputs (truncated safetensors, pickle-only weights, not-a-GGUF files) and a full
  cache disk are one `quantdesk CMD: error: …` line, exit code 2, no traceback.
- `eval FILE.gguf` without --against prints a perplexity, the one that `eval M --against S`
  prints for M.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from damage import (
    lie_about_shape,
    pickle_only,
    remote_code_config,
    remote_code_tokenizer,
    split_into_absent_shards,
    truncate,
)

from qtapp.cli import main
from qtapp.engine.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
TEXT = ("The quick brown fox jumps over the lazy dog. " * 12
        + "Pack my box with five dozen liquor jugs. " * 12)

@pytest.fixture()
def isolated(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTDESK_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _evil_model(tiny_llama_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny model whose tokenizer is code that writes a sentinel on import."""
    model = tmp_path / "evil"
    shutil.copytree(tiny_llama_dir, model)
    sentinel = tmp_path / "code-ran"
    remote_code_tokenizer(model, sentinel)
    return model, sentinel


def _quantdesk(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """A real `python -m qtapp` process with `stdin` piped in."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), QUANTDESK_CACHE=str(tmp_path / "cache"),
               HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "qtapp", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
                          check=False)


def _one_error(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if "error" in x.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"quantdesk {command}: error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- item 1: remote code


@pytest.mark.parametrize(("command", "stdin"), [("chat", "yes\nhello\n"), ("eval", "y\n")])
def test_stdin_yes_never_runs_the_models_code(command, stdin, tiny_llama_dir, tmp_path):
    model, sentinel = _evil_model(tiny_llama_dir, tmp_path)
    r = _quantdesk(tmp_path, command, str(model), stdin=stdin)
    assert not sentinel.exists(), "the model's custom_tok.py ran"
    assert "Do you wish to run the custom code" not in r.stdout + r.stderr
    assert r.returncode == 2, r.stderr
    line = _one_error(r.stderr, command)
    assert f"The tokenizer of {model} is custom Python code shipped with the model" in line
    assert "pass --trust-remote-code" in line


def test_trust_remote_code_runs_it_with_quantizes_warning(tiny_llama_dir, tmp_path):
    model, sentinel = _evil_model(tiny_llama_dir, tmp_path)
    r = _quantdesk(tmp_path, "chat", str(model), "--prompt", "hi", "--max-tokens", "2",
                   "--temperature", "0", "--trust-remote-code")
    assert r.returncode == 0, r.stderr
    assert (f"warning: trust_remote_code is ON: Python code shipped with the model in {model} "
            "(custom_tok.py) may run on this machine") in r.stderr
    assert sentinel.exists()  # asked for: the model's code did run


@pytest.mark.slow
def test_trusted_custom_tokenizer_output_is_complete_and_evaluated(tiny_llama_dir, tmp_path):
    """With --trust-remote-code the output's tokenizer_config.json still names custom_tok.py,
    so the file is copied, and the job's quality gate loads it with the job's flag (it used
    to ask on stdin, and fail)."""
    model, sentinel = _evil_model(tiny_llama_dir, tmp_path)
    out = tmp_path / "out"
    r = _quantdesk(tmp_path, "quantize", "--model", str(model), "--method", "rtn", "--bits",
                   "8", "--group-size", "64", "--samples", "4", "--seq-len", "32", "--out",
                   str(out), "--trust-remote-code", stdin="n\n")
    assert r.returncode == 0, r.stderr
    assert "Do you wish to run the custom code" not in r.stdout + r.stderr
    assert (out / "custom_tok.py").read_bytes() == (model / "custom_tok.py").read_bytes()
    assert "perplexity" in r.stderr and sentinel.exists()


def test_window_chat_page_path_never_prompts(tiny_llama_dir, tmp_path, monkeypatch):
    """The chat page loads with open_chat(spec): refused without asking, stdin untouched."""
    import io

    from qtapp.engine.quality.chat import open_chat

    model, sentinel = _evil_model(tiny_llama_dir, tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))

    def no_prompt(*_a, **_k):
        raise AssertionError("transformers asked whether to run the model's code")

    monkeypatch.setattr("builtins.input", no_prompt)
    with pytest.raises(UserError, match="is custom Python code shipped with the model"):
        open_chat(str(model))
    assert not sentinel.exists()
    assert sys.stdin.read() == "y\n"


def test_config_auto_map_is_not_written_into_the_output(tiny_llama_dir, tmp_path, isolated,
                                                        capfd):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    sentinel = tmp_path / "code-ran"
    remote_code_config(model, sentinel)
    out = tmp_path / "out"
    capfd.readouterr()
    code = main(["quantize", "--model", str(model), "--method", "rtn", "--bits", "4",
                 "--group-size", "64", "--samples", "4", "--seq-len", "32", "--no-eval",
                 "--out", str(out)])
    err = capfd.readouterr().err
    assert code == 0, err
    assert ("warning: model: config.json maps the model to Python code shipped with it "
            "(configuration_tiny.py, modeling_tiny.py; auto_map)") in err
    assert "auto_map was removed from the output's config.json" in err
    written = json.loads((out / "config.json").read_text())
    assert "auto_map" not in written and "quantization_config" in written
    assert not list(out.glob("*.py"))
    # the output is what chat and eval accept: a quantized folder
    capfd.readouterr()
    assert main(["eval", str(out), "--against", str(model), "--ctx", "64",
                 "--no-generation", "--json"]) == 0, capfd.readouterr().err
    assert not sentinel.exists()


# ----------------------------------------------------------------------------- item 5: bad inputs


def _gguf_not_gguf(tmp_path: Path) -> str:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"PK\x03\x04" + bytes(60))
    return str(f)


# (id, damage to a copy of the tiny model, or a path maker; words the one error line holds)
CASES = [
    ("safetensors truncated", lambda m: truncate(m / "model.safetensors"),
     ("model.safetensors is damaged", "truncated", "download or copy the model again")),
    ("safetensors header lies about sizes", lie_about_shape,
     ("model.safetensors is damaged", "model.norm.weight")),
    ("shard in the index but absent", split_into_absent_shards,
     ("lists 2 weight shards but 1 are missing", "download the model again")),
    ("pickle weights only", pickle_only,
     ("pytorch_model.bin", "refused for safety", "*.safetensors format.")),
    ("config.json not JSON", lambda m: (m / "config.json").write_text("{'model_type': llama"),
     ("config.json is not valid JSON", "Restore the file")),
    ("tokenizer missing", lambda m: [(m / f).unlink() for f in
                                      ("tokenizer.json", "tokenizer_config.json")],
     ("No tokenizer", "Copy the tokenizer files")),
    ("empty folder", lambda m: [p.unlink() for p in m.iterdir()], ("is empty",)),
    ("missing path", lambda m: shutil.rmtree(m), ("does not exist", "Check the path")),
]


@pytest.mark.parametrize("command", ["chat", "eval"])
@pytest.mark.parametrize("name,damage,words", CASES, ids=[c[0] for c in CASES])
def test_damaged_folder_is_one_error_line(command, name, damage, words, tiny_llama_dir,
                                          tmp_path, isolated, capfd):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    damage(model)
    capfd.readouterr()
    code = main([command, str(model), *(["--prompt", "hi"] if command == "chat" else [])])
    err = capfd.readouterr().err
    assert code == 2, err
    line = _one_error(err, command)
    for w in words:
        assert w in line, (w, line)
    assert "--allow-pickle" not in line  # chat and eval have no such option


@pytest.mark.parametrize("command", ["chat", "eval"])
@pytest.mark.parametrize(("make", "words"), [
    (lambda t: str(t / "absent.gguf"), ("The GGUF file", "absent.gguf does not exist")),
    (_gguf_not_gguf, ("model.gguf is not a GGUF file", "Download or convert it again")),
])
def test_bad_gguf_file_is_one_error_line(command, make, words, tmp_path, capfd):
    path = make(tmp_path)
    capfd.readouterr()
    code = main([command, path, *(["--prompt", "hi"] if command == "chat" else [])])
    line = _one_error(capfd.readouterr().err, command)
    assert code == 2 and all(w in line for w in words), line


def test_eval_against_a_damaged_source_is_one_error_line(tiny_llama_dir, tmp_path, isolated,
                                                         capfd):
    source = tmp_path / "source"
    shutil.copytree(tiny_llama_dir, source)
    truncate(source / "model.safetensors")
    capfd.readouterr()
    code = main(["eval", str(tiny_llama_dir), "--against", str(source)])
    line = _one_error(capfd.readouterr().err, "eval")
    assert code == 2 and f"{source / 'model.safetensors'} is damaged" in line


def _disk_full_demo(monkeypatch, tmp_path: Path) -> None:
    """The demo's first conversion fails as safetensors fails on a full disk."""
    from safetensors import SafetensorError

    from qtapp.engine.model import sources

    gguf = tmp_path / sources.DEMO_GGUF
    gguf.write_bytes(b"GGUF" + bytes(60))

    def convert(_gguf_file: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(sources, "demo_gguf_path", lambda: gguf)
    monkeypatch.setattr(sources, "_convert_demo", convert)


@pytest.mark.parametrize("args", [["chat", "demo", "--prompt", "hi"], ["eval", "demo"],
                                  ["quantize", "--model", "demo", "--method", "rtn", "--out"]])
def test_demo_conversion_on_a_full_cache_disk(args, tmp_path, isolated, monkeypatch, capfd):
    _disk_full_demo(monkeypatch, tmp_path)
    if args[-1] == "--out":
        args = [*args, str(tmp_path / "out")]
    capfd.readouterr()
    code = main(args)
    line = _one_error(capfd.readouterr().err, args[0])
    assert code == 2
    assert (f"The disk is full: writing the demo model (converted once from its GGUF file) "
            f"into {isolated / 'models'} failed (") in line
    assert "No space left on device (os error 28)" in line
    assert "Free space on that disk: " in line and "set QUANTDESK_CACHE" in line
    assert not (isolated / "models" / "SmolLM2-135M-Instruct").exists()
    assert not list((isolated / "models").glob(".*tmp*"))  # the half-built copy is gone


def test_eval_quality_cache_on_a_full_disk(tiny_llama_dir, tmp_path, isolated, monkeypatch,
                                           capfd):
    from qtapp.engine.quality import kld

    def full(self, file):
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(kld.SourceDistributions, "save", full)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    capfd.readouterr()
    code = main(["eval", str(tiny_llama_dir), "--against", str(tiny_llama_dir), "--ctx", "64",
                 "--text", str(text), "--no-generation"])
    line = _one_error(capfd.readouterr().err, "eval")
    assert code == 2
    assert (f"The disk is full: writing the source model's distributions into "
            f"{isolated / 'quality'} failed") in line and "set QUANTDESK_CACHE" in line


# ----------------------------------------------------------------------------- item 6: eval FILE.gguf


def test_eval_alone_prints_the_perplexity_the_quality_gate_prints(tiny_llama_dir, tmp_path,
                                                                  isolated, capfd):
    """One perplexity protocol: `eval M` prints for M what `eval M --against S` prints for
    it, as JSON and as text; M is changed from S, so the two models' figures differ."""
    import torch
    from safetensors.torch import load_file, save_file

    model = shutil.copytree(tiny_llama_dir, tmp_path / "changed")
    weights = load_file(str(model / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    weights[name] = weights[name] * 4 + 0.05 * torch.randn(
        weights[name].shape, generator=torch.Generator().manual_seed(0))
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    common = ["--ctx", "64", "--text", str(text)]
    against = ["--against", str(tiny_llama_dir), "--no-generation"]
    capfd.readouterr()
    assert main(["eval", str(model), *common, "--json"]) == 0
    alone = json.loads(capfd.readouterr().out)
    assert main(["eval", str(model), *against, *common, "--json"]) == 0
    gate = json.loads(capfd.readouterr().out)
    assert alone["ppl"] == gate["ppl"] != gate["ppl_source"]
    assert alone["positions"] == gate["positions"] == len(TEXT.encode()) // 64 * 31
    # the printed lines say the same number
    assert main(["eval", str(model), *common]) == 0
    printed_alone = capfd.readouterr().out.split(": perplexity ")[1].split()[0]
    assert main(["eval", str(model), *against, *common]) == 0
    line = next(x for x in capfd.readouterr().out.splitlines() if "perplexity" in x)
    assert printed_alone == line.split()[1] == f"{gate['ppl']:.3f}"


def test_eval_gguf_without_llama_cpp_says_what_to_install(tmp_path, monkeypatch, capfd):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp fails
    capfd.readouterr()
    code = main(["eval", str(gguf)])
    line = _one_error(capfd.readouterr().err, "eval")
    assert code == 2 and "Running GGUF files needs llama-cpp-python" in line
    assert "pip install llama-cpp-python" in line


@pytest.mark.llama_cpp
def test_eval_gguf_file_without_against(tmp_path, isolated, capfd):
    pytest.importorskip("llama_cpp")
    from qtapp.engine.model.sources import demo_gguf_path

    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    gguf = demo_gguf_path()
    capfd.readouterr()
    code = main(["eval", str(gguf), "--ctx", "64", "--text", str(text)])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert out.startswith(f"{gguf}: perplexity ") and "positions, window 64), size " in out
    ppl = float(out.split("perplexity ")[1].split()[0])
    assert 1 < ppl < 1000
