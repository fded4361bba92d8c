"""A local stand-in for the few Hugging Face Hub endpoints huggingface_hub's client calls to create a
repo, commit files (regular uploads, NDJSON) and download them (repo info, tree, resolve).

Writes need `Authorization: Bearer <token>`; private repos need it for reads too. Requests are
recorded (method, path, whether a token came) so tests can check what the client sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlparse

from http_standin import LoopbackServer

_REPO = r"(?P<repo>[^/]+/[^/]+)"


class HubStandIn(LoopbackServer):
    """Start with `with HubStandIn(token) as hub:`; `hub.url` is the endpoint to give HF_ENDPOINT."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self._listen()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {hub.token}"

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not (head or self.command == "HEAD"):
                    self.wfile.write(body)

            def _json(self, status: int, obj, headers: dict | None = None):
                self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _error(self, status: int, code: str, message: str):
                self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _repo(self, repo_id: str, write: bool = False):
                repo = hub.repos.get(repo_id)
                if repo is None or (repo["private"] and not self._authorized()):
                    self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                    return None
                if write and not self._authorized():
                    self._error(401, "Unauthorized", "Invalid credentials")
                    return None
                return repo

            def _snapshot(self, repo, rev: str):
                sha = repo["refs"].get(rev, rev)
                return sha, repo["commits"].get(sha)

            def do_POST(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(("POST", path, self._authorized()))
                body = self._body()
                if path == "/api/repos/create":
                    if not self._authorized():
                        return self._error(401, "Unauthorized", "Invalid credentials")
                    req = json.loads(body)
                    repo_id = f"{req.get('organization')}/{req['name']}"
                    if repo_id in hub.repos:
                        return self._json(
                            409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                        )
                    hub.repos[repo_id] = {
                        "private": req.get("visibility") == "private" or bool(req.get("private")),
                        "refs": {"main": "0" * 40},
                        "commits": {"0" * 40: {}},
                    }
                    return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._json(200, {"errors": [], "warnings": []})
                m = re.fullmatch(rf"/api/models/{_REPO}/preupload/(?P<rev>.+)", path)
                if m:
                    if self._repo(m["repo"], write=True) is None:
                        return None
                    files = json.loads(body)["files"]
                    return self._json(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                m = re.fullmatch(rf"/api/models/{_REPO}/commit/(?P<rev>.+)", path)
                if m:
                    repo = self._repo(m["repo"], write=True)
                    if repo is None:
                        return None
                    _, files = self._snapshot(repo, m["rev"])
                    files = dict(files or {})
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            v = item["value"]
                            files[v["path"]] = (
                                base64.b64decode(v["content"])
                                if v.get("encoding") == "base64"
                                else v["content"].encode()
                            )
                        elif item["key"] == "deletedFile":
                            files.pop(item["value"]["path"], None)
                    sha = hashlib.sha1(
                        json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode()
                    ).hexdigest()
                    repo["commits"][sha] = files
                    repo["refs"][m["rev"]] = sha
                    return self._json(200, {"commitUrl": f"{hub.url}/{m['repo']}/commit/{sha}", "commitOid": sha})
                return self._error(404, "EntryNotFound", f"no endpoint {path}")

            def _get(self, head: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(("HEAD" if head else "GET", path, self._authorized()))
                routes = (
                    ("info", rf"/api/models/{_REPO}(?:/revision/(?P<rev>.+))?"),
                    ("tree", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)/?"),
                    ("resolve", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)"),
                )
                for kind, pattern in routes:  # noqa: B007 (kind is used after the loop)
                    m = re.fullmatch(pattern, path)
                    if m:
                        break
                else:
                    return self._error(404, "EntryNotFound", f"no endpoint {path}")
                repo = self._repo(m["repo"])
                if repo is None:
                    return None
                sha, files = self._snapshot(repo, m["rev"] or "main")
                if files is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {m['rev']}")
                if kind == "info":
                    return self._json(
                        200,
                        {
                            "id": m["repo"],
                            "modelId": m["repo"],
                            "sha": sha,
                            "private": repo["private"],
                            "siblings": [{"rfilename": f} for f in sorted(files)],
                        },
                    )
                if kind == "tree":
                    return self._json(
                        200,
                        [
                            {"type": "file", "path": f, "size": len(v), "oid": hashlib.sha1(v).hexdigest()}
                            for f, v in sorted(files.items())
                        ],
                    )
                if m["file"] not in files:
                    return self._error(404, "EntryNotFound", f"{m['file']} does not exist at {m['rev']}")
                data = files[m["file"]]
                return self._send(
                    200,
                    data,
                    {
                        "X-Repo-Commit": sha,
                        "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                        "Content-Type": "application/octet-stream",
                    },
                    head=head,
                )

            def do_GET(self):
                self._get(head=False)

            def do_HEAD(self):
                self._get(head=True)

        return Handler
