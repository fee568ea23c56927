"""Built-in texts and calibration sampling.

Most tests use the tiny model's byte-level tokenizer, where one UTF-8 byte is one token.
"""

from __future__ import annotations

import itertools
import json
import re
from importlib import resources

import pytest
import torch

from qtapp.engine.errors import UserError
from qtapp.engine.quant import calibration as cal
from qtapp.engine.quant.calibration import (
    CPU_SUGGESTED_SAMPLES,
    DEFAULT_SAMPLES,
    builtin_calibration_text,
    builtin_eval_text,
    calibration_batches,
    eval_tokens,
)

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def byte_tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_defaults():
    assert (DEFAULT_SAMPLES, CPU_SUGGESTED_SAMPLES) == (512, 128)


def test_builtin_texts_sizes_and_mix():
    calib, ev = builtin_calibration_text(), builtin_eval_text()
    assert 300_000 <= len(calib.encode()) <= 600_000
    assert 40_000 <= len(ev.encode()) <= 80_000
    for text in (calib, ev):
        assert "def " in text and "return " in text  # Python code
        assert "#define" in text or "#ifndef" in text  # C code
        assert " the " in text  # English prose
        assert len(CJK.findall(text)) > 1000  # Chinese prose
        assert "\x00" not in text


def test_builtin_texts_are_disjoint():
    """No 200-character window of the evaluation text occurs in the calibration text."""
    calib, ev, width = builtin_calibration_text(), builtin_eval_text(), 200
    seen = {hash(calib[i:i + width]) for i in range(len(calib) - width + 1)}
    shared = [i for i in range(len(ev) - width + 1)
              if hash(ev[i:i + width]) in seen and ev[i:i + width] in calib]
    assert shared == []
    # and the check can fail: a window copied from the calibration text is found
    probe = calib[1000:1000 + width]
    assert hash(probe) in seen


def test_licences_are_shipped():
    text_dir = resources.files("qtapp").joinpath("resources", "text")
    licences = text_dir.joinpath("LICENSES.md").read_text(encoding="utf-8")
    assert "PSF License Version 2" in licences and "CC0" in licences
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in licences


def test_batches_shape_dtype_determinism(tmp_path, byte_tok):
    path = tmp_path / "part.txt"
    path.write_text(builtin_calibration_text()[:30_000], encoding="utf-8")
    a = calibration_batches(byte_tok, str(path), n_samples=16, seq_len=64, seed=0)
    b = calibration_batches(byte_tok, str(path), n_samples=16, seq_len=64, seed=0)
    c = calibration_batches(byte_tok, str(path), n_samples=16, seq_len=64, seed=1)
    assert a.shape == (16, 64) and a.dtype == torch.int64
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert int(a.min()) >= 3 and int(a.max()) < 259  # byte tokens only, no special tokens


def test_rows_are_windows_of_the_tokenized_text(byte_tok):
    ids = cal.tokenize(byte_tok, builtin_calibration_text())
    assert len(ids) == len(builtin_calibration_text().encode())
    batch = calibration_batches(byte_tok, n_samples=8, seq_len=128, seed=3)
    starts = cal._window_starts(len(ids), 128, 8, torch.Generator().manual_seed(3))
    for row, start in zip(batch, starts, strict=True):
        assert torch.equal(row, ids[start:start + 128])


def test_windows_do_not_overlap_while_the_text_allows():
    gen = torch.Generator().manual_seed(0)
    starts = sorted(cal._window_starts(10_000, 100, 99, gen))
    assert len(set(starts)) == 99
    assert all(b - a >= 100 for a, b in itertools.pairwise(starts))
    assert starts[0] >= 0 and starts[-1] <= 10_000 - 100
    # more samples than non-overlapping windows: later rounds use new offsets
    many = cal._window_starts(1_000, 100, 35, torch.Generator().manual_seed(0))
    assert len(many) == 35 and all(0 <= s <= 900 for s in many)
    assert len(set(many)) > 10


def test_text_file_source(tmp_path, byte_tok):
    text = "abcdefghij" * 30
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    batch = calibration_batches(byte_tok, str(path), n_samples=5, seq_len=50)
    ids = cal.tokenize(byte_tok, text)
    for row in batch:
        assert any(torch.equal(row, ids[s:s + 50]) for s in range(len(ids) - 49))
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert cal.load_text(str(bom)) == text


def test_jsonl_source(tmp_path, byte_tok):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": "first document " * 4, "id": 1}), "",
             json.dumps({"text": "二号文档" * 5})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = cal.load_text(str(path))
    assert text == "first document " * 4 + "\n\n" + "二号文档" * 5
    assert calibration_batches(byte_tok, str(path), n_samples=3, seq_len=20).shape == (3, 20)


@pytest.mark.parametrize("name, content, words", [
    ("empty.txt", b"", ["is empty"]),
    ("blank.txt", b"  \n\n\t ", ["is empty"]),
    ("bin.txt", b"abc\x00\x01\x02def", ["binary", "NUL"]),
    ("latin.txt", "café".encode("latin-1"), ["not UTF-8", "0xe9", "offset 3"]),
    ("bad.jsonl", b'{"text": "ok"}\n{oops\n', ["Line 2", "not valid JSON"]),
    ("notext.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', ["Line 2", '"text"']),
    ("nonstr.jsonl", b'{"text": 5}\n', ["Line 1", '"text"']),
    ("emptytexts.jsonl", b'{"text": ""}\n\n', ["is empty"]),
])
def test_bad_files(tmp_path, byte_tok, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        calibration_batches(byte_tok, str(path), n_samples=2, seq_len=4)
    for word in words:
        assert word in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_and_directory(tmp_path, byte_tok):
    with pytest.raises(UserError, match="does not exist"):
        calibration_batches(byte_tok, str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="not a file"):
        calibration_batches(byte_tok, str(tmp_path))


def test_text_too_short(tmp_path, byte_tok):
    path = tmp_path / "short.txt"
    path.write_text("x" * 100)
    with pytest.raises(UserError) as err:
        calibration_batches(byte_tok, str(path), n_samples=4, seq_len=512)
    assert "has 100 tokens" in str(err.value) and "needs 512" in str(err.value)
    assert calibration_batches(byte_tok, str(path), n_samples=4, seq_len=100).shape == (4, 100)


def test_invalid_counts(byte_tok):
    with pytest.raises(UserError, match="at least one sample"):
        calibration_batches(byte_tok, n_samples=0, seq_len=8)


def test_eval_tokens(byte_tok):
    ev = builtin_eval_text()
    ids = eval_tokens(byte_tok)
    assert ids.shape == (1, len(ev.encode())) and ids.dtype == torch.int64
    assert torch.equal(ids[0], cal.tokenize(byte_tok, ev))
    assert eval_tokens(byte_tok, max_tokens=1000).shape == (1, 1000)
    assert eval_tokens(byte_tok, "hello").shape == (1, 5)
    with pytest.raises(UserError, match="empty"):
        eval_tokens(byte_tok, "   ")
    with pytest.raises(UserError, match="at least 2"):
        eval_tokens(byte_tok, "x")


@pytest.mark.slow
def test_demo_tokenizer_token_counts(demo_dir):
    """Built-in texts in SmolLM2 tokens: evaluation 10-20k (cheap perplexity on CPU)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_dir)
    n_eval = eval_tokens(tok).shape[1]
    n_calib = len(cal.tokenize(tok, builtin_calibration_text()))
    assert 10_000 <= n_eval <= 20_000
    assert n_calib > 100_000
    batch = calibration_batches(tok, n_samples=DEFAULT_SAMPLES, seq_len=512)
    assert batch.shape == (512, 512)
    assert len({tuple(r[:16].tolist()) for r in batch}) > 500  # nearly all windows distinct
