"""`quantdesk check MODEL`: which methods will work, before downloading the weights."""

from __future__ import annotations

import argparse
import json

from qtapp.engine.planning.compat import check_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="will a model quantize, and with which method (reads only "
                       "config.json, the tokenizer, the file list and, in a local folder, the "
                       "weight files' headers)")
    p.add_argument("model", help="'demo', a model folder or a Hugging Face id (org/name)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    report = check_model(args.model)
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0 if report.works else 1
