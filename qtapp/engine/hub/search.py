"""Finding a model on the Hub, or in the local cache when offline.

    search_models(query, *, author=None, sort="downloads", limit=30, timeout=5.0)
        -> list[HubModel]        text-generation models, one request (GET /api/models)
    cached_models() -> list[HubModel]     the models in the local Hugging Face cache
    full_config(model, *, timeout=5.0) -> dict | None
        config.json itself (one small request, or the cached file): the search answer
        carries only a trimmed config (architectures, model_type), and the fit verdicts need
        the widths

Parameters come from the safetensors metadata the search answer carries (the Hub counts them
from the files' headers), never from a download; size_bytes from the same counts per dtype.
Errors: HubUnavailable (offline, timed out, cannot connect, an error page) whose message
names the endpoint.

Why not HfApi.list_models: it takes no timeout and huggingface-hub's HTTP client has none by
default (utils/_http.py, timeout=None), so a Hub or mirror that never answers would hang the
caller. The same request is made here through huggingface-hub's session (its headers, the
stored token, the system proxy) with a timeout, and each answer is parsed by
huggingface-hub's own ModelInfo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from qtapp.engine.errors import UserError
from qtapp.engine.model.hub_files import (
    HubUnavailable,
    endpoint,
    hub_cache_dir,
    offline,
    repo_storage,
    unavailable,
)

SORTS = {"downloads": "downloads", "likes": "likes", "recent": "lastModified"}
EXPAND = ["downloads", "likes", "gated", "lastModified", "safetensors", "config", "tags",
          "pipeline_tag", "sha"]
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}
_NO = object()


@dataclass
class HubModel:
    """One model of a search or of the local cache."""

    repo_id: str
    params: int | None            # from the safetensors metadata; None when unknown
    downloads: int | None
    likes: int | None
    license: str | None
    gated: bool | str             # False, or the Hub's "auto" / "manual"
    last_modified: datetime | None
    config: dict | None           # trimmed in a search answer; full_config() fetches all
    cached: bool                  # in the local Hugging Face cache (with weights)
    size_bytes: int | None        # weights, by dtype
    sha: str | None = None        # the commit the answer describes


def _snapshot(repo_id: str) -> Path | None:
    """The newest snapshot folder of ``repo_id`` in the cache that has config.json and
    weights, else None."""
    snaps = repo_storage(repo_id) / "snapshots"
    if not snaps.is_dir():
        return None
    found = [s for s in snaps.iterdir() if (s / "config.json").is_file()
             and any(s.glob("*.safetensors"))]
    return max(found, key=lambda s: s.stat().st_mtime) if found else None


def _licence(tags: list[str] | None, card: Any) -> str | None:
    for t in tags or []:
        if t.startswith("license:"):
            return t.removeprefix("license:")
    lic = getattr(card, "license", None) if card is not None else None
    return str(lic) if lic else None


def _from_info(info: Any) -> HubModel:
    st = getattr(info, "safetensors", None)
    params = int(st.total) if st is not None and st.total else None
    size = (sum(n * DTYPE_BYTES.get(d, 2) for d, n in st.parameters.items())
            if st is not None and st.parameters else None)
    return HubModel(repo_id=info.id, params=params, downloads=info.downloads, likes=info.likes,
                    license=_licence(info.tags, getattr(info, "card_data", None)),
                    gated=info.gated or False, last_modified=info.last_modified,
                    config=info.config, cached=_snapshot(info.id) is not None,
                    size_bytes=size, sha=info.sha)


def _get(path: str, params: dict[str, Any] | list[tuple[str, Any]] | None,
         timeout: float, refused: Any = _NO) -> Any:
    """GET endpoint()+path with a timeout; the JSON answer, or HubUnavailable (``refused``
    instead for a 401/403/404 when given)."""
    import httpx2
    from huggingface_hub.utils import build_hf_headers, get_session

    base = endpoint()
    if offline():
        raise unavailable(base, OSError("offline"), timeout)
    try:
        r = get_session().get(f"{base}{path}", params=params, headers=build_hf_headers(),
                              timeout=timeout)
    except httpx2.HTTPError as e:
        raise unavailable(base, e, timeout) from None
    if r.status_code in (401, 403, 404) and refused is not _NO:
        return refused
    if r.status_code >= 400:
        raise HubUnavailable(f"{base} answered HTTP {r.status_code} to {path}. Check the Hub "
                             "address (HF_ENDPOINT, a mirror) or try again later.")
    try:
        return r.json()
    except ValueError:
        raise HubUnavailable(f"{base} did not answer with JSON to {path}: it is not a "
                             "Hugging Face Hub (check HF_ENDPOINT) or a proxy answered "
                             "instead.") from None


def search_models(query: str, *, author: str | None = None, sort: str = "downloads",
                  limit: int = 30, timeout: float = 5.0) -> list[HubModel]:
    """Text-generation models whose id contains ``query`` (and by ``author``), sorted by
    "downloads", "likes" or "recent", at most ``limit``; one request of at most
    ``timeout`` seconds. HubUnavailable when the Hub cannot be asked."""
    from huggingface_hub.hf_api import ModelInfo

    if sort not in SORTS:
        raise UserError(f"Unknown sort '{sort}'; use one of {', '.join(SORTS)}.")
    params: list[tuple[str, Any]] = [("pipeline_tag", "text-generation"),
                                     ("sort", SORTS[sort]), ("direction", -1),
                                     ("limit", max(1, int(limit)))]
    if query.strip():
        params.append(("search", query.strip()))
    if author:
        params.append(("author", author.strip()))
    params += [("expand", e) for e in EXPAND]
    items = _get("/api/models", params, timeout)
    if not isinstance(items, list):
        raise HubUnavailable(f"{endpoint()} answered the model search with something that is "
                             "not a list; check HF_ENDPOINT.")
    out = []
    for item in items[:limit]:
        if isinstance(item, dict) and item.get("id"):
            item.setdefault("siblings", None)
            out.append(_from_info(ModelInfo(**item)))
    return out


def full_config(model: HubModel, *, timeout: float = 5.0) -> dict | None:
    """config.json of ``model``: the one it has when it is complete, else the cached file,
    else one request (resolve/<sha>/config.json). A gated model whose licence this account
    has not accepted, or a repository without config.json, keeps its trimmed config (the
    verdicts then count from the parameters)."""
    from qtapp.engine.planning.shape import shape_of

    if shape_of(model.config) is not None:  # a complete config, not the Hub's trimmed one
        return model.config
    snap = _snapshot(model.repo_id)
    if snap is not None:
        try:
            return json.loads((snap / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    config = _get(f"/{model.repo_id}/resolve/{model.sha or 'main'}/config.json", None, timeout,
                  refused=model.config)
    return config if isinstance(config, dict) else None


def with_full_config(model: HubModel, *, timeout: float = 5.0) -> HubModel:
    """``model`` with config.json in place of the trimmed config (see full_config)."""
    return replace(model, config=full_config(model, timeout=timeout))


def cached_models() -> list[HubModel]:
    """The models in the local Hugging Face cache that have config.json and weights, newest
    first (no request: what the browser lists offline)."""
    root = hub_cache_dir()
    out: list[HubModel] = []
    if not root.is_dir():
        return out
    for repo in root.glob("models--*"):
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        snap = _snapshot(repo_id)
        if snap is None:
            continue
        try:
            config = json.loads((snap / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
        weights = [p for p in snap.glob("*.safetensors")]
        size = sum(p.stat().st_size for p in weights)
        params = _cached_params(config)
        out.append(HubModel(repo_id=repo_id, params=params, downloads=None, likes=None,
                            license=None, gated=False,
                            last_modified=datetime.fromtimestamp(snap.stat().st_mtime),
                            config=config if isinstance(config, dict) else None, cached=True,
                            size_bytes=size, sha=snap.name))
    return sorted(out, key=lambda m: m.last_modified or datetime.min, reverse=True)


def _cached_params(config: Any) -> int | None:
    from qtapp.engine.planning.shape import shape_of

    shape = shape_of(config)
    return shape.n_params if shape is not None else None
