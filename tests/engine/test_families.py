"""Every supported family end to end: a tiny model built from the family's own transformers
config class, quantized through the CLI, opened by the consumer (transformers through
load_dequantized; llama-cpp-python for GGUF), and compared with the source on the same
tokens: mean KL divergence of the next-token distributions below 1e-3 at 8 bits.

The tiny models are made to have peaked next-token distributions (the final norm scaled
until the mean entropy is ENTROPY nats, against ln 259 = 5.6 for a flat one; norm weights
perturbed away from their neutral value; initializer_range 0.1), checked by
`test_source_outputs_are_peaked`: on a nearly flat distribution a broken output could
pass. Each method also gets one deliberately damaged output (one quantized tensor zeroed)
that the same comparison must reject.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_helpers import (
    ENTROPY,
    FAMILY_CONFIGS,
    GGUF_Q8_KLD_MAX,
    assert_gguf_f32_reproduces,
    assert_gguf_q8_close,
    assert_w4_calibrated_beat_rtn,
    assert_w8_matches,
    damage_gguf,
    damage_hf,
    family_builder,
    folder_cache,
    gguf_logits,
    mean_kld,
    output_cache,
    source_logits,
    token_ids,
)

from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import FAMILIES, arch_for, family_for

GGUF_FAMILIES = ("granite", "olmo2", "smollm3", "gemma2", "gemma3_text", "glm4")
NEW_FAMILIES = ("granite", "olmo2", "smollm3", "phi3", "gemma2", "gemma3_text", "glm4")
FAST = ("granite",)  # families whose whole path also runs without the slow marker


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    """(model_type, tokenizer folder or None) → the family's tiny model, built once."""
    def get(model_type: str, demo_tokenizer: Path | None = None) -> Path:
        builders = {model_type: family_builder(model_type, demo_tokenizer)}
        return folder_cache(tmp_path_factory, builders)(model_type)
    return get


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """(src, method) → its 8-bit output through the CLI, run once (test_families_everywhere
    reads the same RTN outputs)."""
    return output_cache(tmp_path_factory)


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("model_type", NEW_FAMILIES)
def test_table_matches_the_real_module_graph(model_type):
    """Every linear of the transformers block is in exactly one group of the table; every
    AWQ op, target and norm the table names exists, and each AWQ prev op is a norm with a
    weight as wide as its linears' inputs, or a linear."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
                "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 300,
                **FAMILY_CONFIGS[model_type], "pad_token_id": 0}
    config = AutoConfig.for_model(model_type, **settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    spec = arch_for(config.to_dict())
    block = model.get_submodule(spec.block(0))
    spec.check_block(block)
    modules = dict(model.named_modules())
    for name in (spec.embed, spec.final_norm):
        assert name in modules
    assert sorted(spec.linears) == sorted(set(spec.linears))
    for group in spec.awq_groups:
        prev = block.get_submodule(group.prev)
        block.get_submodule(group.target)
        width = {block.get_submodule(n).in_features for n in group.linears}
        assert len(width) == 1
        if not isinstance(prev, torch.nn.Linear):
            assert tuple(prev.weight.shape) == (width.pop(),)
    for norm in FAMILIES[model_type].block.norms:
        block.get_submodule(norm)


def test_a_linear_missing_from_the_table_is_refused():
    spec = arch_for({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4})
    block = torch.nn.Module()
    block.self_attn = torch.nn.Module()
    block.self_attn.qkv_proj = torch.nn.Linear(4, 12)
    with pytest.raises(UserError, match="qkv_proj"):
        spec.check_block(block)


def test_unknown_and_transformers_only_families_are_told_apart():
    with pytest.raises(UserError, match="unknown"):
        family_for({"model_type": "no_such_model", "architectures": ["NoSuchForCausalLM"]})
    with pytest.raises(UserError, match="known to transformers but not to QuantDesk"):
        family_for({"model_type": "falcon", "architectures": ["FalconForCausalLM"]})


@pytest.mark.parametrize("model_type", ["falcon", "no_such_model"])
def test_check_says_no_before_any_download(model_type, tmp_path):
    """`quantdesk check` answers from config.json alone: no weights exist in the folder."""
    from qtapp.engine.planning.compat import check_model

    folder = tmp_path / model_type
    folder.mkdir()
    arch = FAMILIES[model_type].architectures[0] if model_type in FAMILIES else "XForCausalLM"
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": [arch], "hidden_size": 64,
        "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128,
        "vocab_size": 300}))
    report = check_model(str(folder))
    assert report.works == []
    for m in report.methods:
        assert model_type in m.reason or arch in m.reason


def test_gguf_check_names_the_family(tmp_path):
    from qtapp.engine.gguf.archs import arch_of

    assert arch_of({"model_type": "granite", "architectures": ["GraniteForCausalLM"]}
                   ).name == "granite"
    assert arch_of({"architectures": ["Gemma2ForCausalLM"]}).norm_offset == 1.0
    assert arch_of({"architectures": ["GptOssForCausalLM"]}).name == "gpt-oss"


# ------------------------------------------------------------------------ end to end


def _params(families):
    return [pytest.param(f, marks=() if f in FAST else pytest.mark.slow) for f in families]


@pytest.mark.parametrize("model_type", _params(NEW_FAMILIES))
def test_source_outputs_are_peaked(family_dir, model_type):
    """The comparison means something only if the source's distributions are far from flat."""
    src = family_dir(model_type)
    logits = source_logits(src, token_ids(259))
    p = torch.softmax(logits.double(), -1)
    entropy = float(-(p * p.log()).sum(-1).mean())
    assert entropy < 0.5 * np.log(logits.shape[-1]), entropy
    assert abs(entropy - ENTROPY) < 0.05, entropy


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
@pytest.mark.parametrize("model_type", _params(NEW_FAMILIES))
def test_hf_methods_end_to_end(family_dir, outputs, model_type, method, tmp_path,
                               record_property):
    src = family_dir(model_type)
    out = outputs(src, method)
    spec = arch_for(json.loads((src / "config.json").read_text()))
    kld = assert_w8_matches(src, out, lambda: damage_hf(
        out, tmp_path, f"{spec.block(0)}.{spec.linears[-1]}"), f"{model_type} {method} W8")
    record_property("kld", kld)


W4_FAMILIES = ("llama", "mistral", "qwen2", "qwen3") + NEW_FAMILIES


@pytest.mark.slow
@pytest.mark.parametrize("model_type", W4_FAMILIES)
def test_w4_calibrated_methods_beat_rtn(family_dir, model_type, tmp_path, capsys,
                                        record_property):
    """At 4 bits GPTQ and AWQ beat RTN at the same settings (g32, the same 16 × 64
    calibration tokens, the same export format), compared on held-out text (the built-in
    evaluation text, none of the calibration windows; docs/models.md, fn. 6). A GPTQ output
    with block 0's last linear zeroed must not beat RTN: the comparison can fail."""
    src = family_dir(model_type)
    spec = arch_for(json.loads((src / "config.json").read_text()))
    with capsys.disabled():
        kld = assert_w4_calibrated_beat_rtn(
            src, tmp_path,
            lambda out: damage_hf(out, tmp_path, f"{spec.block(0)}.{spec.linears[-1]}"),
            damaged=("gptq",), args=lambda _m: ("--format", "gptq"))
    for method in ("rtn", "gptq", "awq"):
        record_property(f"{method}_w4_kld", kld[method])


@pytest.mark.llama_cpp
@pytest.mark.parametrize("model_type", _params(GGUF_FAMILIES))
def test_gguf_end_to_end(family_dir, demo_dir, model_type, tmp_path):
    from qtapp.engine.gguf.llama_runtime import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    src = family_dir(model_type, demo_dir)  # a BPE llama.cpp knows
    _f32, ref = assert_gguf_f32_reproduces(src, tmp_path, ["blk.0.ffn_down.weight"],
                                           model_type)
    path = assert_gguf_q8_close(src, tmp_path, ref, model_type)
    bad = damage_gguf(path, tmp_path, "token_embd.weight")
    damaged = mean_kld(ref, gguf_logits(bad, token_ids(259)))
    print(f"{model_type} gguf Q8_0 damaged: mean KLD {damaged:.2e}")
    assert damaged > GGUF_Q8_KLD_MAX, damaged


def test_phi3_gguf_is_refused_before_any_work():
    from qtapp.engine.gguf.archs import arch_of

    with pytest.raises(UserError, match="not verified"):
        arch_of({"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]})
