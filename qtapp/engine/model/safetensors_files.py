"""The safetensors files of a model folder: their headers (read_safetensors_header) and
SafetensorsReader, which reads one tensor or one block's tensors at a time, in the dtype
asked for, under the module names QuantDesk uses (checkpoints that name modules otherwise
are mapped through the family table's NameMap), with MXFP4 expert weights (gpt-oss as
released) dequantized on read. Nothing here loads a whole model."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import NameMap, name_map

INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER = 100 * 2**20

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32,
    "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}



def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- safetensors


def _folder_name_map(folder: Path) -> NameMap:
    """The NameMap of the family in `folder`'s config.json (identity when it cannot be read:
    the folder checks say why)."""
    try:
        return name_map(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return NameMap()


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int
    transposed: bool = False  # stored with the last two dims swapped (gpt-oss's experts)
    # MXFP4 (gpt-oss as released): these bytes are the 4-bit blocks, `mxfp4` the entry of
    # their uint8 exponents; `dtype` / `shape` are those of the dequantized tensor
    mxfp4: _Entry | None = None


# the 16 values of an FP4 (E2M1) nibble, as the OCP microscaling format (and transformers'
# integrations/mxfp4.FP4_VALUES) defines them
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor,
                      shape: tuple[int, ...]) -> torch.Tensor:
    """MXFP4 bytes → bf16 of `shape` (…, rows, cols): each byte of a row holds two FP4
    values (low nibble first), each group of 32 values shares the exponent 2^(scale − 127)."""
    *lead, cols = shape
    blocks = blocks.reshape(-1, 16)
    exponent = scales.to(torch.int32).reshape(-1, 1) - 127
    lut = torch.tensor(FP4_VALUES, dtype=torch.bfloat16)
    out = torch.empty(blocks.shape[0], 32, dtype=torch.bfloat16)
    out[:, 0::2] = lut[(blocks & 0x0F).long()]
    out[:, 1::2] = lut[(blocks >> 4).long()]
    return torch.ldexp(out, exponent).to(torch.bfloat16).reshape(*lead, cols)


def _damaged(file: Path, what: str) -> UserError:
    return UserError(
        f"The weight file {file} is damaged: {what}. It was probably cut short by an "
        "interrupted download or copy; download or copy the model again."
    )


def read_safetensors_header(file: Path) -> dict[str, _Entry]:
    """Parse and check one safetensors header against the file size (no tensor is read)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(file, f"it is only {size} bytes long, too short for a header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > _MAX_HEADER:
            raise _damaged(file, f"its header claims {n} bytes but the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(file, f"its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _damaged(file, "its header is not a JSON object")
    data_start, data_size = 8 + n, size - 8 - n
    entries: dict[str, _Entry] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[meta["dtype"]]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(o) for o in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _damaged(file, f"the header entry of tensor '{name}' is malformed "
                                 f"({str(meta)[:120]})") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if min(shape, default=0) < 0 or begin < 0 or end - begin != nbytes:
            raise _damaged(file, f"tensor '{name}' has shape {list(shape)} ({meta['dtype']}) "
                                 f"but its offsets span {end - begin} bytes")
        if end > data_size:
            raise _damaged(file, f"tensor '{name}' ends at byte {data_start + end} but the file "
                                 f"has only {size} bytes (truncated)")
        entries[name] = _Entry(file, dtype, shape, data_start + begin, nbytes)
    return entries


def _safetensors_files(folder: Path) -> list[Path]:
    """Weight files of a folder: the shards of its index, else every *.safetensors."""
    index = folder / INDEX_FILE
    if not index.exists():
        return sorted(folder.glob("*.safetensors"))
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AttributeError) as e:
        raise UserError(f"The shard index {index} is not valid JSON with a 'weight_map' ({e}). "
                        "Download or copy the model again.") from None
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise UserError(
            f"{index.name} in {folder} lists {len(shards)} weight shards but "
            f"{len(missing)} are missing: {', '.join(missing[:5])}"
            f"{' …' if len(missing) > 5 else ''}. The download is incomplete; download the "
            "model again."
        )
    return [folder / s for s in shards]


class SafetensorsReader:
    """Lazy tensor-by-tensor access to a model folder's safetensors files (one or many shards).

    All headers are read and checked against the file sizes on construction; tensors are read
    only when asked for. dtype() answers torch names ("bfloat16", "float32", …).

    Tensors are named as QuantDesk's modules are (`arch.NameMap.to_module` of the family in
    the folder's config.json: Mixtral's ``block_sparse_moe.experts.{e}.w1`` is read as
    ``mlp.experts.{e}.gate_proj``); ``module_names=False`` keeps the files' own names.
    """

    def __init__(self, folder: Path, module_names: bool = True):
        self.folder = Path(folder)
        self.files = _safetensors_files(self.folder)
        if not self.files:
            raise UserError(f"No *.safetensors weight files in {self.folder}.")
        rename = _folder_name_map(self.folder).to_module if module_names else None
        self._module_names = module_names
        self._entries: dict[str, _Entry] = {}
        for file in self.files:
            for stored, entry in read_safetensors_header(file).items():
                name = rename(stored) if rename is not None else stored
                if name in self._entries:
                    raise UserError(
                        f"Tensor '{name}' is stored twice, in {self._entries[name].file.name} and "
                        f"{file.name} ({self.folder}). Remove the extra weight file or keep only "
                        "the files listed in the shard index."
                    )
                self._entries[name] = entry
        index = self.folder / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if rename is not None:
                weight_map = {rename(n): f for n, f in weight_map.items()}
            absent = [n for n, f in weight_map.items()
                      if n not in self._entries or self._entries[n].file.name != f]
            if absent:
                raise UserError(
                    f"{index.name} in {self.folder} places tensor '{absent[0]}' in "
                    f"{weight_map[absent[0]]}, but that shard does not hold it "
                    f"({len(absent)} such tensors). The shards do not belong to this index; "
                    "download the model again."
                )
        self._read_mxfp4()

    def _read_mxfp4(self) -> None:
        """Show each MXFP4 pair (``X_blocks`` (…, R, G, 16) and ``X_scales`` (…, R, G),
        uint8) as the bf16 tensor X it stands for, dequantized on read: gpt-oss's experts as
        released (``gate_up_proj`` (E, H, 2·I) from blocks (E, 2·I, H/32, 16)), in the layout
        transformers' own dequantization gives (integrations/mxfp4.convert_moe_packed_tensors:
        each byte two FP4 values, low nibble first, times 2^(scale − 127), then the last two
        dims swapped)."""
        pairs = [n[: -len("_blocks")] for n, e in self._entries.items()
                 if n.endswith("_blocks") and e.dtype == torch.uint8 and len(e.shape) >= 3
                 and n[: -len("_blocks")] + "_scales" in self._entries]
        if not pairs:
            return
        views: dict[str, tuple[str, _Entry] | None] = {}
        for head in pairs:
            blocks, scales = self._entries[head + "_blocks"], self._entries[head + "_scales"]
            *lead, rows, groups, width = blocks.shape
            if tuple(scales.shape) != (*lead, rows, groups) or width != 16:
                raise _damaged(blocks.file, f"MXFP4 tensors {head}_blocks {list(blocks.shape)} "
                                            f"and {head}_scales {list(scales.shape)} do not pair")
            views[head + "_blocks"] = (head, replace(
                blocks, dtype=torch.bfloat16, shape=(*lead, groups * 32, rows),
                transposed=True, mxfp4=scales))
            views[head + "_scales"] = None
        entries: dict[str, _Entry] = {}
        for name, entry in self._entries.items():
            view = views.get(name, (name, entry))
            if view is not None:
                entries[view[0]] = view[1]
        self._entries = entries

    def split_fused_experts(self, head: str) -> bool:
        """Show the fused experts of one MoE block as transformers 5 stores them as
        per-expert linears, the names model/moe.py gives them. Gemma 4's checkpoints:
        ``head + "gate_up_proj"`` (E, 2·I, H), gate rows first, and ``head + "down_proj"``
        (E, H, I) → ``head + "{e}.gate_proj.weight"``, ``up_proj``, ``down_proj``. gpt-oss's
        (transposed, gate and up interleaved, with biases): ``gate_up_proj`` (E, H, 2·I),
        ``down_proj`` (E, I, H), ``gate_up_proj_bias`` (E, 2·I), ``down_proj_bias`` (E, H) →
        ``head + "{e}.gate_up_proj.weight"`` (read transposed: (2·I, H), rows interleaved as
        stored), ``.bias``, ``{e}.down_proj.weight`` / ``.bias``. Each is a contiguous byte
        range of the fused tensor, so nothing is read or copied. A reader of the files' own
        names (module_names=False) names the views as the family's checkpoints name
        per-expert tensors (arch.NameMap: gpt-oss's ``experts.gate_up.{e}``). False (and
        nothing changed) when the block holds no such pair."""
        gu, down = self._entries.get(head + "gate_up_proj"), self._entries.get(head + "down_proj")
        if gu is None or down is None or len(gu.shape) != 3 or len(down.shape) != 3:
            return False
        E, a, b = gu.shape
        if a % 2 == 0 and tuple(down.shape) == (E, b, a // 2):  # (E, 2·I, H), (E, H, I)
            kinds = ((head + "gate_up_proj", gu, ("gate_proj", "up_proj"), False),
                     (head + "down_proj", down, ("down_proj",), False))
        elif b % 2 == 0 and tuple(down.shape) == (E, b // 2, a):  # (E, H, 2·I), (E, I, H)
            kinds = ((head + "gate_up_proj", gu, ("gate_up_proj",), True),
                     (head + "down_proj", down, ("down_proj",), True))
        else:
            return False
        names = _folder_name_map(self.folder)  # `head` is named as this reader names tensors
        rename = ((lambda n: n) if self._module_names
                  else (lambda n: names.to_checkpoint(names.to_module(n))))
        views: dict[str, list[tuple[str, _Entry]]] = {}
        for name, entry, parts, transposed in kinds:
            size = entry.nbytes // (E * len(parts))
            rows = entry.shape[1] // len(parts)
            shape = (entry.shape[2], rows) if transposed else (rows, entry.shape[2])
            scales = entry.mxfp4  # MXFP4: each expert's exponents are a byte range too
            views[name] = [(rename(f"{head}{e}.{part}") + ".weight",
                            replace(entry, shape=shape, transposed=transposed != entry.transposed,
                                    start=entry.start + (e * len(parts) + j) * size,
                                    nbytes=size,
                                    mxfp4=None if scales is None else replace(
                                        scales, shape=scales.shape[1:],
                                        start=scales.start + e * (scales.nbytes // E),
                                        nbytes=scales.nbytes // E)))
                           for e in range(E) for j, part in enumerate(parts)]
            bias = self._entries.get(name + "_bias")
            if transposed and bias is not None and len(bias.shape) == 2 and bias.shape[0] == E:
                size = bias.nbytes // E
                views[name + "_bias"] = [
                    (rename(f"{head}{e}.{parts[0]}") + ".bias",
                     replace(bias, shape=(bias.shape[1],), start=bias.start + e * size,
                             nbytes=size)) for e in range(E)]
        entries: dict[str, _Entry] = {}
        for name, entry in self._entries.items():
            entries.update(views.get(name, [(name, entry)]))
        self._entries = entries
        return True

    def names(self) -> list[str]:
        return list(self._entries)

    def has(self, name: str) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no tensor '{name}' in {self.folder}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> str:
        return _dtype_name(self._entry(name).dtype)

    def nbytes(self, name: str) -> int:
        return self._entry(name).nbytes

    def numel(self) -> int:
        return sum(math.prod(e.shape) for e in self._entries.values())

    def nbytes_by_dtype(self) -> Counter[str]:
        count: Counter[str] = Counter()
        for e in self._entries.values():
            count[_dtype_name(e.dtype)] += e.nbytes
        return count

    def get(self, name: str, dtype: torch.dtype | None = None,
            out: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor from disk (a fresh CPU tensor), optionally cast to ``dtype``.
        `out`: uint8 memory of the tensor's byte size to read into instead (a reused,
        page-locked staging buffer: quant/streaming.LayerStreamer); the result is a view of it."""
        e = self._entry(name)
        if out is not None and out.numel() != e.nbytes:
            raise ValueError(f"{name}: {out.numel()} bytes given, the tensor has {e.nbytes}")
        buf = self._bytes(e, name, out)
        stored = (*e.shape[:-2], e.shape[-1], e.shape[-2]) if e.transposed else e.shape
        if e.mxfp4 is not None:
            t = _dequantize_mxfp4(buf, self._bytes(e.mxfp4, name + " (MXFP4 scales)"), stored)
        else:
            t = buf.view(e.dtype).reshape(stored)
        t = t.transpose(-1, -2) if e.transposed else t
        return t if dtype is None else t.to(dtype)

    @staticmethod
    def _bytes(e: _Entry, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The bytes of an entry, read from its file (into `out` when given)."""
        buf = torch.empty(e.nbytes, dtype=torch.uint8) if out is None else out
        with open(e.file, "rb") as f:
            f.seek(e.start)
            got = f.readinto(memoryview(buf.numpy())) if e.nbytes else 0
        if got != e.nbytes:
            raise _damaged(e.file, f"tensor '{name}' could be read only in part")
        return buf

    def state_dict(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """All tensors whose name starts with ``prefix`` (give the dot: "model.layers.3."),
        keyed by the rest of the name."""
        return {n[len(prefix):]: self.get(n, dtype) for n in self._entries if n.startswith(prefix)}

