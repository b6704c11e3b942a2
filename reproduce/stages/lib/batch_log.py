"""What submitted OpenAI batches commit: ARTIFACTS/<stage>/batches.jsonl, one appended line per event.

A submitted batch is billed for whatever it finishes whether or not anyone still watches it, so its estimated
cost counts as spent from the moment it is submitted (the stage's own admission of the next batch, the
controller's guard, `status` and the audit) until its results are collected and their paid lines in
usage.jsonl take its place.

    {"event": "submitted", "batch_id": "batch_1", "requests": 120, "usd": 1.84, "model": "gpt-4o-mini", "at": ...}
    {"event": "ended", "batch_id": "batch_1", "status": "completed", "done": 118, "failed": 2, "at": ...}
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FILE = "batches.jsonl"


def append(stage_dir, **line) -> None:
    """One event, appended and synced before the caller goes on (a batch is recorded before it can bill)."""
    path = Path(stage_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({**line, "at": round(time.time(), 3)}) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def lines(path) -> list[dict]:
    """The whole lines of an append-only JSON-lines log (a line cut by a kill mid-write ends it)."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return out
    for raw in text.splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            break
    return out


def open_batches(stage_dir) -> dict[str, dict]:
    """batch id -> its `submitted` line, for every batch whose end the stage has not recorded."""
    found: dict[str, dict] = {}
    for line in lines(Path(stage_dir) / FILE):
        if line.get("event") == "submitted":
            found[line["batch_id"]] = line
        elif line.get("event") == "ended":
            found.pop(line.get("batch_id"), None)
    return found


def committed_usd(stage_dir) -> tuple[float, int]:
    """($, batches) committed and not yet paid: each open batch's estimate less the paid lines it has already
    logged (a batch being collected is not counted twice)."""
    open_ = open_batches(stage_dir)
    if not open_:
        return 0.0, 0
    paid: dict[str, float] = {}
    for u in lines(Path(stage_dir) / "usage.jsonl"):
        if u.get("batch_id") in open_:
            paid[u["batch_id"]] = paid.get(u["batch_id"], 0.0) + float(u.get("usd") or 0.0)
    return sum(max(float(b.get("usd") or 0.0) - paid.get(i, 0.0), 0.0) for i, b in open_.items()), len(open_)
