"""Generation check: greedy answers to fixed prompts, flagged when degenerate.

Each prompt is rendered with the model's chat template (qtapp.engine.quality.chat.render_chat) and
answered greedily for up to MAX_NEW_TOKENS tokens, stopping at an end-of-turn token. An
answer is flagged

    empty          no token before end of turn, or only whitespace;
    repeated_token one token makes up more than half of ≥ 8 generated tokens;
    loop           the answer ends in a cycle: for some period p ≤ 16 the last
                   max(3p, 12) tokens repeat with period p (greedy decoding never leaves one);
    broken_utf8    the text holds U+FFFD before its end (bytes that are not UTF-8; an
                   incomplete character cut off by the token limit does not count).

Small models loop on their own, so the quality gate counts only flags the source model does
not also raise on the same prompt.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qtapp.engine.errors import check_cancel
from qtapp.engine.quality.chat import END_OF_TURN_TOKENS, eos_ids, render_chat

# torch and numpy are imported inside the check of the runtime that needs them (a transformers
# model or llama.cpp): the other runtime's check does without.

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Write a short Python function that returns the square of a number.",
    "Give three tips for staying healthy.",
)
MAX_NEW_TOKENS = 48
MAX_PERIOD = 16


@dataclass
class GenerationCheck:
    prompt: str
    text: str
    n_tokens: int
    flags: list[str] = field(default_factory=list)


def _has_loop(ids: Sequence[int]) -> bool:
    n = len(ids)
    for p in range(1, MAX_PERIOD + 1):
        m = max(3 * p, 12)
        if m > n:
            break
        tail = ids[n - m:]
        if all(tail[i] == tail[i - p] for i in range(p, m)):
            return True
    return False


def flags_of(ids: Sequence[int], text: str) -> list[str]:
    """The degeneracy flags of one greedy answer (token ids without end of turn, its text)."""
    flags = []
    if not ids or not text.strip():
        flags.append("empty")
    if len(ids) >= 8 and Counter(ids).most_common(1)[0][1] * 2 > len(ids):
        flags.append("repeated_token")
    if _has_loop(ids):
        flags.append("loop")
    if "\ufffd" in text.rstrip("\ufffd"):
        flags.append("broken_utf8")
    return flags


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def check_torch(model: Any, tokenizer: Any, prompts: Sequence[str] = PROMPTS,
                max_new_tokens: int = MAX_NEW_TOKENS,
                should_cancel: Callable[[], bool] | None = None) -> list[GenerationCheck]:
    """Greedy answers of a transformers model (on its device) with its tokenizer.
    should_cancel() is polled before every token (raises Cancelled)."""
    import torch

    template = getattr(tokenizer, "chat_template", None) or None
    eos = eos_ids(tokenizer, model)
    params = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in params else "past_key_values"
    device = next(model.parameters()).device
    checks = []
    for prompt in prompts:
        text = render_chat(template, _messages(prompt), tokenizer.bos_token or "",
                           tokenizer.eos_token or "")
        x = tokenizer(text, return_tensors="pt", add_special_tokens=not template
                      ).input_ids.to(device)
        new: list[int] = []
        past = None
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                check_cancel(should_cancel)
                out = model(input_ids=x, use_cache=True, **{cache_name: past})
                past = getattr(out, cache_name)
                token = int(out.logits[0, -1].argmax())
                if token in eos:
                    break
                new.append(token)
                x = torch.tensor([[token]], device=device)
        answer = tokenizer.decode(new, skip_special_tokens=True)
        checks.append(GenerationCheck(prompt, answer, len(new), flags_of(new, answer)))
    return checks


def check_llama(llm: Any, prompts: Sequence[str] = PROMPTS,
                max_new_tokens: int = MAX_NEW_TOKENS,
                should_cancel: Callable[[], bool] | None = None) -> list[GenerationCheck]:
    """Greedy answers of a llama_cpp.Llama created with logits_all=True."""
    import numpy as np

    def text_of(token: int) -> str:
        return llm._model.token_get_text(token) if token >= 0 else ""

    template = llm.metadata.get("tokenizer.chat_template")
    bos, eos = text_of(llm.token_bos()), text_of(llm.token_eos())
    stops = {llm.token_eos()}
    for t in END_OF_TURN_TOKENS:
        ids = llm.tokenize(t.encode(), add_bos=False, special=True)
        if len(ids) == 1:
            stops.add(ids[0])
    checks = []
    for prompt in prompts:
        text = render_chat(template, _messages(prompt), bos, eos)
        has_bos = bool(bos) and text.startswith(bos)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=not has_bos, special=True)
        ids = ids[: max(1, llm.n_ctx() - max_new_tokens)]
        check_cancel(should_cancel)
        llm.reset()
        llm.eval(ids)
        new: list[int] = []
        for _ in range(max_new_tokens):
            check_cancel(should_cancel)
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in stops:
                break
            new.append(token)
            llm.eval([token])
        answer = llm.detokenize(new).decode("utf-8", errors="replace")
        checks.append(GenerationCheck(prompt, answer, len(new), flags_of(new, answer)))
    return checks
