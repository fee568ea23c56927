"""Shared fixtures.

demo_dir          the demo model (SmolLM2-135M-Instruct) as a Hugging Face folder; converted once
                  into $QUANTDESK_CACHE (default <repo>/.cache/quantdesk, kept between runs).
tiny_llama_dir    a tiny random LlamaForCausalLM folder (hidden 64, 4 heads, 2 kv heads,
                  2 layers, intermediate 128, float32) with a byte-level tokenizer (vocab 259)
                  and SmolLM's chat template. Session-scoped: copy it before changing it.
make_tiny_model   factory: make_tiny_model(folder, model_type="llama", dtype=torch.float32,
                  **config_overrides) -> folder; model types llama, mistral, qwen2, qwen3.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("QUANTDESK_CACHE", str(ROOT / ".cache" / "quantdesk"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (the ByteLevel alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_byte_tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer without merges: ids 0-2 special, 3 + byte value otherwise.

    Every UTF-8 byte is one token, so token counts equal byte counts. Returns the vocab size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b, ch in _bytes_to_unicode().items():
        vocab[ch] = len(SPECIAL_TOKENS) + b
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<|endoftext|>", bos_token="<|im_start|>",
        eos_token="<|im_end|>", pad_token="<|im_end|>", model_max_length=2048,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return len(vocab)


def build_tiny_model(folder: Path, model_type: str = "llama", dtype=None,
                    **overrides) -> Path:
    """Write a tiny random model of ``model_type`` plus the byte tokenizer into ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_byte_tokenizer(folder)
    settings = {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": vocab_size,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "max_position_embeddings": 2048, "tie_word_embeddings": False, **overrides,
    }
    config = AutoConfig.for_model(model_type, **settings)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.to(dtype or torch.float32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    from qtapp.engine.model.sources import demo_model_dir

    return demo_model_dir()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def make_tiny_model():
    return build_tiny_model
