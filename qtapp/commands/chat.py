"""`quantdesk chat MODEL_OR_GGUF`: a terminal chat, or one answer with --prompt."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from qtapp.engine.quality.chat import GenerationSettings, Message, open_chat

# Engine modules that import torch are imported inside the functions that run the command: the
# command line imports every command module at start-up, to build its parser.


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="chat with a model or a .gguf file")
    p.add_argument("model", metavar="MODEL_OR_GGUF",
                   help="'demo', a Hub id, a model folder, or a .gguf file")
    p.add_argument("--prompt", help="answer this one message and exit")
    p.add_argument("--system", default="", help="a system message for the conversation")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let Python code shipped with the model run (custom tokenizers); "
                   "off by default, only for models you trust")


def warn_remote_code(path: Path, trust_remote_code: bool) -> None:
    """The warning quantize prints for --trust-remote-code, for a model folder."""
    if trust_remote_code and path.is_dir():
        from qtapp.engine.model.loader import remote_code_warning

        print(f"warning: {remote_code_warning(path)}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from qtapp.engine.model.sources import resolve_loadable

    settings = GenerationSettings(args.max_tokens, args.temperature, args.top_p,
                                  args.repetition_penalty, args.seed)
    path = resolve_loadable(args.model)
    warn_remote_code(path, args.trust_remote_code)
    backend = open_chat(str(path), device=args.device, trust_remote_code=args.trust_remote_code)
    history: list[Message] = [{"role": "system", "content": args.system}] if args.system else []
    try:
        if args.prompt is not None:
            _answer(backend, history + [{"role": "user", "content": args.prompt}], settings)
            return 0
        print(f"Chatting with {backend.name} ({backend.kind}; template: "
              f"{backend.template_note}). /reset starts over, /exit or Ctrl-D quits.",
              file=sys.stderr)
        start = list(history)
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            if line.strip() in ("/exit", "/quit"):
                return 0
            if line.strip() == "/reset":
                history = list(start)
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            history.append({"role": "assistant", "content": _answer(backend, history,
                                                                    settings)})
    finally:
        backend.close()


def _answer(backend, messages: list[Message], settings: GenerationSettings) -> str:
    stop = threading.Event()
    pieces: list[str] = []
    try:
        for piece in backend.stream(messages, settings, stop):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stop.set()
        print("\n[stopped]", file=sys.stderr)
    sys.stdout.write("\n")
    return "".join(pieces)
