"""Gemma 3 vision-language (Gemma3ForConditionalGeneration) and Gemma 4 end to end.

Tiny models from each family's own transformers config classes (Gemma3Config /
Gemma4Config with a nested text_config and a small vision tower), with peaked outputs as in
family_helpers.py (the final norm scaled to a mean next-token entropy of 2.5 nats):

- Gemma 3: 6 blocks with the 5 : 1 sliding / global pattern (block 5 global, sliding window
  32 below the 48-token test sequence and the 64-token calibration samples), checkpoint names
  as the release and transformers' save_pretrained write them (language_model.model.*,
  vision_tower.*, multi_modal_projector.*).
- Gemma 4: 6 blocks (sliding, sliding, global, sliding, sliding, global), the global ones
  with a wider head (global_head_dim 32 against 16) and proportional rope; per-layer
  embeddings (hidden_size_per_layer_input 32); the last 2 blocks reuse the keys and values of
  the last block of their type before them (num_kv_shared_layers 2: no k/v_proj) and have a
  double-wide MLP; final logit soft-capping 30 as released. A second variant has
  attention_k_eq_v (global blocks without v_proj, one global key/value head) and no
  per-layer embeddings. The text decoder alone (Gemma4ForCausalLM, model_type gemma4_text)
  goes through GPTQ once.

Checked: the streamed blocks reproduce the model's own forward (each block with its own mask,
rotary embeddings, per-layer input and shared keys/values), and fail to when every block gets
block 0's arguments (the old behaviour); RTN / GPTQ / AWQ W8 through the CLI loaded with
transformers' class of the checkpoint below 1e-3 mean KLD, a damaged output above; at 4 bits
GPTQ and AWQ below RTN (on English text, see TEXT); the vision tower, projector and per-layer embedding tables copied
bit-equal; Gemma 3's GGUF (text model) opened by llama-cpp-python; Gemma 4's GGUF (the
E2B/E4B form on GEMMA4_GGUF, the 31B form, Gemma4ForCausalLM alone) run by llama-cpp-python
against transformers at F32, Q8_0 and Q4_K_M, its metadata and tokenizer, the layouts it
refuses, and what `quantdesk check` says (the MoE variant, 26B-A4B: test_gemma4_moe.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from family_helpers import (
    GGUF_F32_KLD_MAX,
    GGUF_Q8_KLD_MAX,
    W4_G32,
    assert_gguf_f32_reproduces,
    assert_gguf_q8_close,
    assert_w8_matches,
    build_family_model,
    damage_hf,
    gguf_file,
    gguf_logits,
    held_out_klds,
    load_tensors,
    mean_kld,
    quantize_cli,
    sharpen,
    source_logits,
    spread,
    token_ids,
    write_tokenizer,
)

from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import FAMILIES, arch_for

TINY_TEXT = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "head_dim": 16, "max_position_embeddings": 2048,
             "initializer_range": 0.1, "bos_token_id": 1, "eos_token_id": 2,
             "pad_token_id": 2}
GEMMA3_TEXT = {**TINY_TEXT, "num_hidden_layers": 6, "query_pre_attn_scalar": 16,
               "sliding_window": 32}
SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
GEMMA4_TYPES = ["sliding_attention", "sliding_attention", "full_attention"] * 2
GEMMA4_TEXT = {**TINY_TEXT, "num_hidden_layers": 6, "layer_types": GEMMA4_TYPES,
               "global_head_dim": 32, "hidden_size_per_layer_input": 32,
               "num_kv_shared_layers": 2, "use_double_wide_mlp": True,
               "sliding_window": 32, "final_logit_softcapping": 30.0}
GEMMA4_K_EQ_V = {**TINY_TEXT, "num_hidden_layers": 3, "layer_types": GEMMA4_TYPES[:3],
                 "global_head_dim": 32, "attention_k_eq_v": True,
                 "num_global_key_value_heads": 1, "hidden_size_per_layer_input": 0,
                 "sliding_window": 32}
# The GGUF test model: GEMMA4_TEXT with the last 3 blocks (sliding, sliding, global) reusing
# keys and values, so that the last blocks keeping their own end sliding-then-global as
# llama.cpp's Gemma 4 requires (archs.shared_kv_sources; GEMMA4_TEXT's 2 shared blocks are
# refused), 256 wide so that k-quant blocks (256 values) fit the rows, and per-layer output
# scales other than 1 (build_multimodal's layer_scalars) as the released checkpoints have
GEMMA4_GGUF = {**GEMMA4_TEXT, "hidden_size": 256, "intermediate_size": 256, "head_dim": 64,
               "global_head_dim": 128, "num_kv_shared_layers": 3}
GEMMA4_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16}
# std of the token embeddings (family_helpers.EMBED_STD): Gemma 4's blocks (attention with
# q/k norms and scale 1, per-layer inputs) swing the output more than Gemma 3's; 1.0 puts the
# 8-bit error two orders below KLD_MAX (0.3 gave 2e-3) while a zeroed down_proj stays above
EMBED = {"gemma3": 0.3, "gemma4": 1.0}
# 4-bit comparisons run on English text, as the calibration set is: on random bytes (half of
# them above 127, which the calibration text never has) GPTQ is worse than RTN (Gemma 3 W4
# g32: 5.5e-2 against 4.2e-2), on text 3 × better (1.5e-2 against 4.4e-2)
TEXT = ("Quantization maps each weight to one of a few levels; the error it adds depends on "
        "the inputs the layer sees.")
# tensors outside the language model, or never quantized, that must reach the output as
# they are
KEPT = {"gemma3": ("vision_tower.", "multi_modal_projector."),
        "gemma4_text": ("model.embed_tokens_per_layer.", "model.per_layer_model_projection."),
        "gemma4": ("model.vision_tower.", "model.embed_vision.",
                   "model.language_model.embed_tokens_per_layer.",
                   "model.language_model.per_layer_model_projection.")}


def build_multimodal(folder: Path, model_type: str, text: dict,
                     tokenizer_from: Path | None = None, layer_scalars: bool = False) -> Path:
    """A tiny vision-language model of `model_type` (gemma3 / gemma4) with peaked outputs,
    saved by transformers' save_pretrained with the byte tokenizer (or `tokenizer_from`'s);
    layer_scalars: Gemma 4's per-layer output scales drawn from [0.5, 1.5] (not all 1)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    vocab = write_tokenizer(folder, tokenizer_from)
    text = {**text, "vocab_size": vocab}
    if model_type == "gemma3":
        config = AutoConfig.for_model("gemma3", text_config=text, vision_config=SIGLIP,
                                      mm_tokens_per_image=4, tie_word_embeddings=True)
    else:
        text = {**text, "vocab_size_per_layer_input": vocab}
        config = AutoConfig.for_model("gemma4", text_config=text, vision_config=GEMMA4_VISION,
                                      audio_config=None, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            spread(model, EMBED[model_type])
            for name, b in model.named_buffers():
                if layer_scalars and name.endswith("layer_scalar"):
                    b.uniform_(0.5, 1.5)
        sharpen(model, vocab)
    model.to(torch.float32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory) -> Path:
    """A folder with a SentencePiece-style BPE tokenizer.json (Gemma 4's kind) and a
    config.json naming its vocab_size, to build models with (tokenizer_from)."""
    from tiny_models import write_spm_bpe_tokenizer

    from qtapp.engine.quant.calibration import builtin_calibration_text

    folder = tmp_path_factory.mktemp("spm")
    n = write_spm_bpe_tokenizer(folder, builtin_calibration_text()[:100_000])
    (folder / "config.json").write_text(json.dumps({"vocab_size": n}))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[tuple[str, bool], Path] = {}

    def get(name: str, tokenizer_from: Path | None = None) -> Path:
        key = (name, tokenizer_from is not None)
        if key not in cache:
            folder = tmp_path_factory.mktemp(name) / name
            if name == "gemma4_k_eq_v":
                cache[key] = build_multimodal(folder, "gemma4", GEMMA4_K_EQ_V, tokenizer_from)
            elif name == "gemma4_gguf":
                cache[key] = build_multimodal(folder, "gemma4", GEMMA4_GGUF, tokenizer_from,
                                              layer_scalars=True)
            elif name == "gemma4_text_gguf":  # Gemma4ForCausalLM in GEMMA4_GGUF's shape
                assert tokenizer_from is not None
                vocab = json.loads((tokenizer_from / "config.json").read_text())["vocab_size"]
                cache[key] = build_family_model(folder, "gemma4_text", tokenizer_from,
                                                embed_std=EMBED["gemma4"],
                                                vocab_size_per_layer_input=vocab, **GEMMA4_GGUF)
            elif name == "gemma4_text":  # Gemma4ForCausalLM: the text decoder alone
                cache[key] = build_family_model(folder, "gemma4_text", tokenizer_from,
                                                embed_std=EMBED["gemma4"],
                                                vocab_size_per_layer_input=259, **GEMMA4_TEXT)
            else:
                text = GEMMA3_TEXT if name == "gemma3" else GEMMA4_TEXT
                cache[key] = build_multimodal(folder, name, text, tokenizer_from)
        return cache[key]
    return get


def _pre_norm_hidden(folder: Path, ids: list[int]) -> torch.Tensor:
    """The input of the model's final norm, from transformers' own forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    spec = arch_for(model.config.to_dict())
    seen: list[torch.Tensor] = []
    model.get_submodule(spec.final_norm).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        model(torch.tensor([ids]))
    return seen[-1][0]


def _streamed_hidden(folder: Path, ids: list[int], own_arguments: bool = True) -> torch.Tensor:
    """The last block's output when the blocks are streamed one at a time as the quantizer
    runs them (no quantization); with own_arguments False every block gets block 0's."""
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.quant.streaming import LayerStreamer, forward_block

    info = resolve_model(str(folder))
    streamer = LayerStreamer(info, torch.device("cpu"))
    try:
        inputs = streamer.capture_inputs(torch.tensor([ids, ids[::-1]]), batch=1)
        if not own_arguments:
            inputs.per_block = []
        for i in range(streamer.n_blocks):
            inputs.use_block(i)
            prefix = streamer.block_prefix(i)
            block = streamer.materialize(streamer.blocks[i], prefix)
            forward_block(block, inputs, out=inputs.x)
            streamer.release(block)
    finally:
        streamer.close()
    return inputs.x[0]


# ------------------------------------------------------------------------ the tables


def test_table_matches_the_module_graph_of_every_block():
    """Each block's nn.Linear modules are the table's, less the optional ones it lacks: the
    KV-shared Gemma 4 blocks have no k/v_proj, k_eq_v global blocks no v_proj."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for text in (GEMMA4_TEXT, GEMMA4_K_EQ_V):
        config = AutoConfig.for_model("gemma4", text_config={**text, "vocab_size": 300},
                                      vision_config=GEMMA4_VISION, audio_config=None)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        spec = arch_for(config.to_dict())
        assert spec.layers_prefix == "model.language_model.layers"
        for i in range(text["num_hidden_layers"]):
            block = model.get_submodule(spec.block(i))
            spec.check_block(block, i)
            groups, pairs = spec.present(i, block)
            names = [n for g in groups for n in g]
            shared = text is GEMMA4_TEXT and i >= 4
            k_eq_v = text is GEMMA4_K_EQ_V and GEMMA4_TYPES[i] == "full_attention"
            assert ("self_attn.k_proj" in names) == (not shared)
            assert ("self_attn.v_proj" in names) == (not shared and not k_eq_v)
            assert ("per_layer_input_gate" in names) == (text is GEMMA4_TEXT)
            for p in pairs:  # no AWQ pair names a linear the block lacks
                assert all(n in names for n in p.linears)
                assert p.prev != "self_attn.v_proj" or "self_attn.v_proj" in names


def test_gemma4_gguf_refuses_what_llama_cpp_cannot_read():
    """The released layouts convert (E2B as config.json has it, the text decoder alone);
    refused before any work: shared keys and values llama.cpp would read from another layer
    than transformers (GEMMA4_TEXT: the last blocks keeping their own are global then
    sliding, llama.cpp takes the global ones' from the last and the sliding ones' from the
    one before), and per-layer embeddings for another vocabulary size."""
    from qtapp.engine.gguf.archs import arch_of, shared_kv_sources

    released = _released_config("gemma4")
    assert arch_of(released).name == "gemma4"
    assert shared_kv_sources(released) == (14, 13)  # E2B: 15 layers keep their own
    text = {**released["text_config"], "architectures": ["Gemma4ForCausalLM"]}
    assert arch_of(text).name == "gemma4"
    for model_type, arch in (("gemma4", "Gemma4ForConditionalGeneration"),
                             ("gemma4_text", "Gemma4ForCausalLM")):
        config = {"model_type": model_type, "architectures": [arch], **GEMMA4_TEXT}
        with pytest.raises(UserError, match="sliding then a global layer"):
            arch_of(config)
    with pytest.raises(UserError, match="vocab_size_per_layer_input"):
        arch_of({**text, "vocab_size_per_layer_input": 1000})
    with pytest.raises(UserError, match="no layer_types"):
        arch_of({k: v for k, v in text.items() if k != "layer_types"})


def _released_config(model_type: str) -> dict:
    """config.json as the releases have it (shapes of Gemma 3 4B and Gemma 4 E2B): Gemma 3's
    text_config names only what differs from Gemma3TextConfig's defaults."""
    if model_type == "gemma3":
        return {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                "mm_tokens_per_image": 256,
                "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                                "model_type": "gemma3_text", "num_hidden_layers": 34,
                                "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                                "sliding_window": 1024},
                "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                                  "image_size": 896, "num_hidden_layers": 27}}
    types = (["sliding_attention"] * 4 + ["full_attention"]) * 7
    return {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
            "text_config": {"model_type": "gemma4_text", "hidden_size": 1536,
                            "intermediate_size": 6144, "num_hidden_layers": 35,
                            "num_attention_heads": 8, "num_key_value_heads": 1,
                            "head_dim": 256, "global_head_dim": 512, "layer_types": types,
                            "num_kv_shared_layers": 20, "hidden_size_per_layer_input": 256,
                            "vocab_size": 262144, "vocab_size_per_layer_input": 262144,
                            "sliding_window": 512, "use_double_wide_mlp": True,
                            "tie_word_embeddings": True},
            "vision_config": {"model_type": "gemma4_vision"}, "tie_word_embeddings": True}


@pytest.mark.parametrize("model_type", ["gemma3", "gemma4"])
def test_check_reads_the_nested_text_config(model_type, tmp_path):
    """`quantdesk check` answers from config.json alone (no weights): the language model's
    settings come from text_config (over Gemma3TextConfig's defaults where the release
    leaves them out); both convert to GGUF (their architecture named before any download)."""
    from shapes import hardware

    from qtapp.engine.planning.compat import check_model

    (tmp_path / "config.json").write_text(json.dumps(_released_config(model_type)))
    report = check_model(str(tmp_path), hw=hardware(vram_gib=24))
    reasons = {m.method: m.reason for m in report.methods}
    assert {"rtn", "gptq", "awq"} <= set(report.works), reasons
    assert f"architecture {model_type} is supported" in reasons["gptq"]
    # no tokenizer files here: the GGUF answer is about them, not the family
    assert "vision" not in reasons["gguf"] and "tokenizer" in reasons["gguf"], reasons
    from qtapp.engine.planning.compat import config_checks

    gguf = next(m for m in config_checks(_released_config(model_type)) if m.method == "gguf")
    assert gguf.ok and gguf.reason == f"architecture {model_type}", gguf
    assert report.n_params > (3e9 if model_type == "gemma3" else 1e9), report.n_params


def test_kv_cache_counts_only_layers_with_their_own_keys_and_values():
    """Gemma 4 E2B: 15 of 35 layers hold keys and values (the other 20 reuse them); of those,
    the sliding ones hold 1 × 256 per token and K and V, the global ones 1 × 512."""
    from qtapp.engine.planning.advisor import kv_cache_bytes
    from qtapp.engine.planning.shape import ModelShape

    shape = ModelShape.from_config(_released_config("gemma4"))
    types = _released_config("gemma4")["text_config"]["layer_types"][:15]
    per_token = sum(1 * (512 if t == "full_attention" else 256) * 2 for t in types)
    assert kv_cache_bytes(shape, 1000) == per_token * 1000 * 2
    every_layer = replace(shape, kv_values=0)  # the formula for layers that are all alike
    assert kv_cache_bytes(every_layer, 1000) == 35 * 1 * 256 * 2 * 1000 * 2
    # the per-layer embeddings (262144 × 35 × 256 + 1536 × 35 × 256) are counted: E2B's
    # language model holds about 4 B parameters with them, 1.6 B without
    assert 4.0e9 < shape.n_params < 4.3e9, shape.n_params


# ------------------------------------------------------------------------ the streamer


@pytest.mark.parametrize("name", [
    pytest.param("gemma3", marks=pytest.mark.slow), "gemma4",
    pytest.param("gemma4_k_eq_v", marks=pytest.mark.slow)])
def test_streamed_blocks_reproduce_the_model(built, name):
    """Each block runs with its own arguments: sliding and global masks and rotary
    embeddings, Gemma 4's per-layer input and the keys and values shared between blocks.
    With block 0's arguments for every block (as the streamer did before) the result
    differs: the global blocks got the sliding mask and rope (and, for Gemma 4, heads of the
    wrong width)."""
    src = built(name)
    ids = token_ids(259)
    ref = _pre_norm_hidden(src, ids)
    got = _streamed_hidden(src, ids)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4), float((got - ref).abs().max())
    if name.startswith("gemma4"):  # block 0's rotary embeddings do not fit the global heads
        with pytest.raises(RuntimeError, match="size of tensor"):
            _streamed_hidden(src, ids, own_arguments=False)
        return
    wrong = _streamed_hidden(src, ids, own_arguments=False)
    assert not torch.allclose(wrong, ref, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.parametrize("name, method", [
    *((n, m) for n in ("gemma3", "gemma4") for m in ("rtn", "gptq", "awq")),
    ("gemma4_text", "gptq")])
def test_hf_methods_end_to_end(built, name, method, tmp_path):
    """W8 through the CLI, loaded as transformers' class of the checkpoint: mean KLD below
    1e-3; the vision tower (and Gemma 4's per-layer embeddings) bit-equal to the source; a
    damaged output (the last block's last linear zeroed) above 1e-3."""
    from qtapp.engine.model.loader import load_dequantized

    src = built(name)
    out = quantize_cli(src, tmp_path / "out", method)
    model, _ = load_dequantized(out)
    assert type(model).__name__ == FAMILIES[name].architectures[0]
    module = {"gemma3": "language_model.model.layers.0.mlp.down_proj",
              "gemma4": "model.language_model.layers.0.mlp.down_proj",
              "gemma4_text": "model.layers.0.mlp.down_proj"}[name]
    assert_w8_matches(src, out, lambda: damage_hf(out, tmp_path, module), f"{name} {method} W8")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    if qc["quant_method"] == "gptq":  # optimum converts these blocks, not the vision tower's
        assert qc.get("block_name_to_quantize") == (
            None if name == "gemma4_text" else "model.language_model.layers"), qc
    source, written = load_tensors(src), load_tensors(out)
    kept = [n for n in source if n.startswith(KEPT[name])]
    assert kept and all(torch.equal(source[n], written[n]) for n in kept)


def test_a_changed_vision_tensor_is_seen(built, tmp_path):
    """The bit-equality check of the kept tensors fails on an output whose vision tower was
    changed (what converting it to a lower precision would do)."""
    from safetensors.torch import save_file

    src = built("gemma4")
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    tensors = load_tensors(copy)
    name = next(n for n in tensors if n.startswith("model.vision_tower."))
    tensors[name] = tensors[name].to(torch.bfloat16).to(torch.float32)
    for f in copy.glob("*.safetensors"):
        f.unlink()
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    source, written = load_tensors(src), load_tensors(copy)
    assert not all(torch.equal(source[n], written[n]) for n in source
                   if n.startswith(KEPT["gemma4"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3", "gemma4"])
def test_4bit_gptq_and_awq_beat_rtn(built, name, tmp_path):
    """W4 g32: the calibrated methods are closer to the source than plain rounding, on text
    (TEXT) that is not the calibration text."""
    src = built(name)
    ids = [3 + b for b in TEXT.encode()]  # the byte tokenizer: id = 3 + byte
    outputs = {m: quantize_cli(src, tmp_path / m, m, *W4_G32) for m in ("rtn", "gptq", "awq")}
    _, _, kld = held_out_klds(src, outputs, ids)
    print(f"{name} W4 g32: " + ", ".join(f"{m} {v:.2e}" for m, v in kld.items()))
    assert kld["gptq"] < kld["rtn"] and kld["awq"] < kld["rtn"], kld


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_gemma3_gguf_holds_the_text_model(built, demo_dir, tmp_path):
    """llama.cpp's Gemma 3 GGUF is the text model (the vision tower goes to an mmproj file,
    not written): F32 within 1e-5 of the source, Q8_0 within 1e-2, each rejected once a
    tensor is damaged."""
    import gguf

    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = built("gemma3", demo_dir)
    f32, ref = assert_gguf_f32_reproduces(src, tmp_path, ("blk.5.ffn_down.weight",), "gemma3")
    names = [t.name for t in gguf.GGUFReader(f32).tensors]
    assert not any("v." in n[:2] or "mm" in n for n in names), names
    assert_gguf_q8_close(src, tmp_path, ref, "gemma3", broken="token_embd.weight")


# the tensor each Gemma 4 F32 GGUF is damaged in (zeroed) to show the 1e-5 comparison failing
# (the Q8_0 one: token_embd): the per-layer embeddings (zeroed: 1.5e-4 at Q8_0, so a writer
# that dropped them would fail the F32 bound only), the global layer's keys (its values too,
# attention_k_eq_v), a per-layer input gate
GEMMA4_DAMAGED = {"gemma4_gguf": "per_layer_token_embd.weight",
                  "gemma4_k_eq_v": "blk.2.attn_k.weight",
                  "gemma4_text_gguf": "blk.4.inp_gate.weight"}


@pytest.mark.slow
@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", ["gemma4_gguf", "gemma4_k_eq_v", "gemma4_text_gguf"])
def test_gemma4_gguf_reproduces_the_model(built, spm_tokenizer, name, tmp_path):
    """llama.cpp's Gemma 4 GGUF of the text model (E2B/E4B form: per-layer inputs, shared
    keys and values, sliding and global layers of their own head widths and rope,
    per-layer output scales; the 31B form: global values equal to the keys, no per-layer
    inputs; Gemma4ForCausalLM alone) run by llama-cpp-python: F32 within 1e-5 mean KLD of
    transformers, Q8_0 (CLI) within 1e-2, each rejected once a tensor is zeroed."""
    import gguf

    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = built(name, spm_tokenizer)
    f32, ref = assert_gguf_f32_reproduces(src, tmp_path, (GEMMA4_DAMAGED[name],), name)
    names = {t.name for t in gguf.GGUFReader(f32).tensors}
    assert not any(n.startswith(("v.", "a.", "mm.")) for n in names), names
    assert_gguf_q8_close(src, tmp_path, ref, name, broken="token_embd.weight")


@pytest.mark.llama_cpp
def test_gemma4_gguf_metadata_and_k_quants(built, spm_tokenizer, tmp_path):
    """What the Gemma 4 file says, read back with the gguf package and checked against the
    transformers model's own modules: which layers slide, the global and sliding head
    widths, the shared key/value layers, the double-wide MLP, the per-layer output scales
    and the global layers' rope factors; the F32 file within 1e-5 of the source (the fast
    guard; test_gemma4_gguf_reproduces_the_model has the damaged files). Then the k-quant
    file the window offers (Q4_K_M through the CLI) opens and runs in llama-cpp-python with Q4_K / Q6_K tensors, further
    from the source than Q8_0 yet close to it; llama.cpp tokenizes text as the model's own
    tokenizer does (the "gemma4" BPE vocabulary)."""
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtapp.engine.gguf.convert import convert_to_gguf
    from qtapp.engine.gguf.llama_runtime import llama_cpp_available, load_llama

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = built("gemma4_gguf", spm_tokenizer)
    f32 = convert_to_gguf(src, tmp_path / "f32.gguf", "F32").path
    reader = gguf.GGUFReader(f32)

    def key(k: str):
        return reader.fields[f"gemma4.{k}"].contents()

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    layers = model.model.language_model.layers
    sliding = [a.self_attn.is_sliding for a in layers]
    assert key("attention.sliding_window_pattern") == sliding == [True, True, False] * 2
    assert key("attention.key_length") == layers[2].self_attn.head_dim == 128
    assert key("attention.key_length_swa") == layers[0].self_attn.head_dim == 64
    assert key("attention.shared_kv_layers") == 3
    assert key("feed_forward_length") == [a.mlp.down_proj.in_features for a in layers]
    assert key("embedding_length_per_layer_input") == 32
    tensors = {t.name: t for t in reader.tensors}
    for i, layer in enumerate(layers):
        assert float(tensors[f"blk.{i}.layer_output_scale.weight"].data[0]) == \
            float(layer.layer_scalar)
        assert (f"blk.{i}.attn_k.weight" in tensors) == (i < 3)
    # proportional rope: 0.25 × 128 / 2 = 16 frequencies turn, the other 48 do not
    freqs = np.asarray(tensors["rope_freqs.weight"].data)
    assert freqs.shape == (64,) and (freqs[:16] == 1).all() and (freqs[16:] >= 1e30).all()

    ids = token_ids(259)
    ref = source_logits(src, ids)
    assert mean_kld(ref, gguf_logits(f32, ids)) < GGUF_F32_KLD_MAX
    path = gguf_file(quantize_cli(src, tmp_path / "q4", "gguf", "--type", "Q4_K_M",
                                  "--imatrix", "none"))
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert {"Q4_K", "Q6_K"} <= types, types
    q4 = mean_kld(ref, gguf_logits(path, ids))
    q8 = mean_kld(ref, gguf_logits(gguf_file(quantize_cli(src, tmp_path / "q8", "gguf")), ids))
    print(f"gemma4 gguf Q4_K_M: mean KLD {q4:.2e} (Q8_0 {q8:.2e})")
    assert q8 < q4 < GGUF_Q8_KLD_MAX, (q4, q8)

    # `quantdesk check` takes the SentencePiece-style tokenizer (no pre-tokenizer hash to
    # look up); the same tokenizer without byte fallback is one llama.cpp's gemma4 vocabulary
    # does not read, and its BPE pre-tokenizer is unknown
    from shapes import hardware

    from qtapp.engine.planning.compat import check_model

    report = check_model(str(src), hw=hardware(vram_gib=24))
    assert "gguf" in report.works, [(m.method, m.reason) for m in report.methods]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(src / "config.json", other / "config.json")
    data = json.loads((src / "tokenizer.json").read_text())
    data["model"]["byte_fallback"] = False
    (other / "tokenizer.json").write_text(json.dumps(data))
    reasons = {m.method: m.reason for m in check_model(str(other), hw=hardware(vram_gib=24))
               .methods}
    assert "pre-tokenizer" in reasons["gguf"], reasons

    tokenizer = AutoTokenizer.from_pretrained(src)
    llm = load_llama(path, n_ctx=128, n_threads=2)
    try:
        for text in ("Hello world, the quantization ✓\n\nnext", "  two  spaces\tand a tab",
                     "Ünïcödé 漢字 🙂"):
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == \
                tokenizer(text)["input_ids"], text
    finally:
        llm.close()
