"""`quantdesk eval MODEL [--against SOURCE]`: perplexity and size; with a source, the quality
gate (KL divergence, top-1 agreement, generation check, verdict; qtapp.engine.quality.gate)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qtapp.commands.chat import warn_remote_code
from qtapp.engine.config import EVAL_CTX
from qtapp.engine.errors import UserError
from qtapp.engine.units import format_size

# Engine modules that import torch are imported inside the functions that run the command: the
# command line imports every command module at start-up, to build its parser.

VERDICT_MARK = {"good": "GOOD", "degraded": "DEGRADED", "broken": "BROKEN"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity and size of a model; with --against, the "
                       "quality gate against its source")
    p.add_argument("model", help="'demo', a folder (plain, GPTQ, AWQ, compressed-tensors), a "
                   ".gguf file or a folder with one")
    p.add_argument("--against", help="source model to compare with ('demo', a folder or a "
                   ".gguf file): KL divergence, top-1 agreement, generation check, verdict")
    p.add_argument("--text", type=Path, help="evaluate on this UTF-8 text file instead")
    p.add_argument("--ctx", type=int, default=EVAL_CTX,
                   help=f"window length in tokens (default {EVAL_CTX}, as every job's evaluation)")
    p.add_argument("--no-generation", action="store_true",
                   help="skip the generation check (figures only)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let Python code shipped with the models run (custom tokenizers); "
                   "off by default, only for models you trust")


def _path(name: str, tokenizer: bool = True) -> Path:
    """The checked .gguf file or model folder of `name` (as quantize checks its model)."""
    from qtapp.engine.model.sources import resolve_loadable

    return resolve_loadable(name, tokenizer=tokenizer)


def _read_text(file: Path | None) -> str | None:
    if file is None:
        return None
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {file} as UTF-8 text: {e}") from None


def _print_report(path: Path, against: Path, d: dict[str, Any]) -> None:
    print(f"{path} against {against} ({d['positions']} positions, window {d['ctx']}):")
    print(f"  perplexity      {d['ppl']:.3f}   (source {d['ppl_source']:.3f})")
    print(f"  KL divergence   mean {d['kld_mean']:.4f}, 99th percentile {d['kld_p99']:.4f}")
    print(f"  top-1 agreement {d['top1_agree']:.1f} %")
    print(f"  size            {format_size(d['size_bytes'])} (source "
          f"{format_size(d['size_source_bytes'])})")
    for check in d["generation"]:
        flags = ", ".join(check["flags"]) or "ok"
        print(f"  [{flags}] {check['prompt']}\n      → {check['text'][:100]!r}")
    print(f"verdict: {VERDICT_MARK[d['verdict']]}")
    for reason in d["reasons"]:
        print(f"  - {reason}")


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.quality.evaluate import folder_size
    from qtapp.engine.quality.gate import model_perplexity, quality_report

    # A quantized folder may lack a tokenizer when compared: the source's tokenizes the text.
    path = _path(args.model, tokenizer=args.against is None)
    against = _path(args.against) if args.against is not None else None
    text = _read_text(args.text)
    for p in (path, against):
        if p is not None:
            warn_remote_code(p, args.trust_remote_code)

    shown = False

    def progress(message: str) -> None:
        nonlocal shown
        if not args.json:
            shown = True
            print(f"\r{message}   ", end="", file=sys.stderr, flush=True)

    try:
        if against is None:
            ppl, positions = model_perplexity(path, args.ctx, text, progress=progress,
                                              trust_remote_code=args.trust_remote_code)
        else:
            report = quality_report(path, against, args.ctx, text,
                                    generation=not args.no_generation, progress=progress,
                                    trust_remote_code=args.trust_remote_code)
    finally:
        if shown:  # end the progress line, also before an error line
            print(file=sys.stderr)
    if against is None:
        result = {"model": str(path), "ppl": ppl, "positions": positions, "ctx": args.ctx,
                  "size_bytes": folder_size(path)}
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{path}: perplexity {result['ppl']:.3f} ({positions} positions, window "
                  f"{args.ctx}), size {format_size(result['size_bytes'])}")
        return 0
    d = {"model": str(path), "source": str(against), **report.to_dict(),
         "size_bytes": folder_size(path), "size_source_bytes": folder_size(against)}
    if args.json:
        print(json.dumps(d))
    else:
        _print_report(path, against, d)
    return 0
