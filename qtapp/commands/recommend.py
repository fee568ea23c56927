"""`quantdesk recommend MODEL [--goal speed|accuracy] [--target gpu|cpu|edge] [--json]`."""

from __future__ import annotations

import argparse
import json

from qtapp.commands.report import print_advice
from qtapp.engine.planning.advisor import GOALS, RUN_CTX, TARGETS, ModelShape, advise
from qtapp.engine.planning.hardware import detect

# Engine modules that import torch are imported inside the functions that run the command: the
# command line imports every command module at start-up, to build its parser.


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recommend", help="recommend a method for a model on this machine")
    p.add_argument("model", metavar="MODEL", help="'demo', a local folder or a Hugging Face id")
    p.add_argument("--goal", choices=GOALS, default="speed")
    p.add_argument("--target", choices=TARGETS, default=None,
                   help="where the model will run (default: this machine's GPU, else CPU)")
    p.add_argument("--ctx", type=int, default=RUN_CTX,
                   help=f"context length for the KV cache estimate (default {RUN_CTX})")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.model.sources import DEMO_NAME, demo_config, resolve_model

    if args.model.strip().lower() == "demo":  # its shape alone: the folder is not built
        config, n_params = demo_config()
        shape = ModelShape.from_config(config, name=DEMO_NAME, n_params=n_params)
    else:
        info = resolve_model(args.model, pickle_option=False)
        config = info.config
        shape = ModelShape.from_config(config, name=info.name, n_params=info.n_params)
    advice = advise(detect(), shape, goal=args.goal, target=args.target, ctx=args.ctx,
                    config=config)
    if args.json:
        print(json.dumps(advice.to_dict(), indent=2))
    else:
        print_advice(advice)
    return 0
