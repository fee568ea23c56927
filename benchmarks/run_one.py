"""Run one QuantDesk job in this process and print one JSON line: seconds, peak RSS and the
job's result (JobResult.to_dict()).

Used by the benchmark tables so that each row's peak RSS is its own process's.
    python benchmarks/run_one.py JOB.json [TOKENS.pt]
"""

import json
import resource
import sys
import time
from pathlib import Path

import torch

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.engine.jobs.job import run_job


def main() -> None:
    job = JobSpec.from_json(Path(sys.argv[1]).read_text(encoding="utf-8"))
    tokens = torch.load(sys.argv[2]) if len(sys.argv) > 2 else None
    layers: list[dict] = []

    def emit(e: ev.Event) -> None:
        if isinstance(e, ev.Layer):
            layers.append({"module": e.module, "bits": e.bits, "rel_error": e.rel_error,
                           "seconds": e.seconds})

    t0 = time.perf_counter()
    result = run_job(job, emit, lambda: False, tokens=tokens)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 1), "peak_rss_mb": round(rss),
                      "result": result.to_dict(), "layers": layers}))


if __name__ == "__main__":
    main()
