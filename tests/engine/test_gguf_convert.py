"""HF -> GGUF conversion: equal to llama.cpp's convert_hf_to_gguf.py, loadable, atomic."""

from __future__ import annotations

import json
import shutil
from hashlib import sha256
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf_helpers import fields, reference_convert, tensor_bytes, with_demo_tokenizer

from qtapp.engine.errors import Cancelled, UserError
from qtapp.engine.gguf.convert import convert_to_gguf
from qtapp.engine.gguf.hf_model import HfModel, permute_rows
from qtapp.engine.gguf.llama_runtime import llama_cpp_available, load_llama

ARCHS = ("llama", "mistral", "qwen2", "qwen3")

# keys whose values must match llama.cpp's converter exactly
KEYS = (
    "general.architecture", "general.file_type", "general.quantization_version",
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, make_tiny_model, demo_dir) -> dict[str, Path]:
    """Tiny random models of each family with the demo's BPE tokenizer (vocab 49152)."""
    root = tmp_path_factory.mktemp("gguf-tiny")
    models = {}
    for arch in ARCHS:
        extra = {"attention_bias": True} if arch == "qwen2" else {}
        folder = make_tiny_model(root / arch, arch, vocab_size=49152, **extra)
        models[arch] = with_demo_tokenizer(folder, demo_dir)
    tied = make_tiny_model(root / "tied", "llama", vocab_size=49152, tie_word_embeddings=True)
    models["tied"] = with_demo_tokenizer(tied, demo_dir)
    return models


@pytest.fixture(autouse=True)
def qwen_tokenizer_known(monkeypatch, tiny_models):
    """transformers 5 loads a qwen2-typed folder's tokenizer as Qwen2Tokenizer, whose split
    of the demo vocabulary llama.cpp has no hash for; name it "qwen2" for these tests only."""
    from transformers import AutoTokenizer

    from qtapp.engine.gguf import vocab

    for arch in ("qwen2", "qwen3"):
        tok = AutoTokenizer.from_pretrained(tiny_models[arch])
        digest = sha256(str(tok.encode(vocab.CHKTXT)).encode()).hexdigest()
        if digest not in vocab.PRE_BY_HASH:
            monkeypatch.setitem(vocab.PRE_BY_HASH, digest, "qwen2")


def test_permute_rows_interleaves_rotary_halves():
    # one head of 4 rows: HF's [a0 a1 | b0 b1] becomes llama.cpp's [a0 b0 a1 b1]
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    out = permute_rows(w, n_head=1)
    assert out[:, 0].tolist() == [0, 4, 2, 6]
    # two kv heads: each head is permuted on its own
    w = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert permute_rows(w, 4, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.slow
@pytest.mark.parametrize("arch, out_type", [("llama", "F32"), ("mistral", "BF16"),
                                            ("tied", "F16")])
def test_tiny_model_equals_llama_cpp_converter(tiny_models, tmp_path, arch, out_type):
    ours = convert_to_gguf(tiny_models[arch], tmp_path / "ours.gguf", out_type).path
    ref = reference_convert(tiny_models[arch], tmp_path / "ref.gguf", out_type.lower())
    assert tensor_bytes(ours) == tensor_bytes(ref)
    assert fields(ours) == fields(ref)


@pytest.mark.slow
def test_demo_equals_llama_cpp_converter(demo_dir, tmp_path):
    """Every tensor and key of the demo at F16 equals llama.cpp's own converter output."""
    ref = reference_convert(demo_dir, tmp_path / "ref.gguf", "f16")
    report = convert_to_gguf(demo_dir, tmp_path / "ours.gguf", "F16")
    ours_t, ref_t = tensor_bytes(report.path), tensor_bytes(ref)
    assert set(ours_t) == set(ref_t)
    assert "output.weight" not in ours_t  # tied embeddings
    for name in ref_t:
        assert ours_t[name] == ref_t[name], name
    ours_f, ref_f = fields(report.path), fields(ref)
    assert set(ours_f) == set(ref_f)
    for key in ours_f:
        assert ours_f[key] == ref_f[key], key
    for key in KEYS:
        assert key in ours_f, key
    assert ours_f["tokenizer.ggml.pre"] == "smollm"
    assert ours_f["llama.rope.freq_base"] == pytest.approx(100000.0)
    assert ours_f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)


@pytest.mark.llama_cpp
@pytest.mark.parametrize("arch", [*ARCHS, "tied"])
def test_llama_cpp_logits_equal_transformers(tiny_models, tmp_path, arch):
    """An F32 file computes the same logits in llama.cpp as the HF model in transformers:
    checks the Q/K permutation, biases, q/k norms, tied embeddings and hyper-parameters."""
    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    from transformers import AutoModelForCausalLM

    folder = tiny_models[arch]
    path = convert_to_gguf(folder, tmp_path / "m.gguf", "F32").path
    ids = [5, 300, 1200, 47, 9000, 12, 777, 31000, 64, 2048, 4, 128]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    names = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert ("output.weight" in names) == (arch != "tied")
    assert set(names.values()) == {"F32"}
    llm = load_llama(path, n_ctx=64, logits_all=True, n_threads=1)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    llm.close()
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 1e-3 * scale


def test_bf16_file_keeps_norms_and_biases_f32(tiny_models, tmp_path):
    report = convert_to_gguf(tiny_models["qwen2"], tmp_path / "m.gguf", "BF16")
    types = {t.name: t.type for t in report.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.bias"] == "F32"
    assert types["blk.0.ffn_down.weight"] == "BF16"
    assert fields(report.path)["general.file_type"] == gguf.LlamaFileType.MOSTLY_BF16
    # BF16 keeps the top 16 bits of float32 (round to nearest even)
    w = HfModel(tiny_models["qwen2"]).reader.get("model.layers.0.mlp.down_proj.weight")
    stored = next(t for t in gguf.GGUFReader(report.path).tensors
                  if t.name == "blk.0.ffn_down.weight")
    back = gguf.quants.dequantize(np.asarray(stored.data), gguf.GGMLQuantizationType.BF16)
    assert np.array_equal(back.reshape(w.shape), w.to(torch.bfloat16).float().numpy())


def test_unsupported_architecture_is_named(tiny_models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="MambaForCausalLM"):
        convert_to_gguf(folder, tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


def test_unknown_pre_tokenizer_is_refused(tiny_llama_dir, tmp_path):
    # the conftest byte tokenizer is a BPE llama.cpp has no hash for
    with pytest.raises(UserError, match="pre-tokenizer"):
        convert_to_gguf(tiny_llama_dir, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cancel_leaves_no_file(tiny_models, tmp_path):
    calls = []

    def cancel_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        convert_to_gguf(tiny_models["llama"], tmp_path / "m.gguf", "F16",
                        should_cancel=cancel_after_three)
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_every_tensor(tiny_models, tmp_path):
    seen: list[tuple[str, int, int]] = []
    report = convert_to_gguf(tiny_models["llama"], tmp_path / "m.gguf", "F16",
                             progress=lambda *a: seen.append(a))
    types = {t.name: t.type for t in report.tensors}
    assert types["blk.1.ffn_norm.weight"] == "F32" and types["blk.1.attn_k.weight"] == "F16"
    assert [s[1] for s in seen] == list(range(1, len(report.tensors) + 1))
    assert all(s[2] == len(report.tensors) for s in seen)
    assert {s[0] for s in seen} == {t.name for t in report.tensors}


def test_quantized_type_is_not_a_conversion(tiny_models, tmp_path):
    with pytest.raises(UserError, match="quantize"):
        convert_to_gguf(tiny_models["llama"], tmp_path / "m.gguf", "Q4_K_M")


def test_source_tensor_modules_and_names(tiny_models):
    model = HfModel(tiny_models["llama"])
    by_name = {t.gguf_name: t for t in model.tensors()}
    assert by_name["blk.1.attn_q.weight"].module == "model.layers.1.self_attn.q_proj"
    assert by_name["token_embd.weight"].shape == (49152, 64)
    assert by_name["output.weight"].hf_name == "lm_head.weight"
