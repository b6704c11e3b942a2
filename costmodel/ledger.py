"""The ledger: every planned and spent dollar, one SQLite file in the user's state folder.

    led = Ledger()                                  # $REPRODUCE_HOME/ledger.db (default ~/.reproduce)
    led.create_run(run_id, ...); led.add_stage_row(run_id, "sft", "started", ...)
    led.finish_stage(run_id, "sft", attempt, {...}, api_usage=[...])   # one transaction
    led.audit(run_id)                               # planned vs actual, by stage, cloud and model

Append-only where money is concerned: a stage's life is a series of rows (planned, started, progress...,
finished | failed | cancelled | interrupted); a later `correction` row replaces a terminal row of the same
attempt in the audit, and an api_usage row with kind 'correction' carries deltas. Nothing an audit reads
is ever UPDATEd or DELETEd.

Concurrency: WAL (readers never block the writer), busy_timeout, and every write in `BEGIN IMMEDIATE`, so
the controller and a watcher can write at once. synchronous=NORMAL survives a killed process (SIGKILL); a
power loss may roll back the last commits, never corrupt the file.

A file that is not a SQLite database, or whose schema is newer than this code, raises LedgerError and is
never written to; so does a REPRODUCE_HOME that is not a writable folder.

Money is never impossible: a negative, NaN or infinite amount, hour count or token count raises BadInput
before anything is written (corrections of API usage carry deltas and may be negative, never NaN).

One run, one owner: `claim_run(run_id, owner)` takes the run's lease (owner = {"pid", "host"}) in one
BEGIN IMMEDIATE transaction; a second claimant gets LeaseHeld naming the owner. A lease whose pid is dead
on this host, or whose heartbeat is older than LEASE_STALE_S, is taken over, and the takeover is an event.
The lease row is the one mutable row here: it is not money.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from costmodel.errors import BadInput

SQLITE_MAGIC = b"SQLite format 3\x00"
STAGE_EVENTS = ("planned", "started", "progress", "finished", "failed", "cancelled", "interrupted", "correction")
TERMINAL_EVENTS = ("finished", "failed", "cancelled", "interrupted", "correction")

# Migrations: version -> statements. Never edit a released one; add the next.
MIGRATIONS = {
    1: [
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            recipe TEXT, scale TEXT, backend TEXT,
            budget REAL,
            simulated INTEGER NOT NULL DEFAULT 0,
            artifacts TEXT,
            recipe_yaml TEXT,
            plan_json TEXT)""",
        f"""CREATE TABLE stage_rows (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(run_id),
            stage TEXT NOT NULL,
            event TEXT NOT NULL CHECK (event IN ({', '.join(repr(e) for e in STAGE_EVENTS)})),
            attempt INTEGER,            -- id of the attempt's `started` row; NULL for `planned`
            at REAL NOT NULL,           -- executor time (virtual for sim)
            wall_at REAL NOT NULL,      -- when the row was written
            state TEXT,
            kind TEXT, accelerator TEXT, nodes INTEGER, gpus INTEGER, spot INTEGER,
            cloud TEXT, region TEXT, zone TEXT, instance_type TEXT,
            price_per_hour REAL, price_source TEXT, price_date TEXT,
            started_at REAL, ended_at REAL,
            hours REAL, gpu_hours REAL, preemptions INTEGER,
            compute_usd REAL, api_usd REAL,
            arithmetic TEXT, message TEXT,
            simulated INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE api_usage (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL, stage TEXT NOT NULL,
            attempt INTEGER,
            at REAL NOT NULL,
            kind TEXT NOT NULL DEFAULT 'usage',    -- usage | correction (deltas)
            model TEXT NOT NULL, batch INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            usd REAL NOT NULL DEFAULT 0,
            simulated INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT, stage TEXT,
            at REAL NOT NULL, wall_at REAL NOT NULL,
            kind TEXT NOT NULL,          -- admit | stop | api_batch | run | budget
            ok INTEGER, reason TEXT,
            numbers TEXT)                -- JSON: every number the decision used""",
        "CREATE INDEX stage_rows_run ON stage_rows(run_id, stage, attempt, id)",
        "CREATE INDEX api_usage_run ON api_usage(run_id, stage, model, batch)",
        "CREATE INDEX events_run ON events(run_id, kind, id)",
    ],
    2: [
        # Throughput observations from finished stages (costmodel.calibration reads them).
        """CREATE TABLE calibration (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL, stage TEXT NOT NULL,
            at REAL NOT NULL,
            key TEXT NOT NULL, value REAL NOT NULL,
            detail TEXT,
            simulated INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX calibration_key ON calibration(key, simulated)",
    ],
    3: [
        # Who drives a run now (claim_run / heartbeat / release_run); history is in events, kind 'lease'.
        """CREATE TABLE leases (
            run_id TEXT PRIMARY KEY,
            pid INTEGER NOT NULL, host TEXT NOT NULL,
            claimed_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
            released_at REAL)""",
    ],
}
SCHEMA_VERSION = max(MIGRATIONS)
LEASE_STALE_S = 600.0       # a heartbeat older than this frees the lease (the pipeline beats every poll)
HEARTBEAT_EVERY_S = 5.0     # at most one heartbeat write per run in this long


# Ledger files this process has open, with how many connections. While one is open, the file is never
# opened outside SQLite: closing any descriptor of a file drops all of this process's POSIX locks on it
# (fcntl semantics), and another process would then think it the last user, checkpoint the WAL and delete
# it under our feet; every later commit of ours would be lost (seen: a resumed run's rows after the first
# minutes vanished when a refused resumer exited while the winner re-opened the ledger to re-plan).
_OPEN: dict = {}


class LedgerError(BadInput):
    """The ledger file cannot be used as it is (corrupt, foreign, or from a newer version)."""


class LeaseHeld(BadInput):
    """Another live process drives this run."""


class LeaseLost(BadInput):
    """This process's lease on the run was taken over (it was thought dead): it must stop driving the run."""


def home() -> Path:
    return Path(os.environ.get("REPRODUCE_HOME") or Path.home() / ".reproduce")


def default_path() -> Path:
    return home() / "ledger.db"


class Ledger:
    def __init__(self, path: str | Path | None = None, timeout_s: float = 30.0):
        self.path = Path(path) if path else default_path()
        self._beats: dict = {}
        _check_folder(self.path.parent)
        self._key, self.db = os.path.realpath(self.path), None
        if not _OPEN.get(self._key):
            _check_header(self.path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None,
                                      check_same_thread=False)
            _OPEN[self._key] = _OPEN.get(self._key, 0) + 1
            self.db.row_factory = sqlite3.Row
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            version = self._version()          # reads only: a bad or newer file is never written
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger {self.path} has schema version {version}, newer than this reproduce "
                                  f"understands ({SCHEMA_VERSION}): upgrade reproduce, or point REPRODUCE_HOME "
                                  "elsewhere; the file was left untouched")
            if self.db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            if version < SCHEMA_VERSION:
                self._migrate()
        except sqlite3.DatabaseError as e:
            self.close()
            raise LedgerError(f"ledger {self.path} is not readable as a reproduce ledger ({e}); move it aside "
                              "or point REPRODUCE_HOME elsewhere; the file was left untouched") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
            _OPEN[self._key] -= 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- schema -------------------------------------------------------------------------------------
    def _version(self) -> int:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" in tables:
            row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0)
        if tables - {"sqlite_sequence"}:
            raise LedgerError(f"{self.path} is a SQLite file but not a reproduce ledger (tables: "
                              f"{', '.join(sorted(tables))}); the file was left untouched")
        return 0

    def _migrate(self) -> None:
        with self.write() as db:   # re-read inside the lock: another process may have migrated first
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
            current = int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
            for version in sorted(v for v in MIGRATIONS if v > current):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))

    @contextmanager
    def write(self):
        """One write transaction, taken up front (BEGIN IMMEDIATE) so two writers queue, never deadlock."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- writes -------------------------------------------------------------------------------------
    def create_run(self, run_id: str, *, recipe: str, scale: str, backend: str, budget: float | None,
                   simulated: bool = False, artifacts: str = "", recipe_yaml: str = "", plan: dict | None = None,
                   at: float | None = None) -> None:
        budget = _amount(budget, f"run {run_id} budget")
        with self.write() as db:
            db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (run_id, at or time.time(), recipe, scale, backend, budget, int(simulated), artifacts,
                        recipe_yaml, json.dumps(plan or {}, default=str)))

    def add_stage_row(self, run_id: str, stage: str, event: str, *, at: float, attempt: int | None = None,
                      **fields) -> int:
        with self.write() as db:
            return _insert_stage_row(db, run_id, stage, event, at, attempt, fields)

    def finish_stage(self, run_id: str, stage: str, attempt: int, *, at: float, api_usage: list[dict] = (),
                     calibration: list[tuple[str, float, str]] = (), **fields) -> int:
        """The terminal row, the stage's API usage and its calibration figures, all or nothing: a process
        killed here leaves either a finished stage with its usage, or neither."""
        simulated = int(bool(fields.get("simulated")))
        with self.write() as db:
            row = _insert_stage_row(db, run_id, stage, "finished", at, attempt, fields)
            _insert_api(db, run_id, stage, attempt, at, api_usage, simulated)
            db.executemany("INSERT INTO calibration (run_id, stage, at, key, value, detail, simulated) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(run_id, stage, at, k, _amount(float(v), f"calibration {k}", negative=True), d,
                             simulated) for k, v, d in calibration])
            return row

    def add_api_usage(self, run_id: str, stage: str, rows: list[dict], *, at: float, attempt: int | None = None,
                      simulated: bool = False) -> None:
        with self.write() as db:
            _insert_api(db, run_id, stage, attempt, at, rows, int(simulated))

    def add_usage_lines(self, run_id: str, stage: str, lines: list[dict], *, at: float, attempt: int | None = None,
                        simulated: bool = False) -> int:
        """Record the lines of a stage's append-only usage log (ARTIFACTS/<stage>/usage.jsonl: one line per
        paid result) that are not in the ledger yet; the count recorded rides in the same transaction, so a
        crash never records a line twice nor loses one. Returns how many were new."""
        with self.write() as db:
            done = db.execute("SELECT COALESCE(SUM(CAST(json_extract(numbers, '$.lines') AS INTEGER)), 0) FROM events "
                              "WHERE run_id = ? AND stage = ? AND kind = 'api_lines'", (run_id, stage)).fetchone()[0]
            new = lines[done:]
            if new:
                _insert_api(db, run_id, stage, attempt, at, new, int(simulated))
                db.execute("INSERT INTO events (run_id, stage, at, wall_at, kind, ok, reason, numbers) "
                           "VALUES (?, ?, ?, ?, 'api_lines', 1, ?, ?)",
                           (run_id, stage, at, time.time(), f"{len(new)} paid result(s) recorded",
                            json.dumps({"lines": len(new), "usd": sum(float(x.get("usd") or 0) for x in new)})))
            return len(new)

    def attempt_api_usd(self, run_id: str, stage: str, attempt: int) -> tuple[float, int]:
        """($, records) of API usage recorded for one attempt of a stage so far."""
        usd, n = self.db.execute("SELECT COALESCE(SUM(usd), 0), COUNT(*) FROM api_usage WHERE run_id = ? AND stage = ? "
                                 "AND attempt = ?", (run_id, stage, attempt)).fetchone()
        return float(usd), int(n)

    def add_storage(self, run_id: str, stage: str, cost: dict, *, at: float) -> None:
        """What STAGE left in the run's bucket and what keeping it costs (costmodel.storage.cost of the GB
        measured there): an event of kind `storage`. The stage's latest one counts (a resumed stage measures its
        whole folder again), in spent() and in the audit."""
        for key in ("gb_written", "gb_pulled", "usd"):
            _amount(cost.get(key), f"{stage} storage {key}")
        self.add_event(run_id, stage, "storage", ok=True, reason=f"{stage} left {cost['gb_written']:,.2f} GB in the "
                       f"bucket: {cost['arithmetic']}", numbers=cost, at=at)

    def storage(self, run_id: str) -> dict[str, dict]:
        """stage -> its latest `storage` event's numbers (GB written and pulled, $, arithmetic, how measured, at).
        A billing correction of the bucket is one more entry, under its own name, with `correction` set."""
        out = {}
        for r in self.db.execute("SELECT stage, at, numbers FROM events WHERE run_id = ? AND kind = 'storage' "
                                 "ORDER BY id", (run_id,)):
            out[r["stage"]] = {**json.loads(r["numbers"] or "{}"), "at": r["at"]}
        return out

    def add_event(self, run_id: str | None, stage: str | None, kind: str, *, ok: bool | None, reason: str,
                  numbers: dict | None = None, at: float | None = None) -> int:
        with self.write() as db:
            cur = db.execute("INSERT INTO events (run_id, stage, at, wall_at, kind, ok, reason, numbers) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (run_id, stage, at or time.time(), time.time(), kind,
                              None if ok is None else int(ok), reason, json.dumps(numbers or {}, default=str)))
            return cur.lastrowid

    # ---- the lease: one run, one owner ----------------------------------------------------------------
    def claim_run(self, run_id: str, owner: dict | None = None, stale_s: float = LEASE_STALE_S) -> None:
        """Take the run's lease for `owner` ({"pid", "host"}; default this process), or raise LeaseHeld naming
        the live owner. Read and write in one BEGIN IMMEDIATE transaction: of two claimants, exactly one wins."""
        owner = owner or this_process()
        pid, host, now = int(owner["pid"]), str(owner["host"]), time.time()
        with self.write() as db:
            row = db.execute("SELECT * FROM leases WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:       # a run started before leases existed: its last start/resume event stands in
                row = _legacy_lease(db, run_id)
            if row is not None and row["released_at"] is None and (row["pid"], row["host"]) != (pid, host):
                stale = _stale(row, now, stale_s)
                if stale is None:
                    raise LeaseHeld(f"run {run_id} is in progress: pid {row['pid']} on host {row['host']} drives it "
                                    f"(heartbeat {now - row['heartbeat_at']:.0f} s ago); wait for it or stop it "
                                    "first")
                _lease_event(db, run_id, f"took over from pid {row['pid']} on {row['host']}: {stale}",
                             {"pid": pid, "host": host, "was_pid": row["pid"], "was_host": row["host"],
                              "heartbeat_age_s": round(now - row["heartbeat_at"], 3)}, now)
            elif row is None or row["released_at"] is not None:
                _lease_event(db, run_id, "claimed", {"pid": pid, "host": host}, now)
            db.execute("INSERT OR REPLACE INTO leases (run_id, pid, host, claimed_at, heartbeat_at, released_at) "
                       "VALUES (?, ?, ?, ?, ?, NULL)", (run_id, pid, host, now, now))
        self._beats[run_id] = now

    def heartbeat(self, run_id: str, owner: dict | None = None) -> None:
        """Say the owner (default this process) is alive, written at most every HEARTBEAT_EVERY_S. LeaseLost if
        another process took the run over: the caller must stop driving it."""
        owner = owner or this_process()
        now = time.time()
        if now - self._beats.get(run_id, 0.0) < HEARTBEAT_EVERY_S:
            return
        with self.write() as db:
            cur = db.execute("UPDATE leases SET heartbeat_at = ? WHERE run_id = ? AND pid = ? AND host = ? "
                             "AND released_at IS NULL", (now, run_id, int(owner["pid"]), str(owner["host"])))
            if cur.rowcount == 0:
                row = db.execute("SELECT pid, host FROM leases WHERE run_id = ?", (run_id,)).fetchone()
                who = f"pid {row['pid']} on {row['host']}" if row else "nobody"
                raise LeaseLost(f"run {run_id} is now driven by {who}: this process lost its lease and stops")
        self._beats[run_id] = now

    def release_run(self, run_id: str, owner: dict | None = None) -> None:
        """Give the lease back (a no-op if another process holds it now)."""
        owner = owner or this_process()
        now = time.time()
        with self.write() as db:
            cur = db.execute("UPDATE leases SET released_at = ? WHERE run_id = ? AND pid = ? AND host = ? "
                             "AND released_at IS NULL", (now, run_id, int(owner["pid"]), str(owner["host"])))
            if cur.rowcount:
                _lease_event(db, run_id, "released", {"pid": int(owner["pid"]), "host": str(owner["host"])}, now)
        self._beats.pop(run_id, None)

    def lease(self, run_id: str) -> dict | None:
        """The run's lease row, or None; `live` says whether it still binds another claimant."""
        row = self.db.execute("SELECT * FROM leases WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        return {**dict(row), "live": row["released_at"] is None and _stale(row, time.time(), LEASE_STALE_S) is None}

    def correct(self, run_id: str, stage: str, attempt: int, *, reason: str, at: float | None = None, **fields) -> int:
        """A correction replaces the attempt's terminal row in the audit; the old row stays."""
        last = self.db.execute("SELECT * FROM stage_rows WHERE run_id = ? AND stage = ? AND attempt = ? "
                               "ORDER BY id DESC LIMIT 1", (run_id, stage, attempt)).fetchone()
        if last is None:
            raise BadInput(f"no attempt {attempt} of stage {stage} in run {run_id}")
        base = {k: last[k] for k in last.keys() if k not in ("id", "run_id", "stage", "event", "attempt", "at",
                                                              "wall_at")}
        base.update(fields, message=f"correction: {reason}")
        return self.add_stage_row(run_id, stage, "correction", at=at or time.time(), attempt=attempt, **base)

    # ---- reads --------------------------------------------------------------------------------------
    def run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def latest_run_id(self) -> str | None:
        row = self.db.execute("SELECT run_id FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def finished_stages(self, run_id: str) -> set[str]:
        """Stages whose latest terminal row (corrections included) says finished."""
        return {r["stage"] for r in self.attempts(run_id)
                if r["event"] in ("finished", "correction") and r["state"] == "SUCCEEDED"}

    def stage_state(self, run_id: str, stage: str) -> str:
        """finished | failed | cancelled | interrupted | running | not started, from its latest attempt."""
        rows = [r for r in self.attempts(run_id, stage)]
        return _stage_state(rows[-1] if rows else None)

    def budget(self, run_id: str) -> float | None:
        """The run's budget now: the one it started with, or the last one a resume gave it."""
        run = self.run(run_id)
        budget = None if run is None else run["budget"]
        for e in self.events(run_id, "budget"):
            budget = e["numbers"].get("budget", budget)
        return budget

    def attempts(self, run_id: str, stage: str | None = None) -> list[dict]:
        """One row per attempt: its latest terminal row, or (an attempt still open) its latest row."""
        sql = """
            WITH last AS (
              SELECT attempt,
                     MAX(CASE WHEN event IN ('finished','failed','cancelled','interrupted','correction')
                              THEN id END) AS term,
                     MAX(id) AS latest
              FROM stage_rows WHERE run_id = ? AND attempt IS NOT NULL {stage}
              GROUP BY stage, attempt)
            SELECT r.* FROM stage_rows r JOIN last ON r.id = COALESCE(last.term, last.latest) ORDER BY r.attempt"""
        args = [run_id] + ([stage] if stage else [])
        return [dict(r) for r in self.db.execute(sql.format(stage="AND stage = ?" if stage else ""), args)]

    def open_attempts(self, run_id: str) -> list[dict]:
        return [a for a in self.attempts(run_id) if a["event"] not in TERMINAL_EVENTS]

    def planned(self, run_id: str) -> dict[str, dict]:
        rows = self.db.execute("SELECT * FROM stage_rows WHERE run_id = ? AND event = 'planned' ORDER BY id",
                               (run_id,))
        return {r["stage"]: dict(r) for r in rows}   # a re-plan on resume: the latest wins

    def api_totals(self, run_id: str) -> list[dict]:
        sql = """SELECT stage, model, batch, SUM(prompt_tokens) AS prompt_tokens, SUM(cached_tokens) AS cached_tokens,
                        SUM(completion_tokens) AS completion_tokens, SUM(usd) AS usd, COUNT(*) AS records,
                        MAX(at) AS last_at
                 FROM api_usage WHERE run_id = ? GROUP BY stage, model, batch ORDER BY stage, model, batch"""
        return [dict(r) for r in self.db.execute(sql, (run_id,))]

    def spent(self, run_id: str) -> float:
        """Compute $ of every attempt (its terminal row, or the last progress of one still open) + API $ + what
        keeping the bucket's contents costs (committed once written)."""
        compute = sum(a["compute_usd"] or 0.0 for a in self.attempts(run_id))
        api = self.db.execute("SELECT COALESCE(SUM(usd), 0) FROM api_usage WHERE run_id = ?", (run_id,)).fetchone()[0]
        return compute + api + sum(c.get("usd") or 0.0 for c in self.storage(run_id).values())

    def events(self, run_id: str, kind: str | None = None) -> list[dict]:
        sql = "SELECT * FROM events WHERE run_id = ?" + (" AND kind = ?" if kind else "") + " ORDER BY id"
        out = []
        for r in self.db.execute(sql, (run_id, kind) if kind else (run_id,)):
            d = dict(r)
            d["numbers"] = json.loads(d["numbers"] or "{}")
            out.append(d)
        return out

    def runs(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT run_id, created_at, recipe, scale, backend, budget, "
                                                 "simulated, artifacts FROM runs ORDER BY created_at, rowid")]

    def run_state(self, run_id: str) -> dict:
        """The latest run-level event (started/resumed/finished/stopped/failed/cancelled) and its numbers."""
        row = self.db.execute("SELECT * FROM events WHERE run_id = ? AND kind = 'run' ORDER BY id DESC LIMIT 1",
                              (run_id,)).fetchone()
        if row is None:
            return {"reason": "created", "numbers": {}}
        return {"reason": row["reason"], "numbers": json.loads(row["numbers"] or "{}"), "at": row["at"]}

    def progress_rows(self, run_id: str) -> list[dict]:
        sql = ("SELECT stage, event, attempt, at, state, compute_usd FROM stage_rows "
               "WHERE run_id = ? AND attempt IS NOT NULL ORDER BY at, id")
        return [dict(r) for r in self.db.execute(sql, (run_id,))]

    def calibration_rows(self, include_simulated: bool = False) -> list[dict]:
        sql = "SELECT * FROM calibration" + ("" if include_simulated else " WHERE simulated = 0") + " ORDER BY id"
        return [dict(r) for r in self.db.execute(sql)]

    # ---- the audit ----------------------------------------------------------------------------------
    def audit(self, run_id: str) -> dict:
        """Planned vs actual per stage, totals vs budget, by cloud and by model. Sums in SQL, so a run with
        a million API records audits in well under a second."""
        run = self.run(run_id)
        if run is None:
            raise BadInput(f"no run {run_id!r} in {self.path}: see `reproduce runs`")
        planned = self.planned(run_id)
        attempts = self.attempts(run_id)
        api = self.api_totals(run_id)
        kept = self.storage(run_id)
        planned_kept = {s.get("stage"): s.get("storage_usd") or 0.0
                        for s in json.loads(run["plan_json"] or "{}").get("stages") or []}
        budget = self.budget(run_id)   # a resume with a new --budget changes it
        stage_names = list(planned) + sorted({a["stage"] for a in attempts} - set(planned))
        replans: dict = {}   # stage -> every re-plan of it, oldest first (the pipeline's `replan` events)
        for e in self.events(run_id, "replan"):
            for name, r in (e["numbers"].get("stages") or {}).items():
                replans.setdefault(name, []).append({"after": e["numbers"].get("after"), **r})
        stages = []
        for name in stage_names:
            p = planned.get(name, {})
            mine = [a for a in attempts if a["stage"] == name]
            used = [u for u in api if u["stage"] == name]
            last = mine[-1] if mine else None
            actual = {
                "state": _stage_state(last), "attempts": len(mine),
                "hours": sum(a["hours"] or 0.0 for a in mine),
                "gpu_hours": sum(a["gpu_hours"] or 0.0 for a in mine),
                "compute_usd": sum(a["compute_usd"] or 0.0 for a in mine),
                "preemptions": sum(a["preemptions"] or 0 for a in mine),
                "api_usd": sum(u["usd"] or 0.0 for u in used),
                "prompt_tokens": sum(u["prompt_tokens"] or 0 for u in used),
                "cached_tokens": sum(u["cached_tokens"] or 0 for u in used),
                "completion_tokens": sum(u["completion_tokens"] or 0 for u in used),
                "cloud": last and last["cloud"], "region": last and last["region"], "zone": last and last["zone"],
                "instance_type": last and last["instance_type"], "spot": None if not last else _bool(last["spot"]),
                "price_per_hour": last and last["price_per_hour"], "price_source": last and last["price_source"],
                "message": last and last["message"],
                "arithmetic": " + ".join(arithmetic(a) for a in mine if (a["compute_usd"] or 0) > 0) or "$0.00",
            }
            store = kept.get(name) or {}
            actual.update(storage_usd=store.get("usd") or 0.0, storage_gb=store.get("gb_written"),
                          storage_arithmetic=store.get("arithmetic"), storage_measured=store.get("measured"))
            actual["total_usd"] = actual["compute_usd"] + actual["api_usd"] + actual["storage_usd"]
            p_store = planned_kept.get(name) or 0.0
            stages.append({"stage": name, "kind": p.get("kind"), "planned": {
                "hours": p.get("hours") or 0.0, "gpu_hours": p.get("gpu_hours") or 0.0,
                "compute_usd": p.get("compute_usd") or 0.0, "api_usd": p.get("api_usd") or 0.0,
                "storage_usd": p_store,
                "total_usd": (p.get("compute_usd") or 0.0) + (p.get("api_usd") or 0.0) + p_store,
                "cloud": p.get("cloud"), "region": p.get("region"), "instance_type": p.get("instance_type"),
                "price_per_hour": p.get("price_per_hour"), "price_source": p.get("price_source"),
                "price_date": p.get("price_date"), "arithmetic": p.get("arithmetic")},
                "replans": replans.get(name, []), "actual": actual})
        by_cloud: dict = {}
        for a in attempts:
            key = (a["cloud"] or ("controller" if a["kind"] in ("api", "none") else "local"), a["region"])
            c = by_cloud.setdefault(key, {"cloud": key[0], "region": key[1], "hours": 0.0, "gpu_hours": 0.0,
                                          "compute_usd": 0.0, "preemptions": 0})
            c["hours"] += a["hours"] or 0.0
            c["gpu_hours"] += a["gpu_hours"] or 0.0
            c["compute_usd"] += a["compute_usd"] or 0.0
            c["preemptions"] += a["preemptions"] or 0
        by_model: dict = {}
        for u in api:
            m = by_model.setdefault((u["model"], bool(u["batch"])), {
                "model": u["model"], "batch": bool(u["batch"]), "records": 0, "prompt_tokens": 0,
                "cached_tokens": 0, "completion_tokens": 0, "usd": 0.0})
            for k in ("records", "prompt_tokens", "cached_tokens", "completion_tokens", "usd"):
                m[k] += u[k] or 0
        compute = sum(s["actual"]["compute_usd"] for s in stages)
        api_usd = sum(s["actual"]["api_usd"] for s in stages)
        billed_storage = sum(c.get("usd") or 0.0 for name, c in kept.items() if c.get("correction"))
        storage_usd = sum(s["actual"]["storage_usd"] for s in stages) + billed_storage
        actual_usd = compute + api_usd + storage_usd
        totals = {
            "planned_usd": sum(s["planned"]["total_usd"] for s in stages),
            "compute_usd": compute, "api_usd": api_usd, "storage_usd": storage_usd, "actual_usd": actual_usd,
            "storage_correction_usd": billed_storage,
            "gpu_hours": sum(s["actual"]["gpu_hours"] for s in stages),
            "planned_gpu_hours": sum(s["planned"]["gpu_hours"] for s in stages),
            "preemptions": sum(s["actual"]["preemptions"] for s in stages),
            "budget": budget,
            "headroom_usd": None if budget is None else budget - actual_usd,
            "within_budget": None if budget is None else actual_usd <= budget + 1e-9,
        }
        state = self.run_state(run_id)
        return {"run": {**{k: v for k, v in run.items() if k not in ("recipe_yaml", "plan_json")},
                        "simulated": bool(run["simulated"]), "status": state["reason"]},
                "stages": stages, "totals": totals,
                "by_cloud": list(by_cloud.values()), "by_model": list(by_model.values()),
                "decisions": [{k: e[k] for k in ("stage", "kind", "ok", "reason", "numbers", "at")}
                              for e in self.events(run_id) if e["kind"] != "run"]}


def arithmetic(a: dict) -> str:
    """`8 x $2.10/h x 19.00 h = $319.20` for one attempt (per-GPU price when it has GPUs)."""
    hours, price, usd = a.get("hours") or 0.0, a.get("price_per_hour") or 0.0, a.get("compute_usd") or 0.0
    gpus, nodes = a.get("gpus") or 0, a.get("nodes") or 1
    if gpus:
        return f"{gpus} x ${price / gpus:,.2f}/h x {hours:,.2f} h = ${usd:,.2f}"
    return f"{nodes} node x ${price / max(nodes, 1):,.2f}/h x {hours:,.2f} h = ${usd:,.2f}"


def _stage_state(last: dict | None) -> str:
    if last is None:
        return "not started"
    if last["event"] == "correction":   # a billing correction keeps the state of the row it corrects
        state = (last["state"] or "").upper()
        return {"SUCCEEDED": "finished", "FAILED": "failed", "CANCELLED": "cancelled",
                "INTERRUPTED": "interrupted"}.get(state, state.lower() or "corrected")
    return {"finished": "finished", "failed": "failed", "cancelled": "cancelled",
            "interrupted": "interrupted"}.get(last["event"], "running")


def _bool(v):
    return None if v is None else bool(v)


_STAGE_COLUMNS = ("state", "kind", "accelerator", "nodes", "gpus", "spot", "cloud", "region", "zone",
                  "instance_type", "price_per_hour", "price_source", "price_date", "started_at", "ended_at",
                  "hours", "gpu_hours", "preemptions", "compute_usd", "api_usd", "arithmetic", "message",
                  "simulated")


def _insert_stage_row(db, run_id, stage, event, at, attempt, fields) -> int:
    unknown = set(fields) - set(_STAGE_COLUMNS)
    if unknown:
        raise BadInput(f"unknown stage row fields: {sorted(unknown)}")
    if event not in STAGE_EVENTS:
        raise BadInput(f"stage event {event!r}: expected one of {', '.join(STAGE_EVENTS)}")
    values = {k: fields.get(k) for k in _STAGE_COLUMNS}
    for k in _MONEY_COLUMNS:
        values[k] = _amount(values[k], f"stage {stage} {event} {k}")
    for k in ("spot", "simulated"):
        if values[k] is not None:
            values[k] = int(bool(values[k]))
    values["simulated"] = values["simulated"] or 0
    cols = ("run_id", "stage", "event", "attempt", "at", "wall_at") + _STAGE_COLUMNS
    cur = db.execute(f"INSERT INTO stage_rows ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     (run_id, stage, event, attempt, at, time.time(), *values.values()))
    if event == "started" and attempt is None:   # an attempt is named by its `started` row (same transaction)
        db.execute("UPDATE stage_rows SET attempt = id WHERE id = ?", (cur.lastrowid,))
    return cur.lastrowid


def _insert_api(db, run_id, stage, attempt, at, rows, simulated) -> None:
    values = []
    for r in rows:
        kind = r.get("kind", "usage")
        delta = kind == "correction"           # corrections carry deltas: negative is fine, NaN never
        what = f"stage {stage} API usage ({r.get('model')})"
        tokens = [_amount(r.get(k) or 0, f"{what} {k}", negative=delta, whole=True)
                  for k in ("prompt_tokens", "cached_tokens", "completion_tokens")]
        values.append((run_id, stage, attempt, at, kind, str(r["model"]), int(bool(r.get("batch"))), *tokens,
                       _amount(r.get("usd") or 0.0, f"{what} usd", negative=delta), simulated))
    db.executemany(
        "INSERT INTO api_usage (run_id, stage, attempt, at, kind, model, batch, prompt_tokens, cached_tokens, "
        "completion_tokens, usd, simulated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)


_MONEY_COLUMNS = ("nodes", "gpus", "price_per_hour", "hours", "gpu_hours", "preemptions", "compute_usd", "api_usd")
_FLOAT_NOISE = 1e-9


def _amount(value, what: str, negative: bool = False, whole: bool = False):
    """A finite number, >= 0 unless `negative` (float noise of -1e-9 reads as 0); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"{what} = {value!r}: expected a finite number; nothing was recorded")
    if not negative and value < 0:
        if value < -_FLOAT_NOISE:
            raise BadInput(f"{what} = {value!r}: negative amounts are impossible; nothing was recorded")
        value = 0 if whole else 0.0
    if whole and value != int(value):
        raise BadInput(f"{what} = {value!r}: expected a whole number; nothing was recorded")
    return int(value) if whole else value


def this_process() -> dict:
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname()}


def _legacy_lease(db, run_id: str) -> dict | None:
    row = db.execute("SELECT reason, numbers, wall_at FROM events WHERE run_id = ? AND kind = 'run' "
                     "ORDER BY id DESC LIMIT 1", (run_id,)).fetchone()
    if row is None or row["reason"] not in ("started", "resumed"):
        return None
    numbers = json.loads(row["numbers"] or "{}")
    if not numbers.get("pid") or numbers.get("host") != this_process()["host"]:
        return None           # as before leases: only a live pid on this host holds the run
    return {"pid": int(numbers["pid"]), "host": str(numbers["host"]), "heartbeat_at": time.time(),
            "released_at": None}


def _stale(row, now: float, stale_s: float) -> str | None:
    """Why a lease no longer binds (its pid is dead on this host, or its heartbeat is old), or None."""
    import socket

    if row["host"] == socket.gethostname() and not pid_alive(row["pid"]):
        return f"pid {row['pid']} is not running"
    if now - row["heartbeat_at"] > stale_s:
        return f"no heartbeat for {now - row['heartbeat_at']:.0f} s (over {stale_s:.0f} s)"
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie is dead: its parent just has not reaped it yet
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return True


def _lease_event(db, run_id: str, reason: str, numbers: dict, now: float) -> None:
    db.execute("INSERT INTO events (run_id, stage, at, wall_at, kind, ok, reason, numbers) VALUES "
               "(?, NULL, ?, ?, 'lease', 1, ?, ?)", (run_id, now, now, reason, json.dumps(numbers)))


def _check_folder(folder: Path) -> None:
    """REPRODUCE_HOME (or the ledger's folder) must be a folder we can write, made if missing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LedgerError(f"{folder} is a file, not a folder: point REPRODUCE_HOME at a folder") from None
    except OSError as e:
        raise LedgerError(f"cannot make the folder {folder} ({e.strerror}): point REPRODUCE_HOME at a writable "
                          "folder") from None
    if not folder.is_dir():
        raise LedgerError(f"{folder} is not a folder: point REPRODUCE_HOME at a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LedgerError(f"{folder} is not writable (read-only?): point REPRODUCE_HOME at a writable folder")


def _check_header(path: Path) -> None:
    """Refuse a non-SQLite file before SQLite (or WAL mode) can write anything into it."""
    if path.is_dir():
        raise LedgerError(f"ledger {path} is a folder, not a SQLite file: move it aside or point REPRODUCE_HOME "
                          "elsewhere")
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise LedgerError(f"ledger {path} is not a SQLite database (corrupt or a different file); move it aside "
                          "or point REPRODUCE_HOME elsewhere; the file was left untouched")
