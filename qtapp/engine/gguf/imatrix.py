"""Importance matrices: collect them from calibration activations, read and write them.

For a linear layer y = W·x the importance of input column j is E[x_j²] over the calibration
tokens; ggml's K-quant search weighs each weight's rounding error by it (llama.cpp
tools/imatrix/imatrix.cpp, IMatrixCollector::collect_imatrix). As llama-imatrix does by
default, only the linears of the transformer blocks (`blk.*`) are collected. Its windows are
consecutive n_ctx-token chunks of the text; when the model's vocabulary adds a BOS token, the
BOS replaces the token before each chunk (compute_imatrix in imatrix.cpp), which `with_bos`
reproduces.

Files (llama.cpp @0c1e57098 tools/imatrix/imatrix.cpp save_imatrix / save_imatrix_legacy,
common/imatrix-loader.cpp, tools/quantize/quantize.cpp load_imatrix):
- GGUF (default of llama-imatrix): general.type = "imatrix", imatrix.datasets,
  imatrix.chunk_count, imatrix.chunk_size; per weight W an F32 tensor "W.in_sum2" (n_mat
  rows of ne0 sums of x²) and "W.counts" (tokens per row). importance = in_sum2 / count,
  or 1 where count is 0.
- legacy .dat, little-endian: i32 n_entries; per entry i32 len, name, i32 ncall, i32 nval,
  f32[nval] holding mean(x²)·ncall; then optionally i32 chunk_count, i32 len, dataset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from qtapp.engine.errors import Cancelled, UserError
from qtapp.engine.gguf.hf_model import HfModel
from qtapp.engine.model.loader import load_tokenizer

# transformers is imported inside compute_imatrix, the one function that builds a whole model: it
# takes about half a second to import.

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


@dataclass
class Imatrix:
    """Sums of x² (n_mat, ne0) and token counts (n_mat,) per GGUF weight name."""

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    source: str = ""

    def importance(self) -> dict[str, np.ndarray]:
        """name -> mean x² per column (n_mat·ne0 float32), what llama-quantize passes ggml."""
        out = {}
        for name, s in self.sums.items():
            c = self.counts[name].astype(np.float64)[:, None]
            mean = np.where(c > 0, s / np.where(c > 0, c, 1), 1.0)
            out[name] = mean.astype(np.float32).reshape(-1)
        return out

    def __len__(self) -> int:
        return len(self.sums)


class ImatrixCollector:
    """Accumulates Σx² and token counts of each linear's input, keyed by GGUF name.

    The pipeline may feed activations it already captured; `collect_from_model` hooks a
    Hugging Face model's linears itself.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}  # (n_mat, K): one row per expert
        self._counts: dict[str, np.ndarray] = {}  # (n_mat,)

    def add(self, gguf_name: str, x: torch.Tensor | np.ndarray, expert: int = 0,
            n_experts: int = 1) -> None:
        """Add the inputs x (..., K) one linear layer saw; for expert `expert` of a merged
        MoE tensor (ffn_*_exps), whose imatrix has one row per expert as llama.cpp's."""
        x = torch.as_tensor(x)
        x = x.reshape(-1, x.shape[-1])
        s = x.float().pow(2).sum(0).to("cpu", torch.float64)
        if gguf_name not in self._sums:
            self._sums[gguf_name] = torch.zeros((n_experts, s.shape[0]), dtype=torch.float64)
            self._counts[gguf_name] = np.zeros(n_experts, dtype=np.int64)
        if self._sums[gguf_name].shape[1:] != s.shape:
            raise ValueError(f"{gguf_name}: inputs of {s.shape[0]} columns after "
                             f"{self._sums[gguf_name].shape[1]}")
        self._sums[gguf_name][expert] += s
        self._counts[gguf_name][expert] += x.shape[0]

    def add_source(self, model: HfModel, hf_name: str, x: torch.Tensor | np.ndarray) -> None:
        """add() under the GGUF tensor of the Hugging Face weight `hf_name` (a per-expert
        weight goes to its expert's row of the merged tensor)."""
        order = model.input_order(hf_name)
        if order is not None:  # the GGUF tensor's columns are reordered (Gated DeltaNet)
            x = torch.as_tensor(x)[..., torch.from_numpy(order)]
        for name, expert, n_experts in model.imatrix_slots(hf_name):
            self.add(name, x, expert, n_experts)

    def result(self) -> dict[str, np.ndarray]:
        """name -> mean x² per input column (float32), n_mat·K for merged experts."""
        return self.to_imatrix().importance()

    def to_imatrix(self, dataset: str = "quantdesk", chunk_size: int = 512) -> Imatrix:
        """The collected statistics as an Imatrix (for files and GGUF metadata)."""
        n_tokens = max((int(c.max()) for c in self._counts.values()), default=0)
        return Imatrix(
            sums={n: s.numpy().astype(np.float32) for n, s in self._sums.items()},
            counts={n: c.copy() for n, c in self._counts.items()},
            datasets=[dataset], chunk_count=n_tokens // chunk_size if chunk_size else 0,
            chunk_size=chunk_size)


def bos_token_id(tokenizer: Any) -> int | None:
    """The BOS id when `tokenizer` puts one before every text, else None. The converter copies
    this choice into tokenizer.ggml.add_bos_token (gguf SpecialVocab), which llama.cpp obeys."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True, return_attention_mask=False)["input_ids"]
    return bos if ids and ids[0] == bos else None


def with_bos(batches: torch.Tensor, bos: int | None) -> torch.Tensor:
    """The windows (n, L) llama-imatrix evaluates for the same text: BOS followed by the first
    L-1 tokens of each window when the model adds a BOS token, else the windows unchanged.

    llama-imatrix tokenizes the whole text with its BOS and cuts chunks of L tokens; chunk i
    starts with the BOS written over the token before it, so it is BOS + text[L·i : L·i+L-1].
    """
    batches = torch.as_tensor(batches)
    if bos is None:
        return batches
    first = torch.full_like(batches[:, :1], bos)
    return torch.cat([first, batches[:, :-1]], dim=1)


def collect_from_model(model: torch.nn.Module, gguf_name: Callable[[str], str | None],
                       batches: Iterable[torch.Tensor],
                       progress: Callable[[str, int, int], None] | None = None,
                       should_cancel: Callable[[], bool] | None = None,
                       n_batches: int = 0) -> ImatrixCollector:
    """Run token batches (B, T) through `model`, collecting the input of every linear whose
    module name `gguf_name` maps to a `blk.*` tensor."""
    collector = ImatrixCollector()
    hooks = []
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        name = gguf_name(module_name + ".weight")
        if name is None or not name.startswith("blk."):
            continue

        def hook(_m: torch.nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            collector.add(name, args[0].detach())
        hooks.append(module.register_forward_pre_hook(hook))
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for i, batch in enumerate(batches):
                if should_cancel is not None and should_cancel():
                    raise Cancelled("importance matrix cancelled")
                ids = torch.as_tensor(batch, dtype=torch.long).to(device)
                model(input_ids=ids.reshape(-1, ids.shape[-1]), use_cache=False)
                if progress is not None:
                    progress("imatrix", i + 1, n_batches)
    finally:
        for h in hooks:
            h.remove()
    return collector


# ---------------------------------------------------------------------------------- files

def write_imatrix(imatrix: Imatrix, path: Path, legacy: bool = False) -> None:
    """Write `imatrix` as llama.cpp does: GGUF, or the legacy .dat when `legacy`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        if legacy:
            tmp.write_bytes(_legacy_bytes(imatrix))
        else:
            _write_gguf(imatrix, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_gguf(imatrix: Imatrix, path: Path) -> None:
    writer = gguf.GGUFWriter(path, "")  # an empty architecture is not written, as in llama.cpp
    writer.add_string(gguf.Keys.General.TYPE, "imatrix")
    writer.add_array(KEY_DATASETS, imatrix.datasets or ["unknown"])
    writer.add_uint32(KEY_CHUNK_COUNT, imatrix.chunk_count)
    writer.add_uint32(KEY_CHUNK_SIZE, imatrix.chunk_size)
    for name in sorted(imatrix.sums):
        sums = np.asarray(imatrix.sums[name], dtype=np.float32)
        counts = np.asarray(imatrix.counts[name], dtype=np.float32)
        writer.add_tensor(f"{name}.in_sum2", sums.reshape(counts.size, -1))
        writer.add_tensor(f"{name}.counts", counts.reshape(counts.size, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _legacy_bytes(imatrix: Imatrix) -> bytes:
    """save_imatrix_legacy: values are mean(x²)·ncall with ncall = ceil(max count / chunk)."""
    chunk = imatrix.chunk_size or 1
    out = bytearray(struct.pack("<i", len(imatrix.sums)))
    for name in sorted(imatrix.sums):
        counts = np.asarray(imatrix.counts[name], dtype=np.float64)
        sums = np.asarray(imatrix.sums[name], dtype=np.float64).reshape(counts.size, -1)
        ncall = int((counts.max() + chunk - 1) // chunk)
        mean = np.where(counts[:, None] > 0, sums / np.where(counts > 0, counts, 1)[:, None], 1.0)
        values = (mean * ncall).astype(np.float32).reshape(-1)
        encoded = name.encode()
        out += struct.pack("<i", len(encoded)) + encoded
        out += struct.pack("<ii", ncall, values.size) + values.tobytes()
    dataset = (imatrix.datasets[-1] if imatrix.datasets else "").encode()
    out += struct.pack("<ii", imatrix.chunk_count, len(dataset)) + dataset
    return bytes(out)


def read_imatrix(path: Path) -> Imatrix:
    """Read a llama.cpp importance matrix (GGUF or legacy .dat); UserError if damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"Cannot read the importance matrix {path} ({e}).") from e
    imatrix = _read_gguf(path) if data[:4] == b"GGUF" else _read_legacy(data, path)
    if not imatrix.sums:
        raise UserError(f"The importance matrix {path} holds no entries.")
    for name, s in imatrix.sums.items():
        if not np.isfinite(s).all():
            raise UserError(f"The importance matrix {path} has non-finite values for {name}; "
                            "compute it again.")
    imatrix.source = path.name
    return imatrix


def _truncated(path: Path, where: str) -> UserError:
    return UserError(f"The importance matrix {path} is truncated or damaged ({where}); "
                     "copy or compute it again.")


def _read_legacy(data: bytes, path: Path) -> Imatrix:
    pos = 0

    def take(fmt: str, what: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise _truncated(path, what)
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i", "header")
    if n_entries < 1 or n_entries > 1_000_000:
        raise UserError(f"{path} is neither a GGUF nor a legacy llama.cpp importance matrix.")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        where = f"entry {i + 1} of {n_entries}"
        (length,) = take("<i", where)
        if not 0 < length < 4096:
            raise _truncated(path, where)
        (raw,) = take(f"<{length}s", where)
        ncall, nval = take("<ii", where)
        if nval < 1:
            raise _truncated(path, where)
        values = np.array(take(f"<{nval}f", where), dtype=np.float32)
        name = raw.decode("utf-8", errors="replace")
        # load_imatrix: the stored values are mean·ncall; an ncall of 0 keeps them as they are
        sums[name] = values[None, :]
        counts[name] = np.array([max(ncall, 1)], dtype=np.int64)
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):
        (chunk_count,) = take("<i", "trailer")
        if pos + 4 <= len(data):
            (length,) = take("<i", "trailer")
            if length > 0:
                (raw,) = take(f"<{length}s", "dataset name")
                datasets.append(raw.decode("utf-8", errors="replace"))
    return Imatrix(sums, counts, datasets, chunk_count, 0)


def _read_gguf(path: Path) -> Imatrix:
    try:
        reader = gguf.GGUFReader(path)
        tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
        fields = reader.fields
        datasets = ([str(v) for v in fields[KEY_DATASETS].contents()]
                    if KEY_DATASETS in fields else [])
        chunk_count = int(fields[KEY_CHUNK_COUNT].contents()) if KEY_CHUNK_COUNT in fields else 0
        chunk_size = int(fields[KEY_CHUNK_SIZE].contents()) if KEY_CHUNK_SIZE in fields else 0
    except OSError as e:
        raise _truncated(path, str(e)) from e
    except (ValueError, IndexError, KeyError, struct.error) as e:
        raise _truncated(path, f"its {path.stat().st_size} bytes end before the data its "
                         f"header describes: {type(e).__name__}") from e
    if KEY_CHUNK_COUNT not in fields or KEY_CHUNK_SIZE not in fields:
        raise UserError(f"{path} is a GGUF file but not a llama.cpp importance matrix "
                        "(imatrix.chunk_count / chunk_size are missing).")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tname, values in tensors.items():
        if tname.endswith(".in_sum2"):
            name = tname.removesuffix(".in_sum2")
            if f"{name}.counts" not in tensors:
                raise UserError(f"{path} has sums but no counts for {name}; it is damaged.")
            c = np.rint(tensors[f"{name}.counts"].reshape(-1)).astype(np.int64)
            if values.size % c.size:
                raise _truncated(path, name)
            sums[name] = values.reshape(c.size, -1)
            counts[name] = c
    return Imatrix(sums, counts, datasets, chunk_count, chunk_size)


def compute_imatrix(model_dir: Path, batches: torch.Tensor, dataset: str = "builtin",
                    progress: Callable[[str, int, int], None] | None = None,
                    should_cancel: Callable[[], bool] | None = None) -> Imatrix:
    """Importance matrix of a Hugging Face model on token windows (n, L) of text (without
    special tokens), float32 on CPU; a BOS is put first as llama-imatrix does (`with_bos`).

    This loads the whole model; a layer-streaming pipeline feeds ImatrixCollector.add with
    the block inputs it captures instead.
    """
    from transformers import AutoModelForCausalLM

    hf = HfModel(Path(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 trust_remote_code=False)
    batches = with_bos(batches, bos_token_id(load_tokenizer(model_dir)))
    collector = collect_from_model(
        model, lambda n: hf.tensor_map.get_name(n, try_suffixes=(".weight",)),
        batches.split(1), progress, should_cancel, n_batches=batches.shape[0])
    return collector.to_imatrix(dataset, int(batches.shape[-1]))
