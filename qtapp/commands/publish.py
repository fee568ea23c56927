"""`quantdesk publish OUT --repo USER/NAME`: upload a QuantDesk output with its model card to
the Hugging Face Hub (private unless --public), using the token `hf auth login` stored."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="upload an output folder and its model card to the "
                       "Hugging Face Hub (private by default)")
    p.add_argument("out", help="the output folder a quantize job wrote")
    p.add_argument("--repo", required=True, help="the Hub repository, USER/NAME or ORG/NAME "
                   "(created when it does not exist)")
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True,
                     help="a private repository (the default)")
    vis.add_argument("--public", dest="private", action="store_false",
                     help="a public repository")
    p.add_argument("--token-from-login", action="store_true",
                   help="use the token `hf auth login` stored (the default; HF_TOKEN when set)")
    p.add_argument("--base-model", default=None,
                   help="the source model's Hub id, when the card cannot tell it (a source "
                   "that was a local folder)")


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.hub.publish import publish

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    url = publish(args.out, args.repo, private=args.private, on_progress=say,
                  base_model=args.base_model)
    print(url)
    return 0
