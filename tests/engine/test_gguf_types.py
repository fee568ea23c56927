"""Per-tensor GGUF types: llama-quantize's mixture rules (llama.cpp @0c1e57098) and overrides."""

from __future__ import annotations

from collections import Counter

import pytest

from qtapp.engine.errors import UserError
from qtapp.engine.gguf.types import (
    FT,
    ModelFacts,
    Q,
    TensorSpec,
    _use_more_bits,
    choose_types,
    file_type,
)

SMOL = ModelFacts("llama", n_layer=30, n_head=9, n_head_kv=3)


def llama_specs(n_layer: int, hidden: int, ff: int, kv: int, vocab: int = 1000,
                tied: bool = True) -> list[TensorSpec]:
    """The tensors of a Llama-shaped GGUF file (numpy shapes: rows = outputs)."""
    specs = [TensorSpec("token_embd.weight", (vocab, hidden), "model.embed_tokens", Q.F16),
             TensorSpec("output_norm.weight", (hidden,), "model.norm", Q.F32)]
    if not tied:
        specs.append(TensorSpec("output.weight", (vocab, hidden), "lm_head", Q.F16))
    shapes = {"attn_q": ((hidden, hidden), "self_attn.q_proj"),
              "attn_k": ((kv, hidden), "self_attn.k_proj"),
              "attn_v": ((kv, hidden), "self_attn.v_proj"),
              "attn_output": ((hidden, hidden), "self_attn.o_proj"),
              "ffn_gate": ((ff, hidden), "mlp.gate_proj"),
              "ffn_up": ((ff, hidden), "mlp.up_proj"),
              "ffn_down": ((hidden, ff), "mlp.down_proj")}
    for i in range(n_layer):
        for name, (shape, module) in shapes.items():
            specs.append(TensorSpec(f"blk.{i}.{name}.weight", shape,
                                    f"model.layers.{i}.{module}", Q.F16))
        for norm, module in (("attn_norm", "input_layernorm"),
                             ("ffn_norm", "post_attention_layernorm")):
            specs.append(TensorSpec(f"blk.{i}.{norm}.weight", (hidden,),
                                    f"model.layers.{i}.{module}", Q.F32))
    return specs


def types_of(specs, ftype, facts=SMOL, **kw) -> dict[str, Q]:
    return {n: c.type for n, c in choose_types(specs, file_type(ftype), facts, **kw).items()}


def test_use_more_bits_matches_llama_cpp_for_30_layers():
    # i < 3, i >= 26, or (i - 3) % 3 == 2
    assert [i for i in range(30) if _use_more_bits(i, 30)] == [
        0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_smollm_q4_k_m_mixture_and_row_length_fallbacks():
    """SmolLM2-135M: rows of 576 do not fit 256-blocks, so Q4_K becomes Q5_0, Q6_K becomes
    Q8_0; ffn_down (rows of 1536) keeps Q4_K/Q6_K."""
    t = types_of(llama_specs(30, 576, 1536, 192), "Q4_K_M")
    assert t["token_embd.weight"] == Q.Q8_0  # tied output: Q6_K, fallback Q8_0
    assert t["blk.0.attn_norm.weight"] == Q.F32
    more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}
    for i in range(30):
        assert t[f"blk.{i}.attn_v.weight"] == (Q.Q8_0 if i in more else Q.Q5_0)
        assert t[f"blk.{i}.ffn_down.weight"] == (Q.Q6_K if i in more else Q.Q4_K)
        for name in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert t[f"blk.{i}.{name}.weight"] == Q.Q5_0
    assert Counter(t.values()) == {Q.Q5_0: 166, Q.Q8_0: 15, Q.Q6_K: 14, Q.Q4_K: 16, Q.F32: 61}


def test_q5_k_m_on_256_aligned_rows():
    t = types_of(llama_specs(8, 512, 1024, 256, tied=False), "Q5_K_M",
                 ModelFacts("llama", 8, 8, 4))
    assert t["output.weight"] == Q.Q6_K
    assert t["token_embd.weight"] == Q.Q5_K  # untied: the default type
    # use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2
    assert [i for i in range(8) if t[f"blk.{i}.ffn_down.weight"] == Q.Q6_K] == [0, 3, 6, 7]
    assert [i for i in range(8) if t[f"blk.{i}.attn_v.weight"] == Q.Q6_K] == [0, 3, 6, 7]
    assert t["blk.2.attn_q.weight"] == Q.Q5_K


def test_q3_k_m_and_q2_k_bumps():
    specs = llama_specs(16, 512, 1024, 128, tied=False)
    facts = ModelFacts("llama", 16, 8, 2)  # n_gqa 4
    t = types_of(specs, "Q3_K_M", facts)
    assert [t[f"blk.{i}.attn_v.weight"] for i in range(3)] == [Q.Q5_K, Q.Q5_K, Q.Q4_K]
    assert t["blk.0.ffn_down.weight"] == Q.Q5_K  # i < n/16
    assert t["blk.5.ffn_down.weight"] == Q.Q4_K
    assert t["blk.5.attn_output.weight"] == Q.Q4_K
    assert t["blk.5.attn_q.weight"] == Q.Q3_K
    t = types_of(specs, "Q2_K", facts)
    assert t["blk.3.attn_v.weight"] == Q.Q4_K  # n_gqa >= 4
    assert t["blk.3.ffn_down.weight"] == Q.Q3_K
    assert t["blk.3.attn_output.weight"] == Q.Q3_K
    assert t["blk.3.ffn_up.weight"] == Q.Q2_K


def test_q4_k_s_and_70b():
    specs = llama_specs(80, 512, 1024, 128, tied=False)
    t = types_of(specs, "Q4_K_S", ModelFacts("llama", 80, 64, 8))
    assert [t[f"blk.{i}.attn_v.weight"] for i in (3, 4)] == [Q.Q5_K, Q.Q5_K]  # 70B bump
    assert t["blk.9.ffn_down.weight"] == Q.Q5_K and t["blk.10.ffn_down.weight"] == Q.Q4_K
    t = types_of(specs, "Q4_K_S", ModelFacts("llama", 80, 64, 64))  # not GQA: not a 70B
    assert t["blk.4.attn_v.weight"] == Q.Q4_K


def test_q4_0_with_imatrix_guards_first_ffn_down():
    specs = llama_specs(16, 512, 1024, 128)
    facts = ModelFacts("llama", 16, 8, 2)
    without = types_of(specs, "Q4_0", facts)
    with_im = types_of(specs, "Q4_0", facts, has_imatrix=True)
    assert without["blk.1.ffn_down.weight"] == Q.Q4_0
    assert [with_im[f"blk.{i}.ffn_down.weight"] for i in (0, 1, 2)] == [Q.Q4_1, Q.Q4_1, Q.Q4_0]
    assert with_im["token_embd.weight"] == Q.Q6_K  # tied, rows of 512 fit Q6_K


@pytest.mark.parametrize("ftype", ["F16", "BF16", "F32", "Q8_0"])
def test_flat_types(ftype):
    t = types_of(llama_specs(4, 512, 1024, 128), ftype)
    expected = {"F16": Q.F16, "BF16": Q.BF16, "F32": Q.F32, "Q8_0": Q.Q8_0}[ftype]
    assert t["blk.0.ffn_up.weight"] == expected and t["token_embd.weight"] == expected
    assert t["blk.0.ffn_norm.weight"] == Q.F32


def test_overrides_by_module_glob():
    specs = llama_specs(30, 576, 1536, 192)
    rules = {"*.self_attn.*": "Q8_0", "*.mlp.*": "Q4_K"}
    choices = choose_types(specs, FT.MOSTLY_Q4_K_M, SMOL, overrides=rules)
    assert choices["blk.3.attn_k.weight"].type == Q.Q8_0
    assert choices["blk.3.attn_k.weight"].reason == "override"
    assert choices["blk.3.ffn_down.weight"].type == Q.Q4_K  # override: no Q6_K bump
    assert choices["blk.3.ffn_gate.weight"].type == Q.Q5_0  # rows of 576: fallback
    assert choices["blk.3.ffn_gate.weight"].reason == "fallback from Q4_K"
    assert choices["blk.3.attn_norm.weight"].type == Q.F32  # norms are never quantized
    # overrides also apply to float files
    t = types_of(specs, "F16", overrides={"*.mlp.down_proj": "Q8_0"})
    assert t["blk.0.ffn_down.weight"] == Q.Q8_0 and t["blk.0.ffn_up.weight"] == Q.F16


def test_row_length_not_a_multiple_of_32_falls_back_to_f16():
    specs = [TensorSpec("blk.0.ffn_down.weight", (64, 100), "model.layers.0.mlp.down_proj",
                        Q.F16)]
    t = types_of(specs, "Q4_0", ModelFacts("llama", 1, 4, 4))
    assert t["blk.0.ffn_down.weight"] == Q.F16


def test_bad_names_are_user_errors():
    with pytest.raises(UserError, match="Q4_K_M"):
        file_type("Q4_K_X")
    with pytest.raises(UserError, match="Q7"):
        choose_types(llama_specs(1, 64, 128, 64), FT.MOSTLY_Q8_0,
                     ModelFacts("llama", 1, 4, 4), overrides={"*": "Q7"})
