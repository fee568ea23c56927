"""What a finished job wrote, measured and took: `JobResult`, one typed value.

    run_job(...) -> JobResult          export_checkpoint(...) -> ExportResult
    JobResult.to_dict() -> {"v": 1, "model": ..., "export": {...}, "quality": {...}, ...}
    JobResult.from_dict(d) -> JobResult

The exporters return their part (`ExportResult`: format, files, modules, notes), the job
adds what it measured (sizes, the quality gate's figures, times, resources) and returns the
whole. `to_dict()` is the one serialisation: the worker's `result` event carries it (JSON), the
window's results store saves it, the model card, the results page and the command line read
the dataclass back with `from_dict`.

Versioned like the events: `v` is SCHEMA_VERSION, raised when a field changes meaning or
moves. `from_dict` reads this version and the unversioned flat dict that jobs returned before
(about 25 keys: "ppl", "size_bytes", "format_notes", "gguf_type", …), so results saved by
earlier QuantDesk versions still load; a result of a newer version raises ResultDecodeError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class ResultDecodeError(ValueError):
    """A dict is not a job result of a version this QuantDesk reads."""


@dataclass(frozen=True)
class ExportResult:
    """What an exporter wrote into the output folder."""

    format: str                # "gptq" | "awq" | "compressed-tensors" | "gguf"
    files: list[str] = field(default_factory=list)  # relative to the output folder, sorted
    checkpoint_format: str = ""  # the format's own version tag (GPTQ: gptq or gptq_v2)
    modules: dict[str, Any] = field(default_factory=dict)  # per scheme: modules, params,
    #                                                         patterns; float_linears
    notes: list[str] = field(default_factory=list)  # what a loader should know (model card)


@dataclass(frozen=True)
class GGUFDetails:
    """A GGUF job's file: its type, tensor types and what shaped them."""

    type: str                  # the file type, e.g. "Q4_K_M"
    file: str                  # the .gguf file's name in the output folder
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGUF type -> tensors
    imatrix: bool = False      # an importance matrix was used (saved as imatrix/imatrix.gguf)
    overrides: dict[str, str] = field(default_factory=dict)  # glob -> tensor type (rules)


@dataclass(frozen=True)
class Sizes:
    """Bytes of the weight files (qtapp.engine.quality.evaluate.folder_size)."""

    bytes: int                 # the written model's
    source_bytes: int          # the source model's


@dataclass(frozen=True)
class Quality:
    """The quality gate's figures against the source (qtapp.engine.quality.gate); None where
    not measured (results saved before the gate had them)."""

    ppl: float | None = None
    ppl_source: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
    top1_agree: float | None = None   # percent
    verdict: str = ""                 # "good" | "degraded" | "broken"
    reasons: list[str] = field(default_factory=list)
    generation: list[dict[str, Any]] = field(default_factory=list)  # prompt, text, flags


@dataclass(frozen=True)
class Measured:
    """What the job's process used: peak RSS, seconds, and both per progress stage."""

    peak_ram: int = 0
    seconds: float = 0.0
    stage_peak_ram: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Resources:
    """The planner's prediction (peak_ram, peak_vram, temp_disk, final_disk, seconds,
    device, probed: whether the time came from timed blocks, block_seconds) beside what was
    measured."""

    predicted: dict[str, Any] = field(default_factory=dict)
    measured: Measured = field(default_factory=Measured)


@dataclass(frozen=True)
class JobResult:
    model: str                 # the source model's name
    source: str                # its folder
    method: str                # "rtn" | "gptq" | "awq" | "gguf"
    export: ExportResult
    scheme: str = ""           # the default scheme's label (GPTQ, AWQ, RTN jobs)
    mixed: bool = False        # per-module rules
    calibration: list[int] | None = None  # [samples, tokens each] (all but GGUF w/o imatrix)
    quantize_seconds: float | None = None
    sizes: Sizes | None = None
    quality: Quality | None = None        # None when the job did not evaluate
    gguf: GGUFDetails | None = None       # GGUF jobs
    plan: dict[str, Any] | None = None    # the size budget's plan (--target-size/--target-bpw)
    out: str = ""              # the output folder (set once it is in place)
    seconds: float | None = None          # the whole job
    resources: Resources | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"v": SCHEMA_VERSION, field: value, ...}, nested parts as dicts."""
        return {"v": SCHEMA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Any) -> JobResult:
        """The result `to_dict` wrote, or an unversioned flat dict of earlier versions."""
        if not isinstance(d, dict):
            raise ResultDecodeError(f"a job result is a JSON object, not {type(d).__name__}")
        if "v" not in d:
            return cls.from_dict(_from_flat(d))
        if d["v"] != SCHEMA_VERSION:
            raise ResultDecodeError(f"job result schema version {d['v']!r}; this QuantDesk "
                                    f"reads version {SCHEMA_VERSION} and unversioned results")
        try:
            return _build(cls, d)
        except (TypeError, ValueError, AttributeError) as e:
            raise ResultDecodeError(f"not a job result of version {SCHEMA_VERSION}: {e}") from None


_NESTED: dict[tuple[type, str], type] = {
    (JobResult, "export"): ExportResult, (JobResult, "sizes"): Sizes,
    (JobResult, "quality"): Quality, (JobResult, "gguf"): GGUFDetails,
    (JobResult, "resources"): Resources, (Resources, "measured"): Measured,
}


def _build(cls: type, d: dict[str, Any]) -> Any:
    """`cls` from a dict of its fields (unknown keys ignored), nested parts built too."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} is a JSON object, not {type(d).__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        nested = _NESTED.get((cls, f.name))
        kwargs[f.name] = _build(nested, value) if nested is not None and value is not None \
            else value
    return cls(**kwargs)


def _from_flat(d: dict[str, Any]) -> dict[str, Any]:
    """The version-1 dict of an unversioned flat result (QuantDesk before JobResult)."""
    fmt = d.get("format") or ""
    out: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "model": d.get("model") or "", "source": d.get("source") or "",
        "method": d.get("method") or "",
        "export": {"format": fmt, "files": list(d.get("files") or []),
                   "checkpoint_format": d.get("checkpoint_format") or "",
                   "modules": d.get("modules") or {}, "notes": list(d.get("format_notes") or [])},
    }
    for key in ("scheme", "mixed", "calibration", "quantize_seconds", "plan", "out", "seconds"):
        if d.get(key) is not None:
            out[key] = d[key]
    if d.get("size_bytes") is not None:
        out["sizes"] = {"bytes": int(d["size_bytes"]),
                        "source_bytes": int(d.get("source_size_bytes") or 0)}
    figures = ("ppl", "ppl_source", "kld_mean", "kld_p99", "top1_agree")
    if any(d.get(k) is not None for k in figures) or d.get("verdict"):
        out["quality"] = {**{k: d.get(k) for k in figures}, "verdict": d.get("verdict") or "",
                          "reasons": list(d.get("verdict_reasons") or []),
                          "generation": list(d.get("generation") or [])}
    if d.get("gguf_type") is not None:
        out["gguf"] = {"type": d["gguf_type"], "file": d.get("gguf_file") or "",
                       "tensor_types": d.get("tensor_types") or {},
                       "imatrix": bool(d.get("imatrix")), "overrides": d.get("overrides") or {}}
    if isinstance(d.get("resources"), dict):
        out["resources"] = d["resources"]
    return out
