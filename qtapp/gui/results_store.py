"""Finished runs, kept across restarts in a small JSON file (no Qt here).

The file is a JSON list of records ``{"id", "finished", "settings", "result"}``; "result" is
the job's result as qtapp.engine.results.JobResult.to_dict() wrote it, versioned by its own
"v". Records of QuantDesk versions before JobResult (flat fields such as "ppl" and
"size_bytes" beside an unversioned "summary" dict) still load, their result read from both.
A record this version cannot read (a newer version's) is kept in the file as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtapp.engine.results import JobResult, ResultDecodeError

# the flat fields a record had before it held a JobResult (their values are in the result now)
_LEGACY_FIELDS = ("model", "source", "method", "out", "size_bytes", "source_size_bytes", "ppl",
                  "ppl_source", "seconds", "format", "verdict")


@dataclass
class RunRecord:
    result: JobResult
    settings: str = ""         # "W4 g128 sym + mixed", "Q4_K_M": how the run is listed
    job: dict[str, Any] = field(default_factory=dict)  # the JobSpec that made it (to_dict)
    finished: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    # what the pages list, read from the result
    @property
    def model(self) -> str:
        return self.result.model

    @property
    def source(self) -> str:
        return self.result.source

    @property
    def method(self) -> str:
        return self.result.method

    @property
    def out(self) -> str:
        return self.result.out

    @property
    def format(self) -> str:
        return self.result.export.format

    @property
    def size_bytes(self) -> int:
        return self.result.sizes.bytes if self.result.sizes is not None else 0

    @property
    def source_size_bytes(self) -> int:
        return self.result.sizes.source_bytes if self.result.sizes is not None else 0

    @property
    def ppl(self) -> float | None:
        return self.result.quality.ppl if self.result.quality is not None else None

    @property
    def ppl_source(self) -> float | None:
        return self.result.quality.ppl_source if self.result.quality is not None else None

    @property
    def verdict(self) -> str:
        return self.result.quality.verdict if self.result.quality is not None else ""

    @property
    def seconds(self) -> float:
        return self.result.seconds or 0.0

    @classmethod
    def from_result(cls, result: JobResult, job: dict[str, Any]) -> RunRecord:
        """A record of a job's result (the `result` event's) and the job that produced it."""
        result = dataclasses.replace(
            result, model=result.model or Path(str(job.get("model", ""))).name,
            source=result.source or str(job.get("model", "")),
            method=result.method or str(job.get("method", "")),
            out=result.out or str(job.get("out", "")))
        if result.method == "gguf":
            settings = result.gguf.type if result.gguf is not None else \
                str(job.get("gguf", {}).get("type", ""))
        else:
            settings = result.scheme
            if result.mixed or job.get("rules"):
                settings = f"{settings} + mixed" if settings else "mixed"
        return cls(result=result, settings=settings, job=dict(job))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "finished": self.finished, "settings": self.settings,
                "result": self.result.to_dict(), "job": self.job}

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> RunRecord:
        """A saved record: this version's, or one saved before records held a JobResult.
        Raises ResultDecodeError (or TypeError, ValueError) for one it cannot read."""
        if "result" in item:
            result = JobResult.from_dict(item["result"])
        else:
            flat = {k: item[k] for k in _LEGACY_FIELDS if item.get(k) is not None}
            summary = item.get("summary")
            if isinstance(summary, dict):
                flat.update({k: v for k, v in summary.items() if v is not None})
            result = JobResult.from_dict(flat)
        kwargs: dict[str, Any] = {"result": result, "settings": str(item.get("settings") or "")}
        if item.get("finished") is not None:
            kwargs["finished"] = float(item["finished"])
        if item.get("id"):
            kwargs["id"] = str(item["id"])
        if isinstance(item.get("job"), dict):
            kwargs["job"] = item["job"]
        return cls(**kwargs)


class ResultsStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._unread: list[dict[str, Any]] = []  # records of a newer version, kept as they are
        self.records: list[RunRecord] = self._load()

    def _load(self) -> list[RunRecord]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        out = []
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict):
                try:
                    out.append(RunRecord.from_dict(item))
                except (ResultDecodeError, TypeError, ValueError):
                    self._unread.append(item)
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
        tmp.write_text(json.dumps([r.to_dict() for r in self.records] + self._unread,
                                  indent=1), encoding="utf-8")
        os.replace(tmp, self.path)
