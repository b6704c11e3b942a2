"""A local OpenAI-compatible server whose "model" is a deterministic formatter: the smoke-scale rewriter.

    python -m reproduce.stages.smoke.local_openai --port 0     # prints http://127.0.0.1:PORT/v1, serves until killed
    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 python -m reproduce.stages.rewrite ...

It is not a language model. Given a trace (inside <original_solution> tags in the last user message, or
that whole message), it returns the trace verbatim as the thought and the trace's final answer (its last
\\boxed{...} or last fenced code block) as the solution:

    <|begin_of_thought|> trace <|end_of_thought|> <|begin_of_solution|> answer <|end_of_solution|>

It speaks enough of the API for the real `openai` client: chat completions, file upload/download and the
Batch API (a batch moves validating -> in_progress -> completed, one step per status poll). Token counts
are whitespace-separated words; a prompt whose leading messages (all but the last) were seen before reports
them as cached, the way OpenAI's prefix cache would.

Tests inject faults through the constructor: `fail_chat=[429, 500]` fails the first chat calls with those
statuses; `fail_batch_lines={"id-3": 1}` fails that custom_id's first batch attempt; `fail_batches=1` ends the first
batch "failed" (as when OpenAI rejects an input file), with no output. `requests` counts
every HTTP request served, by route; `usages` keeps each usage block returned.
"""
from __future__ import annotations

import argparse
import collections
import email.parser
import email.policy
import itertools
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reproduce.stages.lib.grading import extract_boxed

MODEL_NAME = "local-formatter"
BATCH_STEPS = ("validating", "in_progress", "completed")
TRACE = re.compile(r"<original_solution>\n?(.*?)\n?</original_solution>", re.S)
CODE_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.S)


# ---- the "model" -------------------------------------------------------------------------------------
def format_trace(trace: str) -> str:
    """The trace verbatim as the thought; its final answer (last code block, else last boxed answer,
    else last paragraph) as the solution."""
    trace = trace.strip()
    blocks = CODE_BLOCK.findall(trace)
    boxed = extract_boxed(trace)
    if blocks:
        solution = f"```python\n{blocks[-1].strip()}\n```"
    elif boxed is not None:
        solution = f"The final answer is $\\boxed{{{boxed}}}$."
    else:
        solution = trace.split("\n\n")[-1].strip()
    return (f"<|begin_of_thought|>\n\n{trace}\n\n<|end_of_thought|>\n\n"
            f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>")


def count_tokens(text: str) -> int:
    return len(text.split())


class LocalOpenAI:
    """The server. `with LocalOpenAI() as srv: srv.base_url` -> "http://127.0.0.1:PORT/v1"."""

    def __init__(self, port: int = 0, fail_chat=(), fail_batch_lines=(), fail_batches: int = 0,
                 host: str = "127.0.0.1", api_key: str | None = None, models=None, batch_allowed: bool = True,
                 hold_polls: int = 0):
        # What a preflight asks (reproduce.preflight.api): with `api_key` every request must carry it (else 401);
        # `models` are the ids models.retrieve knows (None: any); `batch_allowed=False` answers 403 on /batches.
        self.api_key, self.models, self.batch_allowed = api_key, models, batch_allowed
        # `hold_polls`: a batch stays in_progress this many more polls (a batch in flight, to be cancelled);
        # a batch cancelled in_progress has finished the first half of its lines, and bills them
        self.hold_polls = hold_polls
        self.fail_chat = list(fail_chat)
        self.fail_batches = fail_batches
        self.fail_batch_lines = (dict(fail_batch_lines) if isinstance(fail_batch_lines, dict)
                                 else {cid: 1 for cid in fail_batch_lines})
        self.requests: collections.Counter = collections.Counter()
        self.usages: list[dict] = []
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._seen_prefixes: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}/v1"

    def start(self) -> "LocalOpenAI":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="local-openai", daemon=True)  # short poll: stop() returns fast
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-local-{next(self._ids)}"

    # ---- API operations (called with the lock held) -----------------------------------------------
    def complete(self, body: dict) -> dict:
        """One chat completion: the formatted trace with its usage."""
        messages = body.get("messages") or []
        if not messages:
            raise ApiError(400, "messages must be a non-empty list")
        last = str(messages[-1].get("content", ""))
        found = TRACE.search(last)
        content = format_trace(found.group(1) if found else last)
        finish = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if max_tokens and count_tokens(content) > max_tokens:
            content, finish = _first_tokens(content, int(max_tokens)), "length"
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        prefix = json.dumps(messages[:-1], sort_keys=True)
        cached = sum(count_tokens(str(m.get("content", ""))) for m in messages[:-1]) \
            if messages[:-1] and prefix in self._seen_prefixes else 0
        self._seen_prefixes.add(prefix)
        completion_tokens = count_tokens(content)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        self.usages.append(usage)
        return {"id": self._new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", MODEL_NAME), "system_fingerprint": MODEL_NAME,
                "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                             "message": {"role": "assistant", "content": content, "refusal": None}}],
                "usage": usage}

    def chat(self, body: dict) -> dict:
        if self.fail_chat:
            status = self.fail_chat.pop(0)
            raise ApiError(status, f"injected failure {status}",
                           "rate_limit_exceeded" if status == 429 else "server_error")
        return self.complete(body)

    def upload(self, fields: dict) -> dict:
        data, filename = fields.get("file", (b"", "upload.jsonl"))
        purpose = fields.get("purpose", (b"", None))[0].decode()
        if purpose not in ("batch", "fine-tune", "assistants", "user_data"):
            raise ApiError(400, f"unsupported purpose {purpose!r}")
        return self._store(data, filename or "upload.jsonl", purpose)

    def _store(self, data: bytes, filename: str, purpose: str) -> dict:
        meta = {"id": self._new_id("file"), "object": "file", "bytes": len(data),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed"}
        self.files[meta["id"]] = {"meta": meta, "data": data}
        return meta

    def create_batch(self, body: dict) -> dict:
        source = self.files.get(body.get("input_file_id", ""))
        if source is None:
            raise ApiError(404, f"no file {body.get('input_file_id')!r}")
        if body.get("completion_window") != "24h":
            raise ApiError(400, "completion_window must be '24h'")
        endpoint = body.get("endpoint", "")
        out, err = [], []
        for line in source["data"].decode().splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            cid = req["custom_id"]
            line_id = self._new_id("batch_req")
            if self.fail_batch_lines.get(cid, 0) > 0:
                self.fail_batch_lines[cid] -= 1
                err.append({"id": line_id, "custom_id": cid, "response": {
                    "status_code": 500, "request_id": line_id,
                    "body": {"error": {"message": "injected line failure", "type": "server_error"}}},
                    "error": None})
            elif req.get("url") != endpoint:
                err.append({"id": line_id, "custom_id": cid, "response": None,
                             "error": {"code": "invalid_url", "message": f"url must be {endpoint}"}})
            else:
                out.append({"id": line_id, "custom_id": cid, "error": None, "response": {
                    "status_code": 200, "request_id": line_id, "body": self.complete(req["body"])}})
        batch = {"id": self._new_id("batch"), "object": "batch", "endpoint": endpoint,
                 "input_file_id": body["input_file_id"], "completion_window": "24h",
                 "created_at": int(time.time()), "status": BATCH_STEPS[0], "metadata": body.get("metadata"),
                 "output_file_id": None, "error_file_id": None,
                 "request_counts": {"total": len(out) + len(err), "completed": 0, "failed": 0}}
        fail = self.fail_batches > 0
        self.fail_batches -= fail
        self.batches[batch["id"]] = {"batch": batch, "out": out, "err": err, "step": 0, "fail": fail,
                                     "held": self.hold_polls}
        return batch

    def cancel_batch(self, batch_id: str) -> dict:
        entry = self.batches.get(batch_id)
        if entry is None:
            raise ApiError(404, f"no batch {batch_id!r}")
        batch = entry["batch"]
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            raise ApiError(400, f"Cannot cancel a batch with status '{batch['status']}'.")
        batch.update(status="cancelling", cancelling_at=int(time.time()))
        return batch

    def get_model(self, model_id: str) -> dict:
        if self.models is not None and model_id not in self.models:
            raise ApiError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                           "model_not_found")
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "local"}

    def list_batches(self) -> dict:
        data = [e["batch"] for e in self.batches.values()]
        return {"object": "list", "data": data, "has_more": False,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    def get_batch(self, batch_id: str) -> dict:
        entry = self.batches.get(batch_id)
        if entry is None:
            raise ApiError(404, f"no batch {batch_id!r}")
        batch = entry["batch"]
        if batch["status"] == "cancelling":
            finished = entry["out"][:len(entry["out"]) // 2] if entry["step"] >= 1 else []
            batch.update(status="cancelled", cancelled_at=int(time.time()))
            batch["request_counts"].update(completed=len(finished), failed=0)
            if finished:
                data = "".join(json.dumps(x) + "\n" for x in finished).encode()
                batch["output_file_id"] = self._store(data, f"{batch_id}_output.jsonl", "batch_output")["id"]
            return batch
        if batch["status"] == "in_progress" and entry["held"] > 0:
            entry["held"] -= 1
            return batch
        if entry["step"] < len(BATCH_STEPS) - 1:  # each poll moves the batch one step on
            entry["step"] += 1
            batch["status"] = BATCH_STEPS[entry["step"]]
            if batch["status"] == "completed" and entry["fail"]:
                batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                    {"code": "injected_failure", "message": "injected batch failure", "line": None}]})
            elif batch["status"] == "completed":
                batch["completed_at"] = int(time.time())
                batch["request_counts"].update(completed=len(entry["out"]), failed=len(entry["err"]))
                for key, lines in (("output_file_id", entry["out"]), ("error_file_id", entry["err"])):
                    if lines:
                        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
                        batch[key] = self._store(data, f"{batch_id}_{key[:-8]}.jsonl", "batch_output")["id"]
        return batch


def _first_tokens(text: str, n: int) -> str:
    """The first n whitespace-separated words of text, original spacing kept."""
    matches = list(re.finditer(r"\S+", text))
    return text[:matches[n - 1].end()] if n > 0 and len(matches) >= n else ""


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code = status, code


def _handler(server: LocalOpenAI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the openai client (httpx) expects

        def log_message(self, *args):  # quiet: tests and the smoke pipeline read stderr
            pass

        def _reply(self, status: int, payload, content_type="application/json"):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self, method: str):
            path = self.path.split("?", 1)[0].rstrip("/")
            body = self._body() if method == "POST" else b""
            routes = [  # (name counted in server.requests, method, path, action)
                ("chat", "POST", r"/v1/chat/completions", lambda: server.chat(json.loads(body))),
                ("files.create", "POST", r"/v1/files",
                 lambda: server.upload(_multipart(self.headers.get("Content-Type", ""), body))),
                ("files.content", "GET", r"/v1/files/([^/]+)/content", lambda fid: _file(server, fid)["data"]),
                ("files.retrieve", "GET", r"/v1/files/([^/]+)", lambda fid: _file(server, fid)["meta"]),
                ("batches.create", "POST", r"/v1/batches", lambda: server.create_batch(json.loads(body))),
                ("batches.cancel", "POST", r"/v1/batches/([^/]+)/cancel", server.cancel_batch),
                ("batches.retrieve", "GET", r"/v1/batches/([^/]+)", server.get_batch),
                ("batches.list", "GET", r"/v1/batches", server.list_batches),
                ("models.retrieve", "GET", r"/v1/models/(.+)", server.get_model),
            ]
            for name, verb, pattern, action in routes:
                m = re.fullmatch(pattern, path)
                if verb == method and m:
                    refused = _refusal(server, self.headers.get("Authorization", ""), name)
                    if refused:
                        return self._reply(refused.status, {"error": {
                            "message": str(refused), "type": refused.code, "code": refused.code, "param": None}})
                    with server._lock:
                        server.requests[name] += 1
                        server.requests["total"] += 1
                        try:
                            result = action(*m.groups())
                        except ApiError as e:
                            return self._reply(e.status, {"error": {
                                "message": str(e), "type": e.code, "code": e.code, "param": None}})
                        except (ValueError, KeyError) as e:
                            return self._reply(400, {"error": {"message": f"bad request: {e}",
                                                               "type": "invalid_request_error"}})
                    if isinstance(result, bytes):
                        return self._reply(200, result, "application/octet-stream")
                    return self._reply(200, result)
            self._reply(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

    return Handler


def _refusal(server: LocalOpenAI, authorization: str, route: str) -> "ApiError | None":
    """401 for a key other than the server's, 403 for /batches when Batch is not allowed; else None."""
    if server.api_key is not None and authorization != f"Bearer {server.api_key}":
        return ApiError(401, "Incorrect API key provided.", "invalid_api_key")
    if not server.batch_allowed and route.startswith("batches."):
        return ApiError(403, "This key is not allowed to use the Batch API.", "permission_denied")
    return None


def _file(server: LocalOpenAI, file_id: str) -> dict:
    if file_id not in server.files:
        raise ApiError(404, f"no file {file_id!r}")
    return server.files[file_id]


def _multipart(content_type: str, body: bytes) -> dict:
    """multipart/form-data -> {field: (bytes, filename)}, with the stdlib email parser."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ApiError(400, "expected multipart/form-data")
    return {part.get_param("name", header="content-disposition"):
            (part.get_payload(decode=True) or b"", part.get_filename())
            for part in msg.iter_parts()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.stages.smoke.local_openai",
                                 description="Serve the deterministic smoke-scale rewriter on an "
                                             "OpenAI-compatible API (127.0.0.1) until killed.")
    ap.add_argument("--port", type=int, default=0, help="port to bind (0: any free port; default 0)")
    args = ap.parse_args(argv)
    try:
        server = LocalOpenAI(port=args.port)
    except OSError as e:
        print(f"cannot bind 127.0.0.1:{args.port}: {e.strerror}; pick another --port or 0", file=sys.stderr)
        return 2
    print(server.base_url, flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
