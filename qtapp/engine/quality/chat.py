"""Chat with a model, streaming text pieces as they are generated.

Two backends share one interface (`ChatBackend.stream`): transformers for Hugging Face
folders (plain, or our GPTQ / AWQ / compressed-tensors outputs, loaded dequantized) and
llama-cpp-python for `.gguf` files. The chat template is rendered by `render_chat` in
jinja2's ImmutableSandboxedEnvironment, so a template shipped with a model cannot reach
Python objects or change state; a model without a template gets a plain fallback and says so.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from qtapp.engine.errors import UserError

# jinja2, torch, llama.cpp and the model loaders are imported inside the functions that need them:
# the window and the command line import this module at start-up (END_OF_TURN_TOKENS,
# render_chat), before any model is opened.

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}

FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass(frozen=True)
class GenerationSettings:
    """temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int = 0


def render_chat(template: str | None, messages: Sequence[Message], bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """Render a Hugging Face style chat template in a jinja2 sandbox."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False,
                                                               indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template or FALLBACK_TEMPLATE).render(
            messages=list(messages), bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt)
    except SecurityError as e:
        raise UserError(f"the model's chat template tried an unsafe operation and was "
                        f"stopped ({e}); use a model with a standard template") from None
    except TemplateError as e:
        raise UserError(f"the model's chat template failed: {e}") from None


class ChatBackend:
    """A loaded model that answers a conversation as a stream of text pieces."""

    kind = ""

    def __init__(self, name: str, template: str | None) -> None:
        self.name = name
        self.template = template
        self.template_note = ("the model's own chat template" if template else
                              "a plain 'User: / Assistant:' fallback (the model has no chat "
                              "template)")

    def stream(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
               stop: threading.Event | None = None) -> Iterator[str]:
        raise NotImplementedError

    def reply(self, messages: Sequence[Message], settings: GenerationSettings | None = None
              ) -> str:
        return "".join(self.stream(messages, settings))

    def close(self) -> None:
        """Free the model's memory."""


class TransformersChat(ChatBackend):
    """A Hugging Face folder through transformers; quantized outputs are loaded dequantized."""

    kind = "transformers"

    def __init__(self, folder: Path, device: str = "cpu", trust_remote_code: bool = False
                 ) -> None:
        from qtapp.engine.model.loader import load_dequantized

        _read_config(folder)
        model, tokenizer = load_dequantized(folder, trust_remote_code=trust_remote_code)
        if tokenizer is None:
            raise UserError(f"{folder} has no tokenizer; copy the tokenizer files of the "
                            "model's original download into it")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        super().__init__(folder.name, getattr(tokenizer, "chat_template", None) or None)
        self.eos_ids = eos_ids(tokenizer, model)
        # transformers 5.2x renamed past_key_values to cache (argument and output field)
        params = inspect.signature(self.model.forward).parameters
        self.cache_name = "cache" if "cache" in params else "past_key_values"

    def stream(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
               stop: threading.Event | None = None) -> Iterator[str]:
        import torch

        settings = settings or GenerationSettings()
        tok = self.tokenizer
        prompt = render_chat(self.template, messages, tok.bos_token or "", tok.eos_token or "")
        x = tok(prompt, return_tensors="pt", add_special_tokens=not self.template
                ).input_ids.to(self.device)  # (1, T)
        generator = torch.Generator().manual_seed(settings.seed)
        seen = x[0].tolist()
        new: list[int] = []
        emitted = ""
        past = None
        with torch.inference_mode():
            for _ in range(settings.max_new_tokens):
                if stop is not None and stop.is_set():
                    return
                out = self.model(input_ids=x, use_cache=True, **{self.cache_name: past})
                past = getattr(out, self.cache_name)
                token = next_token(out.logits[0, -1].float().cpu(), settings, seen, generator)
                if token in self.eos_ids:
                    return
                new.append(token)
                seen.append(token)
                x = torch.tensor([[token]], device=self.device)
                text = tok.decode(new, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more
                    continue
                if len(text) > len(emitted):
                    yield text[len(emitted):]
                emitted = text

    def close(self) -> None:
        self.model = None


def next_token(logits: Any, settings: GenerationSettings, seen: Sequence[int],
               generator: Any) -> int:
    """Greedy when temperature is 0, else nucleus sampling (top-p) at that temperature."""
    import torch

    if settings.repetition_penalty != 1.0 and seen:
        idx = torch.tensor(sorted(set(seen)))
        picked = logits[idx]
        logits[idx] = torch.where(picked > 0, picked / settings.repetition_penalty,
                                  picked * settings.repetition_penalty)
    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    sorted_p, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_p, 0) - sorted_p < settings.top_p  # always keeps the top one
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
    return int(order[choice])


class LlamaCppChat(ChatBackend):
    """A `.gguf` file through llama-cpp-python, with the template stored in the file."""

    kind = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int = 4096) -> None:
        from qtapp.engine.gguf.llama_runtime import load_llama

        self.llm = load_llama(path, n_ctx=n_ctx)
        super().__init__(path.name, self.llm.metadata.get("tokenizer.chat_template"))
        self.bos = self._token_text(self.llm.token_bos())
        self.eos = self._token_text(self.llm.token_eos())

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm._model.token_get_text(token)  # what llama-cpp-python's formatter uses

    def stream(self, messages: Sequence[Message], settings: GenerationSettings | None = None,
               stop: threading.Event | None = None) -> Iterator[str]:
        settings = settings or GenerationSettings()
        prompt = render_chat(self.template, messages, self.bos, self.eos)
        has_bos = bool(self.bos) and prompt.startswith(self.bos)
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=not has_bos, special=True)
        stops = [t for t in {self.eos, *END_OF_TURN_TOKENS} if t]
        for chunk in self.llm.create_completion(
                tokens, max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                top_p=settings.top_p, repeat_penalty=settings.repetition_penalty,
                seed=settings.seed, stop=stops, stream=True):
            if stop is not None and stop.is_set():
                return
            text = chunk["choices"][0]["text"]
            if text:
                yield text

    def close(self) -> None:
        self.llm.close()


_LOAD_LOCK = threading.Lock()


def open_chat(model: str, device: str = "cpu", allow_download: bool = False,
              trust_remote_code: bool = False) -> ChatBackend:
    """A backend for 'demo', a Hub id, a Hugging Face folder, a .gguf file or a folder with one.

    The input is checked first as `quantize` checks its model (sources.resolve_loadable), so
    damaged or unsafe files are a UserError, not a traceback. Code shipped with the model
    (a custom tokenizer) runs only with ``trust_remote_code``; transformers is never left to
    ask about it on stdin. Thread-safe: loads run one at a time (transformers' lazy imports
    are not safe to race, and two loads at once only compete for the same memory bandwidth).
    """
    with _LOAD_LOCK:
        return _open_chat(model, device, allow_download, trust_remote_code)


def _open_chat(model: str, device: str, allow_download: bool,
               trust_remote_code: bool) -> ChatBackend:
    from qtapp.engine.model.sources import resolve_loadable

    path = resolve_loadable(model, allow_download=allow_download)
    if path.is_file():
        return LlamaCppChat(path)
    return TransformersChat(path, device, trust_remote_code)


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json; give a Hugging Face model folder or "
                        "a .gguf file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{folder / 'config.json'} is not valid JSON ({e})") from None


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """The token ids that end an answer: the tokenizer's and the generation config's EOS, and
    the end-of-turn tokens of the chat templates (END_OF_TURN_TOKENS) in the vocabulary."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return ids
