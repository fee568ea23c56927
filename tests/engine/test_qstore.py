"""QuantStore: round trip, atomic writes, resume after partial files, job fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qtapp.engine.quant import qstore as qstore_module
from qtapp.engine.quant.primitives import quantize_weight
from qtapp.engine.quant.qstore import QuantStore, safetensors_complete


def _modules(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "self_attn.q_proj": quantize_weight(torch.randn(32, 64, generator=g), 4, 32, True),
        "mlp.down_proj": quantize_weight(torch.randn(16, 64, generator=g), 3, -1, False),
        "mlp.up_proj": quantize_weight(torch.randn(16, 64, generator=g), 8, 0, False),
    }


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("q", "scale", "zero", "g_idx")) \
        and (a.bits, a.group_size, a.sym) == (b.bits, b.group_size, b.sym)


def test_round_trip_modules_meta_floats(tmp_path: Path) -> None:
    store = QuantStore(tmp_path / "blocks", fingerprint="job-a")
    mods = _modules()
    norm = torch.rand(64) + 0.5
    store.save_block(3, mods, {"awq": {"alpha": 0.5}, "errors": [0.1, 0.2]},
                     {"model.layers.3.input_layernorm.weight": norm})
    assert store.completed() == [3]
    loaded, meta, floats = store.load_block(3)
    assert set(loaded) == set(mods)
    assert all(_same(loaded[k], mods[k]) for k in mods)
    assert meta == {"awq": {"alpha": 0.5}, "errors": [0.1, 0.2]}
    assert torch.equal(floats["model.layers.3.input_layernorm.weight"], norm)
    info = store.block_info(3)["modules"]
    assert info["mlp.down_proj"] == {"bits": 3, "group_size": -1, "sym": False,
                                     "shape": [16, 64], "act_order": False}


def test_failed_write_keeps_the_previous_block(tmp_path: Path, monkeypatch) -> None:
    store = QuantStore(tmp_path, fingerprint="job-a")
    first = _modules(0)
    store.save_block(0, first, {"v": 1})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(qstore_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save_block(0, _modules(1), {"v": 2})
    monkeypatch.undo()
    assert not list(tmp_path.glob(".block-*"))  # the temporary file was removed
    assert store.completed() == [0]
    loaded, meta, _ = store.load_block(0)
    assert meta == {"v": 1} and _same(loaded["mlp.up_proj"], first["mlp.up_proj"])


def test_resume_skips_and_deletes_partial_files(tmp_path: Path) -> None:
    store = QuantStore(tmp_path, fingerprint="job-a")
    for i in range(4):
        store.save_block(i, _modules(i), {"i": i})
    # block 1 cut short (an interrupted copy), block 2 overwritten with garbage, a stray
    # temporary file from a killed writer
    p1 = tmp_path / "block-00001.safetensors"
    data = p1.read_bytes()
    p1.write_bytes(data[: len(data) // 2])
    (tmp_path / "block-00002.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / ".block-00004.safetensors.tmp-999").write_bytes(b"partial")
    assert not safetensors_complete(p1)
    reopened = QuantStore(tmp_path, fingerprint="job-a")
    assert reopened.completed() == [0, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "block-00000.safetensors", "block-00003.safetensors", "job.json"]
    assert reopened.load_block(3)[1] == {"i": 3}


def test_a_block_file_with_missing_tensors_or_wrong_index_is_invalid(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    store = QuantStore(tmp_path, fingerprint="job-a")
    store.save_block(0, _modules(), {})
    loaded = dict(qstore_module.safe_open(str(tmp_path / "block-00000.safetensors"), "pt")
                  .metadata())
    header = json.loads(loaded["quantdesk"])
    # same metadata, but the tensors of one module are missing
    save_file({"self_attn.q_proj.q": torch.zeros(32, 64, dtype=torch.uint8)},
              str(tmp_path / "block-00001.safetensors"), metadata=loaded)
    # complete block 0 renamed to index 2: its metadata says index 0
    (tmp_path / "block-00000.safetensors").rename(tmp_path / "block-00002.safetensors")
    assert header["index"] == 0
    assert store.completed() == []
    assert not list(tmp_path.glob("block-*"))


def test_store_of_another_job_is_emptied_not_resumed(tmp_path: Path) -> None:
    a = QuantStore(tmp_path, fingerprint="job-a")
    a.save_block(0, _modules(), {})
    assert QuantStore(tmp_path, fingerprint="job-a").completed() == [0]  # same job resumes
    b = QuantStore(tmp_path, fingerprint="job-b")
    assert b.discarded and b.completed() == []
    assert b.matches("job-b") and not b.matches("job-a")
    assert json.loads((tmp_path / "job.json").read_text())["fingerprint"] == "job-b"
    b.save_block(1, _modules(), {})
    assert QuantStore(tmp_path, fingerprint="job-b").completed() == [1]


def test_unreadable_job_file_counts_as_another_job(tmp_path: Path) -> None:
    QuantStore(tmp_path, fingerprint="job-a").save_block(0, _modules(), {})
    (tmp_path / "job.json").write_text("{not json")
    store = QuantStore(tmp_path, fingerprint="job-a")
    assert store.discarded and store.completed() == []


def test_inconsistent_module_is_refused(tmp_path: Path) -> None:
    qw = _modules()["mlp.up_proj"]
    qw.g_idx = qw.g_idx[:10]
    with pytest.raises(ValueError, match="inconsistent shapes"):
        QuantStore(tmp_path).save_block(0, {"mlp.up_proj": qw}, {})
    assert not list(tmp_path.iterdir())


def test_destroy_removes_the_folder(tmp_path: Path) -> None:
    store = QuantStore(tmp_path / "job" / "blocks", fingerprint="x")
    store.save_block(0, _modules(), {})
    store.destroy()
    assert not (tmp_path / "job" / "blocks").exists()
