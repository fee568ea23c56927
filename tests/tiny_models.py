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


def write_spm_bpe_tokenizer(folder: Path, text: str, vocab_size: int = 512) -> int:
    """A SentencePiece-style BPE tokenizer.json (as Gemma 3/4, Llama 2, Mistral ship): spaces
    normalized to "▁", merges trained on `text`, byte fallback to <0x00>…<0xFF> for anything
    else, <bos> added in front; ids 0-3 <pad> <eos> <bos> <unk>. Returns the vocab size."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer_model = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_model.normalizer = normalizers.Replace(" ", "\u2581")
    trainer_model.train_from_iterator(
        [text], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                    limit_alphabet=100, show_progress=False))
    trained = json.loads(trainer_model.to_str())["model"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                                   byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        unk_token="<unk>", model_max_length=2048)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return len(vocab)
