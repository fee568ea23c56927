"""Downloading a model from the Hugging Face Hub: the one implementation.

    plan_download(repo_id, revision=None, *, allow_pickle=False, timeout=5.0) -> DownloadPlan
    check_disk(plan)                     UserError before the first byte when the disk is short
    download(plan, *, on_progress=None, should_cancel=None, token=None) -> Path

Both ``sources.resolve_model(..., allow_download=True)`` and the window's Hub browser
(qtapp.engine.hub) download through here.

What is fetched: only what quantizing needs (HUB_PATTERNS: the safetensors weights and their
index, config.json, generation_config.json, the tokenizer files, the chat template); never
pickle weights (*.bin, *.pt, *.pth; unless ``allow_pickle``), nor original/ or other
sub-folders (GGUF, ONNX, other formats' duplicates), nor consolidated*.safetensors (Mistral's
second copy of the weights). The rest is listed in ``plan.skipped``.

Where: the Hugging Face cache (huggingface_hub.constants.HF_HUB_CACHE, i.e. HF_HUB_CACHE or
HF_HOME/hub), in its layout (models--org--name/blobs/<sha256 or git blob id>,
snapshots/<commit>/<file> linking to the blob, refs/<branch>), so that resolve_model and
every Hugging Face tool find the files. The blob name is the file's content hash from the
Hub's file list: after a download the file is hashed and compared with it (sha256 for LFS
files, git's blob sha1 for the rest), so a damaged or substituted file never enters the
cache.

Why not huggingface-hub's own hf_hub_download / snapshot_download (2.4): it cannot be
cancelled from another thread, reports progress only through a tqdm class, and no longer
resumes an interrupted file: each attempt writes to a file with a random suffix that is
deleted on failure (file_download._download_to_tmp_and_move). Here each file is fetched with
one GET (huggingface-hub's HTTP session: its headers, the stored token, the system proxy) into
blobs/<hash>.incomplete; after an interruption, a cancel or a crash the next download sends
``Range: bytes=<size of the partial file>-`` and appends. Cancel is checked at least once a
second (the socket read times out after READ_POLL_S and the transfer continues with a Range
request). Each file is fetched under huggingface-hub's lock of its blob, so a second download
of it (another window, `quantdesk download`, huggingface-hub itself) is refused (Busy). The model's file list and the commit come from HfApi.model_info. The facts and
the measured cancel latency: docs/reliability.md, "The Hugging Face Hub".
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from qtapp.engine.errors import Busy, Cancelled, UserError
from qtapp.engine.outputs import disk_full_error, free_bytes, is_disk_full
from qtapp.engine.units import format_size

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "vocab.txt",
                "merges.txt", "*.jinja", "spiece.model"]
HUB_IGNORE = ["consolidated*", "original/*", "*/*"]
PICKLE_PATTERNS = ["pytorch_model*.bin", "*.bin.index.json"]
READ_POLL_S = 1.0          # a socket read waits at most this long before cancel is checked
STALL_LIMIT_S = 60.0       # no byte for this long: the download stops with an error
CONNECT_TRIES = 3          # connections refused in a row before the download stops
CONNECT_TIMEOUT_S = 5.0    # a connection not made by then is tried again (cancel is checked
#                            between tries: while connecting it can take this long)
PROGRESS_EVERY_S = 0.2
SPEED_WINDOW_S = 5.0
CHUNK = 1 << 20
DISK_MARGIN = 64 * 2**20   # left free beyond the download (the cache's own writes, refs)

_set_endpoint: str | None = None


class HubUnavailable(UserError):
    """The Hub cannot be reached: offline, timed out, or the endpoint answered with an error
    page. The message names the endpoint."""


class HubAccessError(UserError):
    """The Hub refused the files (401/403): a gated or private model. The message names the
    licence page and says to accept it and log in (`hf auth login`)."""


# --------------------------------------------------------------------------- settings


def endpoint() -> str:
    """The Hub's base URL: set_endpoint's value, else HF_ENDPOINT, else huggingface.co."""
    url = _set_endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    return url.rstrip("/")


def set_endpoint(url: str | None) -> str:
    """Use ``url`` (a mirror such as https://hf-mirror.com) for this process and the job
    workers it starts (HF_ENDPOINT is set for them); None or "" restores the default.
    Returns the endpoint now in use; UserError for a URL that is not http(s)://host."""
    global _set_endpoint
    text = (url or "").strip().rstrip("/")
    if not text:
        _set_endpoint = None
        os.environ.pop("HF_ENDPOINT", None)
        return endpoint()
    if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", text):
        raise UserError(f"'{url}' is not a Hub address; give one like https://huggingface.co "
                        "or a mirror such as https://hf-mirror.com.")
    _set_endpoint = text
    os.environ["HF_ENDPOINT"] = text
    return text


def token() -> str | None:
    """The token huggingface-hub uses: HF_TOKEN, else the one `hf auth login` stored."""
    from huggingface_hub import get_token

    return get_token()


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder downloads go into: huggingface-hub's own
    (HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub, as read at its import), the one
    snapshot_download(local_files_only=True) looks in."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """HF_HUB_OFFLINE as set now, or as huggingface-hub read it at its import (its HTTP
    session then refuses every request)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true") \
        or constants.is_offline_mode()


def licence_page(repo_id: str, base: str | None = None) -> str:
    return f"{(base or endpoint()).rstrip('/')}/{repo_id}"


def access_error(repo_id: str, status: int, base: str | None = None) -> HubAccessError:
    page = licence_page(repo_id, base)
    return HubAccessError(
        f"The Hub refused access to '{repo_id}' (HTTP {status}): it is gated or private. Open "
        f"{page}, accept its licence (log in there with the account you use here), then log "
        "in on this machine with `hf auth login` (a token with read access) and try again.")


def unavailable(base: str, e: BaseException, timeout: float) -> HubUnavailable:
    """The error for a request to ``base`` that failed before an answer."""
    import httpx2

    if offline():
        return HubUnavailable(f"Offline: HF_HUB_OFFLINE is set, so {base} is not asked. Unset "
                              "HF_HUB_OFFLINE to reach the Hub; the models in the local cache "
                              "can still be used.")
    if isinstance(e, httpx2.TimeoutException):
        return HubUnavailable(f"{base} did not answer within {timeout:g} s (timed out). Check "
                              "the internet connection, the proxy, or the Hub address "
                              "(HF_ENDPOINT, a mirror), then try again.")
    return HubUnavailable(f"Cannot reach {base}: {e or type(e).__name__}. The machine looks "
                          "offline, or the Hub address (HF_ENDPOINT) or the proxy is wrong; "
                          "models in the local cache can still be used.")


# --------------------------------------------------------------------------- the plan


@dataclass
class DownloadProgress:
    done_bytes: int
    total_bytes: int
    speed_bps: float          # bytes per second over the last few seconds
    eta_s: float | None       # None until a speed is known
    current_file: str


@dataclass
class DownloadPlan:
    """What download() will fetch: ``files`` (name, size in bytes) at commit ``revision``;
    ``skipped`` the repository's other files, not needed for quantizing."""

    repo_id: str
    revision: str                                   # the commit
    files: list[tuple[str, int]]
    total_bytes: int
    skipped: list[str]
    ref: str = "main"                               # the branch or tag asked for
    endpoint: str = DEFAULT_ENDPOINT
    blobs: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (hash, kind)
    gated: bool | str = False

    def cached_bytes(self) -> int:
        """Bytes already in the cache: finished files and the parts of interrupted ones."""
        blobs = repo_storage(self.repo_id) / "blobs"
        done = 0
        for name, size in self.files:
            digest = self.blobs.get(name, ("", ""))[0]
            if digest and (blobs / digest).is_file():
                done += size
            elif digest and (blobs / f"{digest}.incomplete").is_file():
                done += min(size, (blobs / f"{digest}.incomplete").stat().st_size)
        return done


def hub_patterns(allow_pickle: bool) -> list[str]:
    """The files to fetch (huggingface-hub's allow_patterns)."""
    return HUB_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])


def hub_ignore(allow_pickle: bool) -> list[str]:
    """The files never fetched (huggingface-hub's ignore_patterns): the pickle weights'
    index (a *.json) too unless pickle weights are allowed."""
    return HUB_IGNORE + ([] if allow_pickle else ["*.bin.index.json", "*.pth.index.json"])


def wanted(name: str, allow_pickle: bool = False) -> bool:
    """Whether quantizing needs the repository file ``name``."""
    if any(fnmatch.fnmatch(name, p) for p in hub_ignore(allow_pickle)):
        return False
    return any(fnmatch.fnmatch(name, p) for p in hub_patterns(allow_pickle))


def repo_storage(repo_id: str) -> Path:
    """The cache folder of ``repo_id`` (models--org--name: blobs/, refs/, snapshots/)."""
    return hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"


def _status_error(repo_id: str, status: int, base: str, what: str) -> UserError:
    if status in (401, 403):
        return access_error(repo_id, status, base)
    if status == 404:
        return UserError(f"'{repo_id}' {what} was not found on {base} (HTTP 404). Check the "
                         "id (org/name), the revision, and the Hub address (HF_ENDPOINT).")
    return HubUnavailable(f"{base} answered HTTP {status} for '{repo_id}' {what}. Try again "
                          "later, or check the Hub address (HF_ENDPOINT).")


def plan_download(repo_id: str, revision: str | None = None, *, allow_pickle: bool = False,
                  timeout: float = 5.0, token: str | None = None) -> DownloadPlan:
    """Ask the Hub (one model_info request, ``timeout`` seconds at most) which files and
    sizes ``repo_id`` has at ``revision`` (default: main) and choose the ones quantizing
    needs. HubUnavailable, HubAccessError or UserError when it cannot."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    base = endpoint()
    if offline():
        raise unavailable(base, OSError("offline"), timeout)
    try:
        info = HfApi(endpoint=base).model_info(repo_id, revision=revision, timeout=timeout,
                                               files_metadata=True, token=token)
    except HFValidationError as e:
        raise UserError(f"'{repo_id}' is not a valid Hugging Face model id ({e}). Give an id "
                        "like HuggingFaceTB/SmolLM2-135M-Instruct.") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        raise _status_error(repo_id, status, base, "(model information)") from None
    except httpx2.HTTPError as e:
        raise unavailable(base, e, timeout) from None
    files: list[tuple[str, int]] = []
    blobs: dict[str, tuple[str, str]] = {}
    skipped: list[str] = []
    for s in info.siblings or []:
        if not wanted(s.rfilename, allow_pickle):
            skipped.append(s.rfilename)
            continue
        size = int(s.size or (s.lfs.size if s.lfs else 0) or 0)
        files.append((s.rfilename, size))
        if s.lfs is not None and s.lfs.sha256:
            blobs[s.rfilename] = (s.lfs.sha256, "sha256")
        elif s.blob_id:
            blobs[s.rfilename] = (s.blob_id, "git")
    if not any(n.endswith(".safetensors") for n, _ in files) and not (
            allow_pickle and any(n.endswith(".bin") for n, _ in files)):
        pickle = [n for n in skipped if n.endswith((".bin", ".pt", ".pth"))]
        hint = (" It has only pickle weights (*.bin); allow them with --allow-pickle if you "
                "trust the model's author." if pickle else "")
        raise UserError(f"'{repo_id}' on {base} has no *.safetensors weight files, so there is "
                        f"nothing QuantDesk can quantize.{hint}")
    missing = [n for n, _ in files if n not in blobs]
    if missing:
        raise HubUnavailable(f"{base} did not give the content hash of {missing[0]} "
                             f"('{repo_id}'); the download could not be checked. Try again.")
    return DownloadPlan(repo_id=repo_id, revision=str(info.sha), files=files,
                        total_bytes=sum(n for _, n in files), skipped=skipped,
                        ref=revision or "main", endpoint=base, blobs=blobs,
                        gated=info.gated or False)


def check_disk(plan: DownloadPlan) -> None:
    """UserError when the rest of ``plan`` (what is not in the cache yet) does not fit the
    free space of the cache's disk: the planner's rule (needs more than is free → refused
    before it starts), with the numbers and what to do."""
    need = plan.total_bytes - plan.cached_bytes()
    if need <= 0:
        return
    cache = hub_cache_dir()
    free = free_bytes(cache)
    if free is not None and need + DISK_MARGIN > free:
        raise UserError(
            f"Downloading '{plan.repo_id}' needs {format_size(need)} of disk in {cache}; "
            f"{format_size(free)} are free. Free {format_size(need + DISK_MARGIN - free)} on "
            "that disk, or set HF_HUB_CACHE to a folder on a disk with more room, then try "
            "again.")


# --------------------------------------------------------------------------- the download


class _Meter:
    """Bytes done, speed over the last SPEED_WINDOW_S, and the progress calls (at most every
    PROGRESS_EVERY_S)."""

    def __init__(self, total: int, done: int, report: Callable[[DownloadProgress], None] | None):
        self.total, self.done, self.report = total, done, report
        self.samples: list[tuple[float, int]] = [(time.monotonic(), done)]
        self.last = 0.0
        self.file = ""

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if self.report is None or (not force and now - self.last < PROGRESS_EVERY_S):
            return
        self.last = now
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW_S:
            self.samples.pop(0)
        t0, d0 = self.samples[0]
        speed = (self.done - d0) / (now - t0) if now > t0 else 0.0
        eta = (self.total - self.done) / speed if speed > 0 else None
        self.report(DownloadProgress(self.done, self.total, speed, eta, self.file))


def _hasher(kind: str, size: int):
    if kind == "sha256":
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(f"blob {size}\0".encode())
    return h


def _fetch(plan: DownloadPlan, name: str, size: int, partial: Path, headers: dict[str, str],
           meter: _Meter, should_cancel: Callable[[], bool]) -> None:
    """Fetch ``name`` into ``partial``, appending to what it holds (Range), until it has
    ``size`` bytes. Cancelled when asked; the partial file stays for the next attempt."""
    import httpx2
    from huggingface_hub.utils import get_session

    # the Hub's file address, built here: huggingface_hub.hf_hub_url swaps in ``endpoint``
    # only where its import-time URL template starts with constants.ENDPOINT
    url = f"{plan.endpoint}/{plan.repo_id}/resolve/{quote(plan.revision, safe='')}/{quote(name)}"
    stalled_since: float | None = None
    connect_failures = 0
    partial.touch()  # an empty file is complete at once
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:  # not this file's beginning: start over
            partial.unlink()
            meter.add(-have)
            have = 0
        if have == size:
            return
        if should_cancel():
            raise Cancelled(f"download of {plan.repo_id} cancelled")
        h = {**headers, "Accept-Encoding": "identity"}  # Range counts the file's own bytes
        if have:
            h["Range"] = f"bytes={have}-"
        try:
            timeout = httpx2.Timeout(READ_POLL_S, connect=CONNECT_TIMEOUT_S)
            with get_session().stream("GET", url, headers=h, timeout=timeout) as r:
                if r.status_code >= 400:
                    if r.status_code == 416 and have:
                        partial.unlink()  # the server's file is shorter: start over
                        meter.add(-have)
                        continue
                    raise _status_error(plan.repo_id, r.status_code, plan.endpoint,
                                        f"file {name}")
                mode = "ab"
                if have and r.status_code != 206:  # the server ignored Range: start over
                    meter.add(-have)
                    mode = "wb"
                with open(partial, mode) as f:
                    for chunk in r.iter_raw():  # as it arrives: a cut keeps every byte
                        f.write(chunk)
                        meter.add(len(chunk))
                        stalled_since = None
                        if should_cancel():
                            raise Cancelled(f"download of {plan.repo_id} cancelled")
        except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as e:
            # a read that waited READ_POLL_S, or a cut connection: check cancel, then go on
            # from what arrived (the loop sends a Range request)
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > STALL_LIMIT_S:
                raise HubUnavailable(
                    f"No data from {plan.endpoint} for {STALL_LIMIT_S:.0f} s while downloading "
                    f"{name} of '{plan.repo_id}' ({e or type(e).__name__}). The part already "
                    "downloaded is kept: start the download again to resume it.") from None
            if isinstance(e, httpx2.ConnectError):
                connect_failures += 1
                if connect_failures >= CONNECT_TRIES:
                    raise unavailable(plan.endpoint, e, READ_POLL_S) from None
                time.sleep(0.5)


def _verify(file: Path, digest: str, kind: str, size: int, name: str, repo_id: str) -> None:
    h = _hasher(kind, size)
    with open(file, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if h.hexdigest() != digest:
        file.unlink()
        raise UserError(f"{name} of '{repo_id}' arrived damaged: its {kind} hash is "
                        f"{h.hexdigest()[:12]}…, the Hub lists {digest[:12]}…. The file was "
                        "deleted; download again (if it repeats, the mirror or proxy alters "
                        "files).")


def _link(blob: Path, pointer: Path) -> None:
    from huggingface_hub.file_download import _create_symlink

    pointer.parent.mkdir(parents=True, exist_ok=True)
    # huggingface-hub's own linker: a relative symlink, or a copy where symlinks are not
    # allowed (Windows without developer mode), as its cache does
    _create_symlink(str(blob), str(pointer), new_blob=False)


@contextlib.contextmanager
def _file_lock(plan: DownloadPlan, digest: str, name: str):
    """The lock huggingface-hub's own downloads take for this blob (.locks/models--…/<hash>
    .lock in the cache), so that two downloads never append to one partial file: a second
    one is refused at once (Busy) rather than waiting unseen."""
    from filelock import FileLock, Timeout

    path = hub_cache_dir() / ".locks" / repo_storage(plan.repo_id).name / f"{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Busy(f"Another download is writing {name} of '{plan.repo_id}' (the window, a "
                   "`quantdesk download`, or another Hugging Face tool). Wait for it to end "
                   "or cancel it, then try again.") from None
    try:
        yield
    finally:
        lock.release()


def download(plan: DownloadPlan, *, on_progress: Callable[[DownloadProgress], None] | None = None,
             should_cancel: Callable[[], bool] | None = None,
             token: str | None = None) -> Path:
    """Fetch the files of ``plan`` into the Hugging Face cache and return the snapshot
    folder (resolve_model and transformers find it there). Resumes what an earlier attempt
    left (Range); ``should_cancel()`` is checked at least once a second and raises
    qtapp.engine.errors.Cancelled, leaving the partial file for the next attempt;
    ``on_progress`` gets DownloadProgress about five times a second. The disk check
    (check_disk) is made first. HubAccessError on 401/403 (gated), HubUnavailable when the
    Hub cannot be reached, UserError for a full disk or a damaged file."""
    from huggingface_hub.utils import build_hf_headers

    cancel = should_cancel or (lambda: False)
    check_disk(plan)
    storage = repo_storage(plan.repo_id)
    snapshot = storage / "snapshots" / plan.revision
    headers = build_hf_headers(token=token)
    meter = _Meter(plan.total_bytes, plan.cached_bytes(), on_progress)
    meter.add(0, force=True)
    try:
        (storage / "blobs").mkdir(parents=True, exist_ok=True)
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, size in plan.files:
            digest, kind = plan.blobs[name]
            blob = storage / "blobs" / digest
            pointer = snapshot / name
            meter.file = name
            if not blob.is_file():
                with _file_lock(plan, digest, name):
                    if not blob.is_file():  # another download may have finished it
                        partial = blob.with_name(f"{digest}.incomplete")
                        _fetch(plan, name, size, partial, headers, meter, cancel)
                        _verify(partial, digest, kind, size, name, plan.repo_id)
                        os.replace(partial, blob)
            if not pointer.exists():
                _link(blob, pointer)
        if plan.ref != plan.revision:
            ref = storage / "refs" / plan.ref
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(plan.revision)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(e, storage, f"the model '{plan.repo_id}'",
                                  "Free some space on that disk, or set HF_HUB_CACHE to a "
                                  "folder on a disk with more room, then try again.") from None
        raise
    meter.file = ""
    meter.add(0, force=True)
    return snapshot
