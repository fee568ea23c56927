"""`quantdesk hub search QUERY`: text-generation models on the Hub, with the planner's
verdicts for this machine; offline, the models in the local cache."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from qtapp.engine.units import format_params, format_size


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hub", help="search the Hugging Face Hub (or list the local cache) with "
                       "a fit verdict per method for this machine")
    hub_sub = p.add_subparsers(dest="hub_command", metavar="SUBCOMMAND", required=True)
    s = hub_sub.add_parser("search", help="models whose id contains QUERY")
    s.add_argument("query", nargs="?", default="")
    s.add_argument("--author", default=None)
    s.add_argument("--sort", choices=("downloads", "likes", "recent"), default="downloads")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--verdicts", action="store_true",
                   help="fetch each result's config.json (one small request each) and add "
                   "the fit verdicts")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    hub_sub.add_parser("cached", help="the models in the local Hugging Face cache")


def _row(m, verdicts) -> str:
    params = format_params(m.params) if m.params else "?"
    gated = f", gated ({m.gated})" if m.gated else ""
    lines = [f"{m.repo_id}  {params} parameters"
             + (f", {format_size(m.size_bytes)}" if m.size_bytes else "")
             + (f", {m.downloads:,} downloads" if m.downloads is not None else "")
             + (f", licence {m.license}" if m.license else "") + gated
             + (", in the cache" if m.cached else "")]
    lines += [f"    {v.text}" for v in verdicts]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.hub.search import (
        HubUnavailable,
        cached_models,
        search_models,
        with_full_config,
    )
    from qtapp.engine.hub.verdicts import compat_verdict, fit_verdicts
    from qtapp.engine.planning import hardware

    if args.hub_command == "cached":
        models, verdicts = cached_models(), True
    else:
        verdicts = args.verdicts
        try:
            models = search_models(args.query, author=args.author, sort=args.sort,
                                   limit=args.limit)
        except HubUnavailable as e:
            print(f"quantdesk hub: {e}\nthe models in the local cache:", file=sys.stderr)
            models, verdicts = cached_models(), True
    machine = hardware.detect(use_torch=False) if verdicts else None
    for m in models:
        found = []
        if verdicts:
            if not m.cached:
                m = with_full_config(m)
            found = [compat_verdict(m), *fit_verdicts(m, machine)]
        if args.hub_command == "search" and args.json:
            print(json.dumps({**asdict(m), "last_modified": str(m.last_modified or ""),
                              "verdicts": [asdict(v) for v in found]}, default=str))
        else:
            print(_row(m, found))
    if not models:
        print("no models found", file=sys.stderr)
    return 0 if models else 1
