"""Predicted against measured peak RSS and wall time of whole quantize jobs.

For each row the plan is made in a fresh process (`quantdesk quantize … --dry-run`, which
times one block), then the job runs in another fresh process (`quantdesk quantize … --json`)
and its result event carries the measured peak RSS and seconds (summary.resources). Jobs
include the quality gate unless --no-eval. Rows: the demo with RTN, GPTQ, AWQ, GGUF; with
--model FOLDER another model (e.g. the random 1B Llama of benchmarks/peak_rss_1b.py).

    python benchmarks/plan_vs_measured.py [--model demo|FOLDER] [--methods rtn,gptq,awq,gguf]
                                          [--samples 16] [--seq-len 256] [--no-eval]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

QUANTDESK = [sys.executable, "-m", "qtapp"]


def _seconds(text: str) -> float:
    """Seconds of a duration as units.format_duration writes it: '45 s', '3 min 07 s',
    '1 h 05 min'."""
    parts = {unit: int(n) for n, unit in re.findall(r"(\d+) (h|min|s)\b", text)}
    return parts.get("h", 0) * 3600 + parts.get("min", 0) * 60 + parts.get("s", 0)


def planned(common: list[str]) -> tuple[float, float]:
    """(peak RAM bytes, seconds) from the dry run's plan table."""
    from qtapp.engine.units import parse_size

    r = subprocess.run([*QUANTDESK, *common, "--dry-run"], capture_output=True, text=True,
                       check=True)
    ram = re.search(r"peak RAM\s+([\d.]+ [KMGT]?i?B)", r.stderr)
    t = re.search(r"wall time\s+(.+)", r.stderr)
    if ram is None or t is None:
        raise RuntimeError(f"no plan in the dry run's output:\n{r.stderr[-2000:]}")
    return float(parse_size(ram.group(1))), float(_seconds(t.group(1)))


def measured(common: list[str]) -> tuple[float, float, str]:
    """(peak RSS bytes, seconds, the stage in which the peak was reached)."""
    r = subprocess.run([*QUANTDESK, *common, "--json", "--ignore-plan"], capture_output=True,
                       text=True, check=True)
    result = [json.loads(line) for line in r.stdout.splitlines() if '"result"' in line][-1]
    m = result["summary"]["resources"]["measured"]
    stages = m.get("stage_peak_ram", {})
    where = next((s for s, v in stages.items() if v >= m["peak_ram"]), "?")
    steps = ", ".join(f"{s} {v / 2**20:,.0f}" for s, v in stages.items())
    print(f"  stage peaks (MiB, cumulative): {steps}", file=sys.stderr, flush=True)
    times = ", ".join(f"{s} {v:.0f}" for s, v in m.get("stage_seconds", {}).items())
    print(f"  stage seconds: {times}", file=sys.stderr, flush=True)
    return float(m["peak_ram"]), float(m["seconds"]), where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--methods", default="rtn,gptq,awq,gguf")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args()
    print("| method | peak RSS predicted / measured | peak in | wall time predicted / measured |")
    print("|---|---|---|---|")
    for method in args.methods.split(","):
        with tempfile.TemporaryDirectory(prefix="plan-vs-measured-") as tmp:
            common = ["quantize", "--model", args.model, "--method", method, "--out",
                      str(Path(tmp) / "out"), "--samples", str(args.samples), "--seq-len",
                      str(args.seq_len), "--group-size", "64", "--no-resume"]
            if args.no_eval:
                common.append("--no-eval")
            p_ram, p_s = planned(common)
            m_ram, m_s, where = measured(common)
        print(f"| {method} | {p_ram / 2**20:,.0f} / {m_ram / 2**20:,.0f} MiB "
              f"({(p_ram / m_ram - 1) * 100:+.0f} %) | {where} | {p_s:.0f} / {m_s:.0f} s "
              f"({(p_s / m_s - 1) * 100:+.0f} %) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
