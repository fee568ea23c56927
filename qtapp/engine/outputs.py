"""Where a job's output is built: a hidden ``.NAME.partial`` folder beside ``NAME``.

Light on imports (no torch) so the window and the command line can clean up after a worker
that was killed before it could remove its own partial folder.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def resolved_out(out: str | Path) -> Path:
    """The output folder as the job runner sees it (user and symlinks expanded)."""
    return Path(out).expanduser().resolve()


def partial_path(out: Path) -> Path:
    """The hidden temporary folder beside the output, renamed into place when complete."""
    return out.parent / f".{out.name}.partial"


def discard_partial(out: str | Path) -> bool:
    """Remove the partial folder of the job writing ``out``; True when there was one.

    Only for a job that is over: a running job owns its partial folder.
    """
    partial = partial_path(resolved_out(out))
    if not partial.exists():
        return False
    shutil.rmtree(partial, ignore_errors=True)
    return not partial.exists()


def is_disk_full(exc: BaseException) -> bool:
    """True for a write that failed because a disk (or quota) is full, whoever raised it.

    Python raises OSError(ENOSPC); safetensors' Rust writer raises its own error whose
    message ends in "(os error 28)".
    """
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return any(f"(os error {n})" in text for n in DISK_FULL_ERRNOS) or \
        "No space left on device" in text


def free_bytes(folder: Path) -> int | None:
    """Free space on the disk that holds ``folder`` (or its nearest existing parent)."""
    for p in (folder, *folder.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None
