"""Size of a model: the bytes of its weight files.

Perplexity has one protocol, the quality gate's (qtapp.engine.quality.gate:
`model_perplexity` for a model alone, `quality_report` against its source), so that every
`quantdesk eval`, every job's result and every benchmark print the same figure for a model.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["folder_size"]


def folder_size(path: Path) -> int:
    """Bytes of a model's weight files (safetensors, gguf): the files at the top of the
    folder, so that side data is not counted as model (AWQ's saved search under
    awq_search/, a GGUF job's imatrix/imatrix.gguf)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir()
               if p.is_file() and p.suffix in (".safetensors", ".gguf")
               and not p.name.startswith("imatrix"))
