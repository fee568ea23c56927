"""Ways to damage a copy of a model folder, shared by the bad-input and fuzz tests.

Each function changes the folder in place (give it a copy, never the session's tiny model).
The structural ones (truncate, lie_about_shape, split_into_absent_shards, pickle_only) expect
the intact tiny model of tests/conftest.py; the `*_if_present` variants used by the fuzz test
tolerate a folder that other damages already changed and do nothing when their file is gone.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
FIRST_SHARD = "model-00001-of-00002.safetensors"
ABSENT_SHARD = "model-00002-of-00002.safetensors"


# ----------------------------------------------------------------------------- files


def edit_config(model: Path, change: Callable[[dict], None],
                name: str = "config.json") -> None:
    """Load a JSON file of the folder, let ``change`` edit the dict, write it back."""
    cfg = json.loads((model / name).read_text())
    change(cfg)
    (model / name).write_text(json.dumps(cfg))


def safetensors_header(file: Path) -> tuple[dict, bytes]:
    """(header, data) of a well-formed safetensors file."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(file: Path, header: dict, data: bytes) -> None:
    head = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(head)) + head + data)


def truncate(file: Path) -> None:
    """Cut a file in half, as an interrupted download or copy does."""
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


# ----------------------------------------------------------------------------- weights


def lie_about_shape(model: Path, file: str = WEIGHTS) -> None:
    """The header says model.norm.weight is [128]; the offsets still span 64 floats."""
    path = model / file
    header, data = safetensors_header(path)
    header["model.norm.weight"]["shape"] = [128]
    write_safetensors(path, header, data)


def split_into_absent_shards(model: Path) -> None:
    """Rename the weights to shard 1 of 2 and write an index naming shard 2, which is absent
    (the last three tensors are said to be in it)."""
    header, _ = safetensors_header(model / WEIGHTS)
    names = sorted(k for k in header if k != "__metadata__")
    (model / WEIGHTS).rename(model / FIRST_SHARD)
    weight_map = {n: FIRST_SHARD for n in names[:-3]}
    weight_map.update({n: ABSENT_SHARD for n in names[-3:]})
    (model / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def pickle_only(model: Path) -> None:
    """Replace model.safetensors by a pytorch_model.bin holding the same tensors."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(model / WEIGHTS))
    (model / WEIGHTS).unlink()
    torch.save(state, model / "pytorch_model.bin")


def weight_files(model: Path) -> list[Path]:
    return sorted(model.glob("*.safetensors"))


def set_dtype(model: Path, dtype: str, tensor: str = "model.norm.weight") -> None:
    """Write ``dtype`` into the header entry of ``tensor`` in whichever weight file holds it,
    keeping its shape and offsets: "F99" is no dtype at all, "F16" disagrees with the byte
    length, "I32" has the right length but is not a float."""
    for file in weight_files(model):
        try:
            header, data = safetensors_header(file)
        except (ValueError, struct.error):
            continue  # already damaged beyond parsing
        if tensor in header:
            header[tensor]["dtype"] = dtype
            write_safetensors(file, header, data)


# ----------------------------------------------------------------------------- code in models

CODE = '''
from pathlib import Path

Path({sentinel!r}).write_text("the model's code ran")
'''

TOKENIZER_CODE = CODE + '''
from transformers import PreTrainedTokenizerFast


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
'''


def remote_code_tokenizer(model: Path, sentinel: Path) -> None:
    """A tokenizer that is code shipped with the model (auto_map in tokenizer_config.json →
    custom_tok.py), which writes ``sentinel`` when it is imported."""
    (model / "custom_tok.py").write_text(TOKENIZER_CODE.format(sentinel=str(sentinel)))
    cfg_file = model / "tokenizer_config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        cfg = {}
    if not isinstance(cfg, dict):
        cfg = {}
    cfg["tokenizer_class"] = "EvilTokenizer"
    cfg["auto_map"] = {"AutoTokenizer": [None, "custom_tok.EvilTokenizer"]}
    cfg_file.write_text(json.dumps(cfg))


def remote_code_config(model: Path, sentinel: Path) -> None:
    """config.json maps the model to configuration_tiny.py / modeling_tiny.py (auto_map),
    which write ``sentinel`` when imported."""
    for name in ("configuration_tiny.py", "modeling_tiny.py"):
        (model / name).write_text(CODE.format(sentinel=str(sentinel)))
    try:
        edit_config(model, lambda c: c.update(auto_map={
            "AutoConfig": "configuration_tiny.TinyConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}))
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # config.json is already gone or not a JSON object
