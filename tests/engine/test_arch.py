"""ArchSpec names must match the real transformers modules of every supported model type."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import SUPPORTED_MODEL_TYPES, AwqGroup, arch_for, v_o_shapes_match

CONFIGS = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
}


def tiny(model_type: str, kv_heads: int = 2):
    config = CONFIGS[model_type](
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, vocab_size=128,
    )
    torch.manual_seed(0)
    return config, AutoModelForCausalLM.from_config(config)


def test_the_llama_block_families_are_supported():
    # the other supported families are tested in test_families.py
    assert set(CONFIGS) <= set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@pytest.mark.parametrize("kv_heads", [2, 4])
def test_every_name_exists_in_a_real_model(model_type, kv_heads):
    config, model = tiny(model_type, kv_heads)
    spec = arch_for(config.to_dict())
    assert spec.name == model_type
    modules = dict(model.named_modules())
    for name in (spec.embed, spec.final_norm, spec.lm_head):
        assert name in modules, name
    for i in range(config.num_hidden_layers):
        block = spec.block(i)
        assert block == f"{spec.layers_prefix}.{i}"
        for name in spec.linears:
            assert isinstance(modules[f"{block}.{name}"], torch.nn.Linear), name
        for name in (spec.attn_norm, spec.mlp_norm):
            assert f"{block}.{name}" in modules
        for group in spec.awq_groups:
            for name in (group.prev, group.target, *group.linears):
                assert f"{block}.{name}" in modules, name
    # every linear of the block appears exactly once in the true-sequential order
    block_linears = sorted(
        n.removeprefix("model.layers.0.") for n, m in modules.items()
        if n.startswith("model.layers.0.") and isinstance(m, torch.nn.Linear)
    )
    assert sorted(spec.linears) == block_linears


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@pytest.mark.parametrize("kv_heads", [2, 4])
def test_v_o_pair_only_when_shapes_match(model_type, kv_heads):
    config, model = tiny(model_type, kv_heads)
    attn = model.model.layers[0].self_attn
    same = attn.v_proj.weight.shape == attn.o_proj.weight.shape
    spec = arch_for(config.to_dict())
    vo = AwqGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj")
    assert (vo in spec.awq_groups) == same
    assert v_o_shapes_match(config.to_dict()) == same
    # Qwen3's head_dim (128 by default) is not hidden/heads, so v→o never matches there
    assert same == (kv_heads == 4 and model_type != "qwen3")


def test_awq_group_order_and_targets():
    config, _ = tiny("llama", kv_heads=4)
    groups = arch_for(config.to_dict()).awq_groups
    assert [(g.prev, g.target) for g in groups] == [
        ("input_layernorm", "self_attn"),
        ("self_attn.v_proj", "self_attn.o_proj"),
        ("post_attention_layernorm", "mlp"),
        ("mlp.up_proj", "mlp.down_proj"),
    ]
    assert groups[0].linears == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    assert groups[2].linears == ("mlp.gate_proj", "mlp.up_proj")


def test_architectures_alone_are_enough():
    spec = arch_for({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
                     "num_attention_heads": 4})
    assert spec.name == "qwen2"


@pytest.mark.parametrize(
    "config, words",
    [
        ({"model_type": "falcon", "architectures": ["FalconForCausalLM"]},
         ["falcon", "FalconForCausalLM", "llama", "mistral", "qwen2", "qwen3"]),
        ({"architectures": ["GPT2LMHeadModel"]}, ["GPT2LMHeadModel", "llama"]),
        ({}, ["model_type", "none", "llama"]),
        ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"],
          "hidden_size": 64, "num_attention_heads": 4},
         ["LlamaForSequenceClassification", "causal"]),
        ({"model_type": "llama", "hidden_size": "64", "num_attention_heads": 4},
         ["hidden_size", "'64'"]),
        ({"model_type": "llama", "hidden_size": 64}, ["num_attention_heads"]),
        ([1, 2], ["JSON object"]),
    ],
)
def test_unsupported_or_broken_configs_are_user_errors(config, words):
    with pytest.raises(UserError) as err:
        arch_for(config)
    for word in words:
        assert word in str(err.value)


def test_spec_is_frozen():
    spec = arch_for({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4})
    with pytest.raises(AttributeError):
        spec.name = "x"
