"""`quantdesk eval MODEL`: perplexity on the built-in evaluation text, and size."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qtapp.engine.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity and size of a model or a quantized output")
    p.add_argument("model", help="'demo', a folder (plain, GPTQ, AWQ, compressed-tensors)")
    p.add_argument("--against", help="source model to compare with")
    p.add_argument("--text", type=Path, help="evaluate on this UTF-8 text file instead")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.evaluate import folder_size, model_perplexity
    from qtapp.engine.sources import demo_model_dir

    path = demo_model_dir() if args.model == "demo" else Path(args.model)
    if not path.exists():
        raise UserError(f"{path} does not exist; give 'demo' or the folder of a model")
    text = None
    if args.text:
        try:
            text = args.text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {args.text} as UTF-8 text: {e}") from None
    result = {"model": str(path), "ppl": model_perplexity(path, args.ctx, text),
              "size_bytes": folder_size(path)}
    if args.against:
        against = demo_model_dir() if args.against == "demo" else Path(args.against)
        result["ppl_source"] = model_perplexity(against, args.ctx, text)
        result["size_source_bytes"] = folder_size(against)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{path}: perplexity {result['ppl']:.3f}, size "
              f"{result['size_bytes'] / 2**20:.1f} MiB")
        if "ppl_source" in result:
            print(f"source {args.against}: perplexity {result['ppl_source']:.3f}, size "
                  f"{result['size_source_bytes'] / 2**20:.1f} MiB")
    return 0
