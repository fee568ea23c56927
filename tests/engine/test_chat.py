"""Chat backends: sandboxed templates, streaming that equals transformers' own greedy
generation, stopping, and the `quantdesk chat --prompt` command."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from qtapp.cli import main as cli_main
from qtapp.engine.errors import UserError
from qtapp.engine.quality.chat import (
    GenerationSettings,
    TransformersChat,
    next_token,
    open_chat,
    render_chat,
)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ["hello", "world", "how", "are", "you", "today", "the", "a", "cat", "dog", "sat", "on",
         "mat", "is", "good", "bad", "yes", "no", "user", "assistant", "system"]


def make_tiny_chat_model(folder: Path, template: str | None = CHATML) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>",
                                  bos_token="<|im_start|>", eos_token="<|im_end|>")
    if template:
        tok.chat_template = template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory) -> Path:
    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


HELLO = [{"role": "user", "content": "hello how are you"}]


def test_render_chatml() -> None:
    text = render_chat(CHATML, HELLO)
    assert text == "<|im_start|>user\nhello how are you<|im_end|>\n<|im_start|>assistant\n"


def test_fallback_template_when_the_model_has_none() -> None:
    assert render_chat(None, HELLO) == "User: hello how are you\nAssistant:"


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ cycler.__init__.__globals__.os.system('true') }}",
])
def test_templates_run_in_a_sandbox(evil: str) -> None:
    with pytest.raises(UserError, match="unsafe operation|template failed"):
        render_chat(evil, HELLO)


def test_template_raise_exception_is_a_user_error() -> None:
    with pytest.raises(UserError, match="only user and assistant"):
        render_chat("{{ raise_exception('only user and assistant roles') }}", HELLO)


def test_greedy_stream_equals_transformers_generate(tiny_chat: Path) -> None:
    chat = TransformersChat(tiny_chat)
    settings = GenerationSettings(max_new_tokens=12, temperature=0)
    pieces = list(chat.stream(HELLO, settings))
    prompt = render_chat(CHATML, HELLO)
    ids = chat.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    ref = chat.model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=2,
                              pad_token_id=0)
    new = [t for t in ref[0, ids.shape[1]:].tolist() if t != 2]
    assert "".join(pieces) == chat.tokenizer.decode(new, skip_special_tokens=True)
    assert len(pieces) >= 1
    assert chat.template_note == "the model's own chat template"


def test_sampling_is_reproducible_with_a_seed(tiny_chat: Path) -> None:
    chat = TransformersChat(tiny_chat)
    s = GenerationSettings(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=3)
    assert chat.reply(HELLO, s) == chat.reply(HELLO, s)


def test_stop_flag_ends_the_stream(tiny_chat: Path) -> None:
    chat = TransformersChat(tiny_chat)
    stop = threading.Event()
    got = []
    for piece in chat.stream(HELLO, GenerationSettings(max_new_tokens=50, temperature=0), stop):
        got.append(piece)
        stop.set()
    assert len(got) == 1


def test_next_token_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    g = torch.Generator().manual_seed(0)
    s = GenerationSettings(temperature=1.0, top_p=0.5)
    assert {next_token(logits.clone(), s, [], g) for _ in range(50)} == {0}
    s = GenerationSettings(temperature=1.0, top_p=0.85)
    assert {next_token(logits.clone(), s, [], g) for _ in range(200)} == {0, 1}
    # a repetition penalty pushes a seen token below the next one
    greedy = GenerationSettings(temperature=0, repetition_penalty=3.0)
    assert next_token(torch.tensor([2.0, 1.0, 0.1]), greedy, [0], g) == 1


def test_open_chat_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a .gguf file"):
        open_chat(str(tmp_path / "notes.txt"))
    with pytest.raises(UserError, match="no config.json"):
        open_chat(str(tmp_path))


def test_chat_command_one_shot(tiny_chat: Path, capsys) -> None:
    code = cli_main(["chat", str(tiny_chat), "--prompt", "hello how are you",
                     "--temperature", "0", "--max-tokens", "8"])
    assert code == 0
    out = capsys.readouterr().out
    expected = TransformersChat(tiny_chat).reply(HELLO, GenerationSettings(
        max_new_tokens=8, temperature=0, repetition_penalty=1.1))
    assert out == expected + "\n"


@pytest.mark.llama_cpp
def test_gguf_stream_equals_llama_cpp_own_chat_formatter() -> None:
    pytest.importorskip("llama_cpp")
    from qtapp.engine.gguf.llama_runtime import chat_stream
    from qtapp.engine.model.sources import demo_gguf_path

    chat = open_chat(str(demo_gguf_path()))
    try:
        assert chat.kind == "llama.cpp" and chat.template  # the template stored in the file
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        ours = "".join(chat.stream(messages, GenerationSettings(max_new_tokens=12,
                                                                temperature=0)))
        reference = "".join(chat_stream(chat.llm, messages, max_tokens=12, temperature=0))
        assert ours == reference and ours.strip()
        stop = threading.Event()
        stop.set()
        assert list(chat.stream(messages, GenerationSettings(max_new_tokens=12), stop)) == []
    finally:
        chat.close()
