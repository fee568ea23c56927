"""A scripted stand-in for the engine worker, for GUI tests.

    fake_worker.py --job JOB.json --mode ok|cooperative|hang|crash|exit|fail|noise|after
                   [--blocks N] [--delay SECONDS] [--burst] [--plan]

ok: started, progress and 7 layer events per block, an artifact, a result. cooperative:
like ok but slow, and answers `cancel` on stdin with a cancelled event. hang: ignores
cancel and SIGTERM. crash: writes a traceback to stderr, then SIGKILLs itself mid-run.
exit: exits with code 1 and no final event. fail: a failed event. noise: a non-event line.
after: like ok, with a log event written after the result (which does not count).
--plan with ok: a plan event (PLAN) and a result, as `worker --plan` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from qtapp.engine import events as ev
from qtapp.engine.results import ExportResult, JobResult, Quality, Sizes

KINDS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
         ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"),
         ("mlp", "down_proj"))


BURST: list[str] = []  # with --burst, every event is written at the end in one write
PLAN = {"model": "fake-model", "method": "rtn", "device": "cpu", "peak_ram": 2**30,
        "peak_vram": 0, "temp_disk": 2**20, "final_disk": 2**20, "seconds": 12.5,
        "ram_total": 2**34, "vram_total": 0, "disk_free": 2**36, "probed": True,
        "block_seconds": 1.5, "problems": [], "fixes": [], "fits": True}


def emit(event: ev.Event) -> None:
    if BURST:
        BURST.append(ev.encode(event) + "\n")
        return
    sys.stdout.write(ev.encode(event) + "\n")
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--job", required=True)
    p.add_argument("--mode", default="ok")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--burst", action="store_true")
    p.add_argument("--plan", action="store_true")
    args = p.parse_args()
    if args.burst:
        BURST.append("")
    job = json.loads(Path(args.job).read_text(encoding="utf-8"))
    if args.plan and args.mode == "ok":
        emit(ev.Plan(plan=PLAN))
        emit(ev.Result(out="", seconds=0.1))
        return 0
    cancel = threading.Event()
    if args.mode == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def watch() -> None:
            for line in sys.stdin:
                if line.split()[:1] == ["cancel"]:  # `cancel` or `cancel SIGTERM`
                    cancel.set()
                    return
        threading.Thread(target=watch, daemon=True).start()
    emit(ev.Started(model="fake-model", method=job["method"], out=job["out"],
                    total_steps=args.blocks, job=job))
    emit(ev.Log(level="info", message="fake worker started"))
    if args.mode == "noise":
        print("this line is not an event", flush=True)
    if args.mode == "fail":
        emit(ev.Failed(message="the model folder has no tokenizer; copy it in", kind="user"))
        return 1
    bits = job["scheme"]["bits"]
    for block in range(args.blocks):
        for i, (group, name) in enumerate(KINDS):
            if cancel.is_set() and args.mode != "hang":
                emit(ev.Cancelled())
                return 3
            if args.mode == "crash" and block == 1:
                sys.stderr.write("Traceback (most recent call last):\n  File \"pipeline.py\"\n"
                                 "MemoryError: boom in block 1\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            module = f"model.layers.{block}.{group}.{name}"
            emit(ev.Layer(block=block, module=module, kind=ev.module_kind(module),
                          bits=8 if group == "self_attn" and job["rules"] else bits,
                          group_size=job["scheme"]["group_size"],
                          rel_error=1e-3 * (1 + block) * (1 + i), seconds=0.01,
                          method=job["method"]))
            time.sleep(args.delay)
        emit(ev.Progress(step=block + 1, total=args.blocks, stage="quantize",
                         message=f"block {block}"))
    if args.mode in ("hang", "cooperative"):
        while True:
            if cancel.is_set() and args.mode == "cooperative":
                emit(ev.Cancelled())
                return 3
            time.sleep(0.05)
    if args.mode == "exit":
        sys.stderr.write("something went wrong\n")
        return 1
    emit(ev.Artifact(path=job["out"] + "/model.safetensors", kind="safetensors", bytes=1234))
    result = JobResult(model="fake-model", source="/models/fake", method=job["method"],
                       export=ExportResult(format="gptq",
                                           files=["config.json", "model.safetensors"]),
                       scheme="W4 g128 sym", calibration=[8, 64],
                       sizes=Sizes(bytes=90_000_000, source_bytes=270_000_000),
                       quality=Quality(ppl=12.5, ppl_source=12.0), out=job["out"], seconds=1.5)
    emit(ev.Result(out=job["out"], seconds=1.5, summary=result.to_dict()))
    if args.mode == "after":
        emit(ev.Log(level="info", message="written after the result"))
    return 0


def run() -> int:
    code = main()
    if BURST:
        sys.stdout.write("".join(BURST))
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(run())
