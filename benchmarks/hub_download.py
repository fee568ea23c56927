"""Hub download against the local Hub of tests/hub_fixture.py: throughput of the one download
(qtapp/engine/model/hub_files.py) next to huggingface-hub's own hf_hub_download of the same
file, and how soon a cancel returns (server streaming, server stalled).

    python benchmarks/hub_download.py [--mib 256] [--runs 5]

Loopback only: it measures QuantDesk's own cost per byte (reading, hashing, writing), not a
network. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from huggingface_hub import constants, hf_hub_download

from qtapp.engine.errors import Cancelled
from qtapp.engine.model import hub_files
from tests.hub_fixture import FakeRepo, HubServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    server = HubServer().start()
    os.environ["HF_ENDPOINT"] = server.url
    os.environ.pop("HF_HUB_OFFLINE", None)
    constants.HF_HUB_OFFLINE = False
    data = os.urandom(args.mib * 2**20)
    rows = []
    for i in range(args.runs):
        server.add(FakeRepo(f"o/m{i}", {"config.json": b"{}", "model.safetensors": data}))
        constants.HF_HUB_CACHE = tempfile.mkdtemp()
        t0 = time.perf_counter()
        hub_files.download(hub_files.plan_download(f"o/m{i}"))
        ours = time.perf_counter() - t0
        cache = tempfile.mkdtemp()
        t0 = time.perf_counter()
        hf_hub_download(f"o/m{i}", "model.safetensors", cache_dir=cache, endpoint=server.url)
        theirs = time.perf_counter() - t0
        rows.append(("download MiB/s", args.mib / ours, args.mib / theirs))
    for slow, what in ((0.0005, "cancel → return, streaming (s)"),
                       (2.0, "cancel → return, server stalled (s)")):
        for i in range(args.runs):
            repo = f"c/{slow}-{i}"
            server.add(FakeRepo(repo, {"config.json": b"{}", "model.safetensors": data}))
            constants.HF_HUB_CACHE = tempfile.mkdtemp()
            plan = hub_files.plan_download(repo)
            server.slow = slow
            flag, asked = threading.Event(), []
            threading.Timer(0.7, lambda a=asked, f=flag: (a.append(time.monotonic()),
                                                            f.set())).start()
            try:
                hub_files.download(plan, should_cancel=flag.is_set)
            except Cancelled:
                rows.append((what, time.monotonic() - asked[0], None))
            server.slow = 0.0
    server.close()
    print(f"{'measure':40} {'QuantDesk':>12} {'hf_hub_download':>16}   ({args.mib} MiB file, "
          f"{args.runs} runs, median)")
    for what in dict.fromkeys(r[0] for r in rows):
        ours = sorted(r[1] for r in rows if r[0] == what)
        theirs = sorted(r[2] for r in rows if r[0] == what and r[2] is not None)
        med = ours[len(ours) // 2]
        other = f"{theirs[len(theirs) // 2]:16.2f}" if theirs else f"{'—':>16}"
        print(f"{what:40} {med:12.2f} {other}   (range {ours[0]:.2f}–{ours[-1]:.2f})")


if __name__ == "__main__":
    main()
