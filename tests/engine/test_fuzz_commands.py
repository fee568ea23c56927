"""Every command against model folders built from valid and damaged files (issue 17).

A folder is a copy of the tiny model of tests/conftest.py with a random set of damages from
tests/damage.py: truncated weights, a header whose dtype is unknown, disagrees with the byte
length or is not a float, a header lying about a shape or its own length, a shard the index
names but that is absent, pickle weights only, custom code named by auto_map in
tokenizer_config.json or in config.json (its .py files write a sentinel when imported),
config.json that is not JSON, no tokenizer, a truncated tokenizer.json, and empty files.
Each command runs in-process through `qtapp.cli.main`, the function `python -m qtapp` exits
with:

  check M · eval M · eval M --against INTACT · chat M --prompt hi --max-tokens 2 ·
  convert M --out OUT/x.gguf · quantize --model M --method rtn … --no-eval --out OUT/q ·
  recommend M

(eval on a 1 KB text with --ctx 64, and --no-generation against the source: `chat` is the
command that generates), and every run must:

- exit 0, or exit 2 (1 for a failed quantize job) printing exactly one error line, which
  starts `quantdesk CMD: error: ` (or `error: ` for a failed job) and is not the worker's
  `internal error: …` for an unexpected exception, and no Traceback;
- leave the damaged folder and the intact source byte-identical;
- create nothing outside OUT (and QuantDesk's cache; the temp folder is inside the listed
  tree), and in OUT only the output of a run that exited 0;
- never run the model's code (the sentinel never appears);
- and `check` refuses (exit 2, the same message) exactly the folders that `recommend`, whose
  only input check is the one `quantize` and `convert` make, refuses.

The hypothesis tests (25 folders per command) are marked slow; the fixed combinations below
them are the fast variant.
"""

from __future__ import annotations

import itertools
import shutil
import struct
import tempfile
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

import pytest
from damage import (
    WEIGHTS,
    lie_about_shape,
    pickle_only,
    remote_code_config,
    remote_code_tokenizer,
    safetensors_header,
    set_dtype,
    split_into_absent_shards,
    truncate,
    weight_files,
)
from digests import tree_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtapp.cli import main

TEXT = ("The quick brown fox jumps over the lazy dog. " * 6
        + "Pack my box with five dozen liquor jugs. " * 6)


# ----------------------------------------------------------------------------- damages


def _weights(model: Path) -> Path | None:
    files = weight_files(model)
    return files[0] if files else None


def _truncate_weights(model: Path, _sentinel: Path) -> None:
    file = _weights(model)
    if file is not None:
        truncate(file)


def _lie_about_shape(model: Path, _sentinel: Path) -> None:
    for file in weight_files(model):
        try:
            if "model.norm.weight" in safetensors_header(file)[0]:
                lie_about_shape(model, file.name)
        except (ValueError, struct.error):
            pass


def _lie_about_header_length(model: Path, _sentinel: Path) -> None:
    """The first 8 bytes claim a header longer than the file."""
    file = _weights(model)
    if file is not None:
        raw = file.read_bytes()
        file.write_bytes(struct.pack("<Q", len(raw) + 100) + raw[8:])


def _missing_shard(model: Path, _sentinel: Path) -> None:
    if (model / WEIGHTS).is_file():
        split_into_absent_shards(model)


def _pickle_only(model: Path, _sentinel: Path) -> None:
    if (model / WEIGHTS).is_file():
        pickle_only(model)


def _remove_tokenizer(model: Path, _sentinel: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink(missing_ok=True)


def _config_not_json(model: Path, _sentinel: Path) -> None:
    (model / "config.json").write_text("{'model_type': llama")


def _dtype(dtype: str) -> Callable[[Path, Path], None]:
    return lambda model, _sentinel: set_dtype(model, dtype)


def _truncate(name: str) -> Callable[[Path, Path], None]:
    def cut(model: Path, _sentinel: Path) -> None:
        if (model / name).is_file():
            truncate(model / name)
    return cut


def _empty(name: str) -> Callable[[Path, Path], None]:
    def empty(model: Path, _sentinel: Path) -> None:
        if name == "weights":
            file = _weights(model)
            if file is not None:
                file.write_bytes(b"")
        else:
            (model / name).write_bytes(b"")
    return empty


# In the order they are applied: those that need intact weights first.
DAMAGES: dict[str, Callable[[Path, Path], None]] = {
    "pickle only": _pickle_only,
    "missing shard": _missing_shard,
    "dtype F99": _dtype("F99"),
    "dtype F16 (wrong length)": _dtype("F16"),
    "dtype I32 (same length)": _dtype("I32"),
    "header lies about a shape": _lie_about_shape,
    "header lies about its length": _lie_about_header_length,
    "truncated weights": _truncate_weights,
    "auto_map in config.json": remote_code_config,
    "auto_map in tokenizer_config.json": remote_code_tokenizer,
    "no tokenizer": _remove_tokenizer,
    "config.json not JSON": _config_not_json,
    "empty config.json": _empty("config.json"),
    "truncated tokenizer.json": _truncate("tokenizer.json"),
    "empty tokenizer.json": _empty("tokenizer.json"),
    "empty tokenizer_config.json": _empty("tokenizer_config.json"),
    "empty generation_config.json": _empty("generation_config.json"),
    "empty chat_template.jinja": _empty("chat_template.jinja"),
    "empty weights": _empty("weights"),
}


def damage(model: Path, names: set[str] | frozenset[str], sentinel: Path) -> None:
    for name, apply in DAMAGES.items():
        if name in names:
            apply(model, sentinel)


# ----------------------------------------------------------------------------- commands

# name -> argument list for the model folder M, the intact source S, the output folder OUT
# and the evaluation text T; the output a successful run leaves in OUT.
COMMANDS: dict[str, tuple[Callable[[str, str, Path, str], list[str]], str | None]] = {
    "check": (lambda m, s, o, t: ["check", m], None),
    "eval": (lambda m, s, o, t: ["eval", m, "--ctx", "64", "--text", t], None),
    "eval --against": (lambda m, s, o, t: ["eval", m, "--against", s, "--ctx", "64",
                                           "--text", t, "--no-generation"], None),
    "chat": (lambda m, s, o, t: ["chat", m, "--prompt", "hi", "--max-tokens", "2"], None),
    "convert": (lambda m, s, o, t: ["convert", m, "--out", str(o / "x.gguf")], "x.gguf"),
    "quantize": (lambda m, s, o, t: ["quantize", "--model", m, "--method", "rtn", "--samples",
                                     "2", "--seq-len", "16", "--no-eval", "--out",
                                     str(o / "q")], "q"),
    "recommend": (lambda m, s, o, t: ["recommend", m], None),
}


class Fuzz:
    """The session's folders: the intact source, the text, the cache, one folder per case."""

    def __init__(self, root: Path, tiny: Path):
        self.root = root
        self.source = shutil.copytree(tiny, root / "source")
        self.source_digest = tree_digest(self.source)
        self.text = root / "text.txt"
        self.text.write_text(TEXT)
        self.cache = root / "cache"
        self.cases = itertools.count()

    def listing(self, *skip: Path) -> list[Path]:
        return sorted(p for p in self.root.rglob("*")
                      if not any(p == s or s in p.parents for s in skip))

    def run(self, capfd, command: str, names: set[str] | frozenset[str]) -> None:
        case = self.root / f"case{next(self.cases)}"
        model, out, sentinel = case / "model", case / "out", case / "code-ran"
        shutil.copytree(self.source, model)
        damage(model, names, sentinel)
        before = tree_digest(model)
        listed = self.listing(out, self.cache)
        make, output = COMMANDS[command]
        argv = make(str(model), str(self.source), out, str(self.text))
        capfd.readouterr()
        code = main(argv)
        stdout, stderr = capfd.readouterr()
        what = f"{command} on {sorted(names)}: exit {code}\n{stderr[-3000:]}"
        assert "Traceback" not in stdout + stderr, what
        errors = [line for line in stderr.replace("\r", "\n").splitlines()
                  if "error" in line.lower() and not line.startswith("warning: ")]
        name = argv[0]
        if code == 0:
            assert errors == [], what
        else:
            assert code == 2 or (code == 1 and name == "quantize"), what
            assert len(errors) == 1, what
            prefix = f"quantdesk {name}: error: " if code == 2 else "error: "
            assert errors[0].startswith(prefix), what
            assert "internal error" not in errors[0], what  # a crash, caught by the worker
        assert tree_digest(model) == before, what
        assert tree_digest(self.source) == self.source_digest, what
        assert not sentinel.exists(), f"the model's code ran: {what}"
        assert self.listing(out, self.cache) == listed, what
        written = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert written == ([output] if output and code == 0 else []), what
        if command == "check":
            # check refuses what the other commands refuse before they start (recommend
            # makes quantize's and convert's input check and nothing else), with the same line
            refused = main(["recommend", str(model)]) == 2
            line = capfd.readouterr().err.strip().splitlines()[-1:]
            assert (code == 2) == refused, (what, line)
            if refused:
                assert errors[0].split(": error: ", 1)[1] == line[0].split(": error: ", 1)[1]
        shutil.rmtree(case)


@pytest.fixture(scope="module")
def fuzz(tiny_llama_dir, tmp_path_factory):
    """Isolated cache and temp folder; the tiny byte tokenizer known to the GGUF converter as
    "gpt2", so that `convert` gets past the tokenizer to the weights."""
    from qtapp.engine.gguf import vocab
    from qtapp.engine.model.loader import load_tokenizer

    digest = sha256(str(load_tokenizer(tiny_llama_dir).encode(vocab.CHKTXT)).encode())
    state = Fuzz(tmp_path_factory.mktemp("fuzz-commands"), tiny_llama_dir)
    temp = state.root / "tmp"  # inside the listed tree: a temp file left behind fails the case
    temp.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(temp))
        mp.setattr(tempfile, "tempdir", str(temp))
        mp.setenv("QUANTDESK_CACHE", str(state.cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setitem(vocab.PRE_BY_HASH, digest.hexdigest(), "gpt2")
        yield state


# ----------------------------------------------------------------------------- fixed cases

FIXED = [
    frozenset(),
    frozenset({"truncated weights", "no tokenizer"}),
    frozenset({"auto_map in config.json", "empty generation_config.json"}),
    frozenset({"auto_map in tokenizer_config.json", "empty chat_template.jinja"}),
    frozenset({"missing shard", "header lies about a shape"}),
    frozenset({"pickle only", "config.json not JSON"}),
    frozenset({"dtype I32 (same length)", "empty tokenizer_config.json"}),
]


@pytest.mark.parametrize("names", FIXED, ids=[" + ".join(sorted(n)) or "intact" for n in FIXED])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_fixed_damages(command, names, fuzz, capfd):
    fuzz.run(capfd, command, names)


# ----------------------------------------------------------------------------- hypothesis

damage_sets = st.frozensets(st.sampled_from(list(DAMAGES)), max_size=4)


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(names=damage_sets)
def test_random_damages(command, names, fuzz, capfd):
    fuzz.run(capfd, command, names)


# ----------------------------------------------------------------------------- what it found

# (command, damages, words of the one error line); before the fixes: a JSONDecodeError
# traceback from the GGUF writer; transformers' size-mismatch RuntimeError traceback (chat,
# eval) or "internal error" (quantize) for a header whose shape and dtype lie together; an
# int32 norm weight loaded as nonsense with exit 0; `check` answering "rtn yes" for folders
# every other command refuses; `convert` and `recommend` pointing to an --allow-pickle they
# do not have.
NO_FLOAT = ("tensor 'model.norm.weight' is stored as int32, but config.json describes a "
            "model that is not quantized (no quantization_config), whose weights are "
            "floating-point numbers")
SHAPE = ("do not fit its config.json: tensor 'model.norm.weight' in model.safetensors has "
         "shape [128], but config.json describes a llama model in which it has shape [64]")
SAFETENSORS_ONLY = "refused for safety. Use a copy of the model in *.safetensors format."
FOUND = [
    ("convert", {"empty tokenizer_config.json"},
     ("The tokenizer file ", "tokenizer_config.json is not valid JSON (Expecting value",
      "it is damaged or was cut short. Copy the tokenizer files")),
    ("chat", {"dtype F16 (wrong length)", "header lies about a shape"},
     (SHAPE, "download or copy the model again")),
    ("quantize", {"dtype F16 (wrong length)", "header lies about a shape"}, (SHAPE,)),
    ("eval", {"dtype I32 (same length)"}, (NO_FLOAT,)),
    ("check", {"truncated weights"}, ("model.safetensors is damaged", "(truncated)")),
    ("check", {"no tokenizer"}, ("No tokenizer in ",)),
    ("convert", {"pickle only"}, (SAFETENSORS_ONLY,)),
    ("recommend", {"pickle only"}, (SAFETENSORS_ONLY,)),
]


@pytest.mark.parametrize(("command", "names", "words"), FOUND,
                         ids=[f"{c}-{' + '.join(sorted(n))}" for c, n, _ in FOUND])
def test_what_the_fuzz_found(command, names, words, fuzz, capfd):
    case = fuzz.root / "found"
    model = shutil.copytree(fuzz.source, case / "model")
    damage(model, names, case / "code-ran")
    argv = COMMANDS[command][0](str(model), str(fuzz.source), case / "out", str(fuzz.text))
    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if "error" in x.lower()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"quantdesk {argv[0]}: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "--allow-pickle" not in lines[0]
    shutil.rmtree(case)


def test_check_warns_of_a_tokenizer_that_is_code(fuzz, capfd):
    """`check` loads no tokenizer, so it names the code that quantize, chat and eval refuse."""
    case = fuzz.root / "code"
    model = shutil.copytree(fuzz.source, case / "model")
    damage(model, {"auto_map in tokenizer_config.json"}, case / "code-ran")
    capfd.readouterr()
    assert main(["check", str(model)]) == 0
    out = capfd.readouterr().out
    assert ("warning: the tokenizer is Python code shipped with the model (auto_map in "
            "tokenizer_config.json): quantize, chat and eval refuse it unless given "
            "--trust-remote-code") in out, out
    assert not (case / "code-ran").exists()
    shutil.rmtree(case)
