"""Downloading a Hub model for quantizing: the window's and `quantdesk download`'s entry.

    plan_download(repo_id, revision=None, *, allow_pickle=False, timeout=5.0) -> DownloadPlan
        DownloadPlan(repo_id, revision (the commit), files [(name, size)], total_bytes,
                     skipped [names not needed], ref, endpoint, blobs, gated)
    check_disk(plan)   UserError before anything starts when the cache's disk is too small
    download(plan, *, on_progress, should_cancel, token=None) -> Path (the snapshot folder)
        on_progress(DownloadProgress(done_bytes, total_bytes, speed_bps, eta_s, current_file))
        should_cancel() -> bool: checked at least once a second; a cancel raises
        qtapp.engine.errors.Cancelled and leaves the partial file, which the next download
        resumes (HTTP Range)

Errors: HubAccessError (401/403, gated: names the licence page and `hf auth login`),
HubUnavailable (offline, timed out: names the endpoint), Busy (another download is writing
the same file), UserError (disk, damaged file). Facts and measurements: docs/reliability.md,
"The Hugging Face Hub".
The implementation is qtapp.engine.model.hub_files, shared with resolve_model.
"""

from qtapp.engine.model.hub_files import (
    DownloadPlan,
    DownloadProgress,
    HubAccessError,
    HubUnavailable,
    check_disk,
    download,
    plan_download,
)

__all__ = ["DownloadPlan", "DownloadProgress", "HubAccessError", "HubUnavailable",
           "check_disk", "download", "plan_download"]
