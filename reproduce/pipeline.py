"""The pipeline: stages in order, each admitted by the budget guard, watched while it runs, recorded.

    result = run(plan, recipe, executor, ledger, budget)              # a new run
    result = run(plan, recipe, executor, ledger, budget, resume_run="20261124-101500-ab12")

For each stage: skip it if the ledger says it finished (a resumed run never does work twice); admit it
(spent + its estimate + the rest's estimates <= budget); record `started`; launch; poll every `poll_s`,
recording progress; stop it (cancel + teardown) when the spend projected to the next poll would pass the
budget; on success record its API usage, GPU-hours and cost in one transaction. Ctrl-C cancels what is
running, tears it down, records `cancelled` and re-raises. Exit codes in the result: 0 done, 1 a stage
failed, 3 stopped or refused by the budget guard.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from costmodel import budget as guard
from costmodel import forecast
from costmodel.ledger import LeaseLost, home
from reproduce.errors import UserError
from reproduce import stagetable
from reproduce.executors.base import RunContext, StageStatus



@dataclass
class RunResult:
    run_id: str
    exit_code: int            # 0 done, 1 a stage failed, 3 budget
    stage: str | None = None  # the stage that failed, was stopped or refused
    reason: str = ""
    artifacts: Path | None = None


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def artifacts_dir(run_id: str) -> Path:
    return home() / "runs" / run_id / "artifacts"


def make_executor(backend: str, recipe: dict, sim: dict | None = None):
    """(executor, name, why) for --backend auto|sky|local|sim."""
    scale = recipe.get("scale", "full")
    why = f"--backend {backend}"
    if backend == "auto":
        if scale == "smoke":
            backend, why = "local", "auto: smoke scale runs on this machine"
        else:
            from reproduce.executors.sky import sky_enabled

            try:
                enabled = sky_enabled()
            except Exception as e:   # a broken SkyPilot install is a reason to say so, not to crash
                enabled, why = False, f"auto: `sky check` failed ({e})"
            backend = "sky" if enabled else "local"
            why = "auto: SkyPilot has an enabled infra" if enabled else (
                why if why.startswith("auto: `sky") else "auto: no cloud enabled in SkyPilot (`sky check`)")
    if backend == "sim":
        from reproduce.executors.sim import SimExecutor

        return SimExecutor(**(sim or {})), "sim", why
    if backend == "local":
        from reproduce.executors.local import LocalExecutor

        return LocalExecutor(scale), "local", why
    if backend == "sky":
        from reproduce.executors.sky import SkyExecutor

        return SkyExecutor(scale=scale), "sky", why
    from reproduce.plan import check_backend

    check_backend(backend)
    raise AssertionError(f"backend {backend} has no executor")   # BACKENDS and this function disagree


def run(plan, recipe: dict, executor, ledger, budget: float | None, resume_run: str | None = None,
        progress=None, stages: list[str] | None = None, poll_s: float | None = None, envs: dict | None = None,
        bucket: str | None = None, run_id: str | None = None) -> RunResult:
    from reproduce.recipe import dump

    progress = progress if progress is not None else Progress()
    ex_name = executor.name
    poll_s = poll_s or executor.poll_s
    every = executor.progress_every_s
    teardown_s = executor.teardown_s
    simulated = executor.simulated
    rows = {s.stage: s for s in plan.stages}   # typed plan rows (StageEstimate), from the plan to the executor
    selected = [s for s in stagetable.NAMES if s in rows and (stages is None or s in stages)]
    me = {"pid": os.getpid(), "host": socket.gethostname()}

    if resume_run:
        run_id = resume_run
        found = ledger.run(run_id)
        if found is None:
            raise UserError(f"--resume {run_id!r}: no such run; see `reproduce runs`")
        ledger.claim_run(run_id, me)   # atomic: of two resumers one proceeds, the other exits 2 naming it
        artifacts = Path(found["artifacts"])
        ledger.add_event(run_id, None, "run", ok=True, reason="resumed", numbers={**me, "budget": budget},
                         at=executor.now())
        if budget is not None and budget != found["budget"]:
            ledger.add_event(run_id, None, "budget", ok=True, reason=f"budget changed to ${budget:,.2f} on resume",
                             numbers={"budget": budget, "was": found["budget"]}, at=executor.now())
        for a in ledger.open_attempts(run_id):   # the controller died mid-stage: count what we last saw
            fields = {k: a[k] for k in ("state", "kind", "accelerator", "nodes", "gpus", "spot", "cloud", "region",
                                        "zone", "instance_type", "price_per_hour", "price_source", "price_date",
                                        "started_at", "hours", "gpu_hours", "preemptions", "compute_usd",
                                        "simulated")}
            fields.update(state="INTERRUPTED", ended_at=a["at"],
                          message="the controller stopped without recording an end; spend counted to its last "
                                  "progress row" + ("" if simulated else "; check `sky status` and `sky jobs queue`"))
            ledger.add_stage_row(run_id, a["stage"], "interrupted", at=executor.now(), attempt=a["attempt"], **fields)
    else:
        run_id = run_id or new_run_id()
        artifacts = artifacts_dir(run_id)
        ledger.create_run(run_id, recipe=plan.recipe, scale=plan.scale, backend=ex_name, budget=budget,
                          simulated=simulated, artifacts=str(artifacts), recipe_yaml=dump(recipe),
                          plan=plan.to_dict(), at=executor.now())
        ledger.claim_run(run_id, me)
        for name in selected:
            p = rows[name]
            ledger.add_stage_row(run_id, name, "planned", at=executor.now(), simulated=simulated,
                                 **_plan_fields(p), hours=p.hours, gpu_hours=p.gpu_hours,
                                 compute_usd=p.compute_usd, api_usd=p.api_usd, arithmetic=p.arithmetic)
        ledger.add_event(run_id, None, "run", ok=True, reason="started", numbers={**me, "budget": budget},
                         at=executor.now())
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "recipe.yaml").write_text(dump(recipe))   # stage programs read the resolved recipe

    def end(code: int, reason: str, stage: str | None = None, why: str = "") -> RunResult:
        ledger.add_event(run_id, stage, "run", ok=code == 0, reason=reason, numbers={"exit_code": code},
                         at=executor.now())
        ledger.release_run(run_id, me)
        return RunResult(run_id, code, stage, why, artifacts)

    finished = ledger.finished_stages(run_id)
    watch = _Watch(run_id, recipe, executor, ledger, budget, artifacts, bucket, simulated, progress, poll_s, every,
                   teardown_s, plan.backend)
    known = known_facts(ledger, run_id)
    for i, name in enumerate(selected):
        p = rows[name]
        if name in finished:
            progress.note(name, "already finished in this run: skipped")
            continue
        later = [s for s in selected[i + 1:] if s not in finished]
        spent = ledger.spent(run_id)
        rest = forecast.rest_bounds([rows[s] for s in later]).low   # what the run cannot do with less
        decision = guard.record(ledger, run_id, name, forecast.admit(spent, p, [rows[s] for s in later], budget,
                                                                     name), at=executor.now())
        if not decision.ok:
            progress.note(name, f"not started: {decision.reason}")
            return end(3, "stopped", name, f"stage {name} not started: {decision.reason}"
                       + _what_would_fit(watch, rows, [name, *later], known))
        stage_envs = dict(envs or {})
        if p.kind == "api" and budget is not None:
            refused = _api_batch(ledger, run_id, name, p, spent, rest, budget, executor.now())
            if refused:
                progress.note(name, f"not started: {refused}")
                return end(3, "stopped", name, f"stage {name} not started: {refused}"
                           + _what_would_fit(watch, rows, [name, *later], known))
            # the stage program refuses a batch over what is left for it (reproduce/stages/rewrite.py)
            stage_envs["REPRODUCE_API_BUDGET_USD"] = f"{budget - spent - rest:.2f}"
        try:
            outcome = _run_stage(watch, name, p, stage_envs, spent, [rows[s] for s in later])
        except KeyboardInterrupt:
            end(130, "cancelled", name, "Ctrl-C")
            raise
        except UserError as e:
            end(2, "failed", name, str(e))
            raise
        if outcome is not None:
            code, why = outcome
            if code == 3:
                why += _what_would_fit(watch, rows, [name, *later], known, stopped=name)
            return end(code, "stopped" if code == 3 else "failed", name, why)
        if later:
            _replan(watch, name, p, rows, later, known)
    # "finished" only when every stage of the recipe is; one stage of a run (`reproduce stage`) pauses it
    done = ledger.finished_stages(run_id) >= set(stagetable.NAMES)
    return end(0, "finished" if done else "paused")


@dataclass
class _Watch:
    """What every stage of one run shares while it is launched and watched."""
    run_id: str
    recipe: dict
    executor: object
    ledger: object
    budget: float | None
    artifacts: Path
    bucket: str | None
    simulated: bool
    progress: object
    poll_s: float
    every: float
    teardown_s: float
    backend: str
    observed: dict = None    # stage -> its forecast at completion / its plan, for a stage the forecast stopped

    def __post_init__(self):
        self.observed = {}


def known_facts(ledger, run_id: str) -> dict:
    """What earlier stages of this run measured (a resumed run re-plans from them too)."""
    return {e["stage"]: e["numbers"] for e in ledger.events(run_id, "measured") if e["stage"]}


def _replan(w: _Watch, name: str, p, rows: dict, later: list[str], known: dict) -> None:
    """After `name` finished: its measured facts, then the stages still to run priced again from every fact."""
    from reproduce import replan

    attempts = w.ledger.attempts(w.run_id, name)
    facts = replan.facts(name, read_summary(w.artifacts, name), attempts[-1] if attempts else {}, p, w.recipe,
                         w.artifacts)
    if not facts:
        return
    known[name] = facts
    w.ledger.add_event(w.run_id, name, "measured", ok=True, reason=f"what {name} measured", numbers=facts,
                       at=w.executor.now())
    try:
        new, reasons, why = replan.replan(w.recipe, known, later, w.budget, w.backend, None)
    except UserError as e:   # the measured workload no longer fits in memory: say so, keep the old rows
        w.progress.note(name, f"re-plan refused: {e}")
        return
    before = sum(rows[s].total_usd for s in later)
    changes = {}
    for s in later:
        if abs(new[s].total_usd - rows[s].total_usd) > 0.005 or \
                abs(new[s].hours - rows[s].hours) > 1e-3 * max(rows[s].hours, 1e-12):
            changes[s] = {"was_usd": rows[s].total_usd, "total_usd": new[s].total_usd, "hours": new[s].hours,
                          "base_hours": new[s].base_hours, "arithmetic": new[s].arithmetic,
                          "reasons": reasons.get(s, [])}
        rows[s] = new[s]
    if not changes:
        return
    after = sum(rows[s].total_usd for s in later)
    text = f"after {name}: the rest re-planned ${before:,.2f} -> ${after:,.2f}"
    detail = "; ".join(why + [r for s in later for r in reasons.get(s, [])])
    w.ledger.add_event(w.run_id, name, "replan", ok=True, reason=text + (f" ({detail})" if detail else ""),
                       numbers={"after": name, "rest_was_usd": before, "rest_usd": after, "stages": changes,
                                "why": why}, at=w.executor.now())
    if abs(after - before) > 0.005:
        w.progress.note(name, text + (f": {detail}" if detail else ""))


def _what_would_fit(w: _Watch, rows: dict, rest: list[str], known: dict, stopped: str | None = None) -> str:
    """The cheapest way to finish `rest` within the budget, as a command to paste, or that none exists. A stage
    the forecast stopped counts at its observed rate (what is left of its forecast, after what it saved)."""
    import copy

    from reproduce.plan import KNOBS

    if w.budget is None:
        return ""
    spent = w.ledger.spent(w.run_id)
    factor, paid = w.observed.get(stopped, (1.0, 0.0))

    def cost(stage_rows: dict) -> float:
        """The rest's $; the stopped stage at its observed rate, less what it already paid for (it resumes
        from what it saved), plus a relaunch."""
        total = 0.0
        for s in rest:
            row = stage_rows[s]
            if s == stopped:
                relaunch = w.recipe["costs"]["startup_hours"] * row.price_per_hour
                total += max((row.total_usd - row.storage_usd) * factor - paid, 0.0) + relaunch + row.storage_usd
            else:
                total += row.total_usd
        return total

    need = spent + cost(rows)
    options = [f"`reproduce all --resume {w.run_id} --budget {_ceil10(need):g}` finishes it as is "
               f"(spent ${spent:,.2f} + the rest at the observed rate ${need - spent:,.2f})"]
    best = None
    try:
        from reproduce import replan
        from reproduce.plan import build_plan
        from reproduce.recipe import set_key

        base, _ = replan.apply(w.recipe, known)
        for key, value, why in KNOBS:
            section = key.split(".")[0]
            if section not in rest or base[section].get(key.split(".")[1]) == value:
                continue
            variant = copy.deepcopy(base)
            set_key(variant, key, value)
            alt = {s.stage: s for s in build_plan(variant, w.budget, w.backend, suggest=False).stages}
            total = spent + cost(alt)
            if total <= w.budget and (best is None or total < best[0]):
                shown = str(value).lower() if isinstance(value, bool) else value
                best = (total, f"--set {key}={shown}", why)
    except Exception:   # noqa: BLE001 - advice must never hide the stop itself
        best = None
    if best:
        options.append(f"`reproduce all --resume {w.run_id} {best[1]}` fits the ${w.budget:,.2f} budget "
                       f"(${best[0]:,.2f} in all; {best[2]})")
    else:
        options.append(f"no single change to the remaining stages fits the ${w.budget:,.2f} budget")
    return "; " + "; or ".join(options)


def _ceil10(x: float) -> float:
    import math

    return math.ceil(x / 10) * 10


def _orphan(ledger, run_id: str, name: str) -> str | None:
    """The cloud handle of this stage's last attempt when that attempt never recorded its end (the controller
    died while it ran): a job that may still be running, and billing."""
    handles = [e["numbers"] for e in ledger.events(run_id, "handle") if e["stage"] == name]
    if not handles:
        return None
    last = handles[-1]
    attempts = [a for a in ledger.attempts(run_id, name) if a["attempt"] == last.get("attempt")]
    return last["handle"] if attempts and attempts[-1]["event"] == "interrupted" else None


def _forecast_stop(w: _Watch, name: str, p, fc, spent_before: float, later: list):
    """The forecast's decision (costmodel.forecast): stop when even the low end of what the run needs passes
    the budget. The running stage's slowdown is assumed, with its spread, for later GPU stages of a kind of
    work nothing has measured yet; what it shows is kept for the advice of a stop."""
    paid_part = p.total_usd - p.storage_usd   # what the observed rate scales; the bucket is by GB
    factor = fc.factor(paid_part)
    rest = forecast.rest_bounds(later, factor, fc.spread)
    decision = forecast.decide(name, spent_before, fc, p.storage_usd, rest, w.budget)
    if decision.ok and paid_part > 0:
        w.observed[name] = (factor, fc.cost)
    return decision


def _run_stage(w: _Watch, name: str, p, envs: dict, spent_before: float, later: list):
    """Launch and watch one stage. None on success, else (exit code, why). At every poll: the hard cap
    (spend by the next poll would pass the budget) and the forecast (at the observed rate the run cannot
    finish within the budget)."""
    rest = sum(r.total_usd for r in later)
    # at least ~100 polls over the stage's planned hours (never under 10 s): a short, dear stage (an API
    # teacher) must be watched often enough for its forecast to act before most of it is paid
    poll_s = min(w.poll_s, max(10.0, p.hours * 36)) if p.hours > 0 else w.poll_s
    if p.kind == "api":   # paid by the request, planned in dollars, not hours: watch it at least every 30 s
        poll_s = min(poll_s, 30.0)
    ex, ledger = w.executor, w.ledger
    orphan = _orphan(ledger, w.run_id, name)
    started = ex.now()
    attempt = ledger.add_stage_row(w.run_id, name, "started", at=started, state="PENDING", started_at=started,
                                   simulated=w.simulated, **_plan_fields(p))

    def on_handle(h: str) -> None:
        ledger.add_event(w.run_id, name, "handle", ok=True, reason=h, numbers={"handle": h, "attempt": attempt},
                         at=ex.now())

    ctx = RunContext(run_id=w.run_id, recipe=w.recipe, stage=name, plan=p, artifacts=w.artifacts, envs=envs,
                     bucket=w.bucket, on_handle=on_handle)
    handle = None
    st = StageStatus(state="PENDING")
    rate = _Rate()
    try:
        if orphan:
            handle = ex.reattach(orphan, ctx)
            if handle:
                on_handle(handle)
                w.progress.note(name, f"re-attached to {handle}, launched before the controller stopped")
        handle = handle or ex.launch(ctx)
        last_state, last_row = None, started
        while True:
            st = ex.poll(handle)
            ledger.heartbeat(w.run_id)   # LeaseLost if another process took this run over
            now = ex.now()
            if p.kind == "api":   # what it paid is what the ledger has of its usage log, as it goes
                if _record_usage(w, name, attempt, now) is not None:
                    paid, lines = ledger.attempt_api_usd(w.run_id, name, attempt)
                    st.api_usd = max(st.api_usd, paid)
                    if st.progress is None and (p.api_tokens or {}).get("requests"):
                        st.progress = {"done": lines, "total": p.api_tokens["requests"], "unit": "requests"}
            cost = st.cost_usd + st.api_usd
            fc = rate.forecast(st, cost, now)
            w.progress.status(name, st, p.total_usd, forecast=fc.central if fc else None, eta_s=rate.eta_s)
            if st.done:
                break
            if st.state != last_state or now - last_row >= w.every:
                ledger.add_stage_row(w.run_id, name, "progress", at=now, attempt=attempt,
                                     **_actual(st, p, started, now, w.simulated))
                last_state, last_row = st.state, now
            decision = guard.should_stop(spent_before, cost, st.price_per_hour, poll_s, w.budget, w.teardown_s)
            if not decision.ok and fc is not None:
                decision = _forecast_stop(w, name, p, fc, spent_before, later)
            if decision.ok:
                guard.record(ledger, w.run_id, name, decision, at=now)
                ex.cancel(handle)
                st = ex.poll(handle)
                if p.kind == "api":
                    _record_usage(w, name, attempt, ex.now())
                why = f"stage {name} stopped by the budget guard: {decision.reason}"
                ledger.add_stage_row(w.run_id, name, "cancelled", at=ex.now(), attempt=attempt,
                                     **_actual(st, p, started, ex.now(), w.simulated, message=why))
                _record_storage(w, ctx, p, _share(st))
                w.progress.status(name, st, p.total_usd, force=True)
                return 3, why
            ex.wait(poll_s)
    except KeyboardInterrupt:
        if handle is not None:
            ex.cancel(handle)
            try:
                st = ex.poll(handle)
            except Exception:
                pass
        if p.kind == "api":
            _record_usage(w, name, attempt, ex.now())
        ledger.add_stage_row(w.run_id, name, "cancelled", at=ex.now(), attempt=attempt,
                             **_actual(st, p, started, ex.now(), w.simulated,
                                       message="cancelled by Ctrl-C; torn down", state="CANCELLED"))
        raise
    except LeaseLost:
        # another process owns the run now: a cloud job it can re-attach to is left to it; a job of this
        # process (local, sim) goes, so that two never run the same stage
        if handle is not None and not ex.detached:
            ex.cancel(handle)
        raise
    except Exception as e:
        if handle is not None:
            ex.cancel(handle)
        ledger.add_stage_row(w.run_id, name, "failed", at=ex.now(), attempt=attempt,
                             **_actual(st, p, started, ex.now(), w.simulated, message=f"{type(e).__name__}: {e}",
                                       state="FAILED"))
        if isinstance(e, UserError):
            raise
        return 1, f"stage {name} failed to launch: {e}"
    now = ex.now()
    if st.state != "SUCCEEDED":
        ledger.add_stage_row(w.run_id, name, "failed" if st.state == "FAILED" else "cancelled", at=now,
                             attempt=attempt, **_actual(st, p, started, now, w.simulated))
        _record_storage(w, ctx, p, _share(st))
        return 1, f"stage {name} {st.state.lower()}: {st.message or 'no message'}"
    summary = read_summary(w.artifacts, name)
    # a usage log (one line per paid result) is the record; a summary's api_usage only where there is none
    usage = [] if _record_usage(w, name, attempt, now) is not None else (summary.get("api_usage") or [])
    calibration = []
    if not w.simulated:
        from costmodel.calibration import observations

        try:
            calibration = observations(name, summary, w.recipe, p.to_dict())
        except Exception:   # a summary missing a field must not lose the stage's accounting
            calibration = []
    message = st.message or ("" if summary or p.kind != "api" else "no summary.json: API spend not reported")
    ledger.finish_stage(w.run_id, name, attempt, at=now, api_usage=usage, calibration=calibration,
                        **_actual(st, p, started, now, w.simulated, message=message))
    row = stagetable.stage(name)
    if row.scratch and not row.keeps_scratch(w.recipe):   # it cannot produce anything now: stop paying for it
        try:
            gone = ex.discard(ctx, row.scratch)
        except Exception as e:   # noqa: BLE001 - the stage's accounting must survive a failed delete
            gone = None
            w.progress.note(name, f"could not delete its checkpoints from the bucket ({e}); they stay, and are "
                                  "paid for")
        if gone:
            what = f"{name} succeeded: deleted its checkpoints from the bucket ({gone if gone > 0 else 'all'} " \
                   f"object(s) under {name}/{', '.join(row.scratch)}*; {row.section}.keep_checkpoints keeps them)"
            ledger.add_event(w.run_id, name, "discarded", ok=True, reason=what,
                             numbers={"objects": gone, "prefixes": list(row.scratch)}, at=ex.now())
            w.progress.note(name, what)
    _record_storage(w, ctx, p, 1.0, (now - started) / 3600)
    return None


def _record_storage(w: _Watch, ctx: RunContext, p, share: float, hours: float = 0.0) -> None:
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


def _share(st: StageStatus) -> float:
    """The part of a stage's work its last progress report says is done (0 without one)."""
    prog = st.progress or {}
    total = float(prog.get("total") or 0)
    return min(float(prog.get("done") or 0) / total, 1.0) if total > 0 else 0.0


class _Rate:
    """$ and time per unit of progress within this attempt (costmodel.forecast.StageRate): the forecast and
    the ETA rest on it."""

    def __init__(self):
        from costmodel.forecast import StageRate

        self._rate = StageRate()

    @property
    def eta_s(self):
        return self._rate.eta_s

    def forecast(self, st: StageStatus, cost: float, now: float):
        """A costmodel.forecast.Forecast once enough of the stage is measured, else None."""
        prog = st.progress or {}
        total = float(prog.get("total") or 0)
        if total <= 0 or st.state not in ("RUNNING", "RECOVERING"):
            return None
        self._rate.feed(cost, float(prog.get("done") or 0), total, now)
        return self._rate.estimate()


def _record_usage(w: _Watch, stage: str, attempt: int, at: float) -> int | None:
    """New lines of ARTIFACTS/<stage>/usage.jsonl into the ledger; None when the stage keeps no such log."""
    path = Path(w.artifacts) / stage / "usage.jsonl"
    if not path.is_file():
        return None
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:   # a line cut by a kill mid-write: the next poll reads it whole
            break
    return w.ledger.add_usage_lines(w.run_id, stage, lines, at=at, attempt=attempt, simulated=w.simulated)


def read_summary(artifacts: Path, stage: str) -> dict:
    path = Path(artifacts) / stage / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _api_batch(ledger, run_id, name, p, spent, rest, budget, at) -> str | None:
    tokens = p.api_tokens or {}
    if not tokens.get("model"):
        return None
    try:
        decision = guard.admit_api_batch(spent, tokens["model"], tokens.get("prompt_tokens", 0),
                                         tokens.get("completion_tokens", 0), bool(tokens.get("batch")), budget, rest)
    except ValueError:   # a model with no token price: the stage's own estimate admitted it
        return None
    guard.record(ledger, run_id, name, decision, at=at)
    return None if decision.ok else decision.reason


def _plan_fields(p) -> dict:
    return {"kind": p.kind, "accelerator": p.accelerator, "nodes": p.nodes, "gpus": p.gpus, "spot": p.spot,
            "cloud": p.cloud, "region": p.region, "zone": p.zone, "instance_type": p.instance_type,
            "price_per_hour": p.price_per_hour, "price_source": p.price_source, "price_date": p.price_date}


def _actual(st: StageStatus, p, started: float, now: float, simulated: bool, message: str | None = None,
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


def alive(numbers: dict) -> bool:
    """The process a run event names is running on this host (costmodel.ledger.pid_alive: zombies are dead)."""
    from costmodel.ledger import pid_alive

    pid = numbers.get("pid")
    return bool(pid) and numbers.get("host") == socket.gethostname() and pid_alive(int(pid))


class Progress:
    """Per stage: state, elapsed, $ so far vs the stage estimate, on stderr. On a terminal the line updates
    in place; otherwise one line per state change."""

    def __init__(self, stream=None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.last: dict = {}
        self.open = False

    def note(self, stage: str, text: str) -> None:
        self._end_line()
        self.stream.write(f"[{stage}] {text}\n")
        self.stream.flush()

    def status(self, stage: str, st: StageStatus, estimate_usd: float, force: bool = False,
               forecast: float | None = None, eta_s: float | None = None) -> None:
        prog = st.progress or {}
        done = ""
        if prog.get("total"):
            done = f"  {prog['done']:,.0f}/{prog['total']:,.0f} {prog.get('unit', '')} " \
                   f"({prog['done'] / prog['total']:.0%})" + (f" ETA {_clock(eta_s)}" if eta_s and not st.done else "")
        line = (f"[{stage}] {st.state:<10} {_clock(st.elapsed_s)} elapsed  ${st.cost_usd + st.api_usd:,.2f} "
                f"of est ${estimate_usd:,.2f}" + (f" (forecast ${forecast:,.2f})" if forecast is not None else "")
                + done + (f"  preemptions {st.preemptions}" if st.preemptions else "")
                + (f"  {st.message}" if st.message and (st.done or st.state == "STARTING") else ""))
        changed = self.last.get(stage) != st.state
        self.last[stage] = st.state
        if self.tty:
            if changed and self.open:
                self.stream.write("\n")
            self.stream.write("\r" + line.ljust(100)[:160] + ("\n" if st.done else ""))
            self.open = not st.done
        elif changed or force:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self.tty and self.open:
            self.stream.write("\n")
            self.open = False


def _clock(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    return f"{h:d}:{rem // 60:02d}:{rem % 60:02d}"
