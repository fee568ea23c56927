"""How fast the window opens, and how long the Qt event loop ever stalls during a run.

    python benchmarks/gui_responsiveness.py [--runs 3] [--events RUN.jsonl]

open: a fresh interpreter imports the GUI, builds the window and shows it (offscreen);
the time from process start to the first shown frame (the hardware scan finishes later, in
the background). stall: a 5 ms QTimer records its ticks while the window drives a job;
a stall is the longest gap between two ticks minus 5 ms. Jobs: the real worker on a tiny
random Llama (RTN W8, with evaluation), and, with --events, a recorded run's events
replayed as one burst (no delays) through the real EngineProcess.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TICK_MS = 5

OPEN_SNIPPET = """
import os, time, psutil
t_start = psutil.Process().create_time()
from qtapp.gui.app import create_app
app = create_app(['quantdesk'])
from qtapp.gui.main_window import MainWindow
w = MainWindow()
w.show()
app.processEvents()
print(time.time() - t_start)
w.close()
"""


def open_time(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, QUANTDESK_DATA_DIR=tmp, PYTHONPATH=str(ROOT))
            out = subprocess.run([sys.executable, "-c", OPEN_SNIPPET], capture_output=True,
                                 text=True, env=env, check=True, cwd=ROOT)
            times.append(float(out.stdout.strip().splitlines()[-1]))
    return times


def stall_during(window, start_job) -> tuple[float, float, int, str]:
    """(worst gap - tick, p99 gap - tick, ticks, when the worst was) in ms while
    `start_job()` runs to the end."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    done: list[object] = []
    marks: list[tuple[float, str]] = []
    engine = window.engine
    engine.started.connect(lambda e: marks.append((time.perf_counter(), "started")))
    engine.layer.connect(lambda e: marks.append((time.perf_counter(), "layers")))
    engine.progress.connect(lambda e: marks.append((time.perf_counter(), e.stage)))
    window.page("run").finished.connect(lambda outcome, job: done.append(outcome))
    timer.start()
    start_job()
    while not done:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    pairs = [((b - a) * 1000 - TICK_MS, b) for a, b in itertools.pairwise(stamps)]
    gaps = sorted(g for g, _ in pairs)
    worst_at = max(pairs)[1]
    phase = next((name for t, name in reversed(marks) if t <= worst_at), "before started")
    outcome = done[0]
    if not outcome.ok:
        raise RuntimeError(f"the job did not finish: {outcome.message}")
    return gaps[-1], gaps[int(0.99 * (len(gaps) - 1))], len(stamps), phase


def idle_stall(seconds: float) -> tuple[float, float, int]:
    """The same measurement with nothing to do: what the OS scheduler alone costs."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    gaps = sorted((b - a) * 1000 - TICK_MS for a, b in itertools.pairwise(stamps))
    return gaps[-1], gaps[int(0.99 * (len(gaps) - 1))], len(stamps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--events", type=Path, help="a recorded `quantize --json` run to replay")
    args = p.parse_args()

    rows = []
    times = open_time(args.runs)
    rows.append(("window opens (process start → shown)",
                 (f"median {statistics.median(times):.2f} s, max {max(times):.2f} s over "
                 f"{len(times)} runs")))

    tmp = Path(tempfile.mkdtemp(prefix="quantdesk-bench-"))
    os.environ["QUANTDESK_DATA_DIR"] = str(tmp / "data")
    os.environ.setdefault("QUANTDESK_CACHE", str(tmp / "cache"))
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_model
    from PySide6.QtTest import QTest

    from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme
    from qtapp.gui.app import create_app
    from qtapp.gui.engine_process import EngineProcess
    from qtapp.gui.main_window import MainWindow

    create_app(["quantdesk"])
    tiny = build_tiny_model(tmp / "tiny-llama")
    window = MainWindow(scan=False)
    window.show()
    QTest.qWait(1500)  # the window builds its chart after the first frame
    job = JobSpec(model=str(tiny), method="rtn", out=str(tmp / "out-rtn"),
                  scheme=QuantScheme(8, 32, True),
                  calibration=CalibrationSpec(samples=4, seq_len=32))
    worst, p99, ticks = idle_stall(10.0)
    rows.append(("stall, idle window (scheduler noise)",
                 f"worst {worst:.0f} ms, p99 {p99:.0f} ms ({ticks} ticks)"))
    worst, p99, ticks, phase = stall_during(window, lambda: window.start_job(job))
    rows.append(("stall, real worker, tiny Llama RTN W8",
                 f"worst {worst:.0f} ms (after '{phase}'), p99 {p99:.0f} ms ({ticks} ticks)"))

    if args.events:
        burst = [sys.executable, str(ROOT / "scripts" / "gui_screenshots.py"), "--replay",
                 str(args.events), "--no-delay"]
        window.close()
        window = MainWindow(engine=EngineProcess(command=lambda job_path: burst), scan=False)
        window.show()
        QTest.qWait(1500)
        n = sum(1 for _ in args.events.open())
        replay_job = JobSpec(model="demo", method="gptq", out=str(tmp / "out-replay"))
        worst, p99, ticks, phase = stall_during(window, lambda: window.start_job(replay_job))
        rows.append((f"stall, {n} recorded events in one burst",
                     f"worst {worst:.0f} ms (after '{phase}'), p99 {p99:.0f} ms ({ticks} ticks)"))
    window.close()

    load = os.getloadavg()[0]
    print(f"\nQuantDesk window responsiveness (load average {load:.1f}, "
          f"{os.cpu_count()} CPUs)\n")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
