"""The GPU attention (key/value heads repeated before sdpa) computes what transformers' sdpa does."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from qtapp.engine.quant.attention import NAME, gpu_attention


def test_repeated_kv_attention_equals_sdpa() -> None:
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    ours = AutoModelForCausalLM.from_config(config, attn_implementation=gpu_attention())
    ours.load_state_dict(reference.state_dict())
    assert ours.config._attn_implementation == NAME
    ids = torch.randint(0, 100, (3, 41))
    with torch.no_grad():
        a, b = reference(ids).logits, ours(ids).logits
    assert a.abs().max() > 0.01
    assert torch.allclose(a, b, atol=1e-5)
