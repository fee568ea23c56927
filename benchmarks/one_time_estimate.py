"""The three places a job's time is shown, side by side with the time it took (issue 22,
item 6): the method page (plan_job in the window's process, as widgets/plan_card.py calls
it), `quantdesk quantize --dry-run` (its own process; times two blocks) and the plan the
worker logs when the job starts, then the job itself (`quantize --json`, its result's
resources.predicted / measured). The window's defaults on the demo: GPTQ W4, group size auto
(64), 128 × 512 calibration, quality gate on. Each plan is asked twice: before the dry run
(the formulas at this machine's recorded matmul rate) and after it (the recorded probe).
Prints one Markdown table and the load average before and after each step.

    python benchmarks/one_time_estimate.py [--model demo] [--method gptq] [--samples 128]
                                           [--seq-len 512] [--no-eval]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTDESK = [sys.executable, "-m", "qtapp"]
WINDOW = """
import sys
from qtapp.engine.config import JobSpec
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.planning.planner import plan_job
job = JobSpec.from_json(sys.stdin.read())
print(plan_job(job, resolve_model(job.model)).seconds)
"""


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def window_figure(job_json: str) -> float:
    """The method page's figure: plan_job in a fresh process, as the plan card asks it."""
    r = subprocess.run([sys.executable, "-c", WINDOW], input=job_json, capture_output=True,
                       text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def _seconds(text: str) -> float:
    parts = {unit: int(n) for n, unit in re.findall(r"(\d+) (h|min|s)\b", text)}
    return parts.get("h", 0) * 3600 + parts.get("min", 0) * 60 + parts.get("s", 0)


def main() -> int:
    from qtapp.cli import build_parser
    from qtapp.commands.quantize import job_from_args
    from qtapp.engine.units import format_duration

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--method", default="gptq")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="one-time-estimate-") as tmp:
        common = ["quantize", "--model", args.model, "--method", args.method, "--out",
                  str(Path(tmp) / "out"), "--samples", str(args.samples), "--seq-len",
                  str(args.seq_len), "--no-resume", *(["--no-eval"] if args.no_eval else [])]
        job_json = job_from_args(build_parser().parse_args(common)).to_json()
        before = load()
        rows.append(("method page, before any dry run", window_figure(job_json), before))
        r = subprocess.run([*QUANTDESK, *common, "--dry-run"], capture_output=True,
                           text=True, check=True)
        dry = _seconds(re.search(r"wall time\s+(.+)", r.stderr).group(1))
        rows.append(("`--dry-run` (two blocks timed)", dry, load()))
        rows.append(("method page, after it", window_figure(job_json), load()))
        while True:  # another job with these settings holds their checkpoint: wait
            start = load()
            r = subprocess.run([*QUANTDESK, *common, "--json"], capture_output=True,
                               text=True, check=False)
            if r.returncode != 2 or '"busy"' not in r.stdout:
                break
            time.sleep(30)
        r.check_returncode()
        events = [json.loads(line) for line in r.stdout.splitlines()]
        log = next(e["message"] for e in events
                   if e["type"] == "log" and e["message"].startswith("plan for "))
        rows.append(("worker log (the job's plan)",
                     _seconds(re.search(r"wall time\s+(.+)", log).group(1)), start))
        summary = next(e for e in events if e["type"] == "result")["summary"]
        measured = summary["resources"]["measured"]
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in measured["stage_seconds"].items())
        rows.append((f"measured ({stages})", measured["seconds"], f"{start} → {load()}"))
    print("| where | wall time | load average (1/5/15 min) |")
    print("|---|---|---|")
    for where, seconds, at in rows:
        print(f"| {where} | {format_duration(seconds)} | {at} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
