"""What every checkpoint writer shares: the export plan, sharded streaming output, the folder.

A writer turns one quantized module into its format's tensors and says what goes into
`quantization_config`; everything else is here:

- `ExportPlan` reads the source model's tensor index (names, shapes, dtypes, no data) and
  the store's block metadata, and maps every quantized module to its full name as the
  source checkpoint names it (the store holds QuantDesk's module names; `arch.NameMap`
  maps them back, e.g. Mixtral's mlp.experts.{e}.gate_proj → block_sparse_moe.experts.{e}.w1),
  so the output, its quantization_config and the source share one naming.
- `write_checkpoint` streams: source tensors in natural order, a quantized module's
  weight replaced by the writer's tensors, one store block loaded at a time, output cut
  into ~2 GB shards (`model.safetensors`, or `model-0000i-of-0000n.safetensors` plus
  `model.safetensors.index.json`). Peak memory is one block plus one shard buffer.
- config.json (source config + quantization_config), tokenizer files, generation config
  and licence files are copied.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file

from qtapp.engine.config import JobSpec
from qtapp.engine.errors import UserError
from qtapp.engine.model.arch import NameMap, arch_for, name_map, text_settings
from qtapp.engine.model.safetensors_files import SafetensorsReader
from qtapp.engine.quant.primitives import QuantizedWeight
from qtapp.engine.quant.qstore import QuantStore

SHARD_BYTES = 2 * 10**9
COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "generation_config.json",
    "chat_template.jinja", "chat_template.json", "LICENSE", "LICENSE.txt", "LICENSE.md",
    "NOTICE", "USE_POLICY.md",
)


def natural_key(name: str) -> list[Any]:
    """Sort key that puts layers.2 before layers.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class ModuleEntry:
    """One quantized linear: where it is in the store and its scheme (from metadata only)."""

    name: str  # full module name, e.g. model.layers.0.self_attn.q_proj
    block: int
    key: str  # name inside the store block
    bits: int
    group_size: int
    sym: bool
    shape: tuple[int, int]  # (N, K)
    act_order: bool

    @property
    def scheme(self) -> tuple[int, int, bool]:
        return (self.bits, self.group_size, self.sym)


@dataclass
class ExportPlan:
    """Source tensors + store metadata → what the output holds."""

    source_dir: Path
    store: QuantStore
    job: JobSpec
    source: SafetensorsReader = field(init=False)  # the files' own tensor names
    names: NameMap = field(init=False)
    config: dict[str, Any] = field(init=False)
    layers_prefix: str = field(init=False)
    modules: dict[str, ModuleEntry] = field(init=False)
    floats: dict[str, tuple[int, str]] = field(init=False)  # tensor → (block, store key)

    def __post_init__(self) -> None:
        self.source_dir = Path(self.source_dir)
        try:
            self.config = json.loads((self.source_dir / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {self.source_dir / 'config.json'}: {e}") from None
        self.names = name_map(self.config)
        # as the checkpoint names it (Gemma 3's language_model.model.layers)
        self.layers_prefix = self.names.to_checkpoint(arch_for(self.config).layers_prefix)
        self.source = SafetensorsReader(self.source_dir, module_names=False)
        arch = arch_for(self.config)
        if arch.n_experts:  # fused experts on disk (Gemma 4): written back per expert
            for i in range(int(text_settings(self.config).get("num_hidden_layers") or 0)):
                self.source.split_fused_experts(f"{self.layers_prefix}.{i}.{arch.experts}.")
        self.modules, self.floats = {}, {}
        blocks = self.store.completed()
        if not blocks:
            raise UserError(f"the checkpoint in {self.store.root} holds no quantized blocks; "
                            "run the quantization again")
        for b in blocks:
            info = self.store.block_info(b)
            for key, m in info["modules"].items():
                full = self._full_name(b, key)
                if full in self.modules:
                    raise UserError(f"module {full} is quantized twice in the checkpoint "
                                    f"{self.store.root}; delete it and run the job again")
                shape = (int(m["shape"][0]), int(m["shape"][1]))
                if self.source.shape(full + ".weight") != shape:
                    raise UserError(f"{full}: the checkpoint has shape {shape} but the source "
                                    f"model has {self.source.shape(full + '.weight')}; the "
                                    "checkpoint belongs to another model")
                self.modules[full] = ModuleEntry(full, b, key, int(m["bits"]),
                                                 int(m["group_size"]), bool(m["sym"]), shape,
                                                 bool(m.get("act_order", False)))
            for key in info["floats"]:
                name = self.names.to_checkpoint(key)
                if not self.source.has(name):
                    raise UserError(f"the checkpoint changes {name}, which the source model "
                                    "does not have; it belongs to another model")
                self.floats[name] = (b, key)

    def _full_name(self, block: int, key: str) -> str:
        key = self.names.to_checkpoint(key)
        if self.source.has(key + ".weight"):
            return key
        full = f"{self.layers_prefix}.{block}.{key}"
        if not self.source.has(full + ".weight"):
            raise UserError(f"the checkpoint has a module {key} in block {block}, but the source "
                            f"model has no {full}.weight; it belongs to another model")
        return full

    # summaries used by writers and the model card -------------------------------------
    def schemes(self) -> Counter[tuple[int, int, bool]]:
        return Counter(m.scheme for m in self.modules.values())

    def base_scheme(self) -> tuple[int, int, bool]:
        """The most common (bits, group_size, sym); ties go to the first in module order."""
        counts = self.schemes()
        order = [m.scheme for m in self.sorted_modules()]
        return max(counts, key=lambda s: (counts[s], -order.index(s)))

    def sorted_modules(self) -> list[ModuleEntry]:
        return sorted(self.modules.values(), key=lambda m: natural_key(m.name))

    def float_linears(self) -> list[str]:
        """Linear layers left in 16 bit: 2-D `.weight` tensors that are not quantized.

        The token embedding is excluded (it is not a linear layer in any loader's sense).
        """
        embed = {"model.embed_tokens.weight", "transformer.wte.weight"}
        out = []
        for name in self.source.names():
            if not name.endswith(".weight") or name in embed or "embed" in name:
                continue
            module = name[: -len(".weight")]
            if len(self.source.shape(name)) == 2 and module not in self.modules:
                out.append(module)
        return sorted(out, key=natural_key)

    def module_summary(self) -> dict[str, Any]:
        """Per-scheme module counts and the 16-bit linears, for config comments and the card."""
        groups: dict[str, list[str]] = {}
        for m in self.sorted_modules():
            g = "per-channel" if m.group_size == -1 else (
                "per-tensor" if m.group_size == 0 else f"g{m.group_size}")
            label = f"W{m.bits} {g} {'sym' if m.sym else 'asym'}"
            groups.setdefault(label, []).append(m.name)
        params = {label: sum(self.modules[n].shape[0] * self.modules[n].shape[1] for n in names)
                  for label, names in groups.items()}
        return {
            "schemes": {label: {"bits": self.modules[names[0]].bits,
                                "modules": len(names), "params": params[label],
                                "patterns": compact_patterns(names, self.layers_prefix)}
                        for label, names in groups.items()},
            "float_linears": self.float_linears(),
            "act_order": any(m.act_order for m in self.modules.values()),
        }


def compact_patterns(names: list[str], layers_prefix: str) -> list[str]:
    """Readable summary of module names: 'model.layers.*.self_attn.q_proj' when every layer
    with that module is in `names`, else the names themselves."""
    rx = re.compile(rf"^{re.escape(layers_prefix)}\.(\d+)\.(.+)$")
    by_suffix: dict[str, list[str]] = {}
    out: list[str] = []
    for n in names:
        m = rx.match(n)
        if m:
            by_suffix.setdefault(m.group(2), []).append(n)
        else:
            out.append(n)
    for suffix, members in by_suffix.items():
        out.append(f"{layers_prefix}.*.{suffix}" if len(members) > 1 else members[0])
    return out


def module_regex(name: str) -> str:
    """Anchored regular expression matching exactly one module name."""
    return "^" + re.escape(name) + "$"


class FormatWriter(Protocol):
    """What `write_checkpoint` needs from a format."""

    name: str

    def module_tensors(self, entry: ModuleEntry, qw: QuantizedWeight,
                       ) -> dict[str, torch.Tensor]: ...

    def quantization_config(self) -> dict[str, Any]: ...


class ShardWriter:
    """Collects tensors and writes safetensors shards of at most `max_bytes` (one tensor may
    exceed it alone). Shards get their final names in `finish`."""

    def __init__(self, out_dir: Path, max_bytes: int = SHARD_BYTES) -> None:
        self.out_dir = Path(out_dir)
        self.max_bytes = max_bytes
        self._buf: dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._seen: set[str] = set()
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._seen:
            raise ValueError(f"tensor {name} written twice")
        self._seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if self._buf and self._buf_bytes + nbytes > self.max_bytes:
            self._flush()
        self._buf[name] = tensor.contiguous()
        self._buf_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        path = self.out_dir / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._buf, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._buf)))
        self._buf, self._buf_bytes = {}, 0

    def finish(self) -> list[Path]:
        if self._buf or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            final = self.out_dir / "model.safetensors"
            self._shards[0][0].replace(final)
            return [final]
        files, weight_map = [], {}
        for i, (path, names) in enumerate(self._shards):
            final = self.out_dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.replace(final)
            files.append(final)
            weight_map.update({name: final.name for name in names})
        index = self.out_dir / "model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"total_size": self.total_bytes},
                                     "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        return [*files, index]


def _units(plan: ExportPlan) -> Iterator[tuple[str, str]]:
    """("quant", module) or ("copy", tensor) in natural order of the source tensor names."""
    for name in sorted(plan.source.names(), key=natural_key):
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module is not None and module in plan.modules:
            yield "quant", module
        else:
            yield "copy", name


def write_checkpoint(plan: ExportPlan, writer: FormatWriter, out_dir: Path,
                     max_shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write the weights, config.json and the copied files of `plan` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = ShardWriter(out_dir, max_shard_bytes)
    loaded: tuple[int, dict[str, QuantizedWeight], dict[str, torch.Tensor]] | None = None

    def block(b: int) -> tuple[dict[str, QuantizedWeight], dict[str, torch.Tensor]]:
        nonlocal loaded
        if loaded is None or loaded[0] != b:
            loaded = None  # free the previous block before loading the next
            modules, _meta, floats = plan.store.load_block(b)
            loaded = (b, modules, floats)
        return loaded[1], loaded[2]

    for kind, name in _units(plan):
        if kind == "quant":
            entry = plan.modules[name]
            qw = block(entry.block)[0][entry.key]
            for tname, t in writer.module_tensors(entry, qw).items():
                shards.add(tname, t)
        elif name in plan.floats:
            b, key = plan.floats[name]
            t = block(b)[1][key]
            shards.add(name, t.to(getattr(torch, plan.source.dtype(name))))
        else:
            shards.add(name, plan.source.get(name))
    files = shards.finish()
    files.append(write_config(plan, writer.quantization_config(), out_dir))
    files += copy_side_files(plan.source_dir, out_dir)
    return files


def code_files(auto_map: Any) -> list[str]:
    """The .py files an `auto_map` (config.json's or tokenizer_config.json's) points at:
    "modeling_x.XForCausalLM" and "org/repo--modeling_x.X" name modeling_x.py."""
    refs: list[str] = []
    for value in (auto_map.values() if isinstance(auto_map, dict) else []):
        refs += [v for v in (value if isinstance(value, (list, tuple)) else [value])
                 if isinstance(v, str)]
    return sorted({r.split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs})


def custom_code_warning(config: dict[str, Any]) -> str | None:
    """Why the output's config.json has no `auto_map` when the source's has one, else None.

    QuantDesk quantizes only model types transformers implements, and builds them from
    transformers' own classes; the model's Python files are not copied, so an `auto_map`
    in the output would point at files that are not there."""
    auto_map = config.get("auto_map")
    if not auto_map:
        return None
    files = ", ".join(code_files(auto_map)) or "its .py files"
    return (f"config.json maps the model to Python code shipped with it ({files}; auto_map). "
            f"QuantDesk quantized it as transformers' own {config.get('model_type', 'model')} "
            "model and did not copy that code, so auto_map was removed from the output's "
            "config.json; load the output without trust_remote_code.")


def write_config(plan: ExportPlan, quantization_config: dict[str, Any], out_dir: Path) -> Path:
    """The source's config.json with the quantization_config, and without `auto_map`
    (custom_code_warning says why)."""
    config = dict(plan.config)
    config.pop("auto_map", None)
    config["quantization_config"] = quantization_config
    path = Path(out_dir) / "config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def copy_side_files(source_dir: Path, out_dir: Path) -> list[Path]:
    """Tokenizer, generation config, chat template and licence files, as they are; with a
    custom tokenizer (auto_map in tokenizer_config.json, loaded only with
    --trust-remote-code) also the .py files that map names, so the copied
    tokenizer_config.json points at files that are there."""
    out = []
    for name in (*COPIED_FILES, *_tokenizer_code(Path(source_dir))):
        src = Path(source_dir) / name
        if src.is_file():
            dst = Path(out_dir) / name
            shutil.copyfile(src, dst)
            out.append(dst)
    return out


def _tokenizer_code(source_dir: Path) -> list[str]:
    try:
        data = json.loads((source_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    return [f for f in code_files(auto_map) if "/" not in f and "\\" not in f]


def scale_dtype_for(plan: ExportPlan) -> torch.dtype:
    """The model's own float dtype (config torch_dtype / dtype), bfloat16 when unknown."""
    name = plan.config.get("torch_dtype") or plan.config.get("dtype") or "bfloat16"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16,
            "float32": torch.float32}.get(str(name), torch.bfloat16)


def to_float16(t: torch.Tensor, what: str) -> torch.Tensor:
    """Cast scales to fp16, refusing values fp16 cannot hold."""
    h = t.to(torch.float16)
    if not torch.isfinite(h).all():
        raise UserError(f"{what}: a scale exceeds the float16 range (max 65504) and cannot be "
                        "stored in this format; use compressed-tensors (bfloat16 scales)")
    return h
