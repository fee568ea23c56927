"""Model hyper-parameters and authorship of a Hugging Face folder as GGUF keys.

Follows llama.cpp @0c1e57098 conversion/base.py (TextModel.set_gguf_parameters,
ModelBase.prepare_metadata) and conversion/llama.py (LlamaModel.set_gguf_parameters); what a
family adds (Granite's multipliers, Gemma's soft-capping, Phi-3's sliding window …) is data
in its GgufFacts (qtapp.engine.model.arch), written here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from qtapp.engine.gguf.archs import full_attention_interval
from qtapp.engine.gguf.hf_model import HfModel, rope_parameters
from qtapp.engine.model.arch import layer_attention

# what llama.cpp's converter writes when a Qwen3.5 config has no mrope_section
QWEN35_MROPE_SECTION = (11, 11, 10, 0)


def _first(config: dict[str, Any], *keys: str) -> Any:
    return next((config[k] for k in keys if k in config), None)


def add_general(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    """general.type / name / size_label etc.; call after every tensor info was added."""
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, model_dir, None, total)
    if meta.name is None:
        meta.name = model_dir.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)


def add_hparams(writer: gguf.GGUFWriter, model: HfModel, file_type: int) -> None:
    """{arch}.* keys, general.file_type and general.quantization_version."""
    facts = model.arch.facts
    c = {k: v for k, v in model.config.items() if k not in facts.ignore}
    writer.add_block_count(model.n_layer)
    if (n_ctx := _first(c, "max_position_embeddings", "n_ctx", "n_positions", "max_length",
                        "max_sequence_length", "model_max_length")) is not None:
        writer.add_context_length(n_ctx)
    if (n_embd := _first(c, "hidden_size", "n_embd", "dim")) is not None:
        writer.add_embedding_length(n_embd)
    split = facts.split_attention  # these write per-layer forms of some keys below
    if (n_ff := _first(c, "intermediate_size", "n_inner", "hidden_dim")) is not None \
            and not split:
        writer.add_feed_forward_length(n_ff)
    writer.add_head_count(model.n_head)
    if ("num_key_value_heads" in c or "n_kv_heads" in c) and not split:
        writer.add_head_count_kv(_first(c, "num_key_value_heads", "n_kv_heads"))
    _add_rope(writer, rope_parameters(c))
    if (eps := _first(c, "rms_norm_eps", "norm_eps")) is not None:
        writer.add_layer_norm_rms_eps(eps)
    if (head_dim := c.get("head_dim")) is not None and not split:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    if facts.llama_keys:
        writer.add_vocab_size(c["vocab_size"])
    if facts.rope_dims:
        rope = rope_parameters(c)
        partial = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
        writer.add_rope_dimension_count(
            int((head_dim or c["hidden_size"] // model.n_head) * (partial or 1.0)))
    if facts.gated_delta_net:
        _add_gated_delta_net(writer, c)
    if split:
        _add_split_attention(writer, model.config, model.n_layer)
    for key, method, default in facts.kv:  # the family's own keys (arch.GgufFacts.kv)
        value = c.get(key)
        value = default if value is None else value
        if value is not None:
            getattr(writer, method)(value)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_gated_delta_net(writer: gguf.GGUFWriter, c: dict[str, Any]) -> None:
    """The keys of llama.cpp's Qwen3.5 / Qwen3-Next converter
    (docs/formats.md#gated-deltanet): the DeltaNet's shape as ssm.*, which blocks have full
    attention, and the multimodal rope sections the qwen35 loaders require (text positions
    use one section)."""
    writer.add_ssm_conv_kernel(c["linear_conv_kernel_dim"])
    writer.add_ssm_state_size(c["linear_key_head_dim"])
    writer.add_ssm_group_count(c["linear_num_key_heads"])
    writer.add_ssm_time_step_rank(c["linear_num_value_heads"])
    writer.add_ssm_inner_size(c["linear_value_head_dim"] * c["linear_num_value_heads"])
    writer.add_full_attention_interval(full_attention_interval(c))
    sections = list(rope_parameters(c).get("mrope_section") or QWEN35_MROPE_SECTION)
    writer.add_rope_dimension_sections(sections + [0] * (4 - len(sections)))


def _add_split_attention(writer: gguf.GGUFWriter, config: dict[str, Any], n_layer: int) -> None:
    """The keys of llama.cpp's Gemma 4 converter (Gemma4Model.set_gguf_parameters;
    docs/formats.md#gemma-4): which layers slide, the global layers' head width as
    key/value_length and the sliding ones' as *_swa, key/value heads per layer where the
    global ones have their own, each kind's rope (the global layers' over the whole head,
    their unrotated part carried by rope_freqs: hf_model.global_rope_factors) and the
    double-wide MLP of the layers that reuse keys and values."""
    layers = layer_attention(config)
    sliding = [a for a in layers if a.kind == "sliding_attention"]
    full = [a for a in layers if a.kind != "sliding_attention"]
    swa = sliding[0] if sliding else layers[0]
    glob = full[0] if full else swa
    writer.add_sliding_window_pattern([a.kind == "sliding_attention" for a in layers])
    writer.add_key_length(glob.head_dim)
    writer.add_value_length(glob.head_dim)
    writer.add_key_length_swa(swa.head_dim)
    writer.add_value_length_swa(swa.head_dim)
    kv = [a.kv_heads for a in layers]
    writer.add_head_count_kv(kv[0] if len(set(kv)) == 1 else kv)
    rope = dict(config.get("rope_parameters") or {})
    local = dict(rope.get("sliding_attention") or {})
    writer.add_rope_dimension_count(glob.head_dim)
    writer.add_rope_dimension_count_swa(
        int(swa.head_dim * float(local.get("partial_rotary_factor") or 1.0)))
    if (theta := local.get("rope_theta")) is not None:
        writer.add_rope_freq_base_swa(theta)
    n_ff = config["intermediate_size"]
    if config.get("use_double_wide_mlp"):
        first_shared = n_layer - int(config.get("num_kv_shared_layers") or 0)
        writer.add_feed_forward_length([n_ff if i < first_shared else 2 * n_ff
                                        for i in range(n_layer)])
    else:
        writer.add_feed_forward_length(n_ff)


def _add_rope(writer: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
    rope_type = rope.get("rope_type")
    factor = rope.get("factor")
    if rope_type == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        if (v := rope.get("extrapolation_factor")) is not None:
            writer.add_rope_scaling_yarn_ext_factor(v)
        if (v := rope.get("attention_factor", rope.get("attn_factor"))) is not None:
            writer.add_rope_scaling_yarn_attn_factor(v)
        if (v := rope.get("beta_fast")) is not None:
            writer.add_rope_scaling_yarn_beta_fast(v)
        if (v := rope.get("beta_slow")) is not None:
            writer.add_rope_scaling_yarn_beta_slow(v)
    elif rope_type in ("su", "longrope"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    # "llama3" rope is carried by the rope_freqs tensor (hf_model.py)
    if (theta := rope.get("rope_theta")) is not None:
        writer.add_rope_freq_base(theta)
