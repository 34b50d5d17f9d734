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
    GET  /api/whoami-v2                           -> a fixed user

Use as a context manager: `with FakeHub() as hub: hub.endpoint ...`; `hub.requests` logs (method, path).
`point_client_at(monkeypatch, endpoint, cache_dir)` points this process's Hub client (huggingface_hub reads its
settings at import time) at it, for in-process tests; subprocesses take `HF_ENDPOINT` etc. in their environment.
"""

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

USER = "tester"


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
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

    def lookup(self, repo_id: str, revision: str) -> Repo | None:
        """The repo if `revision` is "main" or one of its commits (files are only kept at the head)."""
        repo = self.repos.get(repo_id)
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

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hub.hf_api(), "endpoint", endpoint)
    monkeypatch.setattr(_http, "time", _NoSleep())
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

        def do_POST(self):
            path, body = self._route(), self._body()
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
