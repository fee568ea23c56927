"""`quantdesk`: with no arguments opens the window; subcommands drive the engine.

Each subcommand lives in `qtapp/commands/<name>.py` with `add_parser(subparsers)` and
`run(args) -> int`, so the command line grows without this file changing much.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from qtapp import __version__
from qtapp.engine.errors import UserError
from qtapp.engine.jobs.worker import main as worker_main

COMMANDS = ("quantize", "eval", "chat", "hw", "recommend", "convert", "check", "hub",
            "download", "publish")
WINDOW_MODULES = ("PySide6", "pyqtgraph")  # dependencies of the default install (pyproject)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantdesk",
        description="Quantize large language models on this machine (GPTQ, AWQ, GGUF). "
        "Run without arguments to open the window.",
    )
    parser.add_argument("--version", action="version", version=f"quantdesk {__version__}")
    parser.add_argument("--smoke", action="store_true",
                        help="open the window, print how long it took and quit "
                        "(checks an installed build)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"qtapp.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"qtapp.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("--job", required=True)
    worker.add_argument("--plan", action="store_true")
    return parser


def _missing_window_modules() -> list[str]:
    """Which of the window's packages cannot be imported (installed without them)."""
    missing = []
    for name in WINDOW_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _missing_window_message(missing: list[str]) -> str:
    names = " and ".join(missing) if missing else " and ".join(WINDOW_MODULES)
    one = len(missing) == 1
    return (f"quantdesk: the window needs {names}, which {'is' if one else 'are'} not "
            f"installed; install {'it' if one else 'them'} with: pip install 'quantdesk[gui]' "
            "(the subcommands work without: quantdesk --help)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        missing = _missing_window_modules()
        if missing:
            print(_missing_window_message(missing), file=sys.stderr)
            return 2
        try:
            from qtapp.gui.app import main as gui_main  # imported late: the CLI needs no Qt
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top not in WINDOW_MODULES and top != "shiboken6":
                raise
            print(_missing_window_message([top]), file=sys.stderr)
            return 2
        return gui_main(smoke=args.smoke)
    if args.command == "worker":
        return worker_main(["--job", args.job, *(["--plan"] if args.plan else [])])
    module = importlib.import_module(f"qtapp.commands.{args.command}")
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"quantdesk {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"quantdesk {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
