"""`quantdesk download REPO_ID`: fetch what quantizing needs from the Hub into the Hugging
Face cache, with progress; Ctrl+C leaves the partial file, and running it again resumes it."""

from __future__ import annotations

import argparse
import sys
import time

from qtapp.engine.units import format_duration, format_size


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download a Hub model's safetensors, config and "
                       "tokenizer into the Hugging Face cache (resumable; then quantize it by "
                       "its id)")
    p.add_argument("repo_id", help="the model's Hub id, org/name")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also fetch pickle weights (*.bin) when the model has no safetensors")


class DownloadPrinter:
    """One progress line (rewritten in place on a terminal, every few seconds otherwise)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = 0.0

    def __call__(self, p) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and p.done_bytes < p.total_bytes:
            return
        self.last = now
        pct = 100 * p.done_bytes / p.total_bytes if p.total_bytes else 100
        speed = f", {format_size(p.speed_bps)}/s" if p.speed_bps else ""
        eta = f", {format_duration(p.eta_s)} left" if p.eta_s else ""
        line = (f"{format_size(p.done_bytes)} of {format_size(p.total_bytes)} ({pct:.0f} %)"
                f"{speed}{eta}  {p.current_file}")
        self.stream.write(("\r" + line[:110].ljust(110)) if self.tty else line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.hub.download import check_disk, download, plan_download

    plan = plan_download(args.repo_id, args.revision, allow_pickle=args.allow_pickle)
    print(f"{args.repo_id} @ {plan.revision[:12]}: {len(plan.files)} files, "
          f"{format_size(plan.total_bytes)}"
          + (f" ({format_size(plan.cached_bytes())} already here)" if plan.cached_bytes()
             else "")
          + (f"; not needed for quantizing: {len(plan.skipped)} files" if plan.skipped else ""))
    check_disk(plan)
    printer = DownloadPrinter()
    try:
        folder = download(plan, on_progress=printer)
    except KeyboardInterrupt:
        printer.done()
        print("interrupted: the part downloaded is kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    printer.done()
    print(f"done: {folder}")
    print(f"quantize it with: quantdesk quantize {args.repo_id} --method gptq --out OUT")
    return 0
