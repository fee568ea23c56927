"""A local Hugging Face Hub for tests: a threaded HTTP server answering the endpoints
huggingface-hub 2.4 and qtapp.engine.hub call, and a pytest fixture pointing them at it.

Endpoints (as the Hub answers them):
    GET  /api/models?search=&author=&sort=&limit=&expand=…   the model search
    GET  /api/models/{id}[/revision/{rev}]                   model_info: siblings with sizes,
                                                             blob ids, LFS sha256, gated
    HEAD/GET /{id}/resolve/{rev}/{file}                      ETag, X-Repo-Commit,
                                                             Content-Length, Range (206)
    GET  /api/whoami-v2                                      the user of the token
    POST /api/repos/create                                   409 when it exists
    POST /api/validate-yaml                                  the model card's metadata
    POST /api/models/{id}/preupload/{rev}                    every file "regular"
    POST /api/models/{id}/commit/{rev}                       NDJSON; the commit is recorded
    GET  /api/models/{id}/paths-info/{rev}, /tree/{rev}      what upload_large_folder asks

Use: ``from tests.hub_fixture import hub_server`` in a test module; tests then ask for
``hub``.

Knobs: ``cut_after`` (bytes of a file body after which the connection is dropped, for
``cuts`` requests), ``hang`` (accept, never answer), ``slow`` (seconds between 64 KiB chunks),
a repo's ``gated`` (401 without a token, 403 with one that was not granted; GRANTED is).
``log`` records every request: (method, path, headers).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

GRANTED = "hf_granted_token"
USER = "tester"
CHUNK = 64 * 1024


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool | str = False
    downloads: int = 0
    likes: int = 0
    license: str = "apache-2.0"
    params: int | None = None
    private: bool = False
    commits: list[dict[str, Any]] = field(default_factory=list)

    def is_lfs(self, name: str) -> bool:
        return name.endswith((".safetensors", ".bin", ".gguf", ".pth"))

    def sibling(self, name: str) -> dict[str, Any]:
        data = self.files[name]
        out: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
        if self.is_lfs(name):
            out["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                          "pointerSize": 134}
        return out

    def config(self) -> dict[str, Any] | None:
        raw = self.files.get("config.json")
        return json.loads(raw) if raw else None

    def summary(self) -> dict[str, Any]:
        config = self.config() or {}
        out = {"id": self.repo_id, "_id": self.repo_id, "modelId": self.repo_id,
               "downloads": self.downloads, "likes": self.likes, "gated": self.gated,
               "private": self.private, "lastModified": "2026-11-30T12:00:00.000Z",
               "tags": ["transformers", "safetensors", f"license:{self.license}"],
               "pipeline_tag": "text-generation", "sha": self.sha,
               # the Hub's trimmed config: no widths
               "config": {k: config[k] for k in ("architectures", "model_type") if k in config}}
        if self.params:
            out["safetensors"] = {"parameters": {"BF16": self.params}, "total": self.params}
        return out


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.cut_after: int | None = None
        self.cuts = 1
        self.hang = False
        self.slow = 0.0
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_HEAD(self) -> None:
                server._handle(self, "HEAD")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def requests(self, method: str | None = None, contains: str = "") -> list:
        return [r for r in self.log if (method is None or r[0] == method) and contains in r[1]]

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ answers
    def _json(self, h: BaseHTTPRequestHandler, status: int, body: Any,
              headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(raw)

    def _body(self, h: BaseHTTPRequestHandler) -> bytes:
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        self.log.append((method, h.path, dict(h.headers.items())))
        if self.hang:
            self.stop.wait(60)
            h.close_connection = True
            return
        try:
            self._route(h, method, path, query)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _repo_of(self, rest: str) -> tuple[FakeRepo | None, str]:
        for repo_id, repo in self.repos.items():
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return repo, rest[len(repo_id):].lstrip("/")
        return None, rest

    def _route(self, h: BaseHTTPRequestHandler, method: str, path: str,
               query: dict[str, list[str]]) -> None:
        if path == "/api/models" and method == "GET":
            return self._search(h, query)
        if path == "/api/whoami-v2":
            auth = h.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                return self._json(h, 401, {"error": "Invalid user token."})
            return self._json(h, 200, {"type": "user", "name": USER,
                                       "auth": {"accessToken": {"role": "write"}}})
        if path == "/api/repos/create" and method == "POST":
            return self._create(h)
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(h)
        if path.startswith("/api/models/"):
            repo, rest = self._repo_of(path.removeprefix("/api/models/"))
            if repo is None:
                return self._json(h, 404, {"error": "Repository not found"},
                                  {"X-Error-Code": "RepoNotFound"})
            if method == "POST" and rest.startswith("preupload/"):
                body = json.loads(self._body(h) or b"{}")
                return self._json(h, 200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in body.get("files", [])]})
            if method == "POST" and rest.startswith("commit/"):
                return self._commit(h, repo)
            if rest.startswith("paths-info/"):
                self._body(h)
                return self._json(h, 200, [])
            if rest.startswith("tree/"):
                return self._json(h, 200, [])
            if rest == "" or rest.startswith("revision/"):
                info = repo.summary()
                info["siblings"] = [repo.sibling(n) for n in sorted(repo.files)]
                return self._json(h, 200, info)
        repo, rest = self._repo_of(path.lstrip("/"))
        if repo is not None and rest.startswith("resolve/"):
            _, _rev, name = rest.split("/", 2)
            return self._file(h, method, repo, name)
        return self._json(h, 404, {"error": f"no route {method} {path}"})

    def _search(self, h: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        text = (query.get("search") or [""])[0].lower()
        author = (query.get("author") or [""])[0]
        found = [r for r in self.repos.values() if text in r.repo_id.lower()
                 and (not author or r.repo_id.startswith(author + "/"))]
        key = (query.get("sort") or ["downloads"])[0]
        found.sort(key=lambda r: getattr(r, key, 0) if key in ("downloads", "likes") else 0,
                   reverse=True)
        limit = int((query.get("limit") or ["30"])[0])
        return self._json(h, 200, [r.summary() for r in found[:limit]])

    def _validate_yaml(self, h: BaseHTTPRequestHandler) -> None:
        """The card's metadata as the Hub checks it: YAML, and base_model_relation one of the
        values the Hub knows."""
        import yaml

        content = json.loads(self._body(h) or b"{}").get("content", "")
        front = content.split("---", 2)[1] if content.startswith("---") else ""
        try:
            meta = yaml.safe_load(front) or {}
        except yaml.YAMLError as e:
            return self._json(h, 400, {"errors": [{"message": f"invalid YAML: {e}"}]})
        relation = meta.get("base_model_relation")
        if relation is not None and relation not in ("adapter", "merge", "quantized",
                                                     "finetune"):
            return self._json(h, 400, {"errors": [{"message": "bad base_model_relation"}]})
        return self._json(h, 200, {"errors": [], "warnings": []})

    def _create(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(self._body(h) or b"{}")
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        if repo_id in self.repos:
            return self._json(h, 409, {"error": "You already created this model repo",
                                       "url": f"{self.url}/{repo_id}"})
        private = body.get("visibility") in ("private", "protected") or bool(body.get("private"))
        self.add(FakeRepo(repo_id, {}, sha="f" * 40, private=private))
        return self._json(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _commit(self, h: BaseHTTPRequestHandler, repo: FakeRepo) -> None:
        lines = [json.loads(x) for x in self._body(h).splitlines() if x.strip()]
        commit: dict[str, Any] = {"header": None, "files": {}}
        for line in lines:
            if line["key"] == "header":
                commit["header"] = line["value"]
            elif line["key"] == "file":
                commit["files"][line["value"]["path"]] = base64.b64decode(
                    line["value"]["content"])
        repo.commits.append(commit)
        repo.files.update(commit["files"])
        repo.sha = hashlib.sha1(json.dumps(len(repo.commits)).encode()).hexdigest()
        return self._json(h, 200, {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{repo.sha}",
                                   "commitOid": repo.sha})

    def _file(self, h: BaseHTTPRequestHandler, method: str, repo: FakeRepo, name: str) -> None:
        if repo.gated:
            auth = h.headers.get("Authorization", "")
            if auth != f"Bearer {GRANTED}":
                status = 401 if not auth else 403
                return self._json(h, status, {"error": "Access to model is restricted."},
                                  {"X-Error-Code": "GatedRepo"})
        if name not in repo.files:
            return self._json(h, 404, {"error": "Entry not found"},
                              {"X-Error-Code": "EntryNotFound"})
        data = repo.files[name]
        sib = repo.sibling(name)
        etag = sib["lfs"]["sha256"] if "lfs" in sib else sib["blobId"]
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data) and len(data):
                return self._json(h, 416, {"error": "Range not satisfiable"})
        body = data[start:]
        h.send_response(206 if rng else 200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", f'"{etag}"')
        h.send_header("X-Repo-Commit", repo.sha)
        h.send_header("Accept-Ranges", "bytes")
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if "lfs" in sib:
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(data)))
        h.end_headers()
        if method == "HEAD":
            return
        limit = len(body)
        if self.cut_after is not None and self.cuts > 0 and len(body) > self.cut_after:
            self.cuts -= 1
            limit = self.cut_after
        sent = 0
        while sent < limit:
            piece = body[sent:min(limit, sent + CHUNK)]
            h.wfile.write(piece)
            h.wfile.flush()
            sent += len(piece)
            if self.slow:
                time.sleep(self.slow)
        if limit < len(body):
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(2)


@pytest.fixture(name="hub")
def hub_server(tmp_path, monkeypatch):
    """A running HubServer; HF_ENDPOINT (read by qtapp.engine.model.hub_files.endpoint and
    passed explicitly to huggingface-hub), huggingface-hub's constants (its endpoint, cache,
    offline flag, token path) and the Hugging Face cache point at it and a temporary folder."""
    from huggingface_hub import constants

    server = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    yield server
    server.close()
