"""Finished runs, kept across restarts in a small JSON file (no Qt here)."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class RunRecord:
    model: str
    source: str
    method: str
    settings: str
    out: str
    size_bytes: int = 0
    source_size_bytes: int = 0
    ppl: float | None = None
    ppl_source: float | None = None
    seconds: float = 0.0
    format: str = ""
    verdict: str = ""
    finished: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, summary: dict[str, Any], job: dict[str, Any]) -> RunRecord:
        """A record from a `result` event's summary and the job that produced it."""
        method = str(summary.get("method") or job.get("method", ""))
        if method == "gguf":
            settings = str(summary.get("gguf_type") or job.get("gguf", {}).get("type", ""))
        else:
            settings = str(summary.get("scheme") or "")
            if summary.get("mixed") or job.get("rules"):
                settings = f"{settings} + mixed" if settings else "mixed"
        return cls(
            model=str(summary.get("model") or Path(str(job.get("model", ""))).name),
            source=str(summary.get("source") or job.get("model", "")),
            method=method,
            settings=settings,
            out=str(summary.get("out") or job.get("out", "")),
            size_bytes=int(summary.get("size_bytes") or 0),
            source_size_bytes=int(summary.get("source_size_bytes") or 0),
            ppl=_float(summary.get("ppl")),
            ppl_source=_float(summary.get("ppl_source")),
            seconds=float(summary.get("seconds") or 0.0),
            format=str(summary.get("format") or ""),
            verdict=str(summary.get("verdict") or ""),
            summary=summary,
        )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


class ResultsStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[RunRecord] = self._load()

    def _load(self) -> list[RunRecord]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        known = {f.name for f in fields(RunRecord)}
        out = []
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict):
                try:
                    out.append(RunRecord(**{k: v for k, v in item.items() if k in known}))
                except TypeError:
                    continue  # a record from an incompatible version: skip it
        return out

    def add(self, record: RunRecord) -> RunRecord:
        self.records.append(record)
        self.save()
        return record

    def remove(self, record_id: str) -> None:
        self.records = [r for r in self.records if r.id != record_id]
        self.save()

    def get(self, record_id: str) -> RunRecord | None:
        return next((r for r in self.records if r.id == record_id), None)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in self.records], indent=1),
                       encoding="utf-8")
        os.replace(tmp, self.path)
