"""Faster fast-mode blocks: the attention output kept across true-sequential GPTQ passes
(quant/attention_reuse.AttentionReuse) and the checkpoint written on a background thread
(quant/pipeline.CheckpointWriter) change no number.

Each family runs the real pipeline twice on the same tokens, with and without the kept
attention output (batch 4 over 12 samples: three mini-batches, so a shifted or stale one
shows), and every quantized tensor of every block (codes, scales, zeros: they depend on the
block's inputs, i.e. on the previous block's outputs) and every layer error must be
bit-identical. Llama, the hybrid Qwen3.5 (Gated DeltaNet blocks, whose mixer output is
linear_attn.out_proj) and Gemma 4 with shared keys and values (its later layers read the
keys and values earlier layers stored during the o pass). The comparison is shown to fail
on a deliberately wrong cache (a mini-batch shifted by one, a stale buffer); a mixer whose
output is not o_proj(its input) is caught by the first-mini-batch check and recomputed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from family_helpers import build_family_model
from test_gemma_multimodal import EMBED, GEMMA4_TEXT
from test_hybrid import EMBED_STD, QWEN3_5
from tiny_models import build_tiny_model

from qtapp.engine import events as ev
from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme
from qtapp.engine.errors import Cancelled
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.quant.attention_reuse import AttentionReuse, mixer_output
from qtapp.engine.quant.pipeline import quantize_blocks
from qtapp.engine.quant.qstore import QuantStore

SAMPLES, SEQ, BATCH = 12, 32, 4


class Run:
    def __init__(self, store: QuantStore, errors: dict[str, float], logs: list[str],
                 hits: int) -> None:
        self.store, self.errors, self.logs, self.hits = store, errors, logs, hits

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i in self.store.completed():
            modules, _meta, floats = self.store.load_block(i)
            for name, qw in modules.items():
                for part in ("q", "scale", "zero", "g_idx"):
                    out[f"{i}.{name}.{part}"] = getattr(qw, part)
            out.update({f"{i}.{k}": v for k, v in floats.items()})
        return out


def _job(folder: Path, resume: bool = False) -> JobSpec:
    return JobSpec(model=str(folder), method="gptq", out=str(folder.parent / "out"),
                   scheme=QuantScheme(4, 16, True), evaluate=False, resume=resume,
                   calibration=CalibrationSpec(samples=SAMPLES, seq_len=SEQ))


def _run(folder: Path, store_dir: Path, reuse: bool, resume: bool = False,
         cancel_after: int | None = None) -> Run:
    """cancel_after: the job is cancelled once that many blocks are done (their progress
    event sent: the last one's checkpoint write may still be running)."""
    info = resolve_model(str(folder))
    tokens = torch.randint(3, 250, (SAMPLES, SEQ), generator=torch.Generator().manual_seed(0))
    errors: dict[str, float] = {}
    logs: list[str] = []
    hits = [0]
    real = AttentionReuse._forward

    def counted(self, *args, **kwargs):
        hits[0] += self.state == "on"
        return real(self, *args, **kwargs)

    done = [0]

    def emit(e: ev.Event) -> None:
        if isinstance(e, ev.Progress) and e.stage == "quantize":
            done[0] = e.step
        if isinstance(e, ev.Layer):
            errors[e.module] = e.rel_error
        elif isinstance(e, ev.Log):
            logs.append(e.message)

    store = QuantStore(store_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AttentionReuse, "_forward", counted)
        quantize_blocks(_job(folder, resume), info, tokens, store, emit,
                        lambda: cancel_after is not None and done[0] >= cancel_after,
                        torch.device("cpu"), batch=BATCH, reuse_attention=reuse)
    return Run(store, errors, logs, hits[0])


def _differences(a: Run, b: Run) -> list[str]:
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys() and a.errors.keys() == b.errors.keys()
    return [k for k in ta if not torch.equal(ta[k], tb[k])] + \
        [k for k in a.errors if a.errors[k] != b.errors[k]]


FAMILIES = {
    "llama": lambda d: build_tiny_model(d / "llama", num_hidden_layers=3),
    "qwen3_5_text": lambda d: build_family_model(d / "qwen3_5_text", "qwen3_5_text",
                                                 embed_std=EMBED_STD, **QWEN3_5),
    "gemma4_text": lambda d: build_family_model(d / "gemma4_text", "gemma4_text",
                                                embed_std=EMBED["gemma4"],
                                                vocab_size_per_layer_input=259, **GEMMA4_TEXT),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = FAMILIES[name](tmp_path_factory.mktemp(name))
        return cache[name]
    return get


@pytest.mark.parametrize("family", [  # the hybrid and shared-KV models take 25 s each
    "llama", *(pytest.param(f, marks=pytest.mark.slow) for f in ("qwen3_5_text", "gemma4_text"))])
def test_kept_attention_output_changes_no_number(family: str, models, tmp_path: Path) -> None:
    folder = models(family)
    plain = _run(folder, tmp_path / "plain", reuse=False)
    kept = _run(folder, tmp_path / "kept", reuse=True)
    n_blocks = resolve_model(str(folder)).n_layers
    # the replacement served every later pass of every block: gate/up, down (and Gemma 4's
    # per-layer-input passes) and the block's forward, all mini-batches but the checked one
    passes = {"llama": 3, "qwen3_5_text": 3, "gemma4_text": 5}[family]
    assert kept.hits == n_blocks * (passes * 3 - 1), kept.hits
    assert plain.hits == 0 and not kept.logs
    assert len(kept.store.completed()) == n_blocks
    assert _differences(plain, kept) == []


def test_mixer_output_from_the_family_table() -> None:
    q, k, v, o = (f"self_attn.{n}_proj" for n in "qkvo")
    assert mixer_output(((q, k, v), (o,), ("mlp.gate_proj", "mlp.up_proj"))) == o
    assert mixer_output((("linear_attn.in_proj_qkv", "linear_attn.in_proj_z"),
                         ("linear_attn.out_proj",), ("mlp.up_proj",))) == "linear_attn.out_proj"
    assert mixer_output(((q,), (o,), ("mlp.down_proj",))) == o  # Gemma 4's shared-KV layers
    # not true-sequential (one group), or a second group that is not the mixer's output
    assert mixer_output(((q, k, v, o, "mlp.down_proj"),)) is None
    assert mixer_output(((q, k, v), ("mlp.gate_proj",), ("mlp.down_proj",))) is None


def _shifted_rows(self, k: int):
    """A deliberately wrong cache: every mini-batch after the first gets the next one's
    rows (the first, which the check compares, stays right)."""
    m = k % self.n_batches
    shifted = m if m == 0 else m % (self.n_batches - 1) + 1
    return shifted * self.batch, min(self.batch, self.n - shifted * self.batch)


def test_a_shifted_cache_is_caught_by_the_comparison(models, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = models("llama")
    plain = _run(folder, tmp_path / "plain", reuse=False)
    start = AttentionReuse.start

    def start_then_shift(self):  # the kept rows are right; the lookup is shifted
        start(self)
        self._rows = lambda k: _shifted_rows(self, k)
    monkeypatch.setattr(AttentionReuse, "start", start_then_shift)
    wrong = _run(folder, tmp_path / "wrong", reuse=True)
    assert wrong.hits > 0 and _differences(plain, wrong), "a shifted cache went unnoticed"


def test_a_stale_cache_is_caught_by_the_comparison(models, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every mini-batch but the first finds the first one's rows in its slot of the kept
    inputs (a buffer that was not refreshed)."""
    folder = models("llama")
    plain = _run(folder, tmp_path / "plain", reuse=False)
    keep = AttentionReuse.keep

    def stale_keep(self):
        keep(self)
        self._hook.remove()

        def keeper(_m, args):
            x = args[0]
            start, m = self._rows(self.calls)
            self.calls += 1
            if self.kept is None:
                self.kept = torch.empty((self.n, *x.shape[1:]), dtype=x.dtype)
            self.kept[start:start + m].copy_(x if start == 0 else self.kept[:m])

        self._hook = self.linear.register_forward_pre_hook(keeper)

    monkeypatch.setattr(AttentionReuse, "keep", stale_keep)
    wrong = _run(folder, tmp_path / "wrong", reuse=True)
    assert wrong.hits > 0 and _differences(plain, wrong), "a stale cache went unnoticed"


def test_a_mixer_whose_output_is_not_o_proj_of_its_input_is_recomputed(
        models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A family whose attention does something after o_proj (here: adds 1e-3) fails the
    first-mini-batch check: the block recomputes the attention, with a log line, and the
    numbers equal those of a run that never kept it."""
    from transformers.models.llama import modeling_llama

    real = modeling_llama.LlamaAttention.forward

    def shifted(self, *args, **kwargs):
        out, weights = real(self, *args, **kwargs)
        return out + 1e-3, weights

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", shifted)
    folder = models("llama")
    plain = _run(folder, tmp_path / "plain", reuse=False)
    kept = _run(folder, tmp_path / "kept", reuse=True)
    assert kept.hits == 0
    assert len(kept.logs) == 1 and "recomputed" in kept.logs[0], kept.logs
    assert _differences(plain, kept) == []


def test_gemma2_whose_eager_attention_returns_its_weights_is_recomputed(
        tmp_path: Path) -> None:
    """Gemma 2 runs eager attention (softcapping), which returns its attention weights
    besides its output: the check cannot stand in for those, so the attention is recomputed
    (every other family of the table passes the check; measured for each, listed in the
    docs)."""
    folder = build_family_model(tmp_path / "gemma2", "gemma2", embed_std=0.3)
    plain = _run(folder, tmp_path / "plain", reuse=False)
    kept = _run(folder, tmp_path / "kept", reuse=True)
    assert kept.hits == 0 and len(kept.logs) == 1, kept.logs
    assert _differences(plain, kept) == []


# --------------------------------------------------------------- the checkpoint writer


def test_resume_after_a_cancel_gives_the_same_checkpoint(models, tmp_path: Path) -> None:
    """A cancel right after block 0 (its write may still be running): block 0 is on disk
    once the job has stopped, block 1 is not, and the resumed job's checkpoint is bit-identical
    to an uninterrupted one."""
    folder = models("llama")
    whole = _run(folder, tmp_path / "whole", reuse=True)
    store_dir = tmp_path / "cut"
    with pytest.raises(Cancelled):
        _run(folder, store_dir, reuse=True, cancel_after=1)
    assert QuantStore(store_dir).completed() == [0]
    assert not list(store_dir.glob(".block-*.tmp-*"))  # no half-written file left behind
    resumed = _run(folder, store_dir, reuse=True, resume=True)
    assert resumed.store.completed() == [0, 1, 2]
    assert _differences(whole, resumed) == []


def test_a_failed_background_write_is_the_jobs_error(models, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = models("llama")
    real = QuantStore.save_block
    threads: list[str] = []

    def failing(self, index, *args, **kwargs):
        threads.append(threading.current_thread().name)
        if index == 1:
            raise OSError(28, "No space left on device")
        return real(self, index, *args, **kwargs)

    monkeypatch.setattr(QuantStore, "save_block", failing)
    with pytest.raises(OSError, match="No space left"):
        _run(folder, tmp_path / "s", reuse=True)
    assert all(t.startswith("checkpoint") for t in threads), threads  # written off the loop
    assert QuantStore(tmp_path / "s").completed() == [0]  # block 1 never counted as done


def test_the_last_write_is_complete_when_quantize_blocks_returns(
        models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = models("llama")
    real = QuantStore.save_block

    def slow(self, index, *args, **kwargs):
        if index == 2:
            time.sleep(0.5)  # the last block's write finishes well after its quantization
        return real(self, index, *args, **kwargs)

    monkeypatch.setattr(QuantStore, "save_block", slow)
    run = _run(folder, tmp_path / "s", reuse=True)
    assert run.store.completed() == [0, 1, 2]  # what export reads is all there


# --------------------------------------------------------------- the planner


def test_planner_keeps_the_attention_output_only_where_it_fits(tmp_path: Path) -> None:
    """8B shape, GPTQ, 128 × 2048 tokens: fast mode is 9.77 GiB without the kept attention
    output and 4 GiB more with it (128 × 2048 × 4096 float32). A 16 GB card (14.4 GiB
    usable) takes both, a 12 GB card (10.8) only the recomputing fast mode, an 8 GB card
    lean mode; the plan's peak VRAM is that of the chosen mode and its table says which."""
    from dataclasses import replace

    from test_lean_vram import LLAMA_8B, _job

    from qtapp.engine.planning import planner
    from qtapp.engine.planning.shape import ModelShape
    from tests.shapes import GiB, hardware, model_info

    shape = ModelShape.from_config(LLAMA_8B)
    kept = planner.working_bytes(shape, "gptq", 128, 2048, reuse=True)
    plain = planner.working_bytes(shape, "gptq", 128, 2048)
    assert kept - plain == planner.attention_reuse_bytes(shape, 128 * 2048) == 4 * GiB
    assert planner.working_bytes(shape, "awq", 128, 2048, reuse=True) == \
        planner.working_bytes(shape, "awq", 128, 2048)  # AWQ keeps nothing
    job = _job("gptq")
    mode, why = planner.vram_mode(job, shape, hardware(16).best_gpu)
    assert mode == "fast" and "attention output kept" in why, why
    mode, why = planner.vram_mode(job, shape, hardware(12).best_gpu)
    assert mode == "fast-recompute" and "attention recomputed" in why, why
    assert planner.vram_mode(job, shape, hardware(8).best_gpu)[0] == "lean"
    assert not planner.reuses_attention(job, "fast-recompute")
    assert not planner.reuses_attention(job, "lean")
    one_pass = replace(job, gptq=replace(job.gptq, true_sequential=False))
    assert planner.vram_mode(one_pass, shape, hardware(12).best_gpu)[0] == "fast"
    info = model_info(tmp_path, "Llama-8B-test", config=LLAMA_8B, n_params=8_030_261_248)
    for gib, peak, words in ((16, kept, "attention output kept"),
                             (12, plain, "attention recomputed")):
        plan = planner.plan_job(job, info, hw=hardware(gib), out=tmp_path / "o")
        assert plan.peak_vram == peak and words in plan.table(), (gib, plan.table())
