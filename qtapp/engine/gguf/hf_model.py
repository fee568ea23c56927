"""A Hugging Face model folder seen as the list of tensors a GGUF file holds.

Each `SourceTensor` carries its GGUF name, its shape and a loader that reads that one tensor
from the safetensors files (memory-mapped) as float32, with llama.cpp's layout changes
applied, so a writer can stream the model tensor by tensor. Names and layout follow
llama.cpp @0c1e57098 conversion/base.py (ModelBase.prepare_tensors) and conversion/llama.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from qtapp.engine.errors import UserError
from qtapp.engine.gguf.archs import GgufArch, arch_of
from qtapp.engine.model.arch import layer_attention
from qtapp.engine.model.safetensors_files import SafetensorsReader

# buffers some checkpoints carry that llama.cpp does not use (ModelBase.prepare_tensors)
_IGNORED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
# multi-token-prediction layers (Qwen3.5, Qwen3-Next): not part of the model llama.cpp runs
# by default (Qwen3NextModel.filter_tensors)
_IGNORED_PREFIXES = ("mtp.", "model.mtp.",
                     # vision-language checkpoints (Gemma 3 4B+): llama.cpp writes the vision
                     # tower and projector to a separate mmproj GGUF (Gemma3Model
                     # .modify_tensors skips them in the text model's), which QuantDesk does
                     # not write; the text model's GGUF runs text alone. Qwen3.5 as released
                     # keeps its vision tower at model.visual.* (llama.cpp converts
                     # Qwen3_5ForConditionalGeneration as its text model, QWEN35, and the
                     # vision tower into the mmproj file)
                     "model.vision_tower.", "model.multi_modal_projector.", "model.visual.",
                     # Gemma 4's vision and audio towers and their embedders (llama.cpp's
                     # Gemma4VisionAudioModel writes them to the mmproj file)
                     "model.embed_vision.", "model.audio_tower.", "model.embed_audio.")
# a per-expert tensor of a MoE checkpoint: llama.cpp merges each block's experts into one
# (E, out, in) tensor per kind, "…mlp.experts.gate_proj" → blk.N.ffn_gate_exps
# (Qwen2MoeModel.modify_tensors)
# Qwen3.5's Gated DeltaNet mixer: its tensors change on the way (HfModel._deltanet_tensor)
_DELTANET = ".linear_attn."
_EXPERT = re.compile(r"^(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
# gpt-oss's fused experts as its checkpoints hold them (GgufFacts.interleaved_experts)
_FUSED = re.compile(r"^(.+\.experts)\.(gate_up_proj|down_proj)(_bias)?$")
# and one of its experts as QuantDesk's calibration sees it (model/moe.py)
_JOINT_EXPERT = re.compile(r"^(.+\.experts)\.(\d+)\.(gate_up_proj|down_proj)\.weight$")


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of the GGUF file: `shape` in numpy order (rows, columns)."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]

    @property
    def module(self) -> str:
        """The Hugging Face module that owns the tensor ("model.layers.0.mlp.down_proj")."""
        return self.hf_name.rsplit(".", 1)[0]

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)


def permute_rows(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Reorder q/k rows from HF's rotate-half layout to llama.cpp's interleaved pairs.

    Within each head the rows [first half; second half] become [r0, r_h, r1, r_h+1, ...]
    (LlamaModel.permute). For k, n_head is the number of key/value heads.
    """
    if n_head_kv is not None and n_head_kv != n_head:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no config.json; pick the folder of a Hugging Face "
                        "model (it holds config.json and *.safetensors).")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} cannot be read as JSON ({e}); re-download the model.") from e
    if "text_config" in config:
        config = {**config, **config["text_config"]}
    return config


class HfModel:
    """Config, architecture and tensors of a Hugging Face model folder."""

    def __init__(self, model_dir: Path) -> None:
        self.dir = Path(model_dir)
        self.config = read_config(self.dir)
        self.arch: GgufArch = arch_of(self.config)
        self.n_layer: int = self.hparam("num_hidden_layers", "n_layers", "n_layer", "num_layers")
        self.n_head: int = self.hparam("num_attention_heads", "n_head", "n_heads")
        self.n_head_kv: int = self.config.get("num_key_value_heads", self.n_head)
        self.reader = SafetensorsReader(self.dir)
        self._expert_counts: dict[str, int] = {}
        rope = rope_parameters(self.config)
        if rope.get("long_factor") is not None or str(rope.get("rope_type")) in ("su",
                                                                                "longrope"):
            raise UserError(
                f"{self.dir.name} uses long-context rope scaling (longrope, per-frequency "
                "factors), which QuantDesk's GGUF writer does not carry; convert it with "
                "llama.cpp's convert_hf_to_gguf.py, or choose GPTQ or AWQ.")

    def hparam(self, *keys: str) -> Any:
        for key in keys:
            if key in self.config:
                return self.config[key]
        raise UserError(f"{self.dir / 'config.json'} lacks {keys[0]!r}; the model folder "
                        "looks incomplete.")

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def _reader(self, name: str, transform: Callable[[np.ndarray], np.ndarray] | None
                ) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            w = self.reader.get(name, torch.float32).numpy()
            return transform(w) if transform is not None else w
        return load

    @cached_property
    def tensor_map(self) -> gguf.TensorNameMap:
        return gguf.get_tensor_name_map(self.arch.model_arch, self.n_layer)

    def gguf_name(self, hf_name: str) -> str:
        name = hf_name.replace("language_model.", "")
        scale = next((t for suffix, t in self.arch.facts.scales
                      if name.endswith(f".{suffix}")), None)
        block = re.search(r"\.layers\.(\d+)\.", name)
        if scale is not None and block is not None:  # GgufFacts.scales
            tensor = getattr(gguf.MODEL_TENSOR, scale)
            return gguf.TENSOR_NAMES[tensor].format(bid=int(block.group(1))) + ".scale"
        if name.endswith(self.arch.facts.weight_suffix):
            name += ".weight"  # as the converter's filter_tensors (Gemma 4's layer_scalar)
        new = self.tensor_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"The tensor {hf_name!r} of {self.dir.name} has no GGUF "
                            f"counterpart for the {self.arch.name} architecture; this "
                            "checkpoint has parts QuantDesk cannot convert.")
        return new

    def tensors(self) -> list[SourceTensor]:
        """Every tensor of the GGUF file, in the order llama.cpp's converter writes them."""
        return [*self._extra_tensors(), *self._model_tensors()]

    def _merged_experts(self, head: str, kind: str) -> SourceTensor:
        """The (E, out, in) stack of every expert's `kind` weight under `head`."""
        names = [f"{head}.{e}.{kind}.weight" for e in range(self._n_experts(head))]
        merged = f"{head}.{kind}.weight"

        def load() -> np.ndarray:
            return np.stack([self.reader.get(n, torch.float32).numpy() for n in names])
        return SourceTensor(merged, self.gguf_name(merged),
                            (len(names), *self.reader.shape(names[0])), load)

    def imatrix_slots(self, hf_name: str) -> list[tuple[str, int, int]]:
        """(GGUF tensor, row, rows) of the imatrix entries a Hugging Face weight's inputs go
        to: a per-expert weight is row e of its merged tensor's E rows, any other row 0 of 1.
        gpt-oss's per-expert gate_up_proj (gate and up interleaved, model/moe.py) feeds both
        ffn_gate_exps and ffn_up_exps: they read the same inputs."""
        joint = _JOINT_EXPERT.match(hf_name) if self.arch.facts.interleaved_experts else None
        if joint is not None:
            head, e, kind = joint.groups()
            n = self.reader.shape(f"{head}.gate_up_proj")[0]
            kinds = ("gate_proj", "up_proj") if kind == "gate_up_proj" else (kind,)
            return [(self.gguf_name(f"{head}.{k}.weight"), int(e), n) for k in kinds]
        expert = _EXPERT.match(hf_name)
        if expert is None:
            return [(self.gguf_name(hf_name), 0, 1)]
        head, e, kind = expert.groups()
        # experts the checkpoint holds fused (Gemma 4: gate_up_proj (E, 2·I, H), down_proj
        # (E, H, I)) are written as they are: gate_proj's inputs are row e of
        # ffn_gate_up_exps, counted once as llama-imatrix counts its one gate_up product;
        # up_proj reads the same inputs and adds nothing
        fused = f"{head}.{'down_proj' if kind == 'down_proj' else 'gate_up_proj'}"
        if self.reader.has(fused):
            if kind == "up_proj":
                return []
            return [(self.gguf_name(fused), int(e), self.reader.shape(fused)[0])]
        return [(self.gguf_name(f"{head}.{kind}.weight"), int(e), self._n_experts(head))]

    def input_order(self, hf_name: str) -> np.ndarray | None:
        """The source column of each column of the GGUF tensor of a linear weight whose
        columns the conversion reorders (a Gated DeltaNet out_proj, value heads tiled), else
        None: importance vectors must follow the tensor's columns."""
        c = self.config
        if not (self.arch.facts.gated_delta_net and hf_name.endswith(".linear_attn.out_proj.weight")
                and c["linear_num_value_heads"] != c["linear_num_key_heads"]):
            return None
        n_k, n_v, d_v = (c["linear_num_key_heads"], c["linear_num_value_heads"],
                         c["linear_value_head_dim"])
        return tile_value_heads(np.arange(n_v * d_v), 0, n_k, n_v // n_k, d_v)

    def _n_experts(self, head: str) -> int:
        if head not in self._expert_counts:
            self._expert_counts[head] = len({m.group(2) for n in self.reader.names()
                                             if (m := _EXPERT.match(n)) and m.group(1) == head})
        return self._expert_counts[head]

    def _model_tensors(self) -> Iterator[SourceTensor]:
        for hf_name in self.reader.names():
            if hf_name.endswith(_IGNORED_SUFFIXES) or hf_name.startswith(_IGNORED_PREFIXES):
                continue
            fused = _FUSED.match(hf_name) if self.arch.facts.interleaved_experts else None
            if fused is not None:
                yield from self._interleaved_experts(hf_name, *fused.groups())
                continue
            expert = _EXPERT.match(hf_name)
            if expert is not None:
                if expert.group(2) == "0":
                    yield self._merged_experts(expert.group(1), expert.group(3))
                continue
            if hf_name == "lm_head.weight" and self.tied_embeddings:
                continue  # the loader reuses token_embd (ggml-org/llama.cpp PR #5824)
            transform = None
            if self.arch.facts.gated_delta_net and _DELTANET in hf_name:
                yield self._deltanet_tensor(hf_name)
                continue
            if self.arch.norm_offset and hf_name.endswith("norm.weight"):
                def transform(w: np.ndarray) -> np.ndarray:
                    return w + np.float32(self.arch.norm_offset)  # x̂·(1 + w) stored as 1 + w
            elif self.arch.permute_qk:
                if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                    def transform(w: np.ndarray) -> np.ndarray:
                        return permute_rows(w, self.n_head, self.n_head)
                elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                    def transform(w: np.ndarray) -> np.ndarray:
                        return permute_rows(w, self.n_head, self.n_head_kv)
            yield SourceTensor(hf_name, self.gguf_name(hf_name), self.reader.shape(hf_name),
                               self._reader(hf_name, transform))

    def _interleaved_experts(self, hf_name: str, head: str, kind: str, bias: str | None
                             ) -> Iterator[SourceTensor]:
        """gpt-oss's fused experts as llama.cpp's GptOssModel.modify_tensors writes them:
        gate_up_proj (E, H, 2·I) → ffn_gate_exps from the even columns and ffn_up_exps from
        the odd ones, each (E, I, H); gate_up_proj_bias (E, 2·I) split alike; down_proj
        (E, I, H) → ffn_down_exps (E, H, I); down_proj_bias as it is."""
        shape = tuple(self.reader.shape(hf_name))
        suffix = ".bias" if bias else ".weight"

        def part(start: int | None) -> Callable[[np.ndarray], np.ndarray]:
            def transform(w: np.ndarray) -> np.ndarray:
                if start is not None:
                    w = w[..., start::2]
                if not bias:
                    w = w.swapaxes(-1, -2)
                return np.ascontiguousarray(w, dtype=np.float32)
            return transform

        if kind == "down_proj":
            out = shape if bias else (shape[0], shape[2], shape[1])
            yield SourceTensor(hf_name, self.gguf_name(f"{head}.down_proj{suffix}"), out,
                               self._reader(hf_name, part(None)))
            return
        half = shape[-1] // 2
        out = (shape[0], half) if bias else (shape[0], half, shape[1])
        for start, name in ((0, "gate_proj"), (1, "up_proj")):
            yield SourceTensor(hf_name, self.gguf_name(f"{head}.{name}{suffix}"), out,
                               self._reader(hf_name, part(start)))

    def _deltanet_tensor(self, hf_name: str) -> SourceTensor:
        """A Gated DeltaNet tensor as llama.cpp's Qwen3.5 converter writes it
        (docs/formats.md#gated-deltanet): A_log as A = −exp(A_log), dt_bias named
        dt_proj.bias, conv1d's (C, 1, K) kernel squeezed to (C, K), the gated norm's weight
        as is (it is x̂·w, not x̂·(1 + w)), and, when there are more value heads than key
        heads, the value heads of every tensor that has them reordered from grouped by key
        head to tiled."""
        c = self.config
        n_k, n_v = c["linear_num_key_heads"], c["linear_num_value_heads"]
        d_k, d_v = c["linear_key_head_dim"], c["linear_value_head_dim"]
        leaf = hf_name.rsplit(_DELTANET, 1)[1]
        shape = tuple(self.reader.shape(hf_name))
        lookup = hf_name
        steps: list[Callable[[np.ndarray], np.ndarray]] = []
        if leaf == "A_log":
            steps.append(lambda w: -np.exp(w))
        elif leaf == "dt_bias":
            lookup = hf_name.replace(".dt_bias", ".dt_proj.bias")
        elif leaf == "conv1d.weight":
            shape = tuple(d for d in shape if d != 1)
            steps.append(lambda w: w.reshape(shape))
        if n_v != n_k:
            per_k = n_v // n_k

            def tile(dim: int, head: int, start: int = 0) -> Callable[[np.ndarray], np.ndarray]:
                return lambda w: tile_value_heads(w, dim, n_k, per_k, head, start)
            v_start = 2 * n_k * d_k  # in_proj_qkv rows / conv channels: q, k, then v
            steps.append({"in_proj_qkv.weight": tile(0, d_v, v_start),
                          "conv1d.weight": tile(0, d_v, v_start),
                          "in_proj_z.weight": tile(0, d_v),
                          "in_proj_b.weight": tile(0, 1), "in_proj_a.weight": tile(0, 1),
                          "A_log": tile(0, 1), "dt_bias": tile(0, 1),
                          "out_proj.weight": tile(1, d_v)}.get(leaf, lambda w: w))

        def transform(w: np.ndarray) -> np.ndarray:
            for step in steps:
                w = step(w)
            return np.ascontiguousarray(w, dtype=np.float32)
        return SourceTensor(hf_name, self.gguf_name(lookup), shape,
                            self._reader(hf_name, transform))

    def _extra_tensors(self) -> Iterator[SourceTensor]:
        """rope_freqs for Llama 3.1-style rope scaling (LlamaModel.generate_extra_tensors)
        and for the global layers of split-attention families (Gemma 4, Gemma4Model
        .generate_extra_tensors)."""
        rope = rope_parameters(self.config)
        if self.arch.facts.split_attention:
            factors = global_rope_factors(self.config)
        elif (self.arch.model_arch == gguf.MODEL_ARCH.LLAMA
              and str(rope.get("rope_type", "")).lower() == "llama3"):
            factors = llama3_rope_factors(self.config, rope)
        else:
            return
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        yield SourceTensor(name, name, factors.shape, lambda: factors)


def tile_value_heads(w: np.ndarray, dim: int, n_k: int, per_k: int, head: int,
                     start: int = 0) -> np.ndarray:
    """Reorder the value heads along `dim` (from index `start` on) from grouped by key head
    [k0: v0 … v(r−1), k1: v0 …] to tiled [k0 v0, k1 v0, …, k0 v1, …], as llama.cpp's
    Qwen3.5 converter does for ggml's broadcast (ggml-org/llama.cpp PR #19468)."""
    w = np.moveaxis(w, dim, 0)
    head_part = w[start:]
    tiled = (head_part.reshape(n_k, per_k, head, *head_part.shape[1:]).swapaxes(0, 1)
             .reshape(head_part.shape))
    return np.moveaxis(np.concatenate([w[:start], tiled]), 0, dim)


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from transformers 5 `rope_parameters` or older `rope_scaling`/`rope_theta`."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope = dict(rope.get("full_attention", rope))
    if "rope_theta" not in rope and "rope_theta" in config:
        rope["rope_theta"] = config["rope_theta"]
    if "rope_type" not in rope and "type" in rope:
        rope["rope_type"] = rope["type"]
    return rope


def global_rope_factors(config: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors that make llama.cpp's NEOX rope over the whole head of a global
    layer (rope.dimension_count = its head width) compute transformers' rope of that layer:
    "proportional" rope (Gemma 4) turns the first partial_rotary_factor · head_dim / 2
    frequencies base^(−2i/head_dim) (divided by `factor`) and leaves the rest unrotated,
    which a divisor of 1e30 does (Gemma4Model.generate_extra_tensors); "default" rope turns
    every frequency. UserError for any other rope type of the global layers."""
    rope = rope_parameters(config)
    rope_type = str(rope.get("rope_type") or "default")
    if rope_type not in ("proportional", "default"):
        raise UserError(
            f"the global layers of this model use {rope_type!r} rope; QuantDesk's GGUF writer "
            "carries only proportional and default rope for them (as llama.cpp's converter). "
            "Choose GPTQ or AWQ.")
    head_dim = max((a.head_dim for a in layer_attention(config) if a.kind == "full_attention"),
                   default=0)
    partial = float(rope.get("partial_rotary_factor", 1.0)) if rope_type == "proportional" \
        else 1.0
    rotated = int(partial * head_dim // 2)
    factor = float(rope.get("factor") or 1.0)
    return np.asarray([factor] * rotated + [1e30] * (head_dim // 2 - rotated),
                      dtype=np.float32)


def llama3_rope_factors(config: dict[str, Any], rope: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1 rope scaling (ggml-org/llama.cpp PR #8676)."""
    base = rope.get("rope_theta", 10000.0)
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(float(factor))
        else:
            smooth = ((old_context_len / wavelen - low_freq_factor)
                      / (high_freq_factor - low_freq_factor))
            factors.append(float(1 / ((1 - smooth) / factor + smooth)))
    return np.asarray(factors, dtype=np.float32)
