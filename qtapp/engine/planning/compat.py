"""Will this model quantize, and with which method? Answered before any weights download.

    check_model(model, hw=None) -> CompatReport

`model` is 'demo', a local folder, or a Hugging Face id. For an id only config.json, the
tokenizer files and the file list are read: from the local Hugging Face cache when it has
them (always when HF_HUB_OFFLINE is set), else from the Hub (huggingface-hub). Per method:

    rtn, gptq, awq  the architecture is a supported family of qtapp.engine.model.arch's table
                    (FAMILIES; a family marked "not yet" answers with its reason); the answer names the group
                    size `--group-size auto` picks (arch.auto_group_size: 128 when it divides
                    every quantized layer's input width, else 64 or 32; 64 for the demo);
    gguf            the family's table entry has GGUF facts (qtapp.engine.gguf.archs), and the
                    tokenizer is SentencePiece or a BPE whose pre-tokenizer llama.cpp knows
                    (qtapp.engine.gguf.pretokenizers);
    all             the planner's memory for the job with default settings fits this machine.

For a local folder holding weights (or a shard index) these are at hand, so it first makes
the checks every command makes of its model (qtapp.engine.model.sources.check_model_folder:
config.json, each weight file's header against its size, pickle-only weights, the tokenizer
files): a damaged folder is the UserError `quantize` would give. It also warns when the
tokenizer has no chat template or no end-of-turn token (a chat then never stops where the
model means to), or is code shipped with the model (auto_map; refused without
--trust-remote-code).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from hashlib import sha256
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tokenizers import Tokenizer

from qtapp.engine.config import JobSpec
from qtapp.engine.errors import UserError
from qtapp.engine.gguf.pretokenizers import CHKTXT, PRE_BY_HASH
from qtapp.engine.model.arch import (
    AUTO_GROUP_SIZES,
    FAMILIES,
    arch_for,
    auto_group_size,
    linear_input_widths,
    method_refusal,
    text_settings,
)
from qtapp.engine.planning import hardware
from qtapp.engine.planning.planner import memory, memory_problems
from qtapp.engine.planning.shape import ModelShape
from qtapp.engine.quality.chat import END_OF_TURN_TOKENS
from qtapp.engine.units import format_size

# huggingface_hub, the gguf package (gguf.archs) and model.sources (torch) are imported inside
# the functions that need them, on the paths that need them (a Hub id, the GGUF check, a folder
# with weights): each takes 0.1-1 s to import.

METHODS = ("rtn", "gptq", "awq", "gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "chat_template.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
LOCAL_WEIGHTS = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth")


@dataclass
class MethodCheck:
    method: str
    ok: bool
    reason: str = ""
    group_size: int = 0  # rtn/gptq/awq: the group size `--group-size auto` picks (-1: none)


@dataclass
class CompatReport:
    model: str
    where: str                       # "local folder", "Hub", "Hub (from the local cache)"
    architectures: list[str]
    model_type: str
    n_params: int
    weights_bytes: int
    methods: list[MethodCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def works(self) -> list[str]:
        return [m.method for m in self.methods if m.ok]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "works": self.works}

    def text(self) -> str:
        archs = ", ".join(self.architectures) or "no architectures"
        lines = [(f"{self.model} ({self.where}): {archs}, model_type "
                  f"{self.model_type or '?'}, about {self.n_params / 1e9:.2f} B parameters, "
                  f"{format_size(self.weights_bytes)} of weights")]
        first: dict[str, str] = {}  # a refusal's reason -> the method that printed it
        for m in self.methods:
            said = first.get(m.reason) if not m.ok else None
            lines.append(f"  {m.method:5} {'yes' if m.ok else 'no '}  "
                         + (f"as {said}" if said else m.reason))
            if not m.ok:
                first.setdefault(m.reason, m.method)
        works = self.works
        lines.append(f"use: {', '.join(works)}" if works else
                     "no QuantDesk method works for this model")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# fetching -----------------------------------------------------------------------------
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def _hub_error(repo_id: str, e: Exception) -> UserError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        from qtapp.engine.model.hub_files import access_error

        return access_error(repo_id, getattr(e.response, "status_code", None) or 403)
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"'{repo_id}' does not exist on the Hugging Face Hub (or it is private "
                         "and you are not logged in). Check the spelling, e.g. "
                         "HuggingFaceTB/SmolLM2-135M-Instruct.")
    if isinstance(e, LocalEntryNotFoundError) or _offline():
        return UserError(f"'{repo_id}' is not in the local Hugging Face cache and the Hub cannot "
                         "be reached (offline, or HF_HUB_OFFLINE is set). Connect to the "
                         "internet, or download the model on a connected machine.")
    return UserError(f"cannot read '{repo_id}' from the Hugging Face Hub: {e}")


def _validate_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if repo_id.count("/") != 1:
            raise HFValidationError("an id has exactly one '/'")
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"'{repo_id}' is neither an existing folder nor a valid Hugging Face "
                        f"model id ({e}). Give a folder path or an id like "
                        "HuggingFaceTB/SmolLM2-135M-Instruct.") from None


def _from_cache(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                      allow_patterns=["config.json", *TOKENIZER_FILES]))
    except Exception:  # noqa: BLE001 - every failure here means "not in the cache"
        return None


def _cached_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}


def _from_hub(repo_id: str, tmp: Path) -> tuple[Path, dict[str, int]]:
    """(a folder holding config.json and the tokenizer files, file name -> size)."""
    from huggingface_hub import HfApi, hf_hub_download

    from qtapp.engine.model.hub_files import endpoint

    base = endpoint()  # the mirror set now (HF_ENDPOINT), not the one read at import
    try:
        info = HfApi(endpoint=base).model_info(repo_id, files_metadata=True)
        sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
        for name in ("config.json", *TOKENIZER_FILES):
            if name in sizes:
                hf_hub_download(repo_id, name, revision=info.sha, local_dir=tmp,
                                endpoint=base)
    except Exception as e:  # noqa: BLE001 - network, auth and not-found errors end here
        raise _hub_error(repo_id, e) from None
    return tmp, sizes


def _locate(model: str, tmp: Path) -> tuple[Path, dict[str, int], str]:
    if model == "demo":
        from qtapp.engine.model.sources import demo_model_dir  # imports torch: only for the demo

        folder = demo_model_dir()
        return folder, _cached_sizes(folder), "the demo model"
    path = Path(model).expanduser()
    if path.is_dir():
        return path, _cached_sizes(path), "local folder"
    if path.exists():
        raise UserError(f"{path} is a file; give a model folder or a Hugging Face id")
    _validate_id(model)
    cached = _from_cache(model)
    if cached is not None:
        sizes = _cached_sizes(cached)
        if any(n.endswith(WEIGHT_SUFFIXES) for n in sizes) or _offline():
            return cached, sizes, "Hub (from the local cache)"
    if _offline():
        raise _hub_error(model, RuntimeError("offline"))
    folder, sizes = _from_hub(model, tmp)
    return folder, sizes, "Hub"


# checks -------------------------------------------------------------------------------
def _config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json; it is not a Hugging Face model") from None
    except (OSError, ValueError) as e:
        raise UserError(f"config.json of {folder} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"config.json of {folder} does not hold a JSON object")
    return config


def _vision_reason(config: dict[str, Any]) -> str:
    """Why a vision-language model is refused; '' for a text model and for a
    vision-language family of the table (Gemma 3 4B+, Gemma 4: the language model is
    quantized, the vision tower copied unchanged)."""
    archs = config.get("architectures") or []
    family = FAMILIES.get(str(config.get("model_type")))
    if family is not None and family.supported and any(a in family.architectures
                                                       for a in archs):
        return ""
    if "vision_config" in config or any(str(a).endswith("ForConditionalGeneration")
                                        for a in archs):
        return (f"a vision-language model ({', '.join(archs) or config.get('model_type')}); "
                "QuantDesk quantizes text-only causal language models")
    return ""


def _linear_check(config: dict[str, Any]) -> MethodCheck:
    """Whether the architecture is one the linear methods know, and the group size that
    `--group-size auto` picks for it (one that divides every quantized layer's inputs)."""
    vision = _vision_reason(config)
    if vision:
        return MethodCheck("gptq", False, vision)
    try:
        spec = arch_for(config)
    except UserError as e:
        return MethodCheck("gptq", False, str(e))
    widths = sorted(set(linear_input_widths(config).values()))
    group = auto_group_size(widths)
    if not widths or group == AUTO_GROUP_SIZES[0]:
        note = f"group size {group}"
    elif group > 0:
        odd = next(w for w in widths if w % AUTO_GROUP_SIZES[0])
        note = (f"group size {group} ({AUTO_GROUP_SIZES[0]} does not divide {odd}; "
                f"{', '.join(f'{w} = {w // group} × {group}' for w in widths)})")
    else:
        note = (f"one scale per output channel (-1): no group size of "
                f"{', '.join(map(str, AUTO_GROUP_SIZES))} divides {' and '.join(map(str, widths))}")
    return MethodCheck("gptq", True, f"architecture {spec.name} is supported, {note}", group)


def _tokenizer_check(folder: Path, files: dict[str, int], vocab: str = "gpt2") -> str:
    """'' when llama.cpp can take the tokenizer, else why not; `vocab` is the family's
    GgufFacts.vocab (which tokenizer kinds its converter reads)."""
    if "tokenizer.model" in files:
        return ""
    if "tokenizer.json" not in files:
        return "the model has no tokenizer.json or tokenizer.model"
    try:
        kind = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["type"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"tokenizer.json cannot be read ({e})"
    if kind != "BPE":
        return f"the tokenizer is of type {kind}; the GGUF converter takes BPE or SentencePiece"
    if vocab in ("llama", "gemma4"):
        from qtapp.engine.gguf.vocab import llama_hf_style

        if llama_hf_style(folder):  # SentencePiece-style BPE: no pre-tokenizer to look up
            return ""
    try:
        ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(CHKTXT).ids
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own types
        return f"the tokenizer cannot be loaded ({e})"
    digest = sha256(str(ids).encode()).hexdigest()
    if digest not in PRE_BY_HASH:
        return (f"its BPE pre-tokenizer is not one llama.cpp knows (hash {digest[:16]}…); "
                "QuantDesk does not guess it, because a wrong one silently changes how text "
                "is split")
    return ""


def _gguf_refusal(e: UserError) -> str:
    """The per-method answer of arch_of's refusal: a family the table knows answers with its
    own reason in a line (GgufRefused.reason), an unknown architecture with the whole error,
    which lists the architectures QuantDesk converts."""
    from qtapp.engine.gguf.archs import GgufRefused

    return e.reason if isinstance(e, GgufRefused) else str(e)


def _gguf_check(config: dict[str, Any], folder: Path, files: dict[str, int]) -> MethodCheck:
    from qtapp.engine.gguf.archs import arch_of

    vision = _vision_reason(config)
    if vision:
        return MethodCheck("gguf", False, vision)
    if not config.get("architectures"):
        return MethodCheck("gguf", False, "config.json has no 'architectures'; the GGUF "
                           "converter needs it to choose the family")
    try:
        arch = arch_of(config)
    except UserError as e:
        return MethodCheck("gguf", False, _gguf_refusal(e))
    problem = _tokenizer_check(folder, files, arch.vocab)
    if problem:
        return MethodCheck("gguf", False, problem)
    text_only = ("; the text model only: llama.cpp keeps the vision tower in a separate "
                 "mmproj file, which QuantDesk does not write" if "vision_config" in config
                 else "")
    return MethodCheck("gguf", True, f"architecture {arch.name}, tokenizer known to "
                       f"llama.cpp{text_only}")


def _linear_method_checks(config: dict[str, Any]) -> list[MethodCheck]:
    """RTN, GPTQ and AWQ from config.json: the linear layers' check, then each method's own
    refusal for the family (the FAMILIES table)."""
    linear = _linear_check(config)
    checks = [MethodCheck(m, linear.ok, linear.reason, linear.group_size)
              for m in ("rtn", "gptq", "awq")]
    for c in checks:
        refusal = method_refusal(c.method, config) if c.ok else ""
        if refusal:
            c.ok, c.reason = False, refusal
    return checks


def config_checks(config: dict[str, Any]) -> list[MethodCheck]:
    """The per-method answer from config.json alone (the FAMILIES table, the methods'
    refusals, the GGUF converter's families): what a Hub search result can be told before
    any file is downloaded. The GGUF tokenizer check needs the tokenizer files and is left
    to check_model."""
    from qtapp.engine.gguf.archs import arch_of

    checks = _linear_method_checks(config)
    vision = _vision_reason(config)
    try:
        gguf = (MethodCheck("gguf", False, vision) if vision else
                MethodCheck("gguf", True, f"architecture {arch_of(config).name}"))
    except UserError as e:
        gguf = MethodCheck("gguf", False, _gguf_refusal(e))
    return [*checks, gguf]


def refusals(config: dict[str, Any] | None) -> dict[str, str]:
    """method → why this model's family refuses it, from config.json alone (config_checks);
    the methods not named are the ones the family takes (the advisor recommends, the method
    page offers only those). {} without a config (no model chosen yet)."""
    if not config:
        return {}
    return {c.method: c.reason for c in config_checks(config) if not c.ok}


def chat_warnings(folder: Path, files: dict[str, int] | None = None) -> list[str]:
    """Warnings for a model folder without a chat template or an end-of-turn token."""
    files = _cached_sizes(folder) if files is None else files
    try:
        tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tc = {}
    if not isinstance(tc, dict):
        tc = {}
    warnings = []
    if not (tc.get("chat_template") or "chat_template.jinja" in files
            or "chat_template.json" in files):
        warnings.append("the tokenizer has no chat template: chat uses a plain "
                        "'User: / Assistant:' fallback, and the GGUF file embeds none")
    vocab_text = ""
    if "tokenizer.json" in files:
        vocab_text = (folder / "tokenizer.json").read_text(encoding="utf-8", errors="replace")
    specials = json.dumps(tc.get("added_tokens_decoder", {})) + json.dumps(tc.get("eos_token"))
    if not any(t in vocab_text or t in specials for t in END_OF_TURN_TOKENS) and \
            not tc.get("eos_token"):
        warnings.append("the tokenizer names no end-of-turn token (eos_token or one of "
                        f"{', '.join(END_OF_TURN_TOKENS)}): generation will not stop by itself")
    return warnings


def _code_warnings(folder: Path) -> list[str]:
    """A tokenizer that is Python code shipped with the model: quantize, chat and eval refuse
    it unless given --trust-remote-code."""
    try:
        tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not (isinstance(tc, dict) and isinstance(tc.get("auto_map"), dict | list)):
        return []
    return [("the tokenizer is Python code shipped with the model (auto_map in "
             "tokenizer_config.json): quantize, chat and eval refuse it unless given "
             "--trust-remote-code, which runs that code; pass it only if you trust the "
             "model's author")]


def _n_params(config: dict[str, Any]) -> int:
    try:
        return ModelShape.from_config(config).n_params
    except (TypeError, ValueError, ZeroDivisionError):
        return 0


def _fits(config: dict[str, Any], name: str, n_params: int, size: int, method: str,
          hw: Any) -> str:
    """'' when the planner's memory for the method (default settings) fits, else why not
    (the planner's own words and limits)."""
    info = SimpleNamespace(name=name, config=config, n_params=n_params,
                           size_bytes=size or 2 * n_params,
                           n_layers=int(text_settings(config).get("num_hidden_layers") or 0))
    gpu = hw.best_gpu
    job = JobSpec(model=name, method=method, out="x")
    ram, vram = memory(job, info, gpu is not None)
    problems = memory_problems(ram, vram, hw, gpu)
    if problems:  # the quality gate loads the whole model: say when skipping it is the way
        ram, vram = memory(replace(job, evaluate=False), info, gpu is not None)
        if not memory_problems(ram, vram, hw, gpu):
            problems.append(f"fits without the quality gate (--no-eval, which loads the whole "
                            f"model): {format_size(ram)} of RAM"
                            + (f", {format_size(vram)} of GPU memory" if gpu else ""))
    return "; ".join(problems)


def check_model(model: str, hw: Any = None) -> CompatReport:
    """Per-method answer for `model` (see the module docstring); UserError for bad input."""
    model = str(model).strip()
    if not model:
        raise UserError("no model given; give 'demo', a model folder or a Hugging Face id")
    with tempfile.TemporaryDirectory(prefix="quantdesk-check-") as tmp:
        folder, files, where = _locate(model, Path(tmp))
        if where == "local folder" and any(n.endswith(LOCAL_WEIGHTS) for n in files):
            # the weights are here: refuse what every other command refuses (damaged or
            # missing weight files, pickle weights, no tokenizer), in the same words
            from qtapp.engine.model.sources import check_model_folder  # imports torch

            check_model_folder(folder, pickle_option=False)  # check has no --allow-pickle
        config = _config(folder)
        if not (config.get("architectures") or config.get("model_type")):
            raise UserError(f"config.json of {model} names neither 'architectures' nor "
                            "'model_type'; it is not a model config QuantDesk can read")
        n_params = _n_params(config)
        weights = sum(s for n, s in files.items() if n.endswith(WEIGHT_SUFFIXES))
        checks = _linear_method_checks(config)
        checks.append(_gguf_check(config, folder, files))
        hw = hw or hardware.detect(use_torch=False)
        for c in checks:
            if c.ok and n_params:
                problem = _fits(config, model, n_params, weights, c.method, hw)
                if problem:
                    c.ok, c.reason = False, problem
        report = CompatReport(model=model, where=where,
                              architectures=[str(a) for a in config.get("architectures") or []],
                              model_type=str(config.get("model_type") or ""),
                              n_params=n_params, weights_bytes=weights, methods=checks,
                              warnings=chat_warnings(folder, files) + _code_warnings(folder))
    return report
