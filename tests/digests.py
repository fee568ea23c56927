"""Content digest of a folder tree, for "the source model is untouched" assertions."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_digest(folder: Path) -> str:
    """SHA-256 over every file's path (relative to `folder`) and bytes, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()
