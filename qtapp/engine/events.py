"""Events a job emits, and their JSON-lines codec.

One event per line on the worker's stdout: ``{"v": 1, "type": "layer", "t": 1732.5, ...}``.
Every job emits `Started` first and exactly one of `Result`, `Failed` or `Cancelled` last
(a job refused before it starts emits only `Failed`). A plan run (`worker --plan`) emits one
`Plan`, then `Result` (nothing written: `out` is "") or `Failed` last.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

SCHEMA_VERSION = 1


class EventDecodeError(ValueError):
    """A line is not an event of this schema."""


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = ""
    t: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class Started(Event):
    type: ClassVar[str] = "started"
    model: str
    method: str
    out: str
    total_steps: int
    job: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress(Event):
    type: ClassVar[str] = "progress"
    step: int
    total: int
    stage: str
    message: str = ""
    eta_s: float | None = None


@dataclass(frozen=True)
class Layer(Event):
    """One quantized module: its relative output error ||WX - ŴX||² / ||WX||² on calibration."""

    type: ClassVar[str] = "layer"
    block: int
    module: str
    kind: str
    bits: int
    group_size: int
    rel_error: float
    seconds: float
    method: str = ""


@dataclass(frozen=True)
class Log(Event):
    """`level`: "info" (the log only), "notice" (also a line of the command line's output,
    e.g. "resuming: 1 of 2 blocks from the checkpoint"), "warning" or "error"."""

    type: ClassVar[str] = "log"
    level: str
    message: str


@dataclass(frozen=True)
class Artifact(Event):
    type: ClassVar[str] = "artifact"
    path: str
    kind: str
    bytes: int = 0


@dataclass(frozen=True)
class Result(Event):
    """`summary` is the job's result, qtapp.engine.results.JobResult.to_dict() (versioned by
    its own `v`; read it back with JobResult.from_dict); {} after a plan run."""

    type: ClassVar[str] = "result"
    out: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed(Event):
    """`kind` is "user" (bad input; `message` says what to do), "busy" (another job is writing
    the same output or checkpoint) or "internal" (a bug or crash)."""

    type: ClassVar[str] = "failed"
    message: str
    kind: str = "user"
    detail: str = ""


@dataclass(frozen=True)
class Cancelled(Event):
    type: ClassVar[str] = "cancelled"
    message: str = "cancelled by the user; no output was written"


@dataclass(frozen=True)
class Plan(Event):
    """The memory, disk and time plan of a job with its first block timed (`worker --plan`):
    `plan` is planning.planner.Plan.to_dict()."""

    type: ClassVar[str] = "plan"
    plan: dict[str, Any]


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (Started, Progress, Layer, Log, Artifact, Result, Failed, Cancelled,
                              Plan)
}
FINAL_TYPES = frozenset({"result", "failed", "cancelled"})

Emit = Callable[[Event], None]
"""Where a job's stages send their events (the worker's writer, the command line's printer,
a test's ``list.append``)."""
ShouldCancel = Callable[[], bool]
"""Polled by long stages between steps; True makes them raise `errors.Cancelled`."""


def encode(event: Event) -> str:
    """One JSON line (no newline) for an event."""
    body = {"v": SCHEMA_VERSION, "type": event.type}
    body.update(dataclasses.asdict(event))
    return json.dumps(body, ensure_ascii=False, allow_nan=False, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def decode(line: str | bytes) -> Event:
    """Parse one JSON line into its event; raises EventDecodeError with the reason."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EventDecodeError(f"not UTF-8: {e}") from None
    try:
        body = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as e:
        raise EventDecodeError(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise EventDecodeError("an event is a JSON object")
    if body.get("v") != SCHEMA_VERSION:
        raise EventDecodeError(f"schema version {body.get('v')!r}, expected {SCHEMA_VERSION}")
    kind = body.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventDecodeError(f"unknown event type {body.get('type')!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in body.items() if k in names}
    for name, f in names.items():
        if name not in kwargs:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise EventDecodeError(f"{cls.type} event lacks {name!r}")
            continue
        _check_type(cls.type, name, str(f.type), kwargs[name])
    return cls(**kwargs)


_SIMPLE = {"int": (int,), "float": (int, float), "str": (str,), "dict[str, Any]": (dict,),
           "float | None": (int, float, type(None))}


def _check_type(event: str, name: str, annotation: str, value: Any) -> None:
    allowed = _SIMPLE.get(annotation)
    if allowed is None:
        return
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise EventDecodeError(f"{event}.{name}: {value!r} is not {annotation}")


def module_kind(module_name: str) -> str:
    """Short kind of a linear module for charts: q, k, v, o, gate, up, down (or its last name)."""
    last = module_name.rsplit(".", 1)[-1]
    return {
        "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
        "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    }.get(last, last)
