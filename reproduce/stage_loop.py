"""One stage of a run, top to bottom: launch (or re-attach), watch, settle.

    outcome = run_stage(watch, "sft", plan_row, envs, spent_before, later_rows)
    outcome.kind     # finished | stopped | failed | interrupted
    outcome.why      # why it stopped, in one sentence (the run's reason, the CLI's error line)

`launch` records the attempt and starts the stage, or re-attaches to the job a dead controller left running.
`watch` polls until the stage ends or must end, and returns an Outcome; it stops nothing but what the budget
guard stops. `settle` writes what the outcome means to the ledger: the attempt's end row, its API usage, GPU
hours and cost, its calibration, its bucket metering, the checkpoints a finished stage no longer needs.
The forecast rule sits behind one object, StageForecast, so costmodel's forecast can change beneath it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from costmodel import budget as guard
from costmodel.ledger import LeaseLost
from reproduce import stagetable
from reproduce.errors import UserError
from reproduce.executors.base import RunContext, StageStatus

EXIT_CODES = {"finished": 0, "failed": 1, "stopped": 3, "interrupted": 130}


@dataclass
class Outcome:
    """How a stage ended and why: the one answer to "why did it stop?"."""
    kind: str                        # finished | stopped | failed | interrupted
    why: str = ""
    decision: guard.Decision | None = None   # the guard's stop, with its numbers
    error: Exception | None = None   # what failed the launch or the watch

    @property
    def code(self) -> int:
        return EXIT_CODES[self.kind]


@dataclass
class Attempt:
    """One attempt of one stage: its ledger number, context, cloud handle and last status."""
    name: str
    plan: object
    number: int | None
    started: float
    ctx: RunContext | None
    poll_s: float
    handle: str | None = None
    spent_before: float = 0.0
    later: list = field(default_factory=list)
    status: StageStatus = field(default_factory=lambda: StageStatus(state="PENDING"))


def run_stage(w, name: str, p, envs: dict, spent_before: float, later: list) -> Outcome:
    """Launch, watch and settle one stage; the Outcome says how it ended. A lost lease is raised (another
    process owns the run); a UserError is recorded, then raised."""
    a = begin(w, name, p, envs, spent_before, later)
    try:
        launch(w, a)
        outcome = watch(w, a, spent_before, later)
    except KeyboardInterrupt:
        outcome = Outcome("interrupted", "cancelled by Ctrl-C; torn down")
    except LeaseLost:
        # another process owns the run now: a cloud job it can re-attach to is left to it; a job of this
        # process (local, sim) goes, so that two never run the same stage
        if a.handle is not None and not w.executor.detached:
            w.executor.cancel(a.handle)
        raise
    except Exception as e:   # noqa: BLE001 - every failure is settled (cancelled, recorded) before it is told
        outcome = Outcome("failed", f"stage {name} failed to launch: {e}", error=e)
    return settle(w, a, outcome)


def begin(w, name: str, p, envs: dict, spent_before: float = 0.0, later: list = ()) -> Attempt:
    """The attempt's context (whose on_handle records every cloud handle at once) and how often to poll it.
    Its ledger number comes with its `started` row (open_attempt), or from the orphan it re-attaches to."""
    # at least ~100 polls over the stage's planned hours (never under 10 s): a short, dear stage (an API
    # teacher) must be watched often enough for its forecast to act before most of it is paid
    poll_s = min(w.poll_s, max(10.0, p.hours * 36)) if p.hours > 0 else w.poll_s
    if p.kind == "api":   # paid by the request, planned in dollars, not hours: watch it at least every 30 s
        poll_s = min(poll_s, 30.0)
    ex = w.executor
    a = Attempt(name, p, None, ex.now(), None, poll_s)

    def on_handle(h: str) -> None:
        w.ledger.add_event(w.run_id, name, "handle", ok=True, reason=h, numbers={"handle": h, "attempt": a.number},
                           at=ex.now())

    a.ctx = RunContext(run_id=w.run_id, recipe=w.recipe, stage=name, plan=p, artifacts=w.artifacts, envs=envs,
                       bucket=w.bucket, on_handle=on_handle)
    a.spent_before, a.later = spent_before, list(later)
    return a


def open_attempt(w, a: Attempt) -> None:
    """A new attempt: its `started` row, and its allowance into the task envs for the watchdog on the node
    (reproduce.watchdog): what it may spend, at which $/h cap, until which UTC deadline."""
    from reproduce import watchdog

    a.started = w.executor.now()
    a.number = w.ledger.add_stage_row(w.run_id, a.name, "started", at=a.started, state="PENDING",
                                      started_at=a.started, simulated=w.simulated, **plan_fields(a.plan))
    allowed = watchdog.allowance(a.name, a.number, a.plan, w.budget, a.spent_before, a.later, a.started,
                                 float(w.recipe.get("costs", {}).get("stop_grace_s", watchdog.GRACE_S)))
    if allowed is not None:
        a.ctx.envs = {**a.ctx.envs, **allowed.envs()}


def launch(w, a: Attempt) -> None:
    """Re-attach to the job a controller that died left running (it may still be billing), continuing its
    attempt so that what it costs is counted once; else a new attempt, launched."""
    orphan = _orphan(w.ledger, w.run_id, a.name)
    if orphan:
        a.handle = w.executor.reattach(orphan[0], a.ctx)
        if a.handle:
            a.number, a.started = orphan[1], orphan[2]
            a.ctx.on_handle(a.handle)
            w.progress.note(a.name, f"re-attached to {a.handle}, launched before the controller stopped")
            return
    open_attempt(w, a)
    a.handle = w.executor.launch(a.ctx)


def watch(w, a: Attempt, spent_before: float, later: list) -> Outcome:
    """Poll until the stage ends (finished / failed) or the budget guard stops it. At every poll: the hard cap
    (spend by the next poll would pass the budget) and the forecast (at the observed rate the run cannot
    finish within the budget). The stop is decided and recorded here; settle tears it down."""
    ex, ledger, p, name = w.executor, w.ledger, a.plan, a.name
    forecast = StageForecast(name, p, later)
    last_state, last_row = None, a.started
    while True:
        st = a.status = ex.poll(a.handle)
        ledger.heartbeat(w.run_id)   # LeaseLost if another process took this run over
        now = ex.now()
        if p.kind == "api":   # what it paid is what the ledger has of its usage log, as it goes
            if record_usage(w, name, a.number, now) is not None:
                paid, lines = ledger.attempt_api_usd(w.run_id, name, a.number)
                st.api_usd = max(st.api_usd, paid)
                if st.progress is None and (p.api_tokens or {}).get("requests"):
                    st.progress = {"done": lines, "total": p.api_tokens["requests"], "unit": "requests"}
            st.committed_usd = record_batches(w, name, a.number, now)
        cost = st.cost_usd + st.api_usd
        fc = forecast.update(st, cost, now)   # the rate of what is paid, over what is done
        w.progress.status(name, st, p.total_usd, forecast=fc, eta_s=forecast.eta_s)
        if st.stopped:   # the watchdog on the node stopped it against its allowance
            return node_stop(w, name, st.stopped, now)
        if st.done:
            if st.state == "SUCCEEDED":
                return Outcome("finished")
            return Outcome("failed", f"stage {name} {st.state.lower()}: {st.message or 'no message'}")
        if st.state != last_state or now - last_row >= w.every:
            ledger.add_stage_row(w.run_id, name, "progress", at=now, attempt=a.number,
                                 **actual(st, p, a.started, now, w.simulated))
            last_state, last_row = st.state, now
        # the hard cap counts a submitted batch whole: it bills without us
        decision = guard.should_stop(spent_before, cost + st.committed_usd, st.price_per_hour, a.poll_s, w.budget,
                                     w.teardown_s)
        if not decision.ok:
            decision = forecast.decide(spent_before, w.budget) or decision
            if decision.ok and forecast.observed:
                w.observed[name] = (forecast.observed, cost)
        if decision.ok:
            guard.record(ledger, w.run_id, name, decision, at=now)
            return Outcome("stopped", f"stage {name} stopped by the budget guard: {decision.reason}", decision)
        ex.wait(a.poll_s)


def node_stop(w, name: str, stopped: dict, at: float) -> Outcome:
    """The node's own stop (its stopped.json), recorded as the guard's decision."""
    why = f"stage {name} stopped on the node: {stopped.get('why', 'no reason given')}"
    decision = guard.Decision(True, "node_stop", why, dict(stopped))
    guard.record(w.ledger, w.run_id, name, decision, at=at)
    return Outcome("stopped", why, decision)


def settle(w, a: Attempt, outcome: Outcome) -> Outcome:
    """What the outcome means in the ledger; a UserError that failed the stage is raised once recorded."""
    ex, p, name = w.executor, a.plan, a.name
    if a.number is None:   # it failed before its attempt was recorded (a failed re-attach): record one now
        open_attempt(w, a)
    if outcome.kind in ("stopped", "interrupted"):
        _teardown(w, a, strict=outcome.kind == "stopped")
    elif outcome.error is not None and a.handle is not None:
        ex.cancel(a.handle)
    now = ex.now()
    st = a.status
    if outcome.kind == "interrupted":
        w.ledger.add_stage_row(w.run_id, name, "cancelled", at=now, attempt=a.number,
                               **actual(st, p, a.started, now, w.simulated, message=outcome.why,
                                        state="CANCELLED"))
    elif outcome.error is not None:
        e = outcome.error
        w.ledger.add_stage_row(w.run_id, name, "failed", at=now, attempt=a.number,
                               **actual(st, p, a.started, now, w.simulated, message=f"{type(e).__name__}: {e}",
                                        state="FAILED"))
        if isinstance(e, UserError):
            raise e
    elif outcome.kind == "stopped":
        w.ledger.add_stage_row(w.run_id, name, "cancelled", at=now, attempt=a.number,
                               **actual(st, p, a.started, now, w.simulated, message=outcome.why))
        record_storage(w, a.ctx, p, share(st))
        w.progress.status(name, st, p.total_usd, force=True)
    elif outcome.kind == "failed":
        w.ledger.add_stage_row(w.run_id, name, "failed" if st.state == "FAILED" else "cancelled", at=now,
                               attempt=a.number, **actual(st, p, a.started, now, w.simulated))
        record_storage(w, a.ctx, p, share(st))
    else:
        _finish(w, a, now)
    return outcome


def _teardown(w, a: Attempt, strict: bool) -> None:
    """Cancel what the attempt launched, then read its last status (and, for an API stage, its usage).
    After a Ctrl-C (not strict) a failed last poll must not keep the cancellation from being recorded."""
    ex = w.executor
    if a.handle is not None:
        ex.cancel(a.handle)
        try:
            a.status = ex.poll(a.handle)
        except Exception:   # noqa: BLE001
            if strict:
                raise
    if a.plan.kind == "api":
        for line in cancel_batches(w.ledger, w.run_id, w.artifacts, a.name, a.number, w.simulated, ex.now()):
            w.progress.note(a.name, line.split("] ", 1)[-1])
        record_usage(w, a.name, a.number, ex.now())


def record_batches(w, stage: str, attempt: int, at: float) -> float:
    """The batches the stage submitted (ARTIFACTS/<stage>/batches.jsonl): each new one recorded in the ledger
    once, with what it commits. -> $ committed and not paid yet."""
    from reproduce.stages.lib import batch_log

    stage_dir = Path(w.artifacts) / stage
    seen = {e["numbers"].get("batch_id") for e in w.ledger.events(w.run_id, "batch") if e["stage"] == stage}
    for b in batch_log.lines(stage_dir / batch_log.FILE):
        if b.get("event") == "submitted" and b["batch_id"] not in seen:
            seen.add(b["batch_id"])
            w.ledger.add_event(w.run_id, stage, "batch", ok=True, at=at,
                               reason=f"submitted batch {b['batch_id']}: {b['requests']} requests, "
                                      f"${b['usd']:.4f} committed (billed whether or not the controller watches)",
                               numbers={"batch_id": b["batch_id"], "requests": b["requests"], "usd": b["usd"],
                                        "attempt": attempt})
    return batch_log.committed_usd(stage_dir)[0]


def cancel_batches(ledger, run_id: str, artifacts, stage: str, attempt: int | None, simulated: bool,
                   at: float) -> list[str]:
    """Cancel the batches an API stage left open and record what they finished (billed) in the ledger; the
    stage's process must be gone (one writer of its usage log). -> what was done, one line each."""
    from reproduce.stages.rewrite import cancel_batches as cancel

    said = cancel(artifacts, stage)
    if said:
        ledger.add_event(run_id, stage, "batch_cancel", ok=True, at=at, reason="; ".join(said),
                         numbers={"attempt": attempt})
        ledger.add_usage_lines(run_id, stage, usage_lines(artifacts, stage), at=at, attempt=attempt,
                               simulated=simulated)
    return said


def _finish(w, a: Attempt, now: float) -> None:
    """A stage that succeeded: its usage, GPU hours, cost and calibration in one transaction; then its
    checkpoints deleted unless kept, and its bucket metered."""
    ex, p, name, st = w.executor, a.plan, a.name, a.status
    summary = read_summary(w.artifacts, name)
    # a usage log (one line per paid result) is the record; a summary's api_usage only where there is none
    usage = [] if record_usage(w, name, a.number, now) is not None else (summary.get("api_usage") or [])
    calibration = []
    if not w.simulated:
        from costmodel.calibration import observations

        try:
            calibration = observations(name, summary, w.recipe, p.to_dict())
        except Exception:   # a summary missing a field must not lose the stage's accounting
            calibration = []
    message = st.message or ("" if summary or p.kind != "api" else "no summary.json: API spend not reported")
    w.ledger.finish_stage(w.run_id, name, a.number, at=now, api_usage=usage, calibration=calibration,
                          **actual(st, p, a.started, now, w.simulated, message=message))
    _discard_scratch(w, a.ctx, name)
    record_storage(w, a.ctx, p, 1.0, (now - a.started) / 3600)


def _discard_scratch(w, ctx: RunContext, name: str) -> None:
    """A finished stage's resume checkpoints cannot produce anything now: stop paying for them."""
    row = stagetable.stage(name)
    if not row.scratch or row.keeps_scratch(w.recipe):
        return
    try:
        gone = w.executor.discard(ctx, row.scratch)
    except Exception as e:   # noqa: BLE001 - the stage's accounting must survive a failed delete
        gone = None
        w.progress.note(name, f"could not delete its checkpoints from the bucket ({e}); they stay, and are "
                              "paid for")
    if gone:
        what = f"{name} succeeded: deleted its checkpoints from the bucket ({gone if gone > 0 else 'all'} " \
               f"object(s) under {name}/{', '.join(row.scratch)}*; {row.section}.keep_checkpoints keeps them)"
        w.ledger.add_event(w.run_id, name, "discarded", ok=True, reason=what,
                           numbers={"objects": gone, "prefixes": list(row.scratch)}, at=w.executor.now())
        w.progress.note(name, what)


class StageForecast:
    """The forecast stop, behind one seam (costmodel.forecast): fed each poll's status, it says what the stage
    will cost at completion, with its spread, and whether, with the re-planned rest, the run can still finish
    within the budget even at the low end of each (it stops only what cannot fit).

        fc = StageForecast(stage, plan_row, later_rows)
        usd = fc.update(status, cost_so_far, now)      # None until enough is measured
        decision = fc.decide(spent_before, budget)     # None without a forecast; .ok means stop
    """

    def __init__(self, stage: str, plan, later: list):
        from costmodel.forecast import StageRate

        self.stage, self.plan, self.later = stage, plan, later
        self.rate = StageRate()
        self.last = None        # the costmodel.forecast.Forecast of the last update
        self.observed = None    # the factor over the plan, once a stop was decided on it

    @property
    def eta_s(self) -> float | None:
        return self.rate.eta_s

    def update(self, st: StageStatus, cost: float, now: float) -> float | None:
        prog = st.progress or {}
        total = float(prog.get("total") or 0)
        if total > 0 and st.state in ("RUNNING", "RECOVERING"):
            self.rate.feed(cost, float(prog.get("done") or 0), total, now)
            self.last = self.rate.estimate()
        return self.last.central if self.last else None

    def decide(self, spent_before: float, budget: float | None) -> guard.Decision | None:
        from costmodel import forecast

        if self.last is None:
            return None
        p = self.plan
        paid_part = p.total_usd - p.storage_usd   # what the observed rate scales; the bucket is by GB
        factor = self.last.factor(paid_part)
        rest = forecast.rest_bounds(self.later, factor, self.last.spread)
        decision = forecast.decide(self.stage, spent_before, self.last, p.storage_usd, rest, budget)
        if decision.ok and paid_part > 0:
            self.observed = factor
        return decision


def _orphan(ledger, run_id: str, name: str) -> tuple | None:
    """(handle, attempt, started_at) of this stage's last attempt when that attempt never recorded its end (the controller
    died while it ran): a job that may still be running, and billing."""
    handles = [e["numbers"] for e in ledger.events(run_id, "handle") if e["stage"] == name]
    if not handles:
        return None
    last = handles[-1]
    attempts = [a for a in ledger.attempts(run_id, name) if a["attempt"] == last.get("attempt")]
    if not attempts or attempts[-1]["event"] != "interrupted":
        return None
    return last["handle"], attempts[-1]["attempt"], attempts[-1]["started_at"] or attempts[-1]["at"]


def record_storage(w, ctx: RunContext, p, share: float, hours: float = 0.0) -> None:
    """What the stage left in the run's bucket, measured where the executor can (else the plan's GB x the
    share of the work done), priced by costmodel.storage: committed spend from now on. A stage that succeeded
    also pays for the scratch it deleted, for the HOURS it ran."""
    if not p.storage:
        return
    from costmodel import storage

    try:
        measured = w.executor.written_gb(ctx, share)
    except Exception:   # noqa: BLE001 - a failed listing must not lose the stage's accounting
        measured = None
    gb, how = measured or (p.storage["gb_written"] * share, f"not measured: the plan's GB x {share:.0%} done")
    scratch = (p.storage.get("scratch_gb") or 0.0) if share >= 1 else 0.0   # a stopped stage's is in its GB
    cost = storage.cost(w.recipe, p.stage, gb, p.storage["store"], p.storage["days_kept"], scratch, max(hours, 0.0))
    w.ledger.add_storage(w.run_id, p.stage, {**cost, "measured": how}, at=w.executor.now())


def share(st: StageStatus) -> float:
    """The part of a stage's work its last progress report says is done (0 without one)."""
    prog = st.progress or {}
    total = float(prog.get("total") or 0)
    return min(float(prog.get("done") or 0) / total, 1.0) if total > 0 else 0.0


def record_usage(w, stage: str, attempt: int, at: float) -> int | None:
    """New lines of ARTIFACTS/<stage>/usage.jsonl into the ledger; None when the stage keeps no such log."""
    if not (Path(w.artifacts) / stage / "usage.jsonl").is_file():
        return None
    return w.ledger.add_usage_lines(w.run_id, stage, usage_lines(w.artifacts, stage), at=at, attempt=attempt,
                                    simulated=w.simulated)


def usage_lines(artifacts, stage: str) -> list[dict]:
    """The whole lines of ARTIFACTS/<stage>/usage.jsonl (a line cut by a kill mid-write: the next read has it)."""
    from reproduce.stages.lib import batch_log

    return batch_log.lines(Path(artifacts) / stage / "usage.jsonl")


def read_summary(artifacts: Path, stage: str) -> dict:
    path = Path(artifacts) / stage / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def plan_fields(p) -> dict:
    return {"kind": p.kind, "accelerator": p.accelerator, "nodes": p.nodes, "gpus": p.gpus, "spot": p.spot,
            "cloud": p.cloud, "region": p.region, "zone": p.zone, "instance_type": p.instance_type,
            "price_per_hour": p.price_per_hour, "price_source": p.price_source, "price_date": p.price_date}


def actual(st: StageStatus, p, started: float, now: float, simulated: bool, message: str | None = None,
           state: str | None = None) -> dict:
    hours = st.elapsed_s / 3600
    gpus = st.gpus or 0
    return {"state": state or st.state, "kind": p.kind, "accelerator": p.accelerator,
            "nodes": p.nodes, "gpus": gpus, "spot": st.spot, "cloud": st.cloud, "region": st.region,
            "zone": st.zone, "instance_type": st.instance_type, "price_per_hour": st.price_per_hour,
            "price_source": st.price_source, "price_date": p.price_date, "started_at": started,
            "ended_at": now, "hours": hours, "gpu_hours": hours * gpus, "preemptions": st.preemptions,
            "compute_usd": st.cost_usd, "message": st.message if message is None else message,
            "simulated": simulated}
