"""Planned vs recorded vs billed, per stage; and the correction rows that make the ledger say what was billed.

    report = reconcile(ledger, run_id, [aws_bill, openai_bill])     # reads only
    written = record(ledger, report)                                # appends what changed since the last time

Recorded is what the ledger said before any bill (its rows, without the billing corrections); the ledger's
current figure includes them. A stage is corrected only where the bill differs from the current figure by a
cent or more, so running the audit again appends nothing. Each change is one transaction: correction rows
(compute: each attempt's latest row copied with the billed $ and the effective $/h), API deltas (api_usage
kind 'correction'), and an event of kind 'billed' whose numbers feed price calibration
(costmodel.calibration.price_factors). Nothing is UPDATEd or DELETEd.

A stage that ended within the source's lag (billing.LAG_HOURS) is pending: shown, never recorded. A simulated
run's clock runs ahead of the real one, so the lag does not apply to it (it has no real bill anyway).
"""
from __future__ import annotations

import datetime as dt
import json
import time

from costmodel import billing
from costmodel.ledger import TERMINAL_EVENTS

DRIFT_THRESHOLD = 0.10     # issue 15: drift above 10% is flagged
CENT = 0.005               # below half a cent, the bill and the ledger agree
BILLED_MESSAGE = "correction: billed by "
RUN_LEVEL = "bucket & untagged"   # costs with the run tag but no known stage tag (the run's bucket, say)


# ---------------------------------------------------------------- what to ask the providers

def periods(ledger, run_id: str, now: float | None = None) -> dict:
    """The UTC days to ask for: the run's first to last row (+1 day, exclusive), never past tomorrow
    (providers refuse future periods); and the API stages' window, as datetimes."""
    now = time.time() if now is None else now
    rows = ledger.progress_rows(run_id)
    run = ledger.run(run_id) or {}
    t0 = min([r["at"] for r in rows] + [run.get("created_at") or now])
    t1 = max([r["at"] for r in rows] + [t0])
    cap = _day(now) + dt.timedelta(days=1)
    start, end = _day(t0), min(_day(t1) + dt.timedelta(days=1), cap)
    if end <= start:
        start = end - dt.timedelta(days=1)
    api = [r for r in ledger.attempts(run_id) if r["kind"] == "api"]
    a0 = min([r["started_at"] or r["at"] for r in api] or [t0])
    a1 = max([r["ended_at"] or r["at"] for r in api] or [t1])
    a_start = dt.datetime.combine(_day(a0), dt.time(), dt.timezone.utc)
    a_end = dt.datetime.combine(min(_day(a1) + dt.timedelta(days=1), cap), dt.time(), dt.timezone.utc)
    if a_end <= a_start:
        a_start = a_end - dt.timedelta(days=1)
    return {"aws": (start, end), "openai": (a_start, a_end)}


def _day(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).date()


# ---------------------------------------------------------------- the comparison

def reconcile(ledger, run_id: str, bills: list[dict], threshold: float = DRIFT_THRESHOLD, now: float | None = None,
              storage_plan: dict | None = None) -> dict:
    """Per stage: planned, recorded, billed, drift ($ and share of recorded), whether it is flagged, and what
    recording would change. `bills` are billing.aws_costs / openai_costs results (any may be absent)."""
    now = time.time() if now is None else now
    audit = ledger.audit(run_id)
    simulated = audit["run"]["simulated"]
    rec = recorded(ledger, run_id)
    last = last_billed(ledger, run_id)
    by_source = {b["source"]: b for b in bills}
    aws_rows = _aws_by_stage(by_source.get("aws"), [s["stage"] for s in audit["stages"]])
    api_billed = _openai_by_stage(by_source.get("openai"), ledger, run_id, rec)
    out = []
    for s in audit["stages"]:
        name, p, x = s["stage"], s["planned"], s["actual"]
        r = rec.get(name) or _empty()
        row = {"stage": name, "kind": s["kind"], "state": x["state"], "cloud": x["cloud"], "region": x["region"],
               "instance_type": x["instance_type"], "spot": x["spot"], "accelerator": _accel(r),
               "nodes": _first(r, "nodes"), "gpus": _first(r, "gpus"), "hours": x["hours"],
               "planned_usd": p["compute_usd"] + p["api_usd"], "recorded_usd": r["compute_usd"] + r["api_usd"],
               "ledger_usd": x["compute_usd"] + x["api_usd"], "billed_usd": None, "drift_usd": None, "drift_pct": None,
               "flagged": False, "estimated": False, "sources": [], "services": {}, "parts": {}, "status": None,
               "note": ""}
        ended = max([a["ended_at"] or a["at"] for a in r["attempts"].values()] or [0.0])
        if aws_rows.get(name):
            rows = aws_rows[name]
            row["parts"]["compute"] = {"recorded_usd": r["compute_usd"], "billed_usd": sum(v["usd"] for v in rows),
                                       "ledger_usd": x["compute_usd"]}
            row["sources"].append(by_source["aws"]["name"])
            row["estimated"] |= any(v["estimated"] for v in rows)
            for v in rows:
                row["services"][v["service"]] = row["services"].get(v["service"], 0.0) + v["usd"]
            if x["cloud"] and x["cloud"].lower() != "aws":
                row["note"] = f"recorded on {x['cloud']}, billed by AWS"
        if name in api_billed:
            row["parts"]["api"] = {"recorded_usd": r["api_usd"], "billed_usd": sum(api_billed[name].values()),
                                   "ledger_usd": x["api_usd"], "models": api_billed[name]}
            row["sources"].append(by_source["openai"]["name"])
        lag = max([billing.LAG_HOURS[b] for b in ("aws", "openai") if b in by_source] or [0.0])
        row["status"] = _status(row, x, r, ended, now, lag, simulated, by_source)
        if row["parts"]:
            billed = sum(part["billed_usd"] for part in row["parts"].values())
            base = sum(part["recorded_usd"] for part in row["parts"].values())
            row["billed_usd"], row["drift_usd"] = billed, billed - base
            row["drift_pct"] = (billed - base) / base if base > CENT else None
            row["flagged"] = row["status"] == "billed" and (
                abs(row["drift_pct"]) > threshold if row["drift_pct"] is not None else abs(billed - base) >= CENT)
        row["changes"] = _changes(row, r, last.get(name)) if row["status"] == "billed" else None
        out.append(row)
    planned_kept = sum(s["planned"].get("storage_usd") or 0.0 for s in audit["stages"])
    extra = _run_level(aws_rows, by_source.get("aws"), storage_plan, last.get(RUN_LEVEL), ledger.storage(run_id),
                       planned_kept, now, threshold)
    if extra:
        out.append(extra)
    billed_rows = [r for r in out if r["billed_usd"] is not None]
    totals = {"planned_usd": sum(r["planned_usd"] for r in out if r["stage"] != RUN_LEVEL),
              "planned_storage_usd": extra["planned_usd"] if extra else (storage_plan or {}).get("total_usd"),
              "recorded_usd": sum(r["recorded_usd"] for r in out),
              "billed_usd": sum(r["billed_usd"] for r in billed_rows),
              "recorded_of_billed_usd": sum(sum(p["recorded_usd"] for p in r["parts"].values()) for r in billed_rows)}
    totals["drift_usd"] = totals["billed_usd"] - totals["recorded_of_billed_usd"]
    totals["drift_pct"] = (totals["drift_usd"] / totals["recorded_of_billed_usd"]
                           if totals["recorded_of_billed_usd"] > CENT else None)
    return {"run": audit["run"], "threshold": threshold, "stages": out, "totals": totals,
            "sources": [{k: v for k, v in b.items() if k != "rows"} | {"rows": len(b["rows"])} for b in bills]}


def _status(row, x, r, ended, now, lag_h, simulated, by_source) -> str:
    if x["state"] == "running":
        return "running"
    if x["state"] == "not started":
        return "not started"
    if not row["parts"]:
        if (x["compute_usd"] or 0) < CENT and (x["api_usd"] or 0) < CENT and not x["cloud"]:
            return "local"            # ran here at $0: there is no bill
        return "no billing data"
    if not simulated and ended > now - lag_h * 3600:
        return "pending"
    return "billed"


def _changes(row: dict, r: dict, previous: dict | None) -> dict:
    """What recording this stage would append: corrections per attempt, API deltas per model, the event."""
    corrections, api_rows = [], []
    compute = row["parts"].get("compute")
    if compute and abs(compute["billed_usd"] - compute["ledger_usd"]) >= CENT:
        attempts = r["attempts"]
        total = sum(a["compute_usd"] or 0.0 for a in attempts.values())
        ids = sorted(attempts)
        for i in ids:
            a = attempts[i]
            if total > CENT:
                new = compute["billed_usd"] * (a["compute_usd"] or 0.0) / total
            else:                      # nothing recorded: the whole bill goes to the last attempt
                new = compute["billed_usd"] if i == ids[-1] else 0.0
            if abs(new - r["current"].get(i, 0.0)) >= CENT or len(ids) == 1:
                corrections.append((i, new, a))
    api = row["parts"].get("api")
    if api:
        for model, billed in api["models"].items():
            delta = billed - r["api_current"].get(model, 0.0)
            if abs(delta) >= CENT:
                api_rows.append({"model": model, "batch": r["api_batch"].get(model, False), "usd": delta})
    same = previous is not None and abs((previous.get("billed_usd") or 0.0) - row["billed_usd"]) < CENT \
        and previous.get("estimated") == row["estimated"]
    return {"corrections": corrections, "api_rows": api_rows, "event": bool(corrections or api_rows or not same)}


def _aws_by_stage(bill: dict | None, stages: list[str]) -> dict:
    if not bill:
        return {}
    names = {billing.tag_value(s): s for s in stages}
    out: dict = {}
    for row in bill["rows"]:
        out.setdefault(names.get(row["stage"], RUN_LEVEL), []).append(row)
    return out


def _openai_by_stage(bill: dict | None, ledger, run_id: str, rec: dict) -> dict:
    """{stage: {model: billed $}}: each API stage's models' line items in the window asked for; stages that
    share a model share its bill in proportion to what they recorded (OpenAI's bill carries no run tags)."""
    if not bill:
        return {}
    users: dict = {}
    for stage, r in rec.items():
        for model in r["api"]:
            users.setdefault(model, []).append(stage)
    out: dict = {}
    for model, stages in users.items():
        lines = [x for x in bill["rows"] if billing.model_line_item(model, x["line_item"])]
        if not lines:
            continue
        total = sum(x["usd"] for x in lines)
        weights = {s: rec[s]["api"][model] for s in stages}
        whole = sum(weights.values())
        for s in stages:
            share = weights[s] / whole if whole > CENT else 1.0 / len(stages)
            out.setdefault(s, {})[model] = total * share
    return out


def _run_level(aws_rows: dict, bill: dict | None, storage_plan: dict | None, previous: dict | None, kept: dict,
               planned_kept: float, now: float, threshold: float) -> dict | None:
    """The run's bucket (and anything else with the run tag but no stage tag) against what the ledger
    recorded of it to date: each stage's GB-months so far (storage accrues by the day, up to the days kept)
    plus its egress. A bill that differs by a cent or more becomes a storage correction (the delta)."""
    rows = aws_rows.get(RUN_LEVEL) or []
    planned = planned_kept or (storage_plan or {}).get("total_usd") or 0.0
    measured = {s: c for s, c in kept.items() if not c.get("correction")}
    correction = sum(c.get("usd") or 0.0 for c in kept.values() if c.get("correction"))
    to_date = sum(storage_to_date(c, now) for c in measured.values())
    committed = sum(c.get("usd") or 0.0 for c in measured.values())
    if not rows and not planned and not measured:
        return None
    billed = sum(r["usd"] for r in rows) if rows else None
    row = {"stage": RUN_LEVEL, "kind": "storage", "state": None, "cloud": "aws" if rows else None, "region": None,
           "instance_type": None, "spot": None, "accelerator": None, "nodes": None, "gpus": None, "hours": 0.0,
           "planned_usd": planned, "recorded_usd": to_date, "ledger_usd": to_date + correction, "billed_usd": billed,
           "drift_usd": None, "drift_pct": None, "flagged": False, "estimated": any(r["estimated"] for r in rows),
           "sources": [bill["name"]] if rows else [], "services": {}, "parts": {},
           "status": "billed" if rows else "no billing data",
           "note": f"bucket storage and egress: recorded to date ${to_date:,.2f} of ${committed:,.2f} committed "
                   "(GB x days so far, up to the days kept, + egress)"}
    for r in rows:
        row["services"][r["service"]] = row["services"].get(r["service"], 0.0) + r["usd"]
    if rows:
        row["parts"]["storage"] = {"recorded_usd": to_date, "billed_usd": billed, "ledger_usd": to_date + correction}
        row["drift_usd"] = billed - to_date
        row["drift_pct"] = row["drift_usd"] / to_date if to_date > CENT else None
        row["flagged"] = (abs(row["drift_pct"]) > threshold if row["drift_pct"] is not None
                          else abs(row["drift_usd"]) >= CENT)
        delta = billed - to_date if abs(billed - (to_date + correction)) >= CENT else None
        same = previous is not None and abs((previous.get("billed_usd") or 0.0) - billed) < CENT
        row["changes"] = {"corrections": [], "api_rows": [], "storage_delta": delta,
                          "event": not same or delta is not None}
    else:
        row["changes"] = None
    return row


def storage_to_date(cost: dict, now: float) -> float:
    """What a stage's recorded bucket contents have cost by NOW: egress at once, storage by the day since it
    was written, up to the days kept."""
    days = cost.get("days_kept") or 0.0
    share = min(max((now - (cost.get("at") or now)) / 86400 / days, 0.0), 1.0) if days > 0 else 1.0
    return (cost.get("egress_usd") or 0.0) + (cost.get("storage_usd") or 0.0) * share


# ---------------------------------------------------------------- what the ledger holds

def recorded(ledger, run_id: str) -> dict:
    """Per stage: the recorded compute (each attempt's latest terminal row that is not a billing correction)
    and API $ (the rows minus the deltas billing added), with the current figures beside them."""
    rows = ledger.db.execute("SELECT * FROM stage_rows WHERE run_id = ? AND attempt IS NOT NULL ORDER BY id",
                             (run_id,)).fetchall()
    mine: dict = {}
    current: dict = {}
    for row in map(dict, rows):
        key = (row["stage"], row["attempt"])
        terminal = row["event"] in TERMINAL_EVENTS
        if terminal or key not in current or current[key]["event"] not in TERMINAL_EVENTS:
            current[key] = row
        if row["event"] == "correction" and (row["message"] or "").startswith(BILLED_MESSAGE):
            continue
        if terminal or key not in mine or mine[key]["event"] not in TERMINAL_EVENTS:
            mine[key] = row
    out: dict = {}
    for (stage, attempt), row in mine.items():
        s = out.setdefault(stage, _empty())
        s["attempts"][attempt] = row
        s["compute_usd"] += row["compute_usd"] or 0.0
        s["current"][attempt] = current[(stage, attempt)]["compute_usd"] or 0.0
    deltas: dict = {}
    for stage, numbers in last_billed(ledger, run_id, every=True):
        for model, d in (numbers.get("api_deltas") or {}).items():
            deltas[(stage, model)] = deltas.get((stage, model), 0.0) + d
    for u in ledger.api_totals(run_id):
        s = out.setdefault(u["stage"], _empty())
        before = (u["usd"] or 0.0) - deltas.get((u["stage"], u["model"]), 0.0)
        s["api"][u["model"]] = s["api"].get(u["model"], 0.0) + before
        s["api_current"][u["model"]] = s["api_current"].get(u["model"], 0.0) + (u["usd"] or 0.0)
        s["api_batch"].setdefault(u["model"], bool(u["batch"]))
        s["api_usd"] += before
    return out


def _empty() -> dict:
    return {"compute_usd": 0.0, "api_usd": 0.0, "attempts": {}, "current": {}, "api": {}, "api_current": {},
            "api_batch": {}}


def last_billed(ledger, run_id: str, every: bool = False):
    """The numbers of the latest `billed` event per stage ({stage: numbers}), or every one ([(stage, numbers)])."""
    events = [(e["stage"], e["numbers"]) for e in ledger.events(run_id, "billed")]
    return events if every else dict(events)


def _accel(r: dict) -> str | None:
    rows = list(r["attempts"].values())
    return rows[-1]["accelerator"] if rows else None


def _first(r: dict, key: str):
    rows = list(r["attempts"].values())
    return rows[-1][key] if rows else None


# ---------------------------------------------------------------- recording

def record(ledger, report: dict, at: float | None = None) -> list[dict]:
    """Append what changed, one transaction per stage; returns [{stage, corrections, api_usd_delta, event}]."""
    from costmodel.ledger import _STAGE_COLUMNS, _insert_api, _insert_stage_row

    run_id = report["run"]["run_id"]
    simulated = int(bool(report["run"]["simulated"]))
    latest = max([r["at"] for r in ledger.progress_rows(run_id)] or [0.0])
    # after the run's last row: a simulated run's clock ran ahead, and spend over time must end at the bill
    at = max(at or time.time(), latest + 1e-3)
    done = []
    for row in report["stages"]:
        ch = row.get("changes")
        if not ch or not (ch["event"] or ch["corrections"] or ch["api_rows"]):
            continue
        source = " + ".join(row["sources"])
        pct = "" if row["drift_pct"] is None else f", {row['drift_pct']:+.1%}"
        est = ", estimated" if row["estimated"] else ""
        numbers = _numbers(row, report)
        numbers["api_deltas"] = {a["model"]: a["usd"] for a in ch["api_rows"]}
        with ledger.write() as db:   # corrections, deltas and the event: all or nothing
            for attempt, new, base in ch["corrections"]:
                last = db.execute("SELECT * FROM stage_rows WHERE run_id = ? AND stage = ? AND attempt = ? "
                                  "ORDER BY id DESC LIMIT 1", (run_id, row["stage"], attempt)).fetchone()
                fields = {k: last[k] for k in _STAGE_COLUMNS}
                hours = fields["hours"] or 0.0
                fields.update(compute_usd=new, price_per_hour=new / hours if hours > 0 else fields["price_per_hour"],
                              price_source=f"billed: {source} ({numbers['period']}{est})",
                              price_date=numbers["billed_on"],
                              message=f"{BILLED_MESSAGE}{source}: ${new:,.2f} (recorded "
                                      f"${base['compute_usd'] or 0.0:,.2f}{pct})")
                _insert_stage_row(db, run_id, row["stage"], "correction", at, attempt, fields)
            _insert_api(db, run_id, row["stage"], None, at, [dict(a, kind="correction") for a in ch["api_rows"]],
                        simulated)
            if ch.get("storage_delta") is not None:   # the bucket's bill, as a delta on what was recorded
                delta = ch["storage_delta"]
                db.execute("INSERT INTO events (run_id, stage, at, wall_at, kind, ok, reason, numbers) "
                           "VALUES (?, ?, ?, ?, 'storage', 1, ?, ?)",
                           (run_id, row["stage"], at, time.time(), f"{BILLED_MESSAGE}{source}: bucket ${delta:+,.2f}",
                            json.dumps({"correction": True, "usd": delta, "gb_written": 0.0, "gb_pulled": 0.0,
                                        "billed_usd": row["billed_usd"], "recorded_to_date_usd": row["recorded_usd"],
                                        "arithmetic": f"billed ${row['billed_usd']:,.2f} - recorded to date "
                                                      f"${row['recorded_usd']:,.2f} = ${delta:+,.2f}"})))
            if ch["event"]:
                db.execute("INSERT INTO events (run_id, stage, at, wall_at, kind, ok, reason, numbers) "
                           "VALUES (?, ?, ?, ?, 'billed', NULL, ?, ?)",
                           (run_id, row["stage"], at, time.time(),
                            f"{source}: billed ${row['billed_usd']:,.2f}{pct}{est}", json.dumps(numbers)))
        done.append({"stage": row["stage"], "corrections": len(ch["corrections"]),
                     "api_usd_delta": sum(a["usd"] for a in ch["api_rows"]),
                     "storage_usd_delta": ch.get("storage_delta"), "event": ch["event"]})
    return done


def _numbers(row: dict, report: dict) -> dict:
    """What the `billed` event keeps: every figure of the comparison, and what price calibration needs."""
    periods = [s["period"] for s in report["sources"] if s["name"] in row["sources"]]
    compute = row["parts"].get("compute")
    hours = row["hours"] or 0.0
    calibrates = bool(compute and row["cloud"] and row["accelerator"] and hours > 0
                      and compute["recorded_usd"] > CENT and row["status"] == "billed")
    return {"sources": row["sources"], "period": "; ".join(f"{a}..{b}" for a, b in periods),
            "billed_on": dt.datetime.now(dt.timezone.utc).date().isoformat(),
            "planned_usd": row["planned_usd"], "recorded_usd": row["recorded_usd"], "billed_usd": row["billed_usd"],
            "drift_usd": row["drift_usd"], "drift_pct": row["drift_pct"], "flagged": row["flagged"],
            "threshold": report["threshold"], "estimated": row["estimated"], "services": row["services"],
            "cloud": (row["cloud"] or "").lower() or None, "region": row["region"],
            "instance_type": row["instance_type"], "accelerator": row["accelerator"], "spot": row["spot"],
            "nodes": row["nodes"], "gpus": row["gpus"], "hours": hours,
            "recorded_compute_usd": compute["recorded_usd"] if compute else None,
            "billed_compute_usd": compute["billed_usd"] if compute else None,
            "recorded_per_hour": compute["recorded_usd"] / hours if compute and hours > 0 else None,
            "effective_per_hour": compute["billed_usd"] / hours if compute and hours > 0 else None,
            "calibrates": calibrates}
