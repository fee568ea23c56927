"""Qwen3.5 as released: vision-language checkpoints (model_type qwen3_5,
Qwen3_5ForConditionalGeneration) end to end.

The released checkpoints name the decoder model.language_model.*, the vision tower
model.visual.* and the multi-token-prediction layers mtp.* (transformers' save_pretrained of
Qwen3_5ForConditionalGeneration writes the same names; llama.cpp's converter reads them).
AutoModelForCausalLM builds Qwen3_5ForCausalLM for this config (the decoder at model.*, the
vision tower and mtp.* ignored on load); AutoModelForImageTextToText builds
Qwen3_5ForConditionalGeneration.

The tiny model: test_hybrid's 4-block Qwen3.5 decoder (peaked outputs) under
model.language_model, a 1-block vision tower, and one mtp.* tensor written into the file as
the releases carry them. Checked: RTN and GPTQ W8 through the CLI below 1e-3 mean KLD on text
tokens, a damaged output above; the vision tower and mtp.* bit-equal in the output, which
loads as Qwen3_5ForConditionalGeneration; the GGUF (text model only) within 1e-5 at F32
and within 1e-2 at Q8_0 through the CLI, each rejected once a DeltaNet tensor is damaged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from family_helpers import (
    assert_gguf_f32_reproduces,
    assert_gguf_q8_close,
    assert_w8_matches,
    build_family_model,
    copy_tokenizer,
    damage_hf,
    load_tensors,
    quantize_cli,
)
from test_hybrid import EMBED_STD, MOE, QWEN3_5

from qtapp.engine.model.arch import FAMILIES, arch_for

VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
          "out_hidden_size": 64, "patch_size": 14}
KEPT = ("model.visual.", "mtp.")
TEXT = {"qwen3_5": QWEN3_5, "qwen3_5_moe": {**QWEN3_5, **MOE}}


def build_vl(folder: Path, model_type: str = "qwen3_5",
             tokenizer_from: Path | None = None) -> Path:
    """The peaked decoder of test_hybrid (qwen3_5_text, or qwen3_5_moe_text with 8 experts,
    top 2) as a vision-language checkpoint of `model_type`, with a random vision tower and
    an mtp.* tensor."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    text_dir = build_family_model(folder.parent / "text", model_type + "_text", tokenizer_from,
                                  embed_std=EMBED_STD, **TEXT[model_type])
    text = json.loads((text_dir / "config.json").read_text())
    text.pop("architectures", None)
    config = AutoConfig.for_model(model_type, text_config=text, vision_config=VISION,
                                  tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = AutoModelForImageTextToText.from_config(config)
    weights = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32).state_dict()
    renamed = {("lm_head.weight" if k == "lm_head.weight"
                else k.replace("model.", "model.language_model.", 1)): v
               for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected and all(k.startswith("model.visual.") for k in missing), missing
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.float32).save_pretrained(folder)
    copy_tokenizer(text_dir, folder)
    (shard,) = folder.glob("*.safetensors")
    tensors = load_file(shard)
    tensors["mtp.fc.weight"] = torch.randn(64, 128)  # as released: ignored by transformers
    save_file(tensors, shard, metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in cache:
            cache[model_type] = build_vl(tmp_path_factory.mktemp(model_type) / model_type,
                                         model_type)
        return cache[model_type]
    return get


def test_table_reads_the_decoder_of_the_class_transformers_builds():
    """AutoModelForCausalLM builds Qwen3_5ForCausalLM for a qwen3_5 config: its blocks are
    the table's; the checkpoint names map onto its modules and back."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from qtapp.engine.model.arch import name_map

    config = AutoConfig.for_model("qwen3_5", text_config={
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 300, **QWEN3_5}, vision_config=VISION)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "Qwen3_5ForCausalLM"
    spec = arch_for(config.to_dict())
    for i in range(QWEN3_5["num_hidden_layers"]):
        spec.check_block(model.get_submodule(spec.block(i)), i)
    names = name_map(config.to_dict())
    assert names.to_module("model.language_model.layers.0.mlp.up_proj.weight") \
        == "model.layers.0.mlp.up_proj.weight"
    assert names.to_checkpoint("model.norm.weight") == "model.language_model.norm.weight"
    assert names.to_module("model.visual.blocks.0.mlp.linear_fc1.weight") \
        == "model.visual.blocks.0.mlp.linear_fc1.weight"


@pytest.mark.slow
@pytest.mark.parametrize("model_type, method", [
    *((t, m) for t in ("qwen3_5", "qwen3_5_moe") for m in ("rtn", "gptq", "awq"))])
def test_hf_methods_end_to_end(built, model_type, method, tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    vl_dir = built(model_type)
    out = quantize_cli(vl_dir, tmp_path / "out", method)
    assert_w8_matches(vl_dir, out, lambda: damage_hf(
        out, tmp_path, "model.language_model.layers.0.linear_attn.out_proj"),
        f"{model_type} {method} W8")
    source, written = load_tensors(vl_dir), load_tensors(out)
    assert any(n.startswith("model.language_model.layers.") and "scale" in n for n in written)
    kept = [n for n in source if n.startswith(KEPT)]
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in kept} >= {"model.visual", "mtp.fc"}
    assert all(torch.equal(source[n], written[n]) for n in kept)
    assert json.loads((out / "config.json").read_text())["architectures"] \
        == list(FAMILIES[model_type].architectures)
    # QuantDesk's loader builds the class AutoModelForCausalLM gives (Qwen3_5ForCausalLM,
    # which skips model.visual.* and mtp.* as from_pretrained does); the vision-language class
    # (AutoModelForImageTextToText) takes every vision tensor of the output as it is
    config = AutoConfig.from_pretrained(out)
    del config.quantization_config
    with torch.device("meta"):
        vlm = AutoModelForImageTextToText.from_config(config)
    assert type(vlm).__name__ == FAMILIES[model_type].architectures[0]
    vision = {n for n in vlm.state_dict() if n.startswith("model.visual.")}
    assert vision == {n for n in written if n.startswith("model.visual.")}
    assert all(tuple(vlm.state_dict()[n].shape) == tuple(written[n].shape) for n in vision)
    if method == "rtn":  # the loader skips only what the class skips: a stray tensor stops it
        from safetensors.torch import save_file

        from qtapp.engine.errors import UserError
        from qtapp.engine.model.loader import load_dequantized

        stray = tmp_path / "stray"
        shutil.copytree(out, stray)
        save_file({"model.language_model.extra.weight": torch.zeros(2)},
                  stray / "extra.safetensors", metadata={"format": "pt"})
        with pytest.raises(UserError, match="does not belong"):
            load_dequantized(stray)


@pytest.mark.slow
@pytest.mark.llama_cpp
@pytest.mark.parametrize("model_type", ["qwen3_5", "qwen3_5_moe"])
def test_gguf_holds_the_text_model(model_type, demo_dir, tmp_path, monkeypatch):
    """The GGUF is the text model (llama.cpp writes the vision tower to a separate mmproj
    file, which QuantDesk does not write): F32 within 1e-5 of the source, rejected once a
    DeltaNet tensor is damaged."""
    import gguf

    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    # as test_hybrid.test_moe_gguf_end_to_end: transformers loads any qwen3_5 tokenizer as
    # its Qwen3_5Tokenizer (Qwen's split pattern), so the demo tokenizer's pre-tokenizer hash
    # is unknown to llama.cpp; token ids go to llama.cpp directly here
    monkeypatch.setattr("qtapp.engine.gguf.vocab.pre_tokenizer_name",
                        lambda _tokenizer, _dir: "smollm")
    src = build_vl(tmp_path / "bpe" / model_type, model_type, demo_dir)
    f32, ref = assert_gguf_f32_reproduces(src, tmp_path, ("blk.0.ssm_out.weight",), model_type)
    names = [t.name for t in gguf.GGUFReader(f32).tensors]
    assert not any(n.startswith(("v.", "mm.", "mtp")) for n in names), names
    assert_gguf_q8_close(src, tmp_path, ref, model_type, broken="blk.0.ssm_out.weight")
