"""Tokenizer, special tokens and chat template of a Hugging Face folder as GGUF keys.

Follows llama.cpp @0c1e57098 conversion/base.py (`_set_vocab_gpt2`, `get_vocab_base`,
`_set_vocab_sentencepiece`, `_set_vocab_llama_hf`) and conversion/llama.py
(`LlamaModel.set_vocab`), with the `gguf` package's SpecialVocab and LlamaHfVocab.
`tokenizer.ggml.pre` comes from llama.cpp's hash table (pretokenizers.py), never guessed:
an unknown pre-tokenizer is an error, because llama.cpp would tokenize text differently
(ggml-org/llama.cpp PR #6920).
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf
from sentencepiece import SentencePieceProcessor

from qtapp.engine.errors import UserError
from qtapp.engine.gguf.archs import GgufArch
from qtapp.engine.gguf.pretokenizers import CHKTXT, PRE_BY_HASH
from qtapp.engine.model.loader import load_tokenizer

LLAMA_CPP_VERSION = "0c1e57098"

# SentencePiece token types (conversion/base.py SentencePieceTokenTypes)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def add_vocab(writer: gguf.GGUFWriter, model_dir: Path, arch: GgufArch,
              config: dict[str, Any]) -> None:
    """Write tokenizer.* keys for `model_dir` the way llama.cpp's converter does."""
    if not ((model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer.model").is_file()):
        raise UserError(f"{model_dir} has no tokenizer (tokenizer.json or tokenizer.model); "
                        "a GGUF file must carry one. Copy the tokenizer files of the base "
                        "model into the folder.")
    vocab_size = config.get("vocab_size")
    if arch.vocab == "llama":
        add_prefix_space = _tokenizer_config(model_dir).get("add_prefix_space")
        if add_prefix_space is not None:
            writer.add_add_space_prefix(add_prefix_space)
        try:
            _add_sentencepiece(writer, model_dir, vocab_size)
        except FileNotFoundError:
            try:
                _add_llama_hf(writer, model_dir)
            except (FileNotFoundError, TypeError):
                _add_gpt2(writer, model_dir, vocab_size)
        if vocab_size == 49152:
            # llama.cpp turns BOS off for every 49152-token Llama vocabulary (Granite,
            # SmolLM); the HF tokenizers of those models add no BOS either.
            writer.add_add_bos_token(False)
    elif arch.vocab == "gemma4" and llama_hf_style(model_dir):
        _add_gemma4(writer, model_dir, vocab_size)
    else:
        try:
            _add_sentencepiece(writer, model_dir, vocab_size)
        except FileNotFoundError:
            _add_gpt2(writer, model_dir, vocab_size)


def llama_hf_style(model_dir: Path) -> bool:
    """True when tokenizer.json is a SentencePiece-style BPE with byte fallback (Llama 2,
    Mistral, Gemma 4), which the gguf package's LlamaHfVocab reads (its own pre-check)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model, decoder = data["model"], data.get("decoder") or {}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback"))
            and decoder.get("type") == "Sequence")


# tokens Gemma 4's converter always renders, so that a chat parser can read them
# (Gemma4Model.set_vocab)
_GEMMA4_VISIBLE = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>",
                   "<|tool_response>", "<tool_response|>", '<|"|>'}


def _add_gemma4(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int | None) -> None:
    """Gemma 4's tokenizer.json as llama.cpp's "gemma4" BPE vocabulary with its merges
    (Gemma4Model.set_vocab; llama.cpp picks the gemma4 pre-tokenizer itself), padded with
    unused tokens to the model's vocab_size so the embedding tables match."""
    vocab = gguf.LlamaHfVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, toktype in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(gguf.TokenType.USER_DEFINED
                     if text.decode("utf-8", "replace") in _GEMMA4_VISIBLE else toktype)
    if vocab_size is not None and len(tokens) > vocab_size:
        raise UserError(f"The tokenizer of {model_dir.name} has {len(tokens)} tokens but the "
                        f"model's vocab_size is {vocab_size}; tokenizer and weights do not "
                        "match.")
    for i in range(len(tokens), vocab_size or 0):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gemma4")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True)
    special.add_special_token["bos"] = True  # always, as the converter (and llama.cpp) does
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _auto_tokenizer(model_dir: Path) -> Any:
    """The folder's tokenizer (qtapp.engine.model.loader.load_tokenizer: never code shipped with
    the model, which a GGUF file could not carry anyway)."""
    return load_tokenizer(model_dir)


def pre_tokenizer_name(tokenizer: Any, model_dir: Path) -> str:
    """llama.cpp's name for the BPE pre-tokenizer, from the hash of CHKTXT's token ids."""
    digest = sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    name = PRE_BY_HASH.get(digest)
    if name is None:
        raise UserError(
            f"The BPE pre-tokenizer of {model_dir.name} is not one llama.cpp "
            f"@{LLAMA_CPP_VERSION} knows (hash {digest[:16]}…). QuantDesk does not guess it, "
            "because a wrong one silently changes how text is split. Use a model whose "
            "tokenizer llama.cpp supports, or a newer QuantDesk.")
    return name


def _looks_special(token: str) -> bool:
    """TextModel.does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _add_gpt2(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int | None) -> None:
    """GPT-2 style byte-level BPE (TextModel.get_vocab_base + _set_vocab_gpt2)."""
    tokenizer = _auto_tokenizer(model_dir)
    vocab: dict[str, int] = tokenizer.vocab
    n_vocab = vocab_size if vocab_size is not None else len(vocab)
    if max(vocab.values()) >= n_vocab:
        raise UserError(f"The tokenizer of {model_dir.name} has ids beyond the model's "
                        f"vocab_size {n_vocab}; tokenizer and weights do not match.")
    pre = pre_tokenizer_name(tokenizer, model_dir)
    reverse = {i: tok for tok, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    added_decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            # llama.cpp expects CONTROL and USER_DEFINED tokens pre-normalized
            if not added_decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added_decoder[i].special or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(writer, quiet=True)


def _add_llama_hf(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    """Llama-style BPE with byte fallback from tokenizer.json (TextModel._set_vocab_llama_hf)."""
    vocab = gguf.LlamaHfVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, toktype in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(toktype)
    _write_llama_vocab(writer, model_dir, tokens, scores, types)


def _add_sentencepiece(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int | None) -> None:
    """tokenizer.model (TextModel._set_vocab_sentencepiece); FileNotFoundError if absent."""
    path = model_dir / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(path)
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(path))
    n_vocab = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [_UNUSED] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        toktype = _NORMAL
        if sp.IsUnknown(i):
            toktype = _UNKNOWN
        elif sp.IsControl(i):
            toktype = _CONTROL
        elif sp.IsUnused(i):
            toktype = _UNUSED
        elif sp.IsByte(i):
            toktype = _BYTE
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = toktype
    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for key, i in json.loads(added_file.read_text(encoding="utf-8")).items():
            if i < n_vocab:
                tokens[i], scores[i], types[i] = key.encode("utf-8"), -1000.0, _USER_DEFINED
    for key, data in _tokenizer_config(model_dir).get("added_tokens_decoder", {}).items():
        i = int(key)
        if i >= n_vocab:
            continue
        token: str = data["content"]
        if data.get("special") or _looks_special(token):
            types[i] = _CONTROL
        else:
            token = token.replace("\u2581", " ")
            types[i] = _USER_DEFINED
        scores[i] = -1000.0
        tokens[i] = token.encode("utf-8")
    _write_llama_vocab(writer, model_dir, tokens, scores, types)


def _write_llama_vocab(writer: Any, model_dir: Path, tokens: list, scores: list,
                       types: list) -> None:
    """A SentencePiece ("llama") vocabulary and the folder's special tokens into `writer`."""
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
