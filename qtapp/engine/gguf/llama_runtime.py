"""Run GGUF files with llama-cpp-python: loading, streaming chat, Ollama Modelfile.

A GGUF file's perplexity is the quality gate's (qtapp.engine.quality.gate, which loads the
file here with logits for every position): the one protocol for every model QuantDesk
measures.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qtapp.engine.errors import UserError

# llama_cpp (llama-cpp-python, the optional [gguf] extra) is imported inside load_llama: QuantDesk
# runs without it, and llama_cpp_available() says whether it is there.

# ggml's "extra buffer types" repack Q4_0/Q4_K/IQ4 weights at load time for faster CPU
# kernels (AMX / AVX-512 variants). On some virtual machines whose CPUs advertise AMX and
# AVX-512 (seen on the 2-core Xeon build machines of this project) a natively built
# llama-cpp-python dies with SIGILL in those kernels on the first Q4_K evaluation, which no
# Python code can catch. The plain CPU kernels are safe everywhere, so repacking is off
# unless QUANTDESK_LLAMA_REPACK=1.
REPACK_ENV = "QUANTDESK_LLAMA_REPACK"


def _repack_enabled() -> bool:
    return os.environ.get(REPACK_ENV, "0") == "1"


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def load_llama(gguf_path: Path, n_ctx: int = 2048, logits_all: bool = False,
               n_threads: int | None = None) -> Any:
    """A llama_cpp.Llama for `gguf_path`, or a UserError saying why it cannot be opened."""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise UserError("Running GGUF files needs llama-cpp-python; install it with "
                        "pip install llama-cpp-python.") from e
    path = Path(gguf_path)
    if not path.is_file():
        raise UserError(f"{path} does not exist.")
    import llama_cpp.llama_cpp as lib

    defaults = lib.llama_model_default_params

    def without_repack() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    if not _repack_enabled():  # Llama.__init__ reads the defaults from this module
        lib.llama_model_default_params = without_repack
    try:
        return Llama(str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512),
                     logits_all=logits_all, n_threads=n_threads or os.cpu_count(),
                     verbose=False)
    except ValueError as e:
        raise UserError(f"llama.cpp cannot open {path.name} ({e}); the file is damaged, "
                        "truncated, or of an architecture this llama.cpp does not know; "
                        "download or convert it again.") from e
    finally:
        lib.llama_model_default_params = defaults


def chat_stream(llm: Any, messages: list[dict[str, str]], max_tokens: int = 256,
                temperature: float = 0.7) -> Iterator[str]:
    """Text pieces of the assistant's reply, as llama.cpp generates them.

    The prompt is built from the file's tokenizer.chat_template (llama-cpp-python's Jinja
    formatter).
    """
    for chunk in llm.create_chat_completion(messages=messages, stream=True,
                                            max_tokens=max_tokens, temperature=temperature):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            yield piece


# Ollama's TEMPLATE is a Go template, not Jinja: only ChatML is translated; for other
# templates Ollama reads tokenizer.chat_template from the GGUF file itself.
_CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def write_modelfile(out_dir: Path, gguf_name: str, chat_template: str | None,
                    stop: Sequence[str] = ()) -> Path:
    """Write an Ollama `Modelfile` beside the GGUF file (`ollama create NAME -f Modelfile`)."""
    lines = [f"FROM ./{gguf_name}"]
    stops = list(stop)
    if chat_template and "<|im_start|>" in chat_template:
        lines.append(f'TEMPLATE """{_CHATML_TEMPLATE}"""')
        stops = stops or ["<|im_end|>"]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    path = Path(out_dir) / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

