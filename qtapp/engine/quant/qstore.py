"""Per-block checkpoint of a quantization job, so an interrupted job resumes where it stopped.

One safetensors file per decoder block, written atomically (temporary file, fsync,
``os.replace``), so a crash leaves either the previous state or the complete new file:

    <root>/job.json                  {"fingerprint": …, "version": 1}
    <root>/block-00003.safetensors   {module}.q      uint8 (N, K) codes in [0, 2^b − 1]
                                     {module}.scale  float32 (N, n_groups)
                                     {module}.zero   int32 (N, n_groups)
                                     {module}.g_idx  int32 (K,)
                                     {tensor}        float32 tensors the method changed
                                                     (AWQ-scaled norms), by full name
                                     metadata "quantdesk": JSON with bits / group_size /
                                     sym / shape per module, the float names and `meta`

Module names are stored as given (the pipeline uses names relative to the block, e.g.
``self_attn.q_proj``); float tensors carry full names (``model.layers.3.input_layernorm.weight``).
A store belongs to one job: `fingerprint` (model, method, scheme, rules, calibration — see
`job_fingerprint`) is kept in job.json, and a store made by a different
job is emptied when it is opened, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qtapp.engine.config import JobSpec
from qtapp.engine.model.sources import ModelInfo, cache_root
from qtapp.engine.quant.primitives import QuantizedWeight, default_g_idx

STORE_VERSION = 1
_META_KEY = "quantdesk"
_PARTS = ("q", "scale", "zero", "g_idx")
_BLOCK_RE = re.compile(r"^block-(\d{5})\.safetensors$")


def job_fingerprint(job: JobSpec, info: ModelInfo) -> str:
    """What makes two jobs' checkpoints interchangeable: model, method and its settings."""
    d = job.to_dict()
    for k in ("out", "evaluate", "resume", "overwrite", "export_format", "device",
              "ignore_plan", "max_vram"):
        d.pop(k, None)
    d["model_path"] = str(info.path.resolve())
    d["weights"] = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in info.weight_files]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_dir(job: JobSpec, info: ModelInfo) -> Path:
    """The folder of the job's resumable checkpoint (shared by jobs with the same settings)."""
    return cache_root() / "jobs" / job_fingerprint(job, info)


def _block_file(root: Path, index: int) -> Path:
    return root / f"block-{index:05d}.safetensors"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def safetensors_complete(path: Path) -> bool:
    """True when the file's header parses and the file is exactly as long as it says.

    A safetensors file is u64 header length, JSON header, then the data; every tensor's
    data_offsets end inside the data. A truncated write leaves the file shorter.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return False
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            return False
    return size == 8 + n + end


class QuantStore:
    """Quantized blocks of one job on disk; see the module docstring for the layout."""

    def __init__(self, root: Path, fingerprint: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.discarded = False  # True when blocks of a different job were removed on open
        if fingerprint is not None:
            self._bind(fingerprint)

    # job identity -------------------------------------------------------------------
    def _job_file(self) -> Path:
        return self.root / "job.json"

    def stored_fingerprint(self) -> str | None:
        try:
            data = json.loads(self._job_file().read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
            return None
        fp = data.get("fingerprint")
        return fp if isinstance(fp, str) else None

    def matches(self, fingerprint: str) -> bool:
        """True when this store was made by the job with `fingerprint`."""
        return self.stored_fingerprint() == fingerprint

    def _bind(self, fingerprint: str) -> None:
        if self.matches(fingerprint):
            return
        if self._block_paths() or self._job_file().exists():
            self.discarded = bool(self._block_paths())
            self.clear()
        _atomic_write_bytes(self._job_file(), json.dumps(
            {"version": STORE_VERSION, "fingerprint": fingerprint}, indent=1).encode())

    # blocks ---------------------------------------------------------------------------
    def _block_paths(self) -> dict[int, Path]:
        out = {}
        for p in self.root.iterdir():
            m = _BLOCK_RE.match(p.name)
            if m:
                out[int(m.group(1))] = p
        return out

    def save_block(self, index: int, modules: dict[str, QuantizedWeight], meta: dict[str, Any],
                   floats: dict[str, torch.Tensor] | None = None) -> None:
        """Write block `index` atomically: its quantized modules, `meta` and changed floats."""
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"block index must be a non-negative integer, not {index!r}")
        floats = floats or {}
        tensors: dict[str, torch.Tensor] = {}
        info: dict[str, Any] = {}
        for name, qw in modules.items():
            n, k = qw.q.shape
            if qw.g_idx.shape != (k,) or qw.scale.shape != qw.zero.shape or \
                    qw.scale.shape[0] != n:
                raise ValueError(f"{name}: inconsistent shapes q {tuple(qw.q.shape)}, scale "
                                 f"{tuple(qw.scale.shape)}, zero {tuple(qw.zero.shape)}, "
                                 f"g_idx {tuple(qw.g_idx.shape)}")
            tensors[f"{name}.q"] = qw.q.detach().to("cpu", torch.uint8).contiguous()
            tensors[f"{name}.scale"] = qw.scale.detach().to("cpu", torch.float32).contiguous()
            tensors[f"{name}.zero"] = qw.zero.detach().to("cpu", torch.int32).contiguous()
            tensors[f"{name}.g_idx"] = qw.g_idx.detach().to("cpu", torch.int32).contiguous()
            default = torch.equal(tensors[f"{name}.g_idx"], default_g_idx(k, qw.group_size))
            info[name] = {"bits": int(qw.bits), "group_size": int(qw.group_size),
                          "sym": bool(qw.sym), "shape": [int(n), int(k)],
                          "act_order": not default}
        for name, t in floats.items():
            if name in tensors:
                raise ValueError(f"float tensor name {name} collides with a quantized module")
            tensors[name] = t.detach().to("cpu", torch.float32).contiguous()
        header = {"version": STORE_VERSION, "index": index, "modules": info,
                  "floats": sorted(floats), "meta": meta}
        path = _block_file(self.root, index)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    def block_info(self, index: int) -> dict[str, Any]:
        """The block's metadata (modules with bits/group/sym/shape, float names, meta)."""
        path = _block_file(self.root, index)
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[_META_KEY])

    def load_block(self, index: int,
                   ) -> tuple[dict[str, QuantizedWeight], dict[str, Any], dict[str, torch.Tensor]]:
        """(modules, meta, floats) of block `index`."""
        path = _block_file(self.root, index)
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})[_META_KEY])
            modules = {}
            for name, m in header["modules"].items():
                q, scale, zero, g_idx = (f.get_tensor(f"{name}.{p}") for p in _PARTS)
                modules[name] = QuantizedWeight(q, scale, zero, g_idx, m["bits"],
                                                m["group_size"], m["sym"])
            floats = {name: f.get_tensor(name) for name in header["floats"]}
        return modules, header["meta"], floats

    def load_parts(self, index: int, names: list[str], part: str) -> dict[str, torch.Tensor]:
        """One part ("q", "scale", "zero" or "g_idx") of some modules, without the rest."""
        with safe_open(str(_block_file(self.root, index)), framework="pt") as f:
            return {n: f.get_tensor(f"{n}.{part}") for n in names}

    def _valid(self, path: Path, index: int) -> bool:
        if not safetensors_complete(path):
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                header = json.loads((f.metadata() or {})[_META_KEY])
                keys = set(f.keys())
        except Exception:  # noqa: BLE001 — any unreadable file is simply not a valid block
            return False
        if not isinstance(header, dict) or header.get("version") != STORE_VERSION or \
                header.get("index") != index:
            return False
        want = {f"{n}.{p}" for n in header.get("modules", {}) for p in _PARTS}
        want |= set(header.get("floats", []))
        return want == keys

    def completed(self) -> list[int]:
        """Indices of complete, valid blocks. Partial or invalid files are deleted."""
        for p in self.root.glob(".block-*.tmp-*"):
            p.unlink(missing_ok=True)
        done = []
        for index, path in sorted(self._block_paths().items()):
            if self._valid(path, index):
                done.append(index)
            else:
                path.unlink(missing_ok=True)
        return done

    def clear(self) -> None:
        """Remove every block and the job file (the folder itself stays)."""
        for p in self.root.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()

    def destroy(self) -> None:
        """Remove the store's folder entirely (after a successful export)."""
        shutil.rmtree(self.root, ignore_errors=True)
