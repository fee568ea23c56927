"""Calibration and evaluation text → token tensors.

The built-in texts ship in qtapp/resources/text (licences in LICENSES.md): a calibration text
of prose, code and Chinese, and a disjoint evaluation text for perplexity. A user may give a
.txt file or a .jsonl file with a "text" field per line instead.

Sampling: the text is tokenized once (no special tokens) and cut into seeded windows of
seq_len tokens. Each round tiles the text with non-overlapping windows from a random offset
and takes them in random order, so up to ⌊T/seq_len⌋ samples never overlap; further rounds
start from new offsets.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.errors import UserError
from qtapp.engine.events import Emit
from qtapp.engine.model.loader import load_tokenizer
from qtapp.engine.model.sources import ModelInfo

DEFAULT_SAMPLES = 512
CPU_SUGGESTED_SAMPLES = 128
BUILTIN = "builtin"


@cache
def _resource_text(name: str) -> str:
    return resources.files("qtapp").joinpath("resources", "text", name).read_text(encoding="utf-8")


def builtin_calibration_text() -> str:
    return _resource_text("calibration.txt")


def builtin_eval_text() -> str:
    return _resource_text("evaluation.txt")


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data[:65536]:
        raise UserError(f"The calibration file {path} looks binary (it contains NUL bytes). "
                        "Give a UTF-8 text file (.txt) or JSON lines (.jsonl).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"The calibration file {path} is not UTF-8 text (invalid byte "
                        f"0x{data[e.start]:02x} at offset {e.start}). Save it as UTF-8 and try "
                        "again.") from None


def _jsonl_texts(path: Path, text: str) -> list[str]:
    texts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"Line {number} of {path} is not valid JSON ({e.msg}). Each line of a "
                            '.jsonl file must be an object like {"text": "..."}.') from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f'Line {number} of {path} has no "text" string field. Each line of '
                            'a .jsonl file must be an object like {"text": "..."}.')
        texts.append(record["text"])
    return texts


def load_text(source: str | Path) -> str:
    """The calibration text of ``source``: "builtin", a .txt file or a .jsonl file."""
    if str(source) == BUILTIN:
        return builtin_calibration_text()
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"The calibration file {path} does not exist. Give an existing .txt or "
                        f".jsonl file, or '{BUILTIN}' for the built-in text.")
    if not path.is_file():
        raise UserError(f"{path} is not a file. Give a .txt or .jsonl file, or '{BUILTIN}'.")
    text = _decode(path, path.read_bytes())
    if path.suffix.lower() == ".jsonl":
        text = "\n\n".join(t for t in _jsonl_texts(path, text) if t.strip())
    if not text.strip():
        raise UserError(f"The calibration file {path} is empty. Give a file with text in it, or "
                        f"'{BUILTIN}'.")
    return text


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """All token ids of ``text`` without special tokens, as a 1-D int64 tensor."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False,
                    return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def _window_starts(n_tokens: int, seq_len: int, n_samples: int, gen: torch.Generator) -> list[int]:
    last = n_tokens - seq_len
    starts: list[int] = []
    while len(starts) < n_samples:
        shift = int(torch.randint(0, min(seq_len, last + 1), (1,), generator=gen))
        tiles = shift + seq_len * torch.arange((last - shift) // seq_len + 1)
        starts += tiles[torch.randperm(len(tiles), generator=gen)].tolist()
    return starts[:n_samples]


def calibration_batches(tokenizer: Any, source: str = BUILTIN, n_samples: int = DEFAULT_SAMPLES,
                        seq_len: int = 512, seed: int = 0) -> torch.Tensor:
    """(n_samples, seq_len) int64 token windows of the calibration text, deterministic per seed."""
    if n_samples < 1 or seq_len < 1:
        raise UserError(f"Calibration needs at least one sample of at least one token "
                        f"(got {n_samples} samples × {seq_len} tokens).")
    ids = tokenize(tokenizer, load_text(source))
    if len(ids) < seq_len:
        name = "the built-in text" if source == BUILTIN else str(source)
        raise UserError(
            f"The calibration text ({name}) has {len(ids)} tokens, but one sample needs "
            f"{seq_len}. Give a longer text or choose a sequence length of at most {len(ids)}."
        )
    gen = torch.Generator().manual_seed(seed)
    starts = _window_starts(len(ids), seq_len, n_samples, gen)
    return torch.stack([ids[s:s + seq_len] for s in starts])


def eval_tokens(tokenizer: Any, text: str | None = None,
                max_tokens: int | None = None) -> torch.Tensor:
    """(1, T) int64 tokens of the evaluation text (built-in unless ``text`` is given)."""
    text = builtin_eval_text() if text is None else text
    if not text.strip():
        raise UserError("The evaluation text is empty. Give a text to measure perplexity on.")
    ids = tokenize(tokenizer, text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise UserError(f"The evaluation text has {len(ids)} token(s); perplexity needs at "
                        "least 2. Give a longer text.")
    return ids.unsqueeze(0)


def calibration_tokens(job: JobSpec, info: ModelInfo, emit: Emit) -> torch.Tensor:
    """The job's calibration batches (n, L), tokenized with the model's own tokenizer (code
    shipped with the model runs only with trust_remote_code)."""
    tokenizer = load_tokenizer(info.path, job.trust_remote_code)
    c = job.calibration
    tokens = calibration_batches(tokenizer, c.source, c.samples, c.seq_len, c.seed)
    emit(ev.Log(level="info", message=f"calibration: {tokens.shape[0]} samples × "
                f"{tokens.shape[1]} tokens from {c.source}"))
    return tokens
