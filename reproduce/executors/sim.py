"""The plan as a discrete-event simulation: a virtual clock, no cloud, no cent spent, a run in seconds.

    ex = SimExecutor(seed=1, slowdown=3.0, preemption_rate=0.1)
    h = ex.launch(run)          # draws the stage's timeline: startup, work, preemptions and recoveries
    ex.wait(300)                # advances the virtual clock 300 s (no real sleep unless pace_s)
    ex.poll(h)                  # state, $ so far at the plan's hourly price, progress {done, total, unit}

Per stage: work hours = the plan's work hours x slowdown x noise (a normal factor, sd `noise`, at least
0.5, drawn from (seed, stage) alone, so a resumed stage runs at the speed it ran before); spot GPU stages
draw preemptions as a Poisson process at `preemption_rate` per hour of running (from seed, stage and
attempt), each adding `recovery_h` (billed; default the recipe's costs.recovery_hours); startup is the plan's.
API stages take ~1 h (batch) and pay the plan's api_usd x slowdown x noise as results arrive, appended to
`ARTIFACTS/<stage>/usage.jsonl` as they are paid (the pipeline records every line, also of a stage that was
stopped or killed: what was paid is spent) and summed in `summary.json`'s `api_usage` at the end.

Work is kept the way the real stages keep it: sft checkpoints every `sft.save_steps` optimizer steps,
generate / eval / filter write shards (1% of the work each), the rewrite caches every paid result. A stage
cancelled (by the guard, Ctrl-C or a kill) leaves `ARTIFACTS/<stage>/sim_state.json` with the share of work
saved, and its next launch does only the rest. Everything the pipeline writes for a simulated run is marked
simulated in the ledger.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from reproduce import stagetable
from reproduce.executors.base import BaseExecutor, RunContext, StageStatus

API_HOURS = {True: 1.0, False: 0.2}     # batch window actually used, synchronous calls (assumption)
CONTROLLER_HOURS = 10 / 3600           # convert: seconds on the controller
SHARD_SHARE = 0.01                     # generate, eval, filter: a shard is ~1% of the work (the stage programs)
STATE = "sim_state.json"


@dataclass
class _Sim:
    run: RunContext
    launched_at: float
    startup_h: float
    work_h: float                        # this attempt's work: the stage's work less what was saved before
    total_work_h: float                  # the whole stage's work at this speed
    done_before: float = 0.0             # share of the stage's work saved by earlier attempts
    unit: str = "steps"
    units: float = 1.0                   # the stage's work in `unit`s
    keep_every: float = 0.0              # share of the work between two saves (checkpoints, shards)
    preemptions_at: list = field(default_factory=list)   # hours since launch of each preemption
    recovery_h: float = 0.0
    fail_at_h: float | None = None
    api_usd: float = 0.0                 # the whole stage's API spend at this speed
    cancelled_at: float | None = None
    summary_written: bool = False
    paid: float = 0.0                    # API $ paid this attempt (appended to usage.jsonl as it is paid)
    saved: float = 0.0                   # share of the work saved so far (checkpoints, shards)
    node_stop: dict | None = None        # when and why its node's watchdog would stop it (its stopped.json)
    orphaned: bool = False               # its controller died: only its node's watchdog can stop it

    @property
    def total_h(self) -> float:
        return self.startup_h + self.work_h + len(self.preemptions_at) * self.recovery_h

    def work_done_h(self, elapsed_h: float) -> float:
        """Hours of work done this attempt after `elapsed_h`: running time, less startup and recoveries."""
        t = max(0.0, elapsed_h - self.startup_h)
        for p in self.preemptions_at:
            if elapsed_h > p:
                t -= min(self.recovery_h, elapsed_h - p)
        return min(max(t, 0.0), self.work_h)

    def share(self, elapsed_h: float) -> float:
        if self.total_work_h <= 0:
            return 1.0
        return min(1.0, self.done_before + self.work_done_h(elapsed_h) / self.total_work_h)


class SimExecutor(BaseExecutor):
    name = "sim"
    poll_s = 300.0                # virtual seconds
    progress_every_s = 1800.0
    simulated = True

    def __init__(self, seed: int = 0, slowdown: float = 1.0, preemption_rate: float = 0.0,
                 recovery_h: float | None = None, noise: float = 0.1, start: float | None = None,
                 pace_s: float = 0.0):
        if slowdown <= 0:
            raise ValueError(f"slowdown {slowdown!r}: expected a positive factor")
        if preemption_rate < 0:
            raise ValueError(f"preemption rate {preemption_rate!r}: expected >= 0 per hour")
        self.seed, self.slowdown, self.rate = seed, slowdown, preemption_rate
        self.recovery_h, self.noise, self.pace_s = recovery_h, noise, pace_s
        self.clock = time.time() if start is None else float(start)
        self.sims: dict[str, _Sim] = {}

    # ---- the interface ------------------------------------------------------------------------------
    def launch(self, run: RunContext) -> str:
        plan, recipe = run.plan, run.recipe or {}
        costs = recipe.get("costs", {})
        handle = f"sim:{run.stage}:{len(self.sims)}"
        saved = _read_state(run)
        attempt = int(saved.get("attempts", 0))
        speed = random.Random(f"{self.seed}/{run.stage}")   # the same speed on every attempt
        factor = self.slowdown * max(0.5, speed.gauss(1.0, self.noise))
        rng = random.Random(f"{self.seed}/{run.stage}/{attempt}")
        kind = plan.kind
        recovery = self.recovery_h if self.recovery_h is not None else float(costs.get("recovery_hours", 0.3))
        startup = 0.0
        if kind in ("gpu", "cpu"):
            # the estimator's hours, not a re-plan's measured factor: the simulated truth is the estimate x
            # the slowdown, whatever the guard has learned of it
            base = float(plan.details.get("estimated_base_hours") or plan.base_hours or plan.hours or 0.0)
            if plan.cloud or plan.price_per_hour:
                startup = min(float(costs.get("startup_hours", 0.0)) * int(plan.nodes or 1),
                              float(plan.overhead_hours or 0.0) or float("inf"))
            total = base * factor
        elif kind == "api":
            total = API_HOURS[bool((plan.api_tokens or {}).get("batch", True))] * max(0.5, speed.gauss(1, self.noise))
        else:
            total = CONTROLLER_HOURS
        done_before = float(saved.get("saved_share", 0.0))
        unit, units, keep_every = _work_units(run)
        sim = _Sim(run, self.clock, startup, total * (1 - done_before), total, done_before, unit, units,
                   keep_every, recovery_h=recovery, api_usd=float(plan.api_usd or 0.0) * factor)
        if kind == "gpu" and plan.spot and self.rate > 0:
            t, done = 0.0, 0.0
            while True:   # Poisson arrivals over running (not recovering) hours
                gap = rng.expovariate(self.rate)
                if done + gap >= sim.work_h:
                    break
                done += gap
                t = startup + done + len(sim.preemptions_at) * recovery
                sim.preemptions_at.append(t)
        sim.node_stop = _node_watchdog(sim, self.clock)
        _write_state(run, {**saved, "attempts": attempt + 1, "saved_share": done_before, "node_stop": sim.node_stop})
        self.sims[handle] = sim
        if run.on_handle:   # a controller killed from here on leaves a job to re-attach to
            run.on_handle(handle)
        return handle

    def reattach(self, handle: str, run: RunContext) -> str | None:
        """A job of this simulated world whose controller died: watched again where it is now."""
        sim = self.sims.get(handle)
        if sim is None or sim.cancelled_at is not None:
            return None
        sim.orphaned = True
        return handle

    def stopped_on_node(self, run: RunContext) -> dict | None:
        """The node's stop of the stage's last job, had its controller died: the simulated world runs on
        until that stop (the clock moves to it), as a real job runs on without its controller."""
        stop = _read_state(run).get("node_stop")
        if not stop:
            return None
        job = next((s for s in reversed(list(self.sims.values())) if s.run.stage == run.stage), None)
        if job is not None:
            if job.cancelled_at is not None or self.poll_done_before(job, stop["at"]):
                return None
            job.orphaned = True
        self.clock = max(self.clock, float(stop["at"]))
        return stop

    def poll_done_before(self, sim: _Sim, at: float) -> bool:
        """The job ended on its own (succeeded) before its node would have stopped it."""
        return sim.launched_at + sim.total_h * 3600 <= at

    def poll(self, handle: str) -> StageStatus:
        sim = self.sims[handle]
        plan = sim.run.plan
        now_h = ((sim.cancelled_at if sim.cancelled_at is not None else self.clock) - sim.launched_at) / 3600
        end_h = sim.total_h if sim.fail_at_h is None else sim.fail_at_h
        stopped = sim.node_stop if sim.orphaned and sim.node_stop else None
        if stopped:   # its node's watchdog stopped it (SIGTERM, the grace, exit)
            end_h = min(end_h, (stopped["at"] - sim.launched_at) / 3600)
        elapsed_h = min(now_h, end_h)
        preempted = [p for p in sim.preemptions_at if p <= elapsed_h]
        if sim.cancelled_at is not None:
            state = "CANCELLED"
        elif now_h >= end_h:
            state = "FAILED" if sim.fail_at_h is not None or stopped else "SUCCEEDED"
        elif elapsed_h < sim.startup_h:
            state = "STARTING"
        elif preempted and elapsed_h < preempted[-1] + sim.recovery_h:
            state = "RECOVERING"
        else:
            state = "RUNNING"
        share = 1.0 if state == "SUCCEEDED" else sim.share(elapsed_h)
        paid = sim.api_usd * (share - sim.done_before)      # results arrive, and are paid, as they finish
        if plan.kind == "api" and paid > sim.paid + 1e-12:
            self._pay(sim, paid - sim.paid, share)
        if sim.keep_every and not sim.summary_written:      # a checkpoint or shard just saved survives a kill
            saved = int(share / sim.keep_every) * sim.keep_every
            if saved > sim.saved + 1e-12:
                sim.saved = saved
                _write_state(sim.run, {**_read_state(sim.run), "saved_share": saved})
        if state in ("SUCCEEDED", "CANCELLED", "FAILED") and not sim.summary_written:
            self._write_summary(sim, paid, share)
        price = float(plan.price_per_hour or 0.0)
        billed_h = elapsed_h if plan.kind in ("gpu", "cpu") else 0.0
        return StageStatus(state=state, elapsed_s=elapsed_h * 3600, cost_usd=billed_h * price, price_per_hour=price,
                           price_source=f"simulated at {plan.price_source or 'the plan price'}",
                           cloud=plan.cloud, region=plan.region, zone=plan.zone,
                           instance_type=plan.instance_type, spot=plan.spot,
                           gpus=int(plan.gpus or 0), preemptions=len(preempted),
                           message=("stopped on the node" if stopped else "simulated failure") if state == "FAILED" else "",
                           stopped=stopped if state == "FAILED" else None,
                           api_usd=paid if plan.kind == "api" else 0.0,
                           progress={"done": round(share * sim.units, 3), "total": sim.units, "unit": sim.unit,
                                     "updated_at": self.clock})

    def cancel(self, handle: str) -> None:
        sim = self.sims.get(handle)
        if sim is not None and sim.cancelled_at is None and not self.poll(handle).done:
            sim.cancelled_at = self.clock
            self.poll(handle)   # what it saved and what it paid, written as the real stage would

    def wait(self, seconds: float) -> None:
        self.clock += seconds
        if self.pace_s:
            time.sleep(self.pace_s)

    def now(self) -> float:
        return self.clock

    def render(self, run: RunContext) -> str:
        plan = run.plan
        return (f"# stage {run.stage}: simulated ({plan.kind}), {plan.hours:,.2f} h planned x "
                f"slowdown {self.slowdown:g} +/- {self.noise:.0%}, spot preemptions {self.rate:g}/h, "
                f"at ${plan.price_per_hour or 0:,.2f}/h")

    def written_gb(self, run: RunContext, share: float = 1.0) -> tuple[float, str] | None:
        """The plan's GB for the stage, times the part of its work done: a simulated stage writes no bucket."""
        st = run.plan.storage or {}
        if st.get("gb_written") is None:
            return None
        share = min(max(share, 0.0), 1.0)
        kept_scratch = (st.get("scratch_gb") or 0.0) if share < 1 else 0.0   # a stopped stage keeps its scratch
        gb = st["gb_written"] + kept_scratch
        return gb * share, f"simulated: the plan's {gb:,.2f} GB x {share:.0%} of the work done"

    # ---- what a real stage program would leave behind -------------------------------------------------
    def _pay(self, sim: _Sim, usd: float, share: float) -> None:
        """Append what was just paid to ARTIFACTS/<stage>/usage.jsonl, as the rewrite does per result."""
        tokens = sim.run.plan.api_tokens or {}
        part = usd / sim.api_usd if sim.api_usd else 0.0
        line = {"model": tokens.get("model", "unknown"), "batch": bool(tokens.get("batch")),
                "prompt_tokens": round((tokens.get("prompt_tokens") or 0) * part), "cached_tokens": 0,
                "completion_tokens": round((tokens.get("completion_tokens") or 0) * part), "usd": usd,
                "at": self.clock}
        out = Path(sim.run.artifacts) / sim.run.stage
        out.mkdir(parents=True, exist_ok=True)
        with (out / "usage.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
        sim.paid += usd

    def _write_summary(self, sim: _Sim, paid: float, share: float) -> None:
        run, plan = sim.run, sim.run.plan
        done = share >= 1.0
        # what survives a stop: the last checkpoint / shard (the rewrite's cache keeps every paid result)
        saved = share if done or not sim.keep_every else max(sim.done_before,
                                                              int(share / sim.keep_every) * sim.keep_every)
        _write_state(run, {**_read_state(run), "saved_share": 1.0 if done else saved})
        out = Path(run.artifacts) / run.stage
        out.mkdir(parents=True, exist_ok=True)
        (out / "progress.json").write_text(json.dumps({"done": round(share * sim.units, 3), "total": sim.units,
                                                       "unit": sim.unit, "updated_at": self.clock}) + "\n")
        if not done:
            sim.summary_written = True
            return
        summary = {"stage": run.stage, "simulated": True, "wall_s": round(sim.total_h * 3600, 1),
                   "preemptions": len(sim.preemptions_at), "resumed_from_share": round(sim.done_before, 4)}
        if plan.kind == "api":   # every attempt's payments, as the real rewrite sums its usage.jsonl
            summary["api_usage"] = _usage_lines(out / "usage.jsonl")
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(out / "summary.json")
        sim.summary_written = True


def _node_watchdog(sim: _Sim, launched_at: float) -> dict | None:
    """When the job's own watchdog (reproduce.watchdog, the same rule and allowance) stops it: its checks
    every REPRODUCE_WATCH_S over the simulated timeline, progress from when the program runs; None when it
    finishes first. The stopped.json it would write."""
    from reproduce import watchdog

    a = watchdog.Allowance.from_envs(sim.run.envs or {})
    if a is None or sim.run.plan.kind not in ("gpu", "cpu") or a.cap_per_hour <= 0:
        return None
    a.launched_at = launched_at   # the simulated clock's launch
    step = float((sim.run.envs or {}).get("REPRODUCE_WATCH_S") or watchdog.WATCH_S) / 3600
    w, t = watchdog.Watch(a), step
    while t < sim.total_h:
        progress = None if t < sim.startup_h else {"done": sim.share(t) * sim.units, "total": sim.units}
        why = w.check(progress, launched_at + t * 3600)
        if why:
            at = launched_at + (t + a.grace_s / 3600) * 3600
            return {"stage": a.stage, "attempt": a.attempt, "why": why, "at": at, "cost_usd": w.cost(at),
                    "saved": True, "simulated": True}
        t += step
    return None


def _usage_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _work_units(run: RunContext) -> tuple[str, float, float]:
    """(unit, how many, share of the work between two saves) for the progress the real stage reports."""
    from costmodel import estimates

    plan, recipe = run.plan, run.recipe or {}
    try:
        w = estimates.workload(recipe)
    except (KeyError, TypeError):
        w = {}
    row = stagetable.stage(run.stage)
    if row.scratch:   # it resumes from checkpoints, one every save_steps of its steps
        steps = float(plan.details.get("steps") or 1)
        save = float((recipe.get(row.section) or {}).get("save_steps") or steps)
        return row.progress, steps, min(1.0, save / steps)
    totals = {"problems": w.get("samples"), "records": w.get("samples"), "samples": w.get("eval_samples"),
              "requests": (plan.api_tokens or {}).get("requests")}
    if row.progress in totals:   # requests resume from nothing kept; the others from ~1% shards
        return row.progress, float(totals[row.progress] or 1), 0.0 if row.progress == "requests" else SHARD_SHARE
    return "steps", 1.0, 0.0


def _state_path(run: RunContext) -> Path:
    return Path(run.artifacts) / run.stage / STATE


def _read_state(run: RunContext) -> dict:
    try:
        return json.loads(_state_path(run).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(run: RunContext, state: dict) -> None:
    path = _state_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state) + "\n")
    tmp.replace(path)
