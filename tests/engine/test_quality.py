"""Quality gate: generation flags, verdict thresholds, the llama-perplexity window protocol,
the cached top-k KLD against the exact one, and end-to-end reports (tiny model, demo, GGUF)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from qtapp.engine.errors import UserError
from qtapp.engine.quality import kld as K
from qtapp.engine.quality.gate import THRESHOLDS, judge, quality_report, source_is_cached, windows
from qtapp.engine.quality.gencheck import flags_of

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40
        + "Pack my box with five dozen liquor jugs. " * 40)


# generation flags ---------------------------------------------------------------------
def test_flags_of_a_normal_answer_are_empty():
    ids = list(range(30))
    assert flags_of(ids, "The capital of France is Paris.") == []


@pytest.mark.parametrize(("ids", "text", "flag"), [
    ([], "", "empty"),
    ([5, 6], "  \n", "empty"),
    ([7] * 20, "aaaaaaaaaaaaaaaaaaaa", "repeated_token"),
    ([1, 2, 3, 4, 5, 6] + [8, 9, 10] * 5, "x", "loop"),
    ([1, 2, 3], "caf\ufffd ok", "broken_utf8"),
])
def test_flags_of_degenerate_answers(ids, text, flag):
    assert flag in flags_of(ids, text)


def test_an_incomplete_character_at_the_end_is_not_broken_utf8():
    assert "broken_utf8" not in flags_of([1, 2, 3], "ok \ufffd")


def test_a_short_repeat_is_not_a_loop():
    assert "loop" not in flags_of([1, 2, 3, 4, 9, 9, 9, 10, 11, 12, 13, 14], "x")


# verdict ------------------------------------------------------------------------------
@pytest.mark.parametrize(("figures", "verdict"), [
    ((10.0, 10.0, 0.001, 99.0, 0), "good"),
    ((10.5, 10.0, 0.09, 86.0, 0), "good"),
    ((10.5, 10.0, 0.2, 90.0, 0), "degraded"),
    ((10.5, 10.0, 0.05, 80.0, 0), "degraded"),
    ((12.5, 10.0, 0.05, 90.0, 0), "degraded"),
    ((10.0, 10.0, 0.01, 95.0, 1), "degraded"),
    ((10.0, 10.0, 1.5, 95.0, 0), "broken"),
    ((10.0, 10.0, 0.05, 40.0, 0), "broken"),
    ((25.0, 10.0, 0.05, 90.0, 0), "broken"),
    ((10.0, 10.0, 0.01, 95.0, 2), "broken"),
    ((float("nan"), 10.0, 0.01, 95.0, 0), "broken"),
])
def test_judge_applies_the_documented_thresholds(figures, verdict):
    got, reasons = judge(*figures, THRESHOLDS)
    assert got == verdict
    assert bool(reasons) == (verdict != "good")


# protocol -----------------------------------------------------------------------------
def test_windows_are_cut_as_llama_perplexity_cuts_them():
    w = windows(list(range(100, 123)), 8, bos=1)  # BOS + 23 tokens = 24 = 3 windows
    assert w.shape == (3, 8)
    assert (w[:, 0] == 1).all()
    assert w[1].tolist() == [1, *range(108, 115)]  # first token of each window replaced
    assert windows(list(range(20)), 8, None).tolist()[1] == list(range(8, 16))
    with pytest.raises(UserError, match="needs more"):
        windows(list(range(5)), 8, None)


# top-k KLD ----------------------------------------------------------------------------
def _peaked_logits(n: int, v: int, seed: int, temperature: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) / temperature


def test_top_k_kld_of_identical_distributions_is_zero():
    p = _peaked_logits(64, 500, 0, 0.3)
    cmp = K.compare(K.summarize(p, torch.zeros(64, dtype=torch.long)), p,
                    torch.zeros(64, dtype=torch.long))
    assert np.abs(cmp.kld).max() < 1e-5
    assert cmp.agree.all()


def test_cached_top_k_and_tail_sample_kld_is_close_to_the_exact_kld_on_the_tiny_model(
        tiny_llama_dir):
    """The tiny random model's lm_head is sharpened ×12 so that its top 32 tokens hold about
    3/4 of the mass (a heavier tail than a trained model's); the quantized stand-in is 4-bit
    RTN of every linear layer."""
    from transformers import AutoModelForCausalLM

    from qtapp.engine.quant.primitives import fake_quantize

    torch.manual_seed(0)
    source = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    quant = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        for model in (source, quant):
            model.lm_head.weight.mul_(12)
        for name, m in quant.named_modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(fake_quantize(m.weight, 4, 32, True))
        ids = torch.randint(3, 259, (4, 256))
        p_logits = source(input_ids=ids).logits[:, :-1].reshape(-1, 259)
        q_logits = quant(input_ids=ids).logits[:, :-1].reshape(-1, 259)
    targets = ids[:, 1:].reshape(-1)
    dist = K.summarize(p_logits, targets, k=32)
    approx = K.compare(dist, q_logits, targets).kld
    exact = K.exact_kld(p_logits, q_logits)
    tail = float(np.exp(dist.log_tail).mean())
    assert 0.01 < exact.mean() < 2, exact.mean()  # a real difference to measure
    assert tail > 0.1  # the tail matters
    assert abs(approx.mean() / exact.mean() - 1) < 0.05, (approx.mean(), exact.mean(), tail)
    assert np.corrcoef(approx, exact)[0, 1] > 0.6  # per position, noisier


# end to end ---------------------------------------------------------------------------
def test_report_of_a_copy_is_good_and_the_source_pass_is_cached(tiny_llama_dir, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("QUANTDESK_CACHE", str(tmp_path / "cache"))
    copy = shutil.copytree(tiny_llama_dir, tmp_path / "copy")
    seen: list[str] = []
    steps: list[tuple[int, int]] = []
    assert not source_is_cached(tiny_llama_dir, ctx=64, text=TEXT)
    r = quality_report(copy, tiny_llama_dir, ctx=64, text=TEXT, progress=seen.append,
                       steps=lambda done, total: steps.append((done, total)))
    n = len(TEXT.encode()) // 64  # windows: each scored by the source, then by the copy
    assert steps == [(i, 2 * n + 2) for i in range(2 * n + 3)]  # + 2 generation checks
    assert source_is_cached(tiny_llama_dir, ctx=64, text=TEXT)
    assert not source_is_cached(tiny_llama_dir, ctx=32, text=TEXT)  # another window size
    assert r.kld_mean < 1e-6 and r.top1_agree == 100.0
    assert r.ppl == pytest.approx(r.ppl_source, rel=1e-5)
    assert r.positions == len(TEXT.encode()) // 64 * 31
    assert r.verdict == "good" and len(r.generation) == 3
    assert any(m.startswith("source model") for m in seen)
    assert len(list((tmp_path / "cache" / "quality").glob("*.npz"))) == 1
    seen.clear()
    steps.clear()
    again = quality_report(copy, tiny_llama_dir, ctx=64, text=TEXT, progress=seen.append,
                           steps=lambda done, total: steps.append((done, total)))
    assert not any(m.startswith("source model") for m in seen)
    assert steps == [(i, n + 1) for i in range(n + 2)]  # the source's part came from the cache
    assert again.ppl_source == r.ppl_source


def test_report_of_a_missing_model_is_a_user_error(tiny_llama_dir, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        quality_report(tmp_path / "nope", tiny_llama_dir, ctx=64, text=TEXT)


@pytest.mark.llama_cpp
def test_gguf_f32_of_a_tiny_model_agrees_with_its_source(make_tiny_model, demo_dir, tmp_path,
                                                         monkeypatch):
    """The GGUF side runs through llama.cpp, the source through transformers: same tokens,
    same windows, so an F32 file must match its source."""
    pytest.importorskip("llama_cpp")
    from gguf_helpers import with_demo_tokenizer

    from qtapp.engine.gguf.quantize import quantize_to_gguf

    monkeypatch.setenv("QUANTDESK_CACHE", str(tmp_path / "cache"))
    source = with_demo_tokenizer(make_tiny_model(tmp_path / "m", vocab_size=49152), demo_dir)
    gguf_file = tmp_path / "tiny-f32.gguf"
    quantize_to_gguf(source, gguf_file, "F32")
    r = quality_report(gguf_file, source, ctx=64, text=TEXT, generation=False)
    assert r.kld_mean < 1e-4 and r.top1_agree > 99.0
    assert r.ppl == pytest.approx(r.ppl_source, rel=1e-3)


# the demo model -----------------------------------------------------------------------
def _rtn_copy(demo_dir, out, bits: int, group_size: int):
    from transformers import AutoModelForCausalLM

    from qtapp.engine.quant.primitives import fake_quantize

    model = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name != "lm_head":
                m.weight.copy_(fake_quantize(m.weight, bits, group_size, True))
    model.save_pretrained(out)
    for f in demo_dir.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            shutil.copy(f, out)
    return out


@pytest.fixture(scope="module")
def demo_text():
    from qtapp.engine.quant.calibration import builtin_eval_text

    return builtin_eval_text()[:12000]  # ≈ 3 400 tokens: 6 windows of 512


@pytest.mark.slow
@pytest.mark.parametrize(("bits", "group_size", "verdict"), [(8, 128, "good"), (2, 0, "broken")])
def test_demo_rtn_verdicts(demo_dir, demo_text, tmp_path, bits, group_size, verdict):
    out = _rtn_copy(demo_dir, tmp_path / f"w{bits}", bits, group_size)
    r = quality_report(out, demo_dir, text=demo_text)
    assert r.verdict == verdict, r.summary()
    if verdict == "good":
        assert r.kld_mean < 0.02 and r.top1_agree > 95
    else:
        assert r.kld_mean > THRESHOLDS.broken_kld


def test_folder_size_counts_the_model_files_not_side_data(tmp_path):
    """AWQ's saved search (awq_search/) and a GGUF job's imatrix.gguf are not model size."""
    from qtapp.engine.quality.evaluate import folder_size

    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 20)
    (tmp_path / "imatrix.gguf").write_bytes(b"x" * 30)
    (tmp_path / "README.md").write_bytes(b"x" * 7)
    (tmp_path / "awq_search").mkdir()
    (tmp_path / "awq_search" / "search.safetensors").write_bytes(b"x" * 50)
    assert folder_size(tmp_path) == 120
    assert folder_size(tmp_path / "imatrix.gguf") == 30  # a file is its own size


@pytest.mark.parametrize("stage", [
    "source model: window 2",
    pytest.param("quantized model: window 2", marks=pytest.mark.slow),  # after a source pass
    pytest.param("generation", marks=pytest.mark.slow),
])
def test_a_cancel_is_seen_at_the_next_window_or_token(stage, tiny_llama_dir, tmp_path,
                                                      monkeypatch):
    from qtapp.engine.errors import Cancelled

    monkeypatch.setenv("QUANTDESK_CACHE", str(tmp_path / "cache"))
    copy = shutil.copytree(tiny_llama_dir, tmp_path / "copy")
    n = len(TEXT.encode()) // 64
    trigger = f"quantized model: window {n} of {n}" if stage == "generation" else stage
    seen: list[str] = []
    with pytest.raises(Cancelled):
        quality_report(copy, tiny_llama_dir, ctx=64, text=TEXT, progress=seen.append,
                       should_cancel=lambda: any(m.startswith(trigger) for m in seen))
    assert seen[-1].startswith(trigger)  # no other window after it
