"""`quantdesk convert MODEL --out FILE.gguf [--type F16]`: HF folder → one GGUF file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qtapp.engine.config import GGUF_TYPES
from qtapp.engine.errors import UserError
from qtapp.engine.outputs import disk_full_error, is_disk_full
from qtapp.engine.units import format_duration, format_size

# Engine modules that import torch are imported inside the functions that run the command: the
# command line imports every command module at start-up, to build its parser.


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a model to one GGUF file (llama.cpp, "
                       "LM Studio, Ollama)")
    p.add_argument("model", help="'demo', a local folder or a Hub id in the local cache")
    p.add_argument("--out", required=True, type=Path, help="the .gguf file to write")
    p.add_argument("--type", default="F16", choices=GGUF_TYPES,
                   help="F16/BF16/F32 convert only; other types quantize without an "
                   "importance matrix (use `quantdesk quantize --method gguf` for one)")
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.gguf.quantize import quantize_to_gguf
    from qtapp.engine.model.sources import resolve_model
    out: Path = args.out.expanduser().resolve()
    if out.suffix != ".gguf":
        raise UserError(f"--out {out} must end in .gguf")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; choose another name or pass --overwrite")
    info = resolve_model(args.model, pickle_option=False)
    if info.path.resolve() in out.parents:
        raise UserError(f"{out} is inside the source model folder; write it elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)

    def progress(tensor: str, done: int, total: int) -> None:
        print(f"\r[{done}/{total}] {tensor[:60]:<60}", end="", file=sys.stderr, flush=True)

    try:
        report = quantize_to_gguf(info.path, out, args.type, None, None, progress)
    except Exception as e:
        if is_disk_full(e):
            print(file=sys.stderr)
            raise disk_full_error(e, out.parent, f"the GGUF file {out.name}",
                                  "Nothing was kept; free some space on that disk or give an "
                                  "--out on another disk, then try again.") from None
        raise
    print(file=sys.stderr)
    print(f"{out}: {args.type}, {len(report.tensors)} tensors, "
          f"{format_size(report.size_bytes)} in {format_duration(report.seconds)}")
    return 0
