"""Where a job's output is built: a hidden ``.NAME.partial`` folder beside ``NAME``.

Light on imports (no torch) so the window and the command line can clean up after a worker
that was killed before it could remove its own partial folder.

Also the locks that keep two jobs apart: a job holds ``.NAME.lock`` beside its output, and
``.FINGERPRINT.lock`` beside its checkpoint folder, from before it writes anything until it
ends (the operating system drops the lock of a killed process), and the private temporary
folders (``quantdesk-job-PID-…``) that carry a job file to a worker.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Self

import psutil

from qtapp.engine.errors import Busy, UserError
from qtapp.engine.events import Emit, Log
from qtapp.engine.units import format_size

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def resolved_out(out: str | Path) -> Path:
    """The output folder as the job runner sees it (user and symlinks expanded)."""
    return Path(out).expanduser().resolve()


def partial_path(out: Path) -> Path:
    """The hidden temporary folder beside the output, renamed into place when complete."""
    return out.parent / f".{out.name}.partial"


def discard_partial(out: str | Path) -> bool:
    """Remove the partial folder of the job writing ``out``, and its lock file unless a job
    still holds it; True when there was a partial folder.

    Only for a job that is over (a killed worker could not clean up): a running job owns
    its partial folder.
    """
    out = resolved_out(out)
    partial = partial_path(out)
    _drop_stale_lock(lock_path(out))
    if not partial.exists():
        return False
    shutil.rmtree(partial, ignore_errors=True)
    return not partial.exists()


def _drop_stale_lock(path: Path) -> None:
    """Remove a lock file that no process holds (that of a killed job)."""
    if not path.exists():
        return
    try:
        lock = acquire_lock(path, lambda _holder: "")
    except (Busy, OSError):
        return  # held: a job is running
    lock.release()


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


def disk_full_error(e: BaseException, folder: Path, what: str, advice: str) -> UserError:
    """The error for a write into ``folder`` that failed because its disk is full: names the
    disk (by the folder written to), the free space left there, and what to do."""
    n = free_bytes(Path(folder))
    free = "unknown" if n is None else format_size(n)
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UserError(f"The disk is full: writing {what} into {folder} failed ({reason}). Free "
                     f"space on that disk: {free}. {advice}")


def job_disk_full_error(e: BaseException, out: Path, work: Path) -> UserError:
    """The error for a job whose writes failed on a full disk: the free space left by the
    output folder ``out`` and by the checkpoint folder ``work``, after the job cleaned up."""
    def free(p: Path) -> str:
        n = free_bytes(p)
        return "unknown" if n is None else format_size(n)

    return UserError(
        f"The disk is full: writing the job's files failed ({e}). Free space after clean-up: "
        f"output folder "
        f"{out.parent} {free(out.parent)}, checkpoint folder {work} {free(work)}. Nothing was "
        f"kept in {out}; free some space or choose an output folder on another disk, then "
        "start the job again (finished blocks stay in the checkpoint)."
    )


# --------------------------------------------------------------------------- final contents

TEMP_MARKERS = (".tmp", ".partial")


def stray_files(folder: Path, expected: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """Files under ``folder`` that are not in ``expected`` (paths relative to it), as
    (temporary files: hidden, ``*.tmp*`` or ``*.partial*`` names; any other file)."""
    want = {Path(f).as_posix() for f in expected}
    temp: list[Path] = []
    other: list[Path] = []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue
        if p.relative_to(folder).as_posix() in want:
            continue
        hidden = p.name.startswith(".")
        (temp if hidden or any(m in p.name for m in TEMP_MARKERS) else other).append(p)
    return temp, other


def drop_strays(partial: Path, files: Iterable[str], emit: Emit) -> None:
    """Before the rename: the finished folder holds only the files the job wrote. Temporary
    files (a writer's `.tmp*`) are removed (and logged); anything else means another writer,
    a bug (RuntimeError)."""
    temp, other = stray_files(partial, files)
    for p in temp:
        p.unlink(missing_ok=True)
    if temp:
        emit(Log(level="info", message="removed temporary files from the output: "
                 + ", ".join(str(p.relative_to(partial)) for p in temp)))
    if other:
        raise RuntimeError("the finished output holds files the job did not write: "
                           + ", ".join(str(p.relative_to(partial)) for p in other))


def replace_output(partial: Path, out: Path) -> None:
    """Move the finished ``partial`` to ``out``; an old ``out`` is kept until that succeeds."""
    if not out.exists():
        os.replace(partial, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(partial, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- locks


def lock_path(out: Path) -> Path:
    """The lock file of the job writing ``out``: ``.NAME.lock`` beside it."""
    return out.parent / f".{out.name}.lock"


def checkpoint_lock_path(work: Path) -> Path:
    """The lock file of the job using the checkpoint folder ``work``, beside that folder
    (a finished job removes the folder while it still holds the lock)."""
    return work.parent / f".{work.name}.lock"


class JobLock:
    """An exclusive lock on a file, held by this process until `release()`, or until it
    dies: the operating system drops a dead process's lock, so a file left by a killed
    job locks nothing. Released, the file is removed."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(self.path, fd):  # removed while still locked: see acquire_lock
                self.path.unlink()
        except OSError:
            pass
        finally:
            _unlock(fd)
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def acquire_lock(path: Path, busy: Callable[[str], str]) -> JobLock:
    """Lock ``path`` (created if needed) without waiting; raise Busy(busy(holder)) when
    another process holds it, holder being "process N" when that can be told, else ""."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_lock(fd)
            if not locked:
                raise Busy(busy(_holder(fd)))
            if _same_file(path, fd):
                _write_holder(fd)
                return JobLock(path, fd)
            # The holder removed the file between our open and our lock: lock the new one.
            _unlock(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise Busy(busy(""))


def lock_output(out: Path) -> JobLock:
    """The lock of the job writing ``out`` (see the module docstring)."""
    def busy(holder: str) -> str:
        return (f"another job is writing {out}{f' ({holder})' if holder else ''}; wait for it "
                "to finish or choose another output folder")

    return acquire_lock(lock_path(out), busy)


def lock_checkpoint(work: Path) -> JobLock:
    """The lock of the job using the checkpoint folder ``work``."""
    def busy(holder: str) -> str:
        return (f"another job is writing the checkpoint {work} (the same model, method and "
                f"settings{f', {holder}' if holder else ''}); wait for it to finish or "
                "change the settings")

    return acquire_lock(checkpoint_lock_path(work), busy)


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


if sys.platform == "win32":  # no fcntl: a byte-range lock on the first byte
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass


def _write_holder(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return f"process {int(os.read(fd, 32).split()[0])}"
    except (OSError, ValueError, IndexError):  # unreadable (Windows locks reads too) or empty
        return ""


# --------------------------------------------------------------------------- job folders

JOB_DIR_PREFIX = "quantdesk-job-"
UNNAMED_JOB_DIR_AGE_S = 24 * 3600


def make_job_dir() -> Path:
    """A private temporary folder for a worker's job file, named after this process
    (``quantdesk-job-PID-…``), so `sweep_job_dirs` can tell when its owner is gone."""
    return Path(tempfile.mkdtemp(prefix=f"{JOB_DIR_PREFIX}{os.getpid()}-"))


def job_dir_owner(folder: Path) -> int | None:
    """The process id in a job folder's name, or None (folders of older versions)."""
    head = folder.name[len(JOB_DIR_PREFIX):].split("-", 1)[0]
    return int(head) if folder.name.startswith(JOB_DIR_PREFIX) and head.isdigit() else None


def sweep_job_dirs(root: Path | None = None) -> list[Path]:
    """Remove the job folders (in the temporary folder) of processes that have ended,
    killed before they could remove their own; folders without an owner's id in their name
    once they are a day old. Only this user's folders; returns those removed."""
    root = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        candidates = list(root.glob(JOB_DIR_PREFIX + "*"))
    except OSError:
        return removed
    for folder in candidates:
        try:
            st = folder.lstat()
            if folder.is_symlink() or not folder.is_dir() or \
                    (hasattr(os, "getuid") and st.st_uid != os.getuid()):
                continue
            pid = job_dir_owner(folder)
            if pid is None:
                if time.time() - st.st_mtime < UNNAMED_JOB_DIR_AGE_S:
                    continue
            elif pid == os.getpid() or psutil.pid_exists(pid):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def output_folder_problem(out: Path) -> str:
    """'' when the folder that will hold the output `out` is a folder this process can write
    into (when it does not exist yet: its nearest existing ancestor, where it would be
    created); else that sentence with the fix. Creating and removing a hidden folder there
    is the test: os.access says yes to root on /proc and on some read-only or network
    mounts."""
    parent = out.parent
    folder = parent
    try:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        is_dir = folder.is_dir()
    except OSError as e:
        return (f"cannot write into {parent}: it is not a writable folder ({e.strerror}); "
                "choose an output folder you can write to")
    if not is_dir:
        return (f"cannot write into {parent}: {folder} is a file, not a folder; choose an "
                "output folder you can write to")
    reason = ""
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "permission denied"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".quantdesk-write-test-", dir=folder))
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                return ""  # writable but full: the plan and the job say so, with the sizes
            reason = {errno.EROFS: "the file system is read-only", errno.EACCES:
                      "permission denied", errno.EPERM: "permission denied"}.get(
                e.errno, f"creating a folder in it failed: {e.strerror or e}")
    if not reason:
        return ""
    return (f"cannot write into {folder}: it is not a writable folder ({reason}); choose an "
            "output folder you can write to")


def check_output_free(out: Path, overwrite: bool) -> None:
    """Refuse an output that exists (a file always; a folder unless ``overwrite``): the check
    the command line makes first, before it looks at the model."""
    if out.exists() and not out.is_dir():
        raise UserError(f"the output {out} is an existing file, not a folder; choose a folder "
                        "name that does not exist yet")
    if out.exists() and not overwrite:
        raise UserError(f"the output {out} already exists; choose a new name or pass "
                        "--overwrite to replace it")


def check_output_path(out: Path, source: Path, overwrite: bool, create: bool = True) -> None:
    """Refuse outputs that would overwrite something, land inside the source model, or go
    into a folder that cannot be written (output_folder_problem); with `create`, make the
    missing folders above the output."""
    src = source.resolve()
    if out == src or src in out.parents:
        raise UserError(f"the output {out} is inside the source model folder {src}; choose an "
                        "output folder elsewhere so the source stays untouched")
    if out in src.parents:
        raise UserError(f"the output {out} contains the source model {src}; choose another "
                        "output folder")
    check_output_free(out, overwrite)
    if out.exists() and any(out.iterdir()) and not _looks_like_output(out):
        raise UserError(f"the output {out} exists and is not a model folder (no config.json or "
                        ".gguf file in it); QuantDesk replaces only earlier outputs, even with "
                        "--overwrite. Choose a new output folder name")
    problem = output_folder_problem(out)
    if problem:
        raise UserError(problem)
    parent = out.parent
    if create and not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"cannot create the folder {parent} for the output: {e.strerror}")


def _looks_like_output(folder: Path) -> bool:
    return (folder / "config.json").is_file() or any(folder.glob("*.gguf"))
