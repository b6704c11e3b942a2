"""A local stand-in for the Hugging Face hub: the real `huggingface_hub` and `datasets` talk to it through
HF_ENDPOINT, and every other lookup they make (`datasets-server.<host>`, anything else) reaches it too, through
http_proxy/https_proxy pointing at the same server with NO_PROXY empty. Nothing is forwarded: a request the
stand-in does not serve gets an error, and each request's (method, Host, path) is recorded.

It serves repository replicas, one folder per repo: ROOT/<owner>/<name>/... (tests/fixtures/hub, built by
tests/fixtures/hub/build.py). A replica's `_hub.json` may say
    {"gated": true}                       resolve needs `Authorization: Bearer <HubStandin.token>` (401 / 403)
    {"moved_to": "owner/name"}            every URL of the repo answers 307 to the new name (a renamed repo)
and its folder `_refs/convert/parquet/` is the revision `refs/convert/parquet` (the hub's parquet conversion).
The calls served are those the clients make (huggingface_hub 2.4 hf_api.py / hf_file_system.py / file_download.py,
datasets 5.2 utils/_dataset_viewer.py):
    GET  /api/datasets/R[/revision/REV]           repo info (sha, siblings, gated)
    GET  /api/datasets/R/tree/REV[/PATH]          a folder's entries (?recursive=true: every file below)
    POST /api/datasets/R/paths-info/REV           entries of the form's `paths`
    GET|HEAD /datasets/R/resolve/REV/PATH         the file, with X-Repo-Commit, ETag, Content-Length, Range
    GET  datasets-server.*/parquet|size?dataset=R  the parquet conversion's files / row counts (404 without one)
"""
from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONVERTED = "refs/convert/parquet"
_HIDDEN = ("_hub.json", "_refs")


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class Replica:
    """One repository folder: its revisions (main, the parquet conversion) as {path: file} maps."""

    def __init__(self, repo: str, folder: Path):
        self.repo, self.folder = repo, folder
        meta = folder / "_hub.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {}
        self.sha = _sha(repo + "@main")
        self.revisions = {"main": self._files(folder, skip_hidden=True)}
        conv = folder / "_refs" / "convert" / "parquet"
        if conv.is_dir():
            self.revisions[CONVERTED] = self._files(conv, skip_hidden=False)

    @staticmethod
    def _files(base: Path, skip_hidden: bool) -> dict[str, Path]:
        out = {}
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(base).as_posix()
            if p.is_file() and not (skip_hidden and rel.split("/")[0] in _HIDDEN):
                out[rel] = p
        return out

    def files(self, rev: str) -> dict[str, Path] | None:
        if rev in (self.sha, "main"):
            return self.revisions["main"]
        if rev in (CONVERTED, _sha(self.repo + "@" + CONVERTED)):
            return self.revisions.get(CONVERTED)
        return None

    def commit(self, rev: str) -> str:
        return _sha(self.repo + "@" + CONVERTED) if rev in (CONVERTED, _sha(self.repo + "@" + CONVERTED)) else self.sha


def _entry(path: str, f: Path) -> dict:
    data = f.read_bytes()
    entry = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path}
    if f.suffix in (".parquet", ".arrow"):        # binary files live in LFS on the hub
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _folder(path: str) -> dict:
    return {"type": "directory", "oid": _sha(path), "path": path}


def _entries(files: dict[str, Path], prefix: str, recursive: bool) -> list[dict] | None:
    """The tree below `prefix` ("" for the root): None if it is no folder."""
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    below = {p: f for p, f in files.items() if p.startswith(base)}
    if base and not below:
        return None
    out, folders = [], set()
    for p, f in below.items():
        rest = p[len(base):].split("/")
        for depth in range(1, len(rest)):
            if depth == 1 or recursive:
                folders.add(base + "/".join(rest[:depth]))
        if len(rest) == 1 or recursive:
            out.append(_entry(p, f))
    return [_folder(d) for d in sorted(folders)] + out


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):     # a client that hangs up early is no test failure
        pass


class HubStandin:
    """`with HubStandin(root) as hub:` — hub.url, hub.env (the variables to set), hub.requests, hub.token."""

    token = "hf_standin_token_with_access"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.replicas = {f"{o.name}/{n.name}": Replica(f"{o.name}/{n.name}", n)
                         for o in sorted(self.root.iterdir()) if o.is_dir()
                         for n in sorted(o.iterdir()) if n.is_dir()}
        self.requests: list[tuple[str, str, str]] = []
        self.refused: list[tuple[str, str, str]] = []     # requests for other hosts: answered 502, never forwarded
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"HF_ENDPOINT": self.url, "http_proxy": self.url, "https_proxy": self.url,
                    "HTTP_PROXY": self.url, "HTTPS_PROXY": self.url, "all_proxy": self.url, "ALL_PROXY": self.url,
                    "NO_PROXY": "", "no_proxy": "", "HF_HUB_DISABLE_XET": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "10", "HF_HUB_DOWNLOAD_TIMEOUT": "10"}
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def clear(self):
        with self._lock:
            self.requests.clear()
            self.refused.clear()

    def hosts(self) -> set[str]:
        return {host for _, host, _ in self.requests}

    # ---- request handling -----------------------------------------------------------------------------------

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):     # quiet
                pass

            def _route(self, method):
                url = urllib.parse.urlsplit(self.path)   # an absolute URI when it came as a proxy request
                host = url.netloc or self.headers.get("Host", "")
                with hub._lock:
                    hub.requests.append((method, host, url.path))
                body = b""
                if method == "POST":
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if host.startswith("datasets-server."):
                    return hub._viewer(self, url)
                own = host in (f"127.0.0.1:{hub.port}", f"localhost:{hub.port}")
                if not own or method == "CONNECT":
                    with hub._lock:
                        hub.refused.append((method, host, url.path))
                    self.close_connection = True
                    return hub._send(self, 502, {"error": f"the hub stand-in forwards nothing ({host})"})
                return hub._hub(self, method, urllib.parse.unquote(url.path), url.query, body)

            def do_GET(self):
                self._route("GET")

            def do_HEAD(self):
                self._route("HEAD")

            def do_POST(self):
                self._route("POST")

            def do_CONNECT(self):
                self._route("CONNECT")

        return Handler

    @staticmethod
    def _send(h, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None,
              head: bool = False):
        data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
        h.send_response(status)
        hdrs = {"Content-Type": "application/json" if raw is None else "application/octet-stream",
                "Content-Length": str(len(data)), **(headers or {})}
        for k, v in hdrs.items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def _error(self, h, status: int, code: str, message: str, head: bool = False):
        self._send(h, status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

    def _split(self, rest: str):
        """'owner/name/tail...' -> (replica, moved_to, tail) or (None, None, None)."""
        parts = rest.split("/", 2)
        if len(parts) < 2:
            return None, None, None
        rep = self.replicas.get(f"{parts[0]}/{parts[1]}")
        if rep is None:
            return None, None, None
        return rep, rep.meta.get("moved_to"), parts[2] if len(parts) > 2 else ""

    @staticmethod
    def _rev_and_path(tail: str, files_of) -> tuple[str, str]:
        """REV/PATH where REV may itself hold slashes (refs/convert/parquet, sent %2F-encoded)."""
        if tail.startswith(CONVERTED + "/") or tail == CONVERTED:
            return CONVERTED, tail[len(CONVERTED) + 1:]
        rev, _, path = tail.partition("/")
        return rev, path

    def _hub(self, h, method: str, path: str, query: str, body: bytes):
        head = method == "HEAD"
        q = urllib.parse.parse_qs(query)
        if path.startswith("/api/datasets/"):
            rep, moved, tail = self._split(path[len("/api/datasets/"):])
            kind = "api"
        elif path.startswith("/datasets/"):
            rep, moved, tail = self._split(path[len("/datasets/"):])
            kind = "file"
        else:
            return self._error(h, 404, "EntryNotFound", f"{path}: the stand-in serves datasets only", head)
        if rep is None:
            return self._error(h, 404, "RepoNotFound", f"Repository not found: {path}", head)
        if moved:       # a renamed repo: the hub redirects every URL of the old name
            loc = path.replace(f"/{rep.repo}", f"/{moved}", 1)
            return self._send(h, 307, {"url": loc}, {"Location": loc}, head=head)
        if kind == "api":
            return self._api(h, rep, tail, q, body, head)
        if not tail.startswith("resolve/"):
            return self._error(h, 404, "EntryNotFound", f"{path}: expected resolve/REV/PATH", head)
        return self._resolve(h, rep, tail[len("resolve/"):], head)

    def _api(self, h, rep: Replica, tail: str, q: dict, body: bytes, head: bool):
        if tail == "" or tail.startswith("revision/"):
            rev = tail[len("revision/"):] or "main" if tail else "main"
            files = rep.files(rev)
            if files is None:
                return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            info = {"_id": rep.sha[:24], "id": rep.repo, "sha": rep.commit(rev), "private": False, "disabled": False,
                    "gated": "manual" if rep.meta.get("gated") else False, "downloads": 0, "likes": 0, "tags": [],
                    "lastModified": "2025-01-01T00:00:00.000Z", "cardData": {},
                    "siblings": [{"rfilename": p} for p in files]}
            return self._send(h, 200, info, head=head)
        for verb in ("tree/", "paths-info/"):
            if tail.startswith(verb):
                rev, sub = self._rev_and_path(tail[len(verb):], rep.files)
                files = rep.files(rev)
                if files is None:
                    return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
                if verb == "tree/":
                    entries = _entries(files, sub, q.get("recursive", ["false"])[0].lower() == "true")
                    if entries is None:
                        return self._error(h, 404, "EntryNotFound", f"{sub} does not exist on {rev}", head)
                    return self._send(h, 200, entries, head=head)
                asked = urllib.parse.parse_qs(body.decode()).get("paths", [])
                if not asked and body.strip().startswith(b"{"):
                    asked = json.loads(body).get("paths", [])
                out = []
                for p in asked:
                    p = p.strip("/")
                    if p in files:
                        out.append(_entry(p, files[p]))
                    elif any(f.startswith(p + "/") for f in files):
                        out.append(_folder(p))
                return self._send(h, 200, out, head=head)
        return self._error(h, 404, "EntryNotFound", f"api/datasets/{rep.repo}/{tail}: not served", head)

    def _resolve(self, h, rep: Replica, tail: str, head: bool):
        if rep.meta.get("gated"):
            auth = h.headers.get("Authorization", "")
            msg = (f"Access to dataset {rep.repo} is restricted. You must have access to it and be authenticated "
                   f"to access it. Please log in.")
            if not auth:
                return self._error(h, 401, "GatedRepo", msg, head)
            if auth != f"Bearer {self.token}":
                return self._error(h, 403, "GatedRepo", f"Access to dataset {rep.repo} is restricted and you are "
                                                        f"not in the authorized list.", head)
        rev, path = self._rev_and_path(tail, rep.files)
        files = rep.files(rev)
        if files is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        if path not in files:
            return self._error(h, 404, "EntryNotFound", f"{path} does not exist on {rev}", head)
        data = files[path].read_bytes()
        etag = hashlib.sha256(data).hexdigest() if files[path].suffix in (".parquet", ".arrow") \
            else hashlib.sha1(data).hexdigest()
        headers = {"X-Repo-Commit": rep.commit(rev), "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if files[path].suffix in (".parquet", ".arrow"):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            lo, _, hi = rng[len("bytes="):].partition("-")
            lo = int(lo or 0)
            hi = min(int(hi) if hi else len(data) - 1, len(data) - 1)
            if lo >= len(data):
                return self._send(h, 416, None, {**headers, "Content-Range": f"bytes */{len(data)}"}, raw=b"",
                                  head=head)
            headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
            return self._send(h, 206, None, headers, raw=data[lo:hi + 1], head=head)
        return self._send(h, 200, None, headers, raw=data, head=head)

    def _viewer(self, h, url):
        """The dataset viewer's API (datasets-server.<host>): the parquet conversion's files and sizes."""
        q = urllib.parse.parse_qs(url.query)
        rep = self.replicas.get((q.get("dataset") or [""])[0])
        conv = rep.revisions.get(CONVERTED) if rep else None
        if not conv:
            return self._send(h, 404, {"error": "The dataset does not exist, or is not accessible."})
        if url.path == "/parquet":
            out = []
            for p, f in conv.items():
                config, split, name = p.split("/", 2)
                out.append({"dataset": rep.repo, "config": config, "split": split, "filename": name,
                            "size": f.stat().st_size,
                            "url": f"{self.url}/datasets/{rep.repo}/resolve/{urllib.parse.quote(CONVERTED, safe='')}/{p}"})
            return self._send(h, 200, {"parquet_files": out, "pending": [], "failed": [], "partial": False})
        return self._send(h, 404, {"error": f"{url.path}: not served by the stand-in"})
