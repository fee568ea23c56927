"""Job configuration: frozen dataclasses, JSON round-trip, validation with clear messages.

A `JobSpec` is everything a quantization job needs. The window builds one, the CLI builds
one, the worker reads one from JSON. Mixed precision is data, not code: `ModuleRule`s map
module-name patterns (fnmatch globs on the full module name, e.g. ``*.self_attn.*``) to a
`QuantScheme`, or to "skip" (the module stays in 16 bit).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

from qtapp.engine.errors import UserError

METHODS = ("rtn", "gptq", "awq", "gguf")
BITS = (2, 3, 4, 5, 6, 7, 8)
GROUP_SIZES = (16, 32, 64, 128, 256, 512, 1024)
PER_CHANNEL = -1
PER_TENSOR = 0
EXPORT_FORMATS = ("auto", "gptq", "awq", "compressed-tensors")
DEVICES = ("auto", "cpu", "cuda")
EVAL_CTX = 512  # tokens per window of the quality gate's perplexity and KL divergence
#                 (every job's evaluation, `quantdesk eval --ctx`): qtapp.engine.quality.gate
# RTN's weights do not depend on calibration data: its calibration pass only measures each
# linear's relative output error for the window's error chart. That is a ratio of sums over
# thousands of token rows (8 × 512 = 4096 at the default sequence length), which 8 samples
# estimate to a few per cent, so an RTN job embeds and streams only its first
# RTN_CHART_SAMPLES samples (JobSpec.quantize_samples). Streaming the window's default
# 128 × 512 through every block, with a Hessian pass per block, made an RTN job's time on a
# CPU mostly this chart (the demo's RTN W8: benchmarks/README.md).
RTN_CHART_SAMPLES = 8
GGUF_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0",
    "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K",
)
GGUF_TENSOR_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0",
    "Q3_K", "Q2_K",
)


class ConfigError(UserError):
    """A field of a configuration has a value that is not allowed."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _choices(values: tuple[Any, ...]) -> str:
    return ", ".join(str(v) for v in values)


@dataclass(frozen=True)
class QuantScheme:
    """Weight quantization scheme.

    bits: 2..8. group_size: > 0 for groups of that many input columns, -1 for one scale per
    output channel, 0 for one scale per tensor. sym: symmetric (no zero point,
    ``s = max|w| / 2^(b-1)``) or asymmetric (``s = (max-min)/(2^b-1)``, ``z = round(-min/s)``).
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = True

    def validate(self, path: str = "scheme") -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or self.bits not in BITS:
            raise ConfigError(f"{path}.bits", f"{self.bits!r} is not allowed; choose one of "
                              f"{_choices(BITS)}")
        gs = self.group_size
        if not isinstance(gs, int) or isinstance(gs, bool) or (
            gs not in GROUP_SIZES and gs not in (PER_CHANNEL, PER_TENSOR)
        ):
            raise ConfigError(
                f"{path}.group_size",
                f"{gs!r} is not allowed; choose one of {_choices(GROUP_SIZES)}, "
                f"-1 (per output channel) or 0 (per tensor)",
            )
        if not isinstance(self.sym, bool):
            raise ConfigError(f"{path}.sym", f"{self.sym!r} is not allowed; use true or false")

    @property
    def label(self) -> str:
        g = {PER_CHANNEL: "per-channel", PER_TENSOR: "per-tensor"}.get(
            self.group_size, f"g{self.group_size}"
        )
        return f"W{self.bits} {g} {'sym' if self.sym else 'asym'}"


@dataclass(frozen=True)
class ModuleRule:
    """Modules whose full name matches `pattern` get `scheme`, or stay 16-bit when `skip`.

    `gguf_type` is the tensor type used when the method is GGUF (e.g. "Q8_0"); when it is
    empty the GGUF type is derived from the scheme's bits.
    """

    pattern: str
    scheme: QuantScheme | None = None
    skip: bool = False
    gguf_type: str = ""

    def matches(self, module_name: str) -> bool:
        return fnmatch.fnmatchcase(module_name, self.pattern)

    def validate(self, path: str) -> None:
        if not isinstance(self.pattern, str) or not self.pattern.strip():
            raise ConfigError(f"{path}.pattern", "must be a non-empty glob such as "
                              "'*.self_attn.*' or '*.mlp.down_proj'")
        if self.skip and self.scheme is not None:
            raise ConfigError(path, "a rule either skips the module or gives it a scheme, "
                              "not both")
        if not self.skip and self.scheme is None and not self.gguf_type:
            raise ConfigError(path, "give a scheme, a gguf_type, or skip: true")
        if self.scheme is not None:
            self.scheme.validate(f"{path}.scheme")
        if self.gguf_type and self.gguf_type not in GGUF_TENSOR_TYPES:
            raise ConfigError(f"{path}.gguf_type", f"{self.gguf_type!r} is not allowed; "
                              f"choose one of {_choices(GGUF_TENSOR_TYPES)}")


@dataclass(frozen=True)
class GPTQOptions:
    """GPTQ solver settings (Frantar et al. 2022, Alg. 1)."""

    percdamp: float = 0.01
    blocksize: int = 128
    # Defaults from per-layer output errors on the de-gridded demo (blocks 0 and 5, W4 g64
    # sym, real activations; GPTQ error / RTN error): plain 0.03-0.44, act order with
    # static groups 0.014-0.41, plus the range search 0.014-0.40. Static groups keep
    # g_idx trivial, so every GPTQ / compressed-tensors kernel loads the result
    # (llm-compressor's default `actorder="static"` is the same choice).
    act_order: bool = True
    static_groups: bool = True
    true_sequential: bool = True
    mse: bool = True  # search each group's range (GPTQ reference `mse=True`) vs min/max

    def validate(self, path: str = "gptq") -> None:
        if not (isinstance(self.percdamp, (int, float)) and 0 < self.percdamp < 1):
            raise ConfigError(f"{path}.percdamp", f"{self.percdamp!r} is not allowed; use a "
                              "number between 0 and 1 (0.01 is usual)")
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise ConfigError(f"{path}.blocksize", f"{self.blocksize!r} is not allowed; use a "
                              "positive integer (128 is usual)")


@dataclass(frozen=True)
class AWQOptions:
    """AWQ search settings (Lin et al. 2023): scale grid over alpha in [0, 1], clip search."""

    grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5

    def validate(self, path: str = "awq") -> None:
        if not isinstance(self.grid, int) or not 1 <= self.grid <= 100:
            raise ConfigError(f"{path}.grid", f"{self.grid!r} is not allowed; use 1..100")
        if not isinstance(self.clip_grid, int) or not 1 <= self.clip_grid <= 100:
            raise ConfigError(f"{path}.clip_grid", f"{self.clip_grid!r} is not allowed; "
                              "use 1..100")
        if not (isinstance(self.max_shrink, (int, float)) and 0 <= self.max_shrink < 1):
            raise ConfigError(f"{path}.max_shrink", f"{self.max_shrink!r} is not allowed; "
                              "use a number in [0, 1)")


@dataclass(frozen=True)
class GGUFOptions:
    """GGUF output: llama.cpp file type and importance matrix ("auto", "none" or a path)."""

    type: str = "Q4_K_M"
    imatrix: str = "auto"

    def validate(self, path: str = "gguf") -> None:
        if self.type not in GGUF_TYPES:
            raise ConfigError(f"{path}.type", f"{self.type!r} is not allowed; choose one of "
                              f"{_choices(GGUF_TYPES)}")
        if not isinstance(self.imatrix, str) or not self.imatrix:
            raise ConfigError(f"{path}.imatrix", "use 'auto', 'none' or the path of an "
                              "imatrix file")


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration data: "builtin" or a .txt/.jsonl path; N samples of L tokens."""

    source: str = "builtin"
    samples: int = 128
    seq_len: int = 512
    seed: int = 0

    def validate(self, path: str = "calibration") -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"{path}.source", "use 'builtin' or the path of a .txt or "
                              ".jsonl file")
        if not isinstance(self.samples, int) or not 1 <= self.samples <= 100_000:
            raise ConfigError(f"{path}.samples", f"{self.samples!r} is not allowed; use "
                              "1..100000 (512 is the usual choice, 128 on a CPU)")
        if not isinstance(self.seq_len, int) or not 16 <= self.seq_len <= 32768:
            raise ConfigError(f"{path}.seq_len", f"{self.seq_len!r} is not allowed; use "
                              "16..32768 (512 or 2048 are usual)")
        if not isinstance(self.seed, int):
            raise ConfigError(f"{path}.seed", f"{self.seed!r} is not an integer")


DEFAULT_SKIP = ("lm_head",)

PRESETS: dict[str, str] = {
    "attn8-ffn4": "attention q/k/v/o at 8 bit, FFN gate/up/down at 4 bit",
}


def preset_rules(name: str, base: QuantScheme) -> tuple[ModuleRule, ...]:
    """Rules of a named preset; group size and symmetry follow the base scheme."""
    if name == "attn8-ffn4":
        return (
            ModuleRule("*.self_attn.*", dataclasses.replace(base, bits=8), gguf_type="Q8_0"),
            ModuleRule("*.mlp.*", dataclasses.replace(base, bits=4), gguf_type="Q4_K"),
        )
    raise ConfigError("preset", f"{name!r} is not a preset; choose one of "
                      f"{_choices(tuple(PRESETS))}")


@dataclass(frozen=True)
class JobSpec:
    """Everything one quantization job needs; the worker's only input."""

    model: str
    method: str
    out: str
    scheme: QuantScheme = field(default_factory=QuantScheme)
    rules: tuple[ModuleRule, ...] = ()
    skip: tuple[str, ...] = DEFAULT_SKIP
    gptq: GPTQOptions = field(default_factory=GPTQOptions)
    awq: AWQOptions = field(default_factory=AWQOptions)
    gguf: GGUFOptions = field(default_factory=GGUFOptions)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    export_format: str = "auto"
    device: str = "auto"
    evaluate: bool = True
    resume: bool = True
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    target_bytes: int = 0  # size budget of the written model (allocate.py); 0: none
    target_bpw: float = 0.0  # or bits per parameter of the written model; 0: none
    # start even when the plan (planning/planner.py) says the job does not fit: the one
    # override of the one check, set by --ignore-plan and the window's "Start anyway"
    ignore_plan: bool = False
    # the most GPU memory the job may take, in bytes (--max-vram); 0: what the card allows.
    # The planner picks the lean VRAM mode when the fast one would need more
    # (planning/planner.vram_mode)
    max_vram: int = 0

    def validate(self) -> JobSpec:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("job.model", "give 'demo', a local folder or a Hugging Face id")
        if self.method not in METHODS:
            raise ConfigError("job.method", f"{self.method!r} is not allowed; choose one of "
                              f"{_choices(METHODS)}")
        if not isinstance(self.out, str) or not self.out.strip():
            raise ConfigError("job.out", "give the output folder (it must not exist yet)")
        self.scheme.validate("job.scheme")
        for i, rule in enumerate(self.rules):
            rule.validate(f"job.rules[{i}]")
        self.gptq.validate("job.gptq")
        self.awq.validate("job.awq")
        self.gguf.validate("job.gguf")
        self.calibration.validate("job.calibration")
        if self.export_format not in EXPORT_FORMATS:
            raise ConfigError("job.export_format", f"{self.export_format!r} is not allowed; "
                              f"choose one of {_choices(EXPORT_FORMATS)}")
        if isinstance(self.target_bytes, bool) or not isinstance(self.target_bytes, int) \
                or self.target_bytes < 0:
            raise ConfigError("job.target_bytes", f"{self.target_bytes!r} is not allowed; use "
                              "a size in bytes, or 0 for no size budget")
        if isinstance(self.target_bpw, bool) or not isinstance(self.target_bpw, (int, float)) \
                or not 0 <= self.target_bpw <= 32:
            raise ConfigError("job.target_bpw", f"{self.target_bpw!r} is not allowed; use bits "
                              "per parameter between 1 and 32 (e.g. 4.5), or 0 for none")
        if self.target_bytes and self.target_bpw:
            raise ConfigError("job.target_bpw", "give a target size or a target bits per "
                              "weight, not both")
        if isinstance(self.max_vram, bool) or not isinstance(self.max_vram, int) \
                or self.max_vram < 0:
            raise ConfigError("job.max_vram", f"{self.max_vram!r} is not allowed; use a size "
                              "in bytes (--max-vram 8GiB), or 0 for what the GPU allows")
        if self.device not in DEVICES:
            raise ConfigError("job.device", f"{self.device!r} is not allowed; choose one of "
                              f"{_choices(DEVICES)}")
        return self

    def rule_for(self, module_name: str) -> ModuleRule | None:
        """The last matching rule wins, so later, more specific rules override earlier ones."""
        found = None
        for rule in self.rules:
            if rule.matches(module_name):
                found = rule
        return found

    def scheme_for(self, module_name: str) -> QuantScheme | None:
        """The scheme of one module, or None when it stays in 16 bit."""
        if any(fnmatch.fnmatchcase(module_name, p) or module_name == p for p in self.skip):
            return None
        rule = self.rule_for(module_name)
        if rule is None:
            return self.scheme
        if rule.skip:
            return None
        return rule.scheme or self.scheme

    @property
    def is_mixed(self) -> bool:
        return bool(self.rules)

    @property
    def quantize_samples(self) -> int:
        """The calibration samples the quantize pass streams through the model: all of
        them, except for RTN (RTN_CHART_SAMPLES)."""
        n = self.calibration.samples
        return min(n, RTN_CHART_SAMPLES) if self.method == "rtn" else n

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        return _from_plain(cls, data, "job").validate()

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("job", f"is not valid JSON ({e.msg} at line {e.lineno}, "
                              f"column {e.colno})") from None
        except RecursionError:
            raise ConfigError("job", "is nested too deeply to be a job file") from None
        return cls.from_dict(data)


def rules_from_json(text: str, path: str = "rules",
                    base: QuantScheme | None = None) -> tuple[ModuleRule, ...]:
    """Parse a rules file: a JSON list of {pattern, scheme?, skip?, gguf_type?}. With `base`,
    the fields a rule's scheme leaves out (often group_size) come from it, as in presets."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(path, f"is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ConfigError(path, "is nested too deeply to be a rules file") from None
    if not isinstance(data, list):
        raise ConfigError(path, "must be a JSON list of rules such as "
                          '[{"pattern": "*.self_attn.*", "scheme": {"bits": 8}}]')
    if base is not None:
        data = [{**item, "scheme": {**_to_plain(base), **item["scheme"]}}
                if isinstance(item, dict) and isinstance(item.get("scheme"), dict) else item
                for item in data]
    rules = tuple(_from_plain(ModuleRule, item, f"{path}[{i}]") for i, item in enumerate(data))
    for i, rule in enumerate(rules):
        rule.validate(f"{path}[{i}]")
    return rules


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


_NESTED: dict[str, type] = {
    "scheme": QuantScheme,
    "gptq": GPTQOptions,
    "awq": AWQOptions,
    "gguf": GGUFOptions,
    "calibration": CalibrationSpec,
}


def _from_plain(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(path, f"must be a JSON object, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", f"is not a known field; known fields: "
                          f"{_choices(tuple(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = f"{path}.{name}"
        if name == "rules" and cls is JobSpec:
            if not isinstance(value, list):
                raise ConfigError(sub, "must be a list of rules")
            kwargs[name] = tuple(_from_plain(ModuleRule, v, f"{sub}[{i}]")
                                 for i, v in enumerate(value))
        elif name == "skip" and cls is JobSpec:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(sub, "must be a list of module-name patterns")
            kwargs[name] = tuple(value)
        elif name in _NESTED and not (cls is ModuleRule and value is None):
            kwargs[name] = _from_plain(_NESTED[name], value, sub)
        else:
            kwargs[name] = _check_scalar(fields[name], value, sub)
    missing = [n for n, f in fields.items() if n not in kwargs and
               f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}", "is required")
    return cls(**kwargs)


def _check_scalar(f: dataclasses.Field, value: Any, path: str) -> Any:
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(str(f.type))
    if expected is None:
        return value
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(path, f"{value!r} is not an integer")
    if expected == (int, float) and (isinstance(value, bool) or not isinstance(value, expected)):
        raise ConfigError(path, f"{value!r} is not a number")
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(path, f"{value!r} is not true or false")
    if expected is str and not isinstance(value, str):
        raise ConfigError(path, f"{value!r} is not a string")
    return value
