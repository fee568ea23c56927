"""Load any QuantDesk output as a float transformers model, for evaluation and chat on CPU.

Plain Hugging Face folders load through transformers. Quantized folders (GPTQ v1/v2, AWQ
GEMM, compressed-tensors pack-quantized / naive-quantized) are dequantized here, tensor by
tensor, into the ordinary nn.Linear weights of the model class named by config.json, so
no quantization kernels or extra packages are needed. The unpacking follows each
format's reference (docs/formats.md#gptq, #awq-gemm, #compressed-tensors) and is written
independently of the exporters: every layout is read as a little-endian bit stream in which
value j occupies bits [j·b, j·b + b) (docs/formats.md#bit-streams) — the GPTQ 2/4/8-bit word order, GPTQ's 3-bit three-word runs and
compressed-tensors' packing are all that same stream; AWQ then undoes its interleave.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import NameMap, name_map
from qtapp.engine.model.moe import fuse_experts, unfuse_experts

# transformers is imported inside the functions that build a model or a tokenizer: it takes about
# half a second to import, and commands that only read model files do without it.

AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # logical column j sits at nibble REVERSE[j]


# bit streams --------------------------------------------------------------------------
def unpack_stream(words: torch.Tensor, bits: int, count: int, dim: int = -1) -> torch.Tensor:
    """int32 words packed along `dim` (0 or −1 of a 2-D tensor, or −1) → `count` unsigned
    `bits`-bit values along that dim, int32.

    Value j is read from stream bits [j·b, j·b + b), where stream bit i is bit i % 32 of
    word i // 32. When b divides 32 no value crosses a word: value j is word j // (32/b)
    shifted by (j mod 32/b)·b. Otherwise every b words hold a run of exactly 32 values, and
    a value may continue into the next word of its run.
    """
    if count * bits > words.shape[dim] * 32:
        raise UserError(f"a packed tensor of {words.shape[dim]} words cannot hold {count} "
                        f"{bits}-bit values; the file is damaged or its config is wrong")
    mask = 2**bits - 1
    if dim == 0:
        if 32 % bits:
            return unpack_stream(words.T.contiguous(), bits, count).T
        shifts = torch.arange(0, 32, bits, dtype=torch.int32).view(1, -1, 1)
        values = (words.to(torch.int32).unsqueeze(1) >> shifts) & mask  # (W, 32/b, C)
        return values.reshape(-1, words.shape[1])[:count]
    lead = words.shape[:-1]
    if 32 % bits == 0:  # int32 arithmetic shifts are fine: the mask drops the sign copies
        shifts = torch.arange(0, 32, bits, dtype=torch.int32)
        values = (words.to(torch.int32).unsqueeze(-1) >> shifts) & mask  # (..., W, 32/b)
        return values.reshape(*lead, -1)[..., :count]
    w = words.to(torch.int64) & 0xFFFFFFFF
    w = torch.nn.functional.pad(w, (0, (-w.shape[-1]) % bits))
    runs = w.reshape(*lead, -1, bits)  # (..., R, b): b words, 32 values each
    values = []
    for j in range(32):
        i, off = divmod(j * bits, 32)
        v = runs[..., i] >> off
        if off + bits > 32:
            v = v | (runs[..., i + 1] << (32 - off))
        values.append((v & mask).to(torch.int32))
    return torch.stack(values, dim=-1).reshape(*lead, -1)[..., :count]


# tensor access ------------------------------------------------------------------------
class _Folder:
    """Tensor names → safetensors files of a folder; tensors read one at a time. Names are
    QuantDesk's module names (`names.to_module`: Mixtral's block_sparse_moe.experts.{e}.w1
    is mlp.experts.{e}.gate_proj)."""

    def __init__(self, path: Path, names: NameMap | None = None) -> None:
        index = path / "model.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
        if not files:
            raise UserError(f"{path} has no .safetensors files; it is not a model folder "
                            "QuantDesk can load")
        self._handles = {f: safe_open(str(path / f), framework="pt") for f in files}
        self.name_map = names or NameMap()
        rename = self.name_map.to_module
        self._stored = {rename(n): n for h in self._handles.values() for n in h.keys()}  # noqa: SIM118
        self.file_of = {rename(n): f for f, h in self._handles.items() for n in h.keys()}  # noqa: SIM118

    def names(self) -> list[str]:
        return list(self.file_of)

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self.file_of[name]].get_tensor(self._stored[name])

    def checkpoint_name(self, module: str) -> str:
        """The module's name as the files and quantization_config name it."""
        return self.name_map.to_checkpoint(module)

    def modules_with(self, suffix: str) -> list[str]:
        return [n[: -len(suffix)] for n in self.file_of if n.endswith(suffix)]


Dequantizer = Callable[[_Folder, str], torch.Tensor]  # (folder, module) → float W (N, K)


# GPTQ ---------------------------------------------------------------------------------
def _gptq_dynamic_bits(qc: dict[str, Any], module: str) -> int:
    """Bits GPTQModel would give `module`: the first matching '+:' / plain `dynamic`
    pattern's bits, else the base bits."""
    for pattern, override in (qc.get("dynamic") or {}).items():
        negative = pattern.startswith("-:")
        raw = pattern[2:] if pattern.startswith(("+:", "-:")) else pattern
        if re.match(raw, module) or raw == module:
            return int(qc["bits"]) if negative else int(override.get("bits", qc["bits"]))
    return int(qc["bits"])


def _gptq_weight(qc: dict[str, Any]) -> Dequantizer:
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise UserError(f"GPTQ checkpoint_format {fmt!r} is not supported; QuantDesk reads "
                        "'gptq' (v1) and 'gptq_v2'")
    zero_offset = 1 if fmt == "gptq" else 0  # v1 stores z − 1

    def dequantize(folder: _Folder, m: str) -> torch.Tensor:
        qweight, qzeros = folder.get(f"{m}.qweight"), folder.get(f"{m}.qzeros")
        scales = folder.get(f"{m}.scales").float()  # (G, N)
        n = scales.shape[1]
        expected_bits = _gptq_dynamic_bits(qc, folder.checkpoint_name(m))
        if f"{m}.g_idx" in folder.file_of:
            g_idx = folder.get(f"{m}.g_idx").long()
        else:
            gs = int(qc.get("group_size", -1))
            k = qweight.shape[0] * 32 // expected_bits
            g_idx = torch.arange(k) // (gs if gs > 0 else k)
        k = g_idx.shape[0]
        bits = qweight.shape[0] * 32 // k
        if bits not in (2, 3, 4, 8) or qweight.shape[0] * 32 != bits * k or \
                bits != expected_bits:
            raise UserError(f"{m}: qweight {tuple(qweight.shape)} does not hold {k} "
                            f"{expected_bits}-bit columns as config.json says; "
                            "the checkpoint is damaged")
        q = unpack_stream(qweight, bits, k, dim=0)  # (K, N): packed along K
        z = unpack_stream(qzeros, bits, n) + zero_offset  # (G, N): packed along N
        return (scales[g_idx] * (q - z[g_idx]).float()).T

    return dequantize


# AWQ ----------------------------------------------------------------------------------
def _awq_weight(qc: dict[str, Any]) -> Dequantizer:
    version = str(qc.get("version") or qc.get("format") or "gemm").lower()
    if version != "gemm" or int(qc.get("bits", 4)) != 4:
        raise UserError(f"AWQ version {version!r} with {qc.get('bits')} bits is not "
                        "supported; QuantDesk reads 4-bit GEMM checkpoints")

    def dequantize(folder: _Folder, m: str) -> torch.Tensor:
        qweight, scales = folder.get(f"{m}.qweight"), folder.get(f"{m}.scales").float()
        if f"{m}.qzeros" not in folder.file_of:
            raise UserError(f"{m} has no qzeros; AWQ GEMM checkpoints need zero points")
        k, n = qweight.shape[0], scales.shape[1]
        gs = int(qc.get("group_size", -1))
        gs = gs if gs > 0 else k

        def logical(words: torch.Tensor) -> torch.Tensor:  # (R, N/8) → (R, N)
            v = unpack_stream(words, 4, n).reshape(words.shape[0], n // 8, 8)
            return v[:, :, list(AWQ_REVERSE_ORDER)].reshape(words.shape[0], n)

        q, z = logical(qweight), logical(folder.get(f"{m}.qzeros"))  # (K, N), (K/gs, N)
        g = torch.arange(k) // gs
        return (scales[g] * (q.float() - z.float()[g])).T

    return dequantize


# compressed-tensors -------------------------------------------------------------------
def _ct_match(target: str, name: str, module: nn.Module | None) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or (module is not None and type(module).__name__ == target)


def _ct_weight(qc: dict[str, Any], modules: dict[str, nn.Module]) -> Dequantizer:
    groups = list((qc.get("config_groups") or {}).values())
    ignore = qc.get("ignore") or []

    def scheme_of(m: str, named: str) -> dict[str, Any]:
        """The weights scheme of module `m`, named `named` in config.json."""
        mod = modules.get(m)
        if not any(_ct_match(t, named, mod) for t in ignore):
            for g in groups:
                if any(_ct_match(t, named, mod) for t in g.get("targets", [])):
                    if g.get("input_activations") or g.get("output_activations"):
                        raise UserError(f"{m}: compressed-tensors schemes that quantize "
                                        "activations are not supported; QuantDesk reads "
                                        "weight-only int schemes")
                    return g["weights"]
        raise UserError(f"{m} has quantized tensors but no config group of config.json "
                        "targets it; the checkpoint is damaged")

    def dequantize(folder: _Folder, m: str) -> torch.Tensor:
        args = scheme_of(m, folder.checkpoint_name(m))
        bits, offset = int(args["num_bits"]), 2 ** (int(args["num_bits"]) - 1)
        if args.get("type", "int") != "int":
            raise UserError(f"{m}: compressed-tensors type {args.get('type')!r} is not "
                            "supported; QuantDesk reads int weights")
        scale = folder.get(f"{m}.weight_scale").float()
        has_zp = f"{m}.weight_zero_point" in folder.file_of
        if f"{m}.weight_packed" in folder.file_of:  # pack-quantized
            n, k = (int(v) for v in folder.get(f"{m}.weight_shape").tolist())
            q = unpack_stream(folder.get(f"{m}.weight_packed"), bits, k) - offset
            zp = folder.get(f"{m}.weight_zero_point") if has_zp else None
            if zp is not None and zp.dtype == torch.int32:  # packed along N (dim 0)
                zp = unpack_stream(zp, bits, n, dim=0) - offset
        else:  # naive-quantized: int8 q_s and zp_s as they are
            q = folder.get(f"{m}.weight").to(torch.int64)
            n, k = q.shape
            zp = folder.get(f"{m}.weight_zero_point") if has_zp else None
        zp = torch.zeros_like(scale) if zp is None else zp.to(torch.int64).reshape(scale.shape)
        strategy = args.get("strategy") or ("group" if (args.get("group_size") or 0) > 0
                                            else "tensor")
        if strategy == "group":
            if f"{m}.weight_g_idx" in folder.file_of:
                g = folder.get(f"{m}.weight_g_idx").long()
            else:
                g = torch.arange(k) // int(args["group_size"])
            return (q - zp[:, g]).float() * scale[:, g]
        if strategy in ("channel", "tensor"):
            return (q - zp.reshape(-1, 1)).float() * scale.reshape(-1, 1)
        raise UserError(f"{m}: compressed-tensors strategy {strategy!r} is not supported")

    return dequantize


# model --------------------------------------------------------------------------------
def _quantized_modules(method: str, folder: _Folder) -> tuple[list[str], tuple[str, ...]]:
    """Module names holding quantized tensors and the tensor suffixes they consume."""
    if method in ("gptq", "awq"):
        return folder.modules_with(".qweight"), (".qweight", ".qzeros", ".scales", ".g_idx")
    parts = (".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape",
             ".weight_g_idx")
    mods = folder.modules_with(".weight_scale")
    return mods, parts + (".weight",)


def _build_model(path: Path, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise _model_error(path, e) from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    unfuse_experts(model)  # MoE: per-expert linears, as the quantized files name them
    return model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def has_tokenizer(path: Path) -> bool:
    """Whether the folder holds tokenizer files (a quantized folder may have none)."""
    return any((Path(path) / f).exists() for f in TOKENIZER_FILES)


def remote_code_refused(path: Path) -> UserError:
    """The error for a model whose tokenizer is Python code shipped with it."""
    return UserError(
        f"The tokenizer of {path} is custom Python code shipped with the model "
        "(auto_map in tokenizer_config.json). QuantDesk does not run code from models "
        "unless asked; if you trust the model's author, pass --trust-remote-code."
    )


def remote_code_warning(path: Path) -> str:
    """What every command says when --trust-remote-code is on for the model in ``path``."""
    code = sorted(p.name for p in Path(path).glob("*.py"))
    return ("trust_remote_code is ON: Python code shipped with the model in "
            f"{path} ({', '.join(code) or 'no .py files found'}) may run on this machine when "
            "its tokenizer is loaded. Turn it off unless you trust the model's author.")


def load_tokenizer(path: Path, trust_remote_code: bool = False, *,
                   gguf_file: str | None = None) -> Any:
    """The tokenizer of a model folder (or of ``gguf_file`` inside it): the one place
    QuantDesk loads tokenizers.

    ``trust_remote_code`` is always passed to transformers explicitly, so transformers never
    asks on stdin whether to run code shipped with the model: unless it is True, a tokenizer
    that needs such code is refused with a UserError saying so. Only local files are read.
    Any other failure is a UserError naming the folder.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    extra = {"gguf_file": gguf_file} if gguf_file is not None else {}
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=bool(trust_remote_code),
                                             local_files_only=True, **extra)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise remote_code_refused(path) from None
        raise _tokenizer_error(path, e) from None
    except ImportError:  # a missing package is QuantDesk's installation, not the model
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many types for bad files
        raise _tokenizer_error(path, e) from None


def _tokenizer_error(path: Path, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UserError(f"The tokenizer in {path} cannot be loaded ({first}). Copy the tokenizer "
                     "files from the model's original download into this folder.")


def _model_error(path: Path, e: Exception) -> UserError:
    """transformers' refusal to build a model, as one line for the user."""
    text = str(e).strip()
    if "trust_remote_code" in text:
        return UserError(
            f"The model in {path} can only be built by Python code shipped with it (auto_map "
            "in config.json, for a model type this transformers does not know). QuantDesk "
            "never runs a model's own modelling code; use a model whose type transformers "
            "supports.")
    first = text.splitlines()[0] if text else type(e).__name__
    return UserError(f"cannot load the model in {path}: {first}")


def load_dequantized(path: Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
                     trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a plain, GPTQ, AWQ or compressed-tensors folder.

    The model is the transformers class of config.json with every quantized weight
    dequantized to `dtype` in a plain nn.Linear; tokenizer is None when the folder has none.
    ``trust_remote_code`` applies to the tokenizer only: the model is always built from
    transformers' own class, never from code shipped with it.
    """
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path / 'config.json'}: {e}") from None
    qc = config.get("quantization_config")
    tokenizer = load_tokenizer(path, trust_remote_code) if has_tokenizer(path) else None
    if qc is None:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                         trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise _model_error(path, e) from None
        return model.to(device).eval(), tokenizer
    method = str(qc.get("quant_method", "")).lower()
    folder = _Folder(path, name_map(config))
    model = _build_model(path, dtype)
    modules = dict(model.named_modules())
    if method == "gptq":
        dequantize = _gptq_weight(qc)
    elif method == "awq":
        dequantize = _awq_weight(qc)
    elif method == "compressed-tensors":
        dequantize = _ct_weight(qc, modules)
    else:
        raise UserError(f"{path} uses quantization method {method!r}; QuantDesk loads gptq, "
                        "awq and compressed-tensors folders")
    quantized, parts = _quantized_modules(method, folder)
    consumed = {m + p for m in quantized for p in parts} & set(folder.file_of)
    expected = set(model.state_dict())
    # what the class itself skips on load, as from_pretrained does: Qwen3_5ForCausalLM (the
    # class AutoModelForCausalLM builds for a vision-language qwen3_5 config) ignores the
    # vision tower and the multi-token-prediction layers that the checkpoint carries
    ignored = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []
    loaded: set[str] = set()

    def put(batch: dict[str, torch.Tensor]) -> None:
        unknown = [k for k in batch if k not in expected]
        if unknown:
            raise UserError(f"{path}: tensor {unknown[0]} does not belong to a "
                            f"{type(model).__name__}; the folder does not match its config")
        model.load_state_dict({k: v.to(dtype) for k, v in batch.items()}, strict=False)
        loaded.update(batch)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for m in quantized:
            if m not in modules:
                raise UserError(f"{path}: quantized module {m} does not exist in a "
                                f"{type(model).__name__}; the folder does not match its config")
            w = dequantize(folder, m)
            if tuple(w.shape) != tuple(modules[m].weight.shape):
                raise UserError(f"{m}: dequantized weight {tuple(w.shape)} does not match the "
                                f"model's {tuple(modules[m].weight.shape)}")
            yield f"{m}.weight", w
        for name in folder.names():
            if name not in consumed and not name.endswith("rotary_emb.inv_freq") \
                    and not any(re.search(p, name) for p in ignored):
                yield name, folder.get(name)

    with torch.no_grad():
        batch: dict[str, torch.Tensor] = {}
        for name, t in tensors():
            batch[name] = t
            if len(batch) >= 32:
                put(batch)
                batch = {}
        put(batch)
    missing = sorted(expected - loaded - _tied(model))
    if missing:
        raise UserError(f"{path} lacks {len(missing)} weights, e.g. {missing[0]}; the folder is "
                        "incomplete")
    fuse_experts(model)  # back to transformers' own (fused) experts
    return model.to(device).eval(), tokenizer


def _tied(model: nn.Module) -> set[str]:
    """State-dict names that share storage with an earlier name (tied embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, t in model.state_dict(keep_vars=True).items():
        key = t.data_ptr()
        if key in seen:
            tied.add(name)
        else:
            seen[key] = name
    return tied
