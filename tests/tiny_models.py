"""Tiny random models for tests: a byte-level tokenizer and a model of any transformers
family, written as a Hugging Face folder. A module with a unique name (every conftest is
"conftest", so test modules cannot import from the right one reliably); tests/conftest.py
wraps these in fixtures."""

from __future__ import annotations

from pathlib import Path

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
