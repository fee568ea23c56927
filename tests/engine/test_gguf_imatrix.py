"""Importance matrix: collection from activations, llama.cpp file formats, damaged files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from qtapp.engine.errors import UserError
from qtapp.engine.gguf.imatrix import (
    Imatrix,
    ImatrixCollector,
    bos_token_id,
    compute_imatrix,
    read_imatrix,
    with_bos,
    write_imatrix,
)


def sample_imatrix() -> Imatrix:
    rng = np.random.default_rng(0)
    c = ImatrixCollector()
    for _ in range(3):
        c.add("blk.0.attn_q.weight", torch.from_numpy(rng.normal(size=(2, 100, 64))))
        c.add("blk.1.ffn_down.weight", rng.normal(scale=3.0, size=(200, 128)))
    return c.to_imatrix("calibration.txt", chunk_size=100)


def test_collector_is_mean_of_squares_per_column():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(7, 32)) * np.arange(1, 33), rng.normal(size=(2, 5, 32))]
    c = ImatrixCollector()
    for x in xs:
        c.add("blk.0.ffn_up.weight", torch.from_numpy(x))
    flat = np.concatenate([x.reshape(-1, 32) for x in xs])
    np.testing.assert_allclose(c.result()["blk.0.ffn_up.weight"], (flat ** 2).mean(0),
                               rtol=1e-6)
    im = c.to_imatrix(chunk_size=4)
    assert im.counts["blk.0.ffn_up.weight"].tolist() == [17] and im.chunk_count == 4


@pytest.mark.parametrize("legacy", [False, True])
def test_file_round_trip(tmp_path, legacy):
    im = sample_imatrix()
    path = tmp_path / ("m.dat" if legacy else "m.gguf")
    write_imatrix(im, path, legacy=legacy)
    back = read_imatrix(path)
    assert back.datasets == ["calibration.txt"] and back.chunk_count == 6
    assert back.source == path.name
    assert set(back.importance()) == set(im.importance())
    for name, values in im.importance().items():
        np.testing.assert_allclose(back.importance()[name], values, rtol=1e-6)
    assert list(tmp_path.iterdir()) == [path]


def test_gguf_file_layout(tmp_path):
    """The keys and tensors llama.cpp's loader (common/imatrix-loader.cpp) looks for."""
    import gguf

    write_imatrix(sample_imatrix(), tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.type"].contents() == "imatrix"
    assert reader.fields["imatrix.chunk_size"].contents() == 100
    assert "general.architecture" not in reader.fields
    tensors = {t.name: t for t in reader.tensors}
    sums = tensors["blk.1.ffn_down.weight.in_sum2"]
    counts = tensors["blk.1.ffn_down.weight.counts"]
    assert [int(d) for d in sums.shape] == [128, 1] and [int(d) for d in counts.shape] == [1, 1]
    assert sums.tensor_type.name == "F32" and float(counts.data[0, 0]) == 600.0


def test_legacy_values_are_mean_times_ncall(tmp_path):
    write_imatrix(sample_imatrix(), tmp_path / "m.dat", legacy=True)
    data = (tmp_path / "m.dat").read_bytes()
    (n_entries, name_len) = struct.unpack_from("<ii", data)
    name = data[8:8 + name_len].decode()
    ncall, nval = struct.unpack_from("<ii", data, 8 + name_len)
    values = np.frombuffer(data, np.float32, nval, 16 + name_len)
    assert n_entries == 2 and name == "blk.0.attn_q.weight"
    assert ncall == 6 and nval == 64  # 600 tokens in chunks of 100
    np.testing.assert_allclose(values / ncall, sample_imatrix().importance()[name], rtol=1e-6)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_files_are_refused(tmp_path, legacy):
    path = tmp_path / "m.imatrix"
    write_imatrix(sample_imatrix(), path, legacy=legacy)
    data = path.read_bytes()
    # the GGUF writer pads the last tensor, so cut into its data, not into the padding
    for cut in (2, 9, len(data) // 3, len(data) // 2, len(data) - (60 if not legacy else 5)):
        damaged = tmp_path / f"cut{cut}"
        damaged.write_bytes(data[:cut])
        with pytest.raises(UserError, match="truncated|neither"):
            read_imatrix(damaged)


def test_other_files_are_refused(tmp_path, tiny_llama_dir):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(UserError):
        read_imatrix(tmp_path / "empty")
    with pytest.raises(UserError, match="neither"):
        read_imatrix(tiny_llama_dir / "config.json")
    with pytest.raises(UserError, match="Cannot read"):
        read_imatrix(tmp_path / "missing.gguf")


def test_non_finite_values_are_refused(tmp_path):
    im = sample_imatrix()
    im.sums["blk.0.attn_q.weight"][0, 3] = np.nan
    write_imatrix(im, tmp_path / "m.gguf")
    with pytest.raises(UserError, match="non-finite"):
        read_imatrix(tmp_path / "m.gguf")


def test_model_pass_collects_block_linears_by_gguf_name(tiny_llama_dir):
    """The hooked inputs are the RMS-normed hidden states: q, k and v share one entry
    value; the embedding and lm_head (not blk.*) are not collected, as in llama-imatrix."""
    from transformers import AutoModelForCausalLM

    batches = torch.randint(3, 250, (3, 16), generator=torch.Generator().manual_seed(0))
    im = compute_imatrix(tiny_llama_dir, batches, dataset="test")
    values = im.importance()
    assert set(values) == {f"blk.{i}.{n}.weight" for i in range(2) for n in (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert values["blk.0.attn_q.weight"].shape == (64,)
    assert values["blk.1.ffn_down.weight"].shape == (128,)
    np.testing.assert_array_equal(values["blk.0.attn_q.weight"], values["blk.0.attn_v.weight"])
    assert im.counts["blk.0.attn_q.weight"].tolist() == [48] and im.chunk_size == 16
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    seen = []
    model.model.layers[1].post_attention_layernorm.register_forward_hook(
        lambda _m, _a, out: seen.append(out.reshape(-1, 64)))
    with torch.inference_mode():
        for b in batches:
            model(input_ids=b[None])
    expected = (torch.cat(seen).double() ** 2).mean(0).numpy()
    np.testing.assert_allclose(values["blk.1.ffn_up.weight"], expected, rtol=1e-5)


def test_with_bos_gives_llama_imatrix_chunks():
    """llama-imatrix tokenizes [BOS] + text and writes BOS over the first token of each
    chunk: chunk i is BOS + text[L·i : L·i+L-1]."""
    text = torch.arange(10, 22)
    stream = torch.cat([torch.tensor([1]), text])
    chunks = stream[:12].reshape(3, 4).clone()
    chunks[:, 0] = 1
    assert torch.equal(with_bos(text.reshape(3, 4), 1), chunks)
    assert torch.equal(with_bos(text.reshape(3, 4), None), text.reshape(3, 4))


def test_bos_token_id_follows_the_tokenizer(tiny_llama_dir):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert tokenizer.bos_token_id is not None and bos_token_id(tokenizer) is None
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tokenizer.bos_token} $A",
        special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)])
    assert bos_token_id(tokenizer) == tokenizer.bos_token_id


def test_collector_refuses_a_changed_width():
    c = ImatrixCollector()
    c.add("blk.0.attn_q.weight", np.ones((2, 8)))
    with pytest.raises(ValueError, match="columns"):
        c.add("blk.0.attn_q.weight", np.ones((2, 9)))


def test_write_is_atomic(tmp_path, monkeypatch):
    import gguf

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError):
        write_imatrix(sample_imatrix(), tmp_path / "m.gguf")
    assert list(Path(tmp_path).iterdir()) == []
