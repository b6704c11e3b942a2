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
from costmodel.ledger import home
from reproduce.errors import UserError
from reproduce import resume, stagetable
from reproduce.executors.base import StageStatus
from reproduce.resume import known_facts  # noqa: F401 - the CLI's and the tests' name for it
from reproduce.stage_loop import Outcome, plan_fields, read_summary, run_stage



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
        artifacts, node_stops = resume.take_over(ledger, run_id, me, budget, executor)
    else:
        node_stops = {}
        run_id = run_id or new_run_id()
        artifacts = artifacts_dir(run_id)
        ledger.create_run(run_id, recipe=plan.recipe, scale=plan.scale, backend=ex_name, budget=budget,
                          simulated=simulated, artifacts=str(artifacts), recipe_yaml=dump(recipe),
                          plan=plan.to_dict(), at=executor.now())
        ledger.claim_run(run_id, me)
        for name in selected:
            p = rows[name]
            ledger.add_stage_row(run_id, name, "planned", at=executor.now(), simulated=simulated,
                                 **plan_fields(p), hours=p.hours, gpu_hours=p.gpu_hours,
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
    known = resume.known_facts(ledger, run_id)
    for i, name in enumerate(selected):
        p = rows[name]
        if name in node_stops:
            # stopped on the node against the same budget: say so (a new --budget or --set re-admits it)
            later = [s for s in selected[i:] if s not in finished]
            progress.note(name, node_stops[name])
            return end(3, "stopped", name, node_stops[name] + _what_would_fit(watch, rows, later, known))
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
            outcome = run_stage(watch, name, p, stage_envs, spent, [rows[s] for s in later])
        except KeyboardInterrupt:
            outcome = Outcome("interrupted", "Ctrl-C")
        except UserError as e:
            end(2, "failed", name, str(e))
            raise
        if outcome.kind == "interrupted":
            end(130, "cancelled", name, "Ctrl-C")
            raise KeyboardInterrupt
        if outcome.kind != "finished":
            why = outcome.why
            if outcome.kind == "stopped":
                why += _what_would_fit(watch, rows, [name, *later], known, stopped=name)
            return end(outcome.code, outcome.kind, name, why)
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
                + (f"+ ${st.committed_usd:,.2f} committed " if st.committed_usd else "")
                + f"of est ${estimate_usd:,.2f}" + (f" (forecast ${forecast:,.2f})" if forecast is not None else "")
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
