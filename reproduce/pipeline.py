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
from costmodel.ledger import home
from reproduce.errors import UserError
from reproduce import stagetable
from reproduce.executors.base import RunContext, StageStatus

POLL_S = {"sim": 300.0, "sky": 30.0, "local": 2.0}         # sim: virtual seconds
PROGRESS_EVERY_S = {"sim": 1800.0, "sky": 300.0, "local": 30.0}
# Billed time between deciding to stop and the last node going away: a cancel + `sky down` takes a few
# minutes on clouds (our observation of SkyPilot teardowns; assumption), nothing elsewhere.
TEARDOWN_S = {"sky": 300.0}


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
    raise UserError(f"--backend {backend!r}: expected one of auto, sky, local, sim")


def run(plan, recipe: dict, executor, ledger, budget: float | None, resume_run: str | None = None,
        progress=None, stages: list[str] | None = None, poll_s: float | None = None, envs: dict | None = None,
        bucket: str | None = None, run_id: str | None = None) -> RunResult:
    from reproduce.recipe import dump

    progress = progress if progress is not None else Progress()
    ex_name = getattr(executor, "name", "local")
    poll_s = poll_s or POLL_S.get(ex_name, 30.0)
    every = PROGRESS_EVERY_S.get(ex_name, 300.0)
    teardown_s = TEARDOWN_S.get(ex_name, 0.0)
    simulated = bool(getattr(executor, "simulated", False))
    rows = {s.stage: s for s in plan.stages}   # typed plan rows (StageEstimate), from the plan to the executor
    selected = [s for s in stagetable.NAMES if s in rows and (stages is None or s in stages)]
    me = {"pid": os.getpid(), "host": socket.gethostname()}

    if resume_run:
        run_id = resume_run
        found = ledger.run(run_id)
        if found is None:
            raise UserError(f"--resume {run_id!r}: no such run; see `reproduce runs`")
        state = ledger.run_state(run_id)
        if state["reason"] in ("started", "resumed") and _alive(state["numbers"]) and state["numbers"].get("pid") != me["pid"]:
            raise UserError(f"run {run_id} is in progress (pid {state['numbers']['pid']}); wait for it or stop it first")
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
        return RunResult(run_id, code, stage, why, artifacts)

    finished = ledger.finished_stages(run_id)
    for i, name in enumerate(selected):
        p = rows[name]
        if name in finished:
            progress.note(name, "already finished in this run: skipped")
            continue
        later = [rows[s].total_usd for s in selected[i + 1:] if s not in finished]
        spent, rest = ledger.spent(run_id), sum(later)
        decision = guard.record(ledger, run_id, name, guard.admit(spent, p.total_usd, rest, budget, name),
                                at=executor.now())
        if not decision.ok:
            progress.note(name, f"not started: {decision.reason}")
            return end(3, "stopped", name, f"stage {name} not started: {decision.reason}")
        stage_envs = dict(envs or {})
        if p.kind == "api" and budget is not None:
            refused = _api_batch(ledger, run_id, name, p, spent, rest, budget, executor.now())
            if refused:
                progress.note(name, f"not started: {refused}")
                return end(3, "stopped", name, f"stage {name} not started: {refused}")
            # the stage program refuses a batch over what is left for it (reproduce/stages/rewrite.py)
            stage_envs["REPRODUCE_API_BUDGET_USD"] = f"{budget - spent - rest:.2f}"
        try:
            outcome = _run_stage(name, p, recipe, executor, ledger, run_id, artifacts, stage_envs, bucket, budget,
                                 spent, poll_s, every, teardown_s, simulated, progress)
        except KeyboardInterrupt:
            end(130, "cancelled", name, "Ctrl-C")
            raise
        except UserError as e:
            end(2, "failed", name, str(e))
            raise
        if outcome is not None:
            code, why = outcome
            return end(code, "stopped" if code == 3 else "failed", name, why)
    # "finished" only when every stage of the recipe is; one stage of a run (`reproduce stage`) pauses it
    done = ledger.finished_stages(run_id) >= set(stagetable.NAMES)
    return end(0, "finished" if done else "paused")


def _run_stage(name, p, recipe, executor, ledger, run_id, artifacts, envs, bucket, budget, spent_before,
               poll_s, every, teardown_s, simulated, progress):
    """Launch and watch one stage. None on success, else (exit code, why)."""
    ctx = RunContext(run_id=run_id, recipe=recipe, stage=name, plan=p, artifacts=artifacts, envs=envs, bucket=bucket)
    started = executor.now()
    attempt = ledger.add_stage_row(run_id, name, "started", at=started, state="PENDING", started_at=started,
                                   simulated=simulated, **_plan_fields(p))
    handle = None
    st = StageStatus(state="PENDING")
    try:
        handle = executor.launch(ctx)
        last_state, last_row = None, started
        while True:
            st = executor.poll(handle)
            now = executor.now()
            progress.status(name, st, p.total_usd)
            if st.done:
                break
            if st.state != last_state or now - last_row >= every:
                ledger.add_stage_row(run_id, name, "progress", at=now, attempt=attempt,
                                     **_actual(st, p, started, now, simulated))
                last_state, last_row = st.state, now
            decision = guard.should_stop(spent_before, st.cost_usd, st.price_per_hour, poll_s, budget, teardown_s)
            if decision.ok:
                guard.record(ledger, run_id, name, decision, at=now)
                executor.cancel(handle)
                st = executor.poll(handle)
                why = f"stage {name} stopped by the budget guard: {decision.reason}"
                ledger.add_stage_row(run_id, name, "cancelled", at=executor.now(), attempt=attempt,
                                     **_actual(st, p, started, executor.now(), simulated, message=why))
                progress.status(name, st, p.total_usd, force=True)
                return 3, why
            executor.wait(poll_s)
    except KeyboardInterrupt:
        if handle is not None:
            executor.cancel(handle)
            try:
                st = executor.poll(handle)
            except Exception:
                pass
        ledger.add_stage_row(run_id, name, "cancelled", at=executor.now(), attempt=attempt,
                             **_actual(st, p, started, executor.now(), simulated,
                                       message="cancelled by Ctrl-C; torn down", state="CANCELLED"))
        raise
    except Exception as e:
        if handle is not None:
            executor.cancel(handle)
        ledger.add_stage_row(run_id, name, "failed", at=executor.now(), attempt=attempt,
                             **_actual(st, p, started, executor.now(), simulated, message=f"{type(e).__name__}: {e}",
                                       state="FAILED"))
        if isinstance(e, UserError):
            raise
        return 1, f"stage {name} failed to launch: {e}"
    now = executor.now()
    if st.state != "SUCCEEDED":
        ledger.add_stage_row(run_id, name, "failed" if st.state == "FAILED" else "cancelled", at=now,
                             attempt=attempt, **_actual(st, p, started, now, simulated))
        return 1, f"stage {name} {st.state.lower()}: {st.message or 'no message'}"
    summary = read_summary(artifacts, name)
    usage = summary.get("api_usage") or []
    calibration = []
    if not simulated:
        from costmodel.calibration import observations

        try:
            calibration = observations(name, summary, recipe, p.to_dict())
        except Exception:   # a summary missing a field must not lose the stage's accounting
            calibration = []
    message = st.message or ("" if summary or p.kind != "api" else "no summary.json: API spend not reported")
    ledger.finish_stage(run_id, name, attempt, at=now, api_usage=usage, calibration=calibration,
                        **_actual(st, p, started, now, simulated, message=message))
    return None


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


def _alive(numbers: dict) -> bool:
    pid = numbers.get("pid")
    if not pid or numbers.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    def status(self, stage: str, st: StageStatus, estimate_usd: float, force: bool = False) -> None:
        h, rem = divmod(int(st.elapsed_s), 3600)
        line = (f"[{stage}] {st.state:<10} {h:d}:{rem // 60:02d}:{rem % 60:02d} elapsed  ${st.cost_usd:,.2f} "
                f"of est ${estimate_usd:,.2f}" + (f"  preemptions {st.preemptions}" if st.preemptions else "")
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
