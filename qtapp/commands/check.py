"""`quantdesk check MODEL`: which methods will work, before downloading the weights."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="will a model quantize, and with which method (reads only "
                       "config.json, the tokenizer and the file list)")
    p.add_argument("model", help="'demo', a model folder or a Hugging Face id (org/name)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.planning.compat import check_model

    report = check_model(args.model)
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0 if report.works else 1
