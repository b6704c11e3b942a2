"""Stage program `rewrite`: GPT-4o-mini reformats each kept trace into thought + solution sections.

    python -m reproduce.stages.rewrite --recipe ARTIFACTS/recipe.yaml --artifacts ARTIFACTS [--sync]
    python -m reproduce.stages.rewrite --recipe ... --artifacts ... --estimate     # tokens and $, submits nothing

Reads ARTIFACTS/filter/kept.jsonl; writes ARTIFACTS/rewrite/rewritten.jsonl (each record + `rewritten`,
`format_ok`, `recheck_correct`, `recheck_reason`), summary.json and cache.sqlite.

- Batch API by default (recipe `rewrite.batch`, half price): input files of <= 50,000 requests and <= 200 MB
  (environment.md), `completion_window="24h"`, polled with a growing interval; failed lines are resubmitted
  up to MAX_ATTEMPTS times. `--sync` sends chat completions instead, retrying 429/5xx with exponential
  backoff and jitter (the client's own retries are off, so every retry is ours and counted).
- Every result is cached in SQLite under sha256(model, messages, params): a rerun pays nothing for what is
  done. Batches in flight are recorded there too, so a rerun after a crash polls them instead of resubmitting.
- A submitted batch bills whether or not anyone watches it: each is admitted whole (paid + open batches'
  estimates + its own <= REPRODUCE_API_BUDGET_USD) and its commitment is appended to batches.jsonl before the
  next request (the controller counts it from then on); `cancel_batches` cancels what is open and collects what
  a cancelled batch finished (billed), so a rerun pays nothing twice.
- Every paid result's usage is appended to ARTIFACTS/rewrite/usage.jsonl (one line: model, batch, tokens, $,
  at) before its cache row is committed, so a crash never hides money paid: the pipeline records new lines
  as they appear, and summary.json's `api_usage` sums every line, also those paid before a crash. A cached
  result is never appended again (`usd_this_run` is what this invocation paid).
- Before anything is sent the cost is estimated (chars/4 tokens, completion = `rewrite.output_ratio` x the
  trace); if env REPRODUCE_API_BUDGET_USD is set and the estimate exceeds it, exit 3 with nothing submitted.
  An estimate can be wrong: once what this run paid reaches it, no further request (sync) or resubmission
  (batch) is sent, and the stage exits 3 with what it has cached.
- After rewriting, each record is graded again (`rewrite.recheck`), as NovaSky did (sky-t1.md, Step 3).
- The client reads OPENAI_API_KEY / OPENAI_BASE_URL. With `rewrite.model: local-formatter` and no base URL,
  the deterministic formatter of `reproduce.stages.smoke.local_openai` is started in this process.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import hashlib
import json
import math
import os
import random
import sqlite3
import sys
import threading
import time

from costmodel.api_prices import api_cost
from reproduce.stages.lib.common import BadInput, OverBudget, load_recipe, read_jsonl, run_main

# OpenAI Batch API limits per input file (environment.md, "OpenAI"); 200 MB taken as 200e6 bytes.
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 200_000_000
MAX_ATTEMPTS = 3              # a request failing this many times (batch lines or sync calls) is given up
SYNC_RETRIES = 6              # per sync call, on 429/5xx/connection errors
BACKOFF_S = 1.0               # sync retry: BACKOFF_S x 2^n, with jitter, capped at BACKOFF_MAX_S
BACKOFF_MAX_S = 60.0
POLL_S = 1.0                  # batch polling: first interval, x1.5 each poll, capped at POLL_MAX_S
POLL_MAX_S = 120.0
CHARS_PER_TOKEN = 4           # estimate heuristic for English text and code
LOCAL_MODEL = "local-formatter"
TERMINAL = ("completed", "failed", "expired", "cancelled")

# Our wording, in the spirit of NovaSky's `convert_prompt` (sky-t1.md, "GPT-4o-mini rewrite"): copy the
# thinking, then a clean solution; one code block for code. The trace goes in <original_solution> tags,
# which the local formatter also reads.
CONVERT_PROMPT = """\
Rewrite the solution below into exactly two sections. Do not solve the problem again.

1. The thought section: copy the original reasoning word for word, from its first line to its last,
including false starts, checks and corrections. Do not summarise, shorten or fix it. Separate steps with a
blank line. Enclose it as <|begin_of_thought|> ... <|end_of_thought|>.

2. The solution section: the final solution the reasoning arrived at, stated precisely, clearly and
concisely. Enclose it as <|begin_of_solution|> ... <|end_of_solution|>.

{domain_rule}

Output only the two sections, nothing before or after them.

<original_solution>
{trace}
</original_solution>"""

DOMAIN_RULES = {
    "math": "This is a math problem: end the solution section with the final answer in \\boxed{}, the same "
            "answer the reasoning reached.",
    "code": "This is a coding problem: the solution section contains exactly one code block, ```python ... ```, "
            "the complete final program the reasoning settled on, reading input and printing output as the "
            "original did. No other code blocks in the solution section.",
    "mcq": "This is a multiple-choice problem: end the solution section with the chosen letter in \\boxed{}.",
}


class StageError(BadInput):
    """Exit 2; over REPRODUCE_API_BUDGET_USD is reproduce.errors.OverBudget (exit 3)."""


class Failed(StageError):
    exit_code = 1


# ---- requests, cache keys, estimates ------------------------------------------------------------------
def rewrite_config(recipe: dict) -> dict:
    cfg = recipe.get("rewrite")
    if not isinstance(cfg, dict):
        raise StageError("recipe has no rewrite: section")
    for key, kind, name in (("model", str, "model name"), ("temperature", (int, float), "number"),
                            ("max_tokens", int, "whole number"), ("system_prompt", str, "string"),
                            ("output_ratio", (int, float), "number")):
        if not isinstance(cfg.get(key), kind) or isinstance(cfg.get(key), bool):
            raise StageError(f"recipe rewrite.{key} = {cfg.get(key)!r}: expected a {name}")
    return cfg


def build_request(record: dict, cfg: dict) -> dict:
    """The chat-completions body for one record."""
    rule = DOMAIN_RULES.get(record.get("domain"), "")
    user = CONVERT_PROMPT.replace("{domain_rule}", rule).replace("{trace}", str(record.get("response") or ""))
    return {"model": cfg["model"],
            "messages": [{"role": "system", "content": cfg["system_prompt"]}, {"role": "user", "content": user}],
            "temperature": cfg["temperature"], "max_tokens": cfg["max_tokens"]}


def cache_key(body: dict) -> str:
    """sha256 of (model, messages, params): the same request is never paid for twice."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def estimate_tokens(records: list[dict], recipe: dict) -> dict:
    """Tokens and $ for rewriting `records`, before any request: chars/4 for the prompt as built, and
    `output_ratio` x the trace for the completion (the rewrite copies the trace), capped at max_tokens."""
    cfg = rewrite_config(recipe)
    prompt = completion = 0
    for record in records:
        p, c = request_tokens(build_request(record, cfg), record, cfg)
        prompt, completion = prompt + p, completion + c
    return {"requests": len(records), "prompt_tokens": prompt, "completion_tokens": completion,
            "usd": round(tokens_usd(cfg, prompt, completion), 6), "model": cfg["model"],
            "batch": bool(cfg.get("batch"))}


def request_tokens(body: dict, record: dict, cfg: dict) -> tuple[int, int]:
    """(prompt, completion) tokens one request is estimated at: chars/4 of its messages, and `output_ratio` x
    the trace it copies, capped at max_tokens."""
    prompt = math.ceil(sum(len(m["content"]) for m in body["messages"]) / CHARS_PER_TOKEN)
    trace = math.ceil(len(str(record.get("response") or "")) / CHARS_PER_TOKEN)
    return prompt, min(math.ceil(cfg["output_ratio"] * trace), cfg["max_tokens"])


def tokens_usd(cfg: dict, prompt: int, completion: int) -> float:
    try:
        return api_cost(cfg["model"], prompt, completion, 0, batch=bool(cfg.get("batch")))
    except BadInput as e:   # a model the price table does not know
        raise StageError(f"recipe rewrite.model: {e}") from None


def api_budget() -> float | None:
    """REPRODUCE_API_BUDGET_USD: what the pipeline leaves this stage to pay, or None (no cap)."""
    raw = os.environ.get("REPRODUCE_API_BUDGET_USD")
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise StageError(f"REPRODUCE_API_BUDGET_USD={raw!r}: expected a number of dollars") from None


def over_budget(usage: "Usage", cap: float | None, before: str) -> None:
    """An estimate can be wrong; what was paid decides: OverBudget once this run has paid the cap (a free model,
    the smoke formatter, never reaches it)."""
    if cap is not None and usage.usd() > 0 and usage.usd() >= cap:
        raise OverBudget(f"paid ${usage.usd():.4f} this run, the REPRODUCE_API_BUDGET_USD=${cap:g} left for it; "
                         f"stopped before {before} (results so far are cached: run again with more budget to finish)")


def budget_guard(estimate: dict) -> None:
    budget = api_budget()
    if budget is None:
        return
    if estimate["usd"] > budget:
        raise OverBudget(
            f"estimated ${estimate['usd']:.4f} for {estimate['requests']} requests ({estimate['prompt_tokens']:,} "
            f"prompt + {estimate['completion_tokens']:,} completion tokens, {estimate['model']}"
            f"{' batch' if estimate['batch'] else ''}) exceeds REPRODUCE_API_BUDGET_USD=${budget:g}; "
            "nothing submitted")


# ---- the cache (SQLite) -------------------------------------------------------------------------------
def open_cache(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, model TEXT, content TEXT, finish_reason TEXT,
            prompt_tokens INT, cached_tokens INT, completion_tokens INT, batch INT, usd REAL, created REAL);
        CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, keys TEXT, attempt INT, status TEXT,
            created REAL);
    """)
    return conn


def cached_results(conn, keys) -> dict:
    out = {}
    keys = list(keys)
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        rows = conn.execute(f"SELECT key, content, finish_reason FROM results WHERE key IN "
                            f"({','.join('?' * len(chunk))})", chunk)
        out.update({k: {"content": c, "finish_reason": f} for k, c, f in rows})
    return out


def store(conn, key: str, model: str, completion: dict, batch: bool, usage: "Usage",
          batch_id: str | None = None) -> None:
    """Record one paid response: its usage first (the log: paid is paid), then its cache row. A batch's
    output read again after a crash is the same payment: logged once, by (batch id, key)."""
    paid(usage, model, completion, batch, paid_as=(batch_id, key) if batch_id else None)
    cache_result(conn, key, model, completion, batch)


def paid(usage: "Usage", model: str, completion: dict, batch: bool, paid_as: tuple | None = None) -> None:
    """Log one response's usage as paid."""
    usage.add(model, batch, *_cost(model, completion, batch), paid_as=paid_as)


def _cost(model: str, completion: dict, batch: bool) -> tuple[int, int, int, float]:
    """(prompt, cached, completion tokens, $) of one response, from its `usage` block."""
    u = completion.get("usage") or {}
    prompt, out = max(0, int(u.get("prompt_tokens") or 0)), max(0, int(u.get("completion_tokens") or 0))
    cached = max(0, int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0))
    return prompt, cached, out, api_cost(model, prompt, out, cached, batch=batch)


def cache_result(conn, key: str, model: str, completion: dict, batch: bool) -> None:
    prompt, cached, out, usd = _cost(model, completion, batch)
    choice = (completion.get("choices") or [{}])[0]
    conn.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?)",
                 (key, model, (choice.get("message") or {}).get("content") or "", choice.get("finish_reason"),
                  prompt, cached, out, int(batch), usd, time.time()))
    conn.commit()


class Usage:
    """api_usage rows per (model, batch), as the stage contract asks; with a `log` path, every result is also
    appended there as it is paid (O_APPEND, one write a line; fsync per sync result and per batch)."""

    def __init__(self, log: str | None = None):
        self.rows: dict = {}
        self.lock = threading.Lock()          # sync requests log from their threads, as each is paid
        self.logged = {(u.get("batch_id"), u.get("key")) for u in _log_lines(log) if u.get("batch_id")} if log else set()
        self.fd = _open_log(log) if log else None

    def add(self, model, batch, prompt, cached, completion, usd, paid_as: tuple | None = None):
        with self.lock:
            self._add(model, batch, prompt, cached, completion, usd, paid_as)

    def _add(self, model, batch, prompt, cached, completion, usd, paid_as):
        if paid_as is not None and paid_as in self.logged:
            return                                      # this batch line was logged before a crash
        if self.fd is not None:
            line = {"model": model, "batch": bool(batch), "prompt_tokens": prompt, "cached_tokens": cached,
                    "completion_tokens": completion, "usd": usd, "at": round(time.time(), 3)}
            if paid_as is not None:
                line.update(batch_id=paid_as[0], key=paid_as[1])
                self.logged.add(paid_as)
            os.write(self.fd, (json.dumps(line) + "\n").encode())
            if not batch:
                os.fsync(self.fd)
        row = self.rows.setdefault((model, batch), {"model": model, "batch": batch, "prompt_tokens": 0,
                                                    "cached_tokens": 0, "completion_tokens": 0, "usd": 0.0})
        row["prompt_tokens"] += prompt
        row["cached_tokens"] += cached
        row["completion_tokens"] += completion
        row["usd"] += usd

    def sync(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "Usage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def as_list(self) -> list[dict]:
        return [dict(r, usd=round(r["usd"], 12)) for r in self.rows.values()]

    def usd(self) -> float:
        with self.lock:
            return sum(r["usd"] for r in self.rows.values())


def _open_log(path: str) -> int:
    """The usage log for appending. A torn last line (killed mid-write) is cut first: appended to, it would
    make one bad line that readers stop at; the pipeline has not counted it (it reads whole lines only)."""
    if os.path.exists(path):
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _log_lines(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    return                                  # a torn last line
    except FileNotFoundError:
        return


def logged_usage(path: str) -> list[dict]:
    """Every line of a usage log summed per (model, batch): all that was ever paid for these artifacts."""
    total = Usage()
    for u in _log_lines(path):
        total.add(u["model"], bool(u.get("batch")), int(u.get("prompt_tokens") or 0),
                  int(u.get("cached_tokens") or 0), int(u.get("completion_tokens") or 0), float(u.get("usd") or 0.0))
    return total.as_list()


# ---- calling the API ----------------------------------------------------------------------------------
def _retryable(e: Exception) -> bool:
    import openai

    if isinstance(e, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
        return True
    return isinstance(e, openai.APIStatusError) and (e.status_code == 429 or e.status_code >= 500)


def _fatal(e: Exception) -> StageError | None:
    """Errors no retry fixes: a rejected key or an unknown model stops the stage with one line."""
    import openai

    if isinstance(e, openai.AuthenticationError):
        return StageError("the API rejected the key (401): check OPENAI_API_KEY")
    if isinstance(e, openai.PermissionDeniedError):
        return StageError("the API refused access (403): check the key's project and model access")
    if isinstance(e, openai.NotFoundError) and "model" in str(e).lower():
        return StageError(f"the API does not know the model: {str(e)[:200]}")
    return None


def with_retries(call, attempts: int | None = None, sleep=time.sleep):
    """-> (result, retries). Exponential backoff with equal jitter on 429/5xx/connection errors; a
    Retry-After header, when longer, wins."""
    attempts = attempts or SYNC_RETRIES
    for n in range(attempts):
        try:
            return call(), n
        except Exception as e:
            fatal = _fatal(e)
            if fatal:
                raise fatal from None
            if not _retryable(e) or n == attempts - 1:
                raise
            delay = min(BACKOFF_S * 2 ** n, BACKOFF_MAX_S)
            delay = delay / 2 + random.uniform(0, delay / 2)
            try:
                delay = max(delay, float(e.response.headers.get("retry-after", 0)))  # type: ignore[attr-defined]
            except (AttributeError, TypeError, ValueError):
                pass
            sleep(delay)
    raise AssertionError("unreachable")


def run_sync(client, pending: dict, cfg: dict, conn, usage: Usage, stats: dict, workers: int) -> set:
    """Chat completions, `workers` at a time. -> keys that failed."""
    failed, cap = set(), api_budget()

    def one(body):
        over_budget(usage, cap, "the next request")
        completion, retries = with_retries(lambda: client.chat.completions.create(**body).model_dump())
        paid(usage, cfg["model"], completion, False)     # logged in this thread: a crash now hides nothing
        return completion, retries

    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(one, body): key for key, body in pending.items()}
        for future in cf.as_completed(futures):
            key = futures[future]
            try:
                completion, retries = future.result()
            except (StageError, OverBudget):
                for f in futures:
                    f.cancel()
                raise
            except Exception as e:
                failed.add(key)
                _log(f"request {key[:12]} failed: {type(e).__name__}: {str(e)[:160]}")
                continue
            stats["retries"] += retries
            cache_result(conn, key, cfg["model"], completion, False)
            stats["completed"] += 1
    return failed


def batch_line(key: str, body: dict) -> bytes:
    """One line of a Batch API input file; custom_id is the cache key."""
    return (json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body},
                       ensure_ascii=False) + "\n").encode()


def chunk_lines(lines: list[tuple[str, bytes]], max_requests=None, max_bytes=None) -> list[list]:
    """Split (key, jsonl line) pairs into input files within the Batch API's limits."""
    max_requests = max_requests or MAX_BATCH_REQUESTS
    max_bytes = max_bytes or MAX_BATCH_BYTES
    chunks, current, size = [], [], 0
    for key, line in lines:
        if len(line) > max_bytes:
            raise StageError(f"request {key[:12]} is {len(line):,} bytes, over the {max_bytes:,}-byte batch file limit")
        if current and (len(current) >= max_requests or size + len(line) > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append((key, line))
        size += len(line)
    if current:
        chunks.append(current)
    return chunks


def run_batches(client, pending: dict, cfg: dict, conn, usage: Usage, stats: dict,
                poll_s: float = POLL_S, sleep=time.sleep, tokens: dict | None = None, log_dir: str | None = None) -> set:
    """Batch API: submit, poll, collect, resubmit failed lines. -> keys that failed MAX_ATTEMPTS times.

    A submitted batch bills for what it finishes even if nobody polls it, so each one is admitted whole before it
    is submitted: what this run paid + what the batches still open commit (their estimates, `tokens`: key ->
    (prompt, completion)) + this batch's estimate must stay within REPRODUCE_API_BUDGET_USD. The commitment is
    logged (batch_log, in `log_dir`) before the next request is sent, for the controller's guard and for
    `reproduce cancel`. A batch that does not fit is not submitted; those already open are still collected
    (they are paid for), and then the stage stops (exit 3)."""
    from reproduce.stages.lib import batch_log

    tokens = tokens or {}
    commit = lambda keys: tokens_usd(cfg, sum(tokens.get(k, (0, 0))[0] for k in keys),   # noqa: E731
                                     sum(tokens.get(k, (0, 0))[1] for k in keys))
    logged = batch_log.open_batches(log_dir) if log_dir else {}
    attempts = collections.Counter()
    # Batches a previous run left in flight: poll them rather than pay again.
    open_batches = {}
    for batch_id, keys, attempt in conn.execute("SELECT id, keys, attempt FROM batches WHERE status = 'open'"):
        open_batches[batch_id] = json.loads(keys)
        for k in open_batches[batch_id]:
            attempts[k] = max(attempts[k], attempt)
        if log_dir and batch_id not in logged:   # a cache older than the log: its commitment, recorded now
            _log_submitted(log_dir, batch_id, open_batches[batch_id], commit(open_batches[batch_id]), cfg)
        _log(f"resuming batch {batch_id} ({len(open_batches[batch_id])} requests) left in flight by an earlier run")
    in_flight = {k for keys in open_batches.values() for k in keys}
    to_submit = [k for k in pending if k not in in_flight]
    given_up, cap, refused = set(), api_budget(), None
    while to_submit or open_batches:
        for chunk in chunk_lines([(k, batch_line(k, pending[k])) for k in to_submit]):
            keys = [k for k, _ in chunk]
            usd = commit(keys)
            committed = sum(commit(v) for v in open_batches.values())
            if cap is not None and usage.usd() + committed + usd > cap + 1e-9 and usd > 0:
                refused = (f"a batch of {len(keys)} requests (estimated ${usd:.4f}) would bring paid "
                           f"${usage.usd():.4f} + committed ${committed:.4f} to ${usage.usd() + committed + usd:.4f}, "
                           f"past the REPRODUCE_API_BUDGET_USD=${cap:g} left for this stage: not submitted "
                           "(results so far are cached: run again with more budget to finish)")
                _log(refused)
                break
            data = b"".join(line for _, line in chunk)
            file, r1 = with_retries(lambda: client.files.create(file=("rewrite.jsonl", data), purpose="batch"))
            batch, r2 = with_retries(lambda: client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                metadata={"stage": "rewrite"}))
            stats["retries"] += r1 + r2
            for k in keys:
                attempts[k] += 1
            conn.execute("INSERT INTO batches VALUES (?,?,?,?,?)",
                         (batch.id, json.dumps(keys), max(attempts[k] for k in keys), "open", time.time()))
            conn.commit()
            if log_dir:
                _log_submitted(log_dir, batch.id, keys, usd, cfg, client)
            open_batches[batch.id] = keys
            stats["batches"] += 1
            _log(f"submitted batch {batch.id}: {len(keys)} requests, {len(data):,} bytes, ${usd:.4f} committed")
        to_submit = []
        failed = _poll(client, open_batches, pending, cfg, conn, usage, stats, poll_s, sleep, log_dir)
        if refused:
            raise OverBudget(refused)
        for k in failed:
            if attempts[k] < MAX_ATTEMPTS:
                to_submit.append(k)
                stats["resubmitted"] += 1
            else:
                given_up.add(k)
        if to_submit:
            _log(f"resubmitting {len(to_submit)} failed requests")
    return given_up


def _log_submitted(log_dir: str, batch_id: str, keys: list, usd: float, cfg: dict, client=None) -> None:
    from reproduce.stages.lib import batch_log

    batch_log.append(log_dir, event="submitted", batch_id=batch_id, requests=len(keys), usd=round(usd, 6),
                     model=cfg["model"], base_url=_public_url(client))


def _public_url(client) -> str | None:
    """The API's address for `reproduce cancel` (scheme, host, port, path: never a user, password or query)."""
    import urllib.parse

    if client is None:
        return None
    u = urllib.parse.urlsplit(str(client.base_url))
    return urllib.parse.urlunsplit((u.scheme, u.hostname + (f":{u.port}" if u.port else ""), u.path, "", ""))


def _poll(client, open_batches: dict, pending, cfg, conn, usage, stats, poll_s, sleep, log_dir=None) -> set:
    """Poll every open batch until it ends; store results as each one ends. -> failed keys."""
    import openai

    failed, interval = set(), poll_s
    while open_batches:
        sleep(interval)
        interval = min(interval * 1.5, POLL_MAX_S)
        for batch_id in list(open_batches):
            try:
                batch, r = with_retries(lambda: client.batches.retrieve(batch_id))
            except openai.NotFoundError:  # e.g. a batch recorded by a run against another server
                _log(f"batch {batch_id} is unknown to the API; its requests go round again")
                failed.update(open_batches.pop(batch_id))
                _ended(conn, log_dir, batch_id, "lost", 0, 0)
                continue
            stats["retries"] += r
            if batch.status not in TERMINAL:
                continue
            done, lost = collect(client, batch, open_batches.pop(batch_id), pending, cfg["model"], conn, usage,
                                 stats, log_dir)
            failed.update(lost)
            stats["completed"] += len(done & set(pending))
    return failed


def collect(client, batch, keys: list, pending, model: str, conn, usage, stats, log_dir=None) -> tuple[set, list]:
    """An ended batch's results into the cache and the usage log (an expired or cancelled batch keeps what it
    finished, and is billed for it). -> (keys done, keys of `pending` lost)."""
    done = set()
    if batch.output_file_id:
        text, r = with_retries(lambda: client.files.content(batch.output_file_id).text)
        stats["retries"] += r
        for line in text.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, response = item.get("custom_id"), item.get("response") or {}
            # every paid line is kept, even one a changed kept.jsonl no longer asks for
            if key and response.get("status_code") == 200 and key not in done:
                store(conn, key, model, response["body"], True, usage, batch_id=batch.id)
                done.add(key)
        usage.sync()
    lost = [k for k in keys if k not in done and k in pending]
    if batch.errors and batch.errors.data:  # e.g. the input file was rejected, or a token limit hit
        e = batch.errors.data[0]
        _log(f"batch {batch.id}: {e.code}: {(e.message or '')[:200]}")
    _ended(conn, log_dir, batch.id, batch.status, len(done), len(lost))
    counts = batch.request_counts
    _log(f"batch {batch.id} {batch.status}: {len(done)} done, {len(lost)} failed"
         + (f" (API counts {counts.completed}/{counts.total} completed)" if counts else ""))
    return done, lost


def _ended(conn, log_dir, batch_id: str, status: str, done: int, failed: int) -> None:
    conn.execute("UPDATE batches SET status = ? WHERE id = ?", (status, batch_id))
    conn.commit()
    if log_dir:
        from reproduce.stages.lib import batch_log

        batch_log.append(log_dir, event="ended", batch_id=batch_id, status=status, done=done, failed=failed)


def cancel_batches(artifacts, stage: str = "rewrite", wait_s: float = 60.0, poll_s: float = 1.0,
                   sleep=time.sleep, clock=time.monotonic) -> list[str]:
    """Cancel every batch the stage left open (it keeps billing without us), then collect what each finished
    before it stopped: that part is billed, so it goes into the usage log (the ledger records it) and the cache
    (a resume pays nothing twice). A batch still cancelling after `wait_s` stays open in the cache, and the next
    run of the stage collects it. -> one line per batch, for the user."""
    import openai

    out_dir = os.path.join(str(artifacts), stage)
    path = os.path.join(out_dir, "cache.sqlite")
    if not os.path.isfile(path):
        return []
    from reproduce.stages.lib import batch_log

    conn = open_cache(path)
    try:
        left = {b: json.loads(k) for b, k in conn.execute("SELECT id, keys FROM batches WHERE status = 'open'")}
        if not left:
            return []
        logged = batch_log.open_batches(out_dir)
        model = next((b["model"] for b in logged.values() if b.get("model")), LOCAL_MODEL)
        if model == LOCAL_MODEL and not os.environ.get("OPENAI_BASE_URL"):
            return [f"[{stage}] {len(left)} batch(es) of the local formatter ended with it: nothing is billed"]
        base = os.environ.get("OPENAI_BASE_URL") or next((b["base_url"] for b in logged.values()
                                                          if b.get("base_url")), None)
        client = openai.OpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "unused-local-key", base_url=base,
                               max_retries=0, timeout=60)
        said, usage, stats = [], Usage(os.path.join(out_dir, "usage.jsonl")), collections.Counter()
        try:
            for batch_id in list(left):
                committed = logged.get(batch_id, {}).get("usd")
                what = f"OpenAI batch {batch_id} ({len(left[batch_id])} requests" +                        (f", ${committed:.4f} committed at submission)" if committed is not None else ")")
                try:
                    with_retries(lambda: client.batches.cancel(batch_id))
                except openai.NotFoundError:
                    said.append(f"[{stage}] {what}: unknown to the API, nothing to cancel")
                    _ended(conn, out_dir, batch_id, "lost", 0, 0)
                    left.pop(batch_id)
                except Exception as e:   # noqa: BLE001 - e.g. it completed meanwhile: collected below
                    said.append(f"[{stage}] could not cancel {what}: {type(e).__name__}: {str(e)[:160]}")
                else:
                    said.append(f"[{stage}] cancelled {what}")
            end = clock() + wait_s
            while left:
                for batch_id in list(left):
                    batch, _ = with_retries(lambda: client.batches.retrieve(batch_id))
                    if batch.status in TERMINAL:
                        before = usage.usd()
                        done, _lost = collect(client, batch, left.pop(batch_id), (), model, conn, usage, stats,
                                              out_dir)
                        said.append(f"[{stage}] batch {batch_id} {batch.status}: {len(done)} results it finished "
                                    f"are billed (${usage.usd() - before:.4f}) and kept in the cache")
                if left and clock() >= end:
                    said += [f"[{stage}] batch {b} is still cancelling after {wait_s:g} s: up to its committed $ "
                             f"may still be billed; `reproduce all --resume` collects what it finished" for b in left]
                    break
                if left:
                    sleep(poll_s)
        finally:
            usage.close()
            client.close()
        return said
    finally:
        conn.close()


def make_client(model: str, timeout_s: float = 600):
    """-> (client, local server or None). The key is read from the environment and never echoed."""
    import openai

    base_url, key = os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY")
    server = None
    if not base_url and model == LOCAL_MODEL:
        from reproduce.stages.smoke.local_openai import LocalOpenAI

        server = LocalOpenAI().start()
        base_url = server.base_url
        _log(f"{LOCAL_MODEL}: started the deterministic smoke-scale formatter at {base_url}")
    if not key and not base_url:
        raise StageError(f"OPENAI_API_KEY is not set: export it to rewrite with {model} "
                         "(or set OPENAI_BASE_URL to an OpenAI-compatible server)")
    # max_retries=0: every retry is ours (with_retries), so it is counted and bounded.
    client = openai.OpenAI(api_key=key or "unused-local-key", base_url=base_url, max_retries=0,
                           timeout=timeout_s)
    return client, server


# ---- re-check -----------------------------------------------------------------------------------------
def recheck(records: list[dict], recipe: dict, workers: int | None = None) -> list[tuple[bool, str]]:
    """Grade each record's rewritten text (graders run in worker processes, as in the filter stage)."""
    from reproduce.stages import filter as filter_stage

    section = recipe.get("filter") or {}
    limits = {k: section.get(k, v) for k, v in filter_stage.DEFAULT_LIMITS.items()}
    workers = workers or max(1, min(int(section.get("cpus") or 1), os.cpu_count() or 1, len(records)))
    graded = {}
    items = [dict(r, id=i, response=r["rewritten"]) for i, r in enumerate(records)]
    for record, correct, reason, _cpu in filter_stage.grade_all(iter(items), workers, limits):
        graded[record["id"]] = (bool(correct), reason)
    return [graded[i] for i in range(len(records))]


def format_ok(text: str) -> bool:
    tags = ["<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>"]
    positions = [text.find(t) for t in tags]
    return all(p >= 0 for p in positions) and positions == sorted(positions)


# ---- the stage ----------------------------------------------------------------------------------------
def run(recipe: dict, artifacts: str, sync: bool = False, dry_run: bool = False, estimate_only: bool = False,
        workers: int = 8, poll_s: float = POLL_S) -> dict:
    start = time.monotonic()
    cfg = rewrite_config(recipe)
    use_batch = bool(cfg.get("batch")) and not sync
    cfg = dict(cfg, batch=use_batch)
    records = _read_kept(os.path.join(artifacts, "filter", "kept.jsonl"))
    published = [r for r in records if r.get("published")]   # already in the format: not sent, not re-checked
    records = [r for r in records if not r.get("published")]
    out_dir = os.path.join(artifacts, "rewrite")
    os.makedirs(out_dir, exist_ok=True)
    conn = open_cache(os.path.join(out_dir, "cache.sqlite"))
    try:
        keys = []
        pending, pending_records = {}, []
        for record in records:
            body = build_request(record, cfg)
            key = cache_key(body)
            keys.append(key)
            if key not in pending:
                pending[key] = body
                pending_records.append(record)
        done_before = cached_results(conn, pending)
        pending_records = [r for r, k in zip(pending_records, list(pending)) if k not in done_before]
        pending = {k: b for k, b in pending.items() if k not in done_before}
        estimate = estimate_tokens(pending_records, {"rewrite": cfg})
        tokens = {k: request_tokens(pending[k], r, cfg) for k, r in zip(pending, pending_records)}
        estimate["cached"] = len(done_before)
        if estimate_only or dry_run:
            if dry_run:
                lines = [(k, batch_line(k, b)) for k, b in pending.items()]
                estimate["input_files"] = len(chunk_lines(lines)) if use_batch else 0
            return {"estimate": estimate}
        budget_guard(estimate)
        if cfg.get("recheck") and any(r.get("domain") == "code" for r in records):
            from reproduce.stages.lib import sandbox

            sandbox.require()        # the re-check runs code: refuse before paying, not after

        usage, stats = Usage(os.path.join(out_dir, "usage.jsonl")), collections.Counter()
        failed: set = set()
        if pending:
            client, server = make_client(cfg["model"])
            _log(f"{len(pending)} requests to {cfg['model']} ({'batch' if use_batch else 'sync'}), "
                 f"{len(done_before)} cached; estimated ${estimate['usd']:.4f}")
            try:
                if use_batch:
                    failed = run_batches(client, pending, cfg, conn, usage, stats, poll_s=poll_s, tokens=tokens,
                                         log_dir=out_dir)
                else:
                    failed = run_sync(client, pending, cfg, conn, usage, stats, workers)
            finally:
                usage.close()
                if server:
                    server.stop()
                client.close()
        usage.close()

        results = cached_results(conn, set(keys))
        out = []
        for record, key in zip(records, keys):
            if key in results:
                text = results[key]["content"]
                out.append(dict(record, rewritten=text, format_ok=format_ok(text),
                                rewrite_finish_reason=results[key]["finish_reason"]))
        checks = recheck(out, recipe) if cfg.get("recheck") and out else [(None, "not checked")] * len(out)
        for record, (correct, reason) in zip(out, checks):
            record["recheck_correct"], record["recheck_reason"] = correct, reason
        path = os.path.join(out_dir, "rewritten.jsonl")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for record in out + [dict(r, recheck_correct=None, recheck_reason="published: used as-is")
                                 for r in published]:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)

        wall = time.monotonic() - start
        this_run = usage.as_list()
        api_usage = logged_usage(os.path.join(out_dir, "usage.jsonl"))   # every attempt's payments
        tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in this_run)
        summary = {
            "stage": "rewrite", "model": cfg["model"], "batch": use_batch,
            "records": len(records), "published": len(published), "requests": len(set(keys)),
            "cached": len(done_before),
            "submitted": len(pending), "completed": stats["completed"], "failed": len(failed),
            "rewritten": len(out), "truncated": sum(r["rewrite_finish_reason"] == "length" for r in out),
            "format_ok": sum(r["format_ok"] for r in out),
            "recheck_correct": sum(r["recheck_correct"] is True for r in out),
            "recheck_wrong": sum(r["recheck_correct"] is False for r in out),
            "recheck_reasons": dict(collections.Counter(r["recheck_reason"].split(":", 1)[0] for r in out)),
            "retries": stats["retries"], "resubmitted": stats["resubmitted"], "batches": stats["batches"],
            "estimate": estimate, "api_usage": api_usage,
            "usd": round(sum(r["usd"] for r in api_usage), 12),
            "usd_this_run": round(sum(r["usd"] for r in this_run), 12),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1) if wall > 0 else 0.0,
            "wall_s": round(wall, 3),
        }
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        _log(f"{len(out)} of {len(records)} rewritten ({len(done_before)} from cache), "
             f"{summary['recheck_correct']} re-checked correct; ${summary['usd_this_run']:.4f} paid now, "
             f"${summary['usd']:.4f} in all, in {wall:.1f} s")
        if failed:
            raise Failed(f"{len(failed)} requests still failed after {MAX_ATTEMPTS} attempts; the rest are "
                         "written and cached: run again to retry only those")
        return summary
    finally:
        conn.close()


def _read_kept(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise StageError(f"no kept traces: {path} does not exist (run the filter stage first)")
    return list(read_jsonl(path, "response"))


def _log(message: str) -> None:
    print(f"rewrite: {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce rewrite",
        description="Reformat kept traces into thought + solution sections with the recipe's rewrite model "
                    "(OpenAI Batch API by default), re-check them, and account the tokens and dollars. "
                    "Reads OPENAI_API_KEY / OPENAI_BASE_URL; refuses (exit 3) when the estimate exceeds "
                    "REPRODUCE_API_BUDGET_USD.")
    p.add_argument("--recipe", required=True, help="the resolved recipe YAML (its rewrite: section)")
    p.add_argument("--artifacts", required=True, help="artifacts folder: reads filter/, writes rewrite/")
    p.add_argument("--sync", action="store_true", help="chat completions now instead of the Batch API (full price)")
    p.add_argument("--estimate", action="store_true", help="print the token and $ estimate as JSON; submit nothing")
    p.add_argument("--dry-run", action="store_true", help="like --estimate, plus the number of batch input files")
    p.add_argument("--workers", type=int, default=8, help="concurrent requests with --sync (default 8)")
    p.add_argument("--poll-s", type=float, default=POLL_S,
                   help=f"first batch poll interval, growing x1.5 to {POLL_MAX_S:g} s (default {POLL_S:g})")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main("rewrite", _parser(), _main, argv,
                    interrupted="interrupted; run again to resume (results and batches in flight are in the cache)")


def _main(args) -> int:
    if args.workers < 1:
        raise StageError(f"--workers {args.workers}: expected 1 or more")
    if args.poll_s < 0:
        raise StageError(f"--poll-s {args.poll_s}: expected 0 or more seconds")
    try:
        result = run(load_recipe(args.recipe), args.artifacts, sync=args.sync, dry_run=args.dry_run,
                     estimate_only=args.estimate, workers=args.workers, poll_s=args.poll_s)
    except (BadInput, OverBudget):
        raise
    except Exception as e:
        import openai

        if not isinstance(e, openai.APIError):
            raise
        raise Failed(f"API error: {type(e).__name__}: {str(e)[:300]}; finished results are cached, "
                     "run again to resume") from None
    if "estimate" in result and len(result) == 1:
        print(json.dumps(result["estimate"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
