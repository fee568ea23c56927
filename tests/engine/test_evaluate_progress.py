"""The quality check after quantizing reports its own progress: the gate's windows and
generation checks with the time left from their rate, not the blocks quantized before it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from qtapp.engine import events as ev
from qtapp.engine.jobs import job as job_module


def test_the_quality_gate_progress_counts_its_windows(monkeypatch, tmp_path: Path) -> None:
    clock = [100.0]
    monkeypatch.setattr(job_module.time, "perf_counter", lambda: clock[0])

    def fake_report(model, source, *, progress, should_cancel, trust_remote_code, steps):
        steps(0, 4)  # the gate knows its total: 4 units of work
        for i in range(4):
            clock[0] += 10.0  # each unit takes 10 s
            progress(f"quantized model: window {i + 1} of 4")
            steps(i + 1, 4)
        return SimpleNamespace(verdict="good", reasons=[], summary=lambda: "good", ppl=10.0,
                               ppl_source=9.9, kld_mean=0.01, kld_p99=0.1, top1_agree=95.0,
                               generation=[])

    monkeypatch.setattr(job_module, "quality_report", fake_report)
    seen: list[ev.Event] = []
    info = SimpleNamespace(path=tmp_path, n_layers=30)
    job_module._quality(tmp_path / "out", info, seen.append)
    bars = [(e.step, e.total, e.eta_s) for e in seen
            if isinstance(e, ev.Progress) and e.stage == "evaluate"]
    assert bars[0][:2] == (0, 0)  # before the gate knows its total: an empty bar
    assert (0, 4, None) in bars
    assert (1, 4, 30.0) in bars  # 10 s for 1 unit, 3 units left
    assert (3, 4, 10.0) in bars
    assert bars[-1] == (4, 4, None)
    assert all(total != 30 for _, total, _ in bars)  # never the quantized blocks' count
