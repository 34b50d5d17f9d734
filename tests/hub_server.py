"""A loopback fake of the Hugging Face Hub HTTP API, enough for `push_to_hub` and `from_pretrained` round trips.

Kept because nothing smaller serves these tests: huggingface_hub ships no test server, and mocking its client
(e.g. patching `HfApi` methods) would skip the HTTP layer where the offline, 404 and network errors that dmae-hf turns
into messages come from. `tests/test_hub.py` checks the routes against the installed client on every run.

Stdlib only: a `ThreadingHTTPServer` on 127.0.0.1 (port chosen by the OS) with an in-memory store
`{repo_id: Repo(files, sha, history)}`. Routes (the ones huggingface_hub 2.4 / transformers 5.23-5.24 call;
checked with huggingface_hub 2.4.0 and transformers 5.24.0):

    POST /api/repos/create                        -> 200 {"url"} or 409 if it exists
    POST /api/validate-yaml                       -> 200 {"errors": [], "warnings": []}
    POST /api/models/{repo}/preupload/{rev}       -> every file "regular" (bytes inline, base64, in the commit)
    POST /api/models/{repo}/commit/{rev}          -> NDJSON header/file/deletedFile/deletedFolder lines
    GET  /api/models/{repo}[/revision/{rev}]      -> {"id", "sha", "siblings", "private"}
    GET  /api/models/{repo}/tree/{rev}[/{path}]   -> [{"type": "file", "path", "size", "oid"}]
    HEAD/GET /{repo}/resolve/{rev}/{path}         -> bytes with X-Repo-Commit, ETag, Content-Length;
                                                     404 + X-Error-Code EntryNotFound / RepoNotFound / RevisionNotFound
    GET  /api/models?author={namespace}           -> [{"id"}] of that namespace's repositories (one page)
    GET  /api/whoami-v2                           -> a fixed user

Dataset repositories (`hub.add_dataset(repo_id, files, gated=...)`; the routes `datasets.load_dataset(repo_id,
streaming=True)` calls through huggingface_hub's `HfFileSystem`; checked with datasets 5.2.0):

    GET  /api/datasets/{repo}[/revision/{rev}]    -> {"id", "sha", "siblings", "private", "gated"}
    GET  /api/datasets/{repo}/tree/{rev}[/{path}] -> files and folders under path; `recursive=true`: all of them,
                                                     else the direct children; `expand=true` adds "lastCommit"
    POST /api/datasets/{repo}/paths-info/{rev}    -> the entries of the form's `paths`
    HEAD/GET /datasets/{repo}/resolve/{rev}/{path} -> as for models, with `Range: bytes=a-b` (206) as
                                                     HfFileSystem reads parquet footers and row groups
    gated repo: 401 (no token) / 403 (a token not in `granted`) with X-Error-Code GatedRepo on tree, paths-info
                and resolve; the repo info stays public (as on the Hub)

Use as a context manager: `with FakeHub() as hub: hub.endpoint ...`; `hub.requests` logs (method, path).
`point_client_at(monkeypatch, endpoint, cache_dir)` points this process's Hub client (huggingface_hub reads its
settings at import time) at it, for in-process tests, with a fresh `dmae_hf.hub.reach` probe; subprocesses take
`HF_ENDPOINT` etc. in their environment.
"""

import base64
import functools
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

USER = "tester"


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    gated: bool = False
    granted: set[str] = field(default_factory=set)  # tokens with access to a gated repo

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.datasets: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes], deleted=(), message="") -> str:
        with self.lock:
            repo = self.repos[repo_id]
            for path in deleted:
                if path.endswith("/"):
                    for name in [n for n in repo.files if n.startswith(path)]:
                        del repo.files[name]
                else:
                    repo.files.pop(path, None)
            repo.files.update(files)
            sha = hashlib.sha1(f"{repo_id}:{len(repo.commits)}:{message}".encode() +
                               b"".join(sorted(repo.files.values()))).hexdigest()
            repo.commits.append(sha)
            return sha

    def add_dataset(self, repo_id: str, files: dict[str, bytes], gated: bool = False, granted=()) -> str:
        """Create dataset repository `repo_id` holding `files` (one commit); `gated`: only the tokens in `granted`
        may read its files. Returns the commit sha."""
        with self.lock:
            repo = self.datasets[repo_id] = Repo(gated=gated, granted=set(granted))
            repo.files.update(files)
            repo.commits.append(hashlib.sha1(f"datasets/{repo_id}".encode() +
                                             b"".join(sorted(files.values()))).hexdigest())
            return repo.sha

    def lookup(self, repo_id: str, revision: str, store: dict | None = None) -> Repo | None:
        """The repo if `revision` is "main" or one of its commits (files are only kept at the head)."""
        repo = (self.repos if store is None else store).get(repo_id)
        if repo is not None and revision not in ("main", repo.sha):
            return None
        return repo


class _NoSleep:
    """`time` for huggingface_hub's retry loop, without the waits (5 retries on a refused connection take 23 s)."""

    sleep = staticmethod(lambda seconds: None)

    def __getattr__(self, name):
        return getattr(time, name)


def point_client_at(monkeypatch, endpoint: str, cache_dir, offline: bool = False, token: str | None = "x") -> None:
    """Point huggingface_hub (constants read at import time, and transformers' shared `HfApi`) at `endpoint`, with
    cache `cache_dir`, offline mode `offline`, a write token, no Xet and no waits between retries."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http
    from transformers.utils import hub

    from dmae_hf.hub import reach as _reach

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hub.hf_api(), "endpoint", endpoint)
    monkeypatch.setattr(_http, "time", _NoSleep())
    _reach._probe.cache_clear()  # a port may be reused: probe this endpoint afresh (and again after the test)
    monkeypatch.setattr(_reach, "_probe", functools.cache(_reach._probe.__wrapped__))
    if token:
        monkeypatch.setenv("HF_TOKEN", token)


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status, body=b"", headers=None, content_type="application/json"):
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status, code, message):
            self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self):
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            return path

        def _dataset(self, repo_id: str, revision: str, files: bool = True):
            """The dataset repo at `revision`, or None after sending the Hub's error (missing, gated)."""
            if repo_id not in hub.datasets:
                self._error(401 if not self.headers.get("Authorization") else 404, "RepoNotFound",
                            f"Repository not found: datasets/{repo_id}")
                return None
            repo = hub.lookup(repo_id, revision, hub.datasets)
            if repo is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            if files and repo.gated:
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                if token not in repo.granted:
                    self._error(403 if token else 401, "GatedRepo",
                                f"Access to dataset {repo_id} is restricted. You must have access to it and be "
                                f"authenticated to access it. Please log in.")
                    return None
            return repo

        def _entries(self, repo: Repo, prefix: str, recursive: bool, expand: bool) -> list[dict] | None:
            """Tree entries under folder `prefix` (None when there is no such folder)."""
            prefix = prefix.strip("/")
            under = {name: data for name, data in repo.files.items() if not prefix or name.startswith(prefix + "/")}
            if prefix and not under:
                return None
            files, folders = [], set()
            for name, data in sorted(under.items()):
                rest = name[len(prefix) + 1:] if prefix else name
                parts = rest.split("/")
                for depth in range(1, len(parts)):
                    if recursive or depth == 1:
                        folders.add("/".join(([prefix] if prefix else []) + parts[:depth]))
                if recursive or len(parts) == 1:
                    files.append(self._file_entry(repo, name, data, expand))
            dirs = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                     **({"lastCommit": self._last_commit(repo)} if expand else {})} for d in sorted(folders)]
            return dirs + files

        @staticmethod
        def _last_commit(repo: Repo) -> dict:
            return {"id": repo.sha, "title": "upload", "date": "2026-01-01T00:00:00.000Z"}

        def _file_entry(self, repo: Repo, name: str, data: bytes, expand: bool = False) -> dict:
            entry = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if expand:
                entry["lastCommit"] = self._last_commit(repo)
            return entry

        def _send_file(self, repo: Repo, data: bytes):
            headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                       "Accept-Ranges": "bytes"}
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
            if m and data:
                start = int(m.group(1)) if m.group(1) else max(0, len(data) - int(m.group(2)))
                end = min(int(m.group(2)), len(data) - 1) if m.group(1) and m.group(2) else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(206, data[start:end + 1], headers, content_type="application/octet-stream")
            return self._send(200, data, headers, content_type="application/octet-stream")

        def do_POST(self):
            path, body = self._route(), self._body()
            m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/(.+)", path)
            if m:
                repo = self._dataset(*m.groups())
                if repo is None:
                    return None
                form = (json.loads(body) if body.startswith(b"{") else
                        {k: v for k, v in parse_qs(body.decode()).items()})
                paths = form.get("paths") or []
                paths = [paths] if isinstance(paths, str) else paths
                expand = str(form.get("expand", "")).lower() in ("true", "['true']", "['1']", "1")
                out = []
                for name in paths:
                    name = name.strip("/")
                    if name in repo.files:
                        out.append(self._file_entry(repo, name, repo.files[name], expand))
                    elif any(f.startswith(name + "/") for f in repo.files):
                        out.append({"type": "directory", "path": name, "oid": hashlib.sha1(name.encode()).hexdigest(),
                                    "size": 0})
                return self._send(200, out)
            if path == "/api/repos/create":
                data = json.loads(body or b"{}")
                repo_id = f"{data.get('organization') or USER}/{data['name']}"
                with hub.lock:
                    if repo_id in hub.repos:
                        return self._send(409, {"error": "You already created this model repo", "url": repo_id})
                    hub.repos[repo_id] = Repo()
                return self._send(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
            if m:
                repo_id, action, _revision = m.groups()
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                if action == "preupload":
                    files = json.loads(body).get("files", [])
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                files, deleted, message = {}, [], ""
                for line in body.decode().splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    key, value = item["key"], item["value"]
                    if key == "header":
                        message = value.get("summary", "")
                    elif key == "file":
                        if value.get("encoding") != "base64":
                            return self._send(400, {"error": "only base64 inline files are supported"})
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif key in ("deletedFile", "deletedFolder"):
                        deleted.append(value["path"] + ("/" if key == "deletedFolder" else ""))
                    else:  # lfsFile etc.: this fake has no LFS storage
                        return self._send(400, {"error": f"unsupported commit operation {key}"})
                sha = hub.commit(repo_id, files, deleted, message)
                return self._send(200, {"commitOid": sha, "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}"})
            return self._error(404, "NotFound", f"No route POST {path}")

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path = self._route()
            query = parse_qs(urlparse(self.path).query)
            m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m:
                repo_id, revision = m.group(1), m.group(2) or "main"
                repo = self._dataset(repo_id, revision, files=False)
                if repo is None:
                    return None
                return self._send(200, {"id": repo_id, "sha": repo.sha, "private": False,
                                        "gated": "manual" if repo.gated else False, "cardData": {},
                                        "lastModified": "2026-01-01T00:00:00.000Z",
                                        "siblings": [{"rfilename": name} for name in sorted(repo.files)]})
            m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
            if m:
                repo = self._dataset(m.group(1), m.group(2))
                if repo is None:
                    return None
                flag = lambda name: query.get(name, ["false"])[0].lower() in ("true", "1")  # noqa: E731
                entries = self._entries(repo, m.group(3) or "", flag("recursive"), flag("expand"))
                if entries is None:
                    return self._error(404, "EntryNotFound", f"{m.group(3)} does not exist on {m.group(2)}")
                return self._send(200, entries)
            m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                repo_id, revision, filename = m.groups()
                repo = self._dataset(repo_id, revision)
                if repo is None:
                    return None
                if filename not in repo.files:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist at {revision}")
                return self._send_file(repo, repo.files[filename])
            if path == "/api/models":  # list_models(author=...): ids only, no pagination (a Link header would page)
                author = query.get("author", [""])[0]
                return self._send(200, [{"id": repo_id, "modelId": repo_id, "private": False}
                                        for repo_id in sorted(hub.repos) if repo_id.startswith(f"{author}/")])
            if path == "/api/whoami-v2":
                return self._send(200, {"type": "user", "name": USER, "orgs": [],
                                        "auth": {"accessToken": {"role": "write"}}})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m:
                repo_id, revision = m.group(1), m.group(2) or "main"
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                repo = hub.lookup(repo_id, revision)
                if repo is None:
                    return self._error(404, "RevisionNotFound", f"Revision {revision} not found")
                return self._send(200, {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                                        "siblings": [{"rfilename": name} for name in sorted(repo.files)]})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
            if m:
                repo_id, revision, prefix = m.group(1), m.group(2), (m.group(3) or "").strip("/")
                repo = hub.lookup(repo_id, revision)
                if repo is None:
                    return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                entries = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                           for name, data in sorted(repo.files.items()) if name.startswith(prefix)]
                return self._send(200, entries)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                repo_id, revision, filename = m.groups()
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                repo = hub.lookup(repo_id, revision)
                if repo is None:
                    return self._error(404, "RevisionNotFound", f"Revision {revision} not found")
                if filename not in repo.files:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist at {revision}")
                data = repo.files[filename]
                return self._send(200, data, {"X-Repo-Commit": repo.sha,
                                              "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                                  content_type="application/octet-stream")
            return self._error(404, "RepoNotFound", f"No route GET {path}")

    return Handler


if __name__ == "__main__":  # manual use: python tests/hub_server.py
    import time

    with FakeHub() as hub:
        print(f"fake Hub at {hub.endpoint}", flush=True)
        while True:
            time.sleep(3600)
