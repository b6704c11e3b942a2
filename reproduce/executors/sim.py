"""The plan as a discrete-event simulation: a virtual clock, no cloud, no cent spent, a run in seconds.

    ex = SimExecutor(seed=1, slowdown=3.0, preemption_rate=0.1)
    h = ex.launch(run)          # draws the stage's timeline: startup, work, preemptions and recoveries
    ex.wait(300)                # advances the virtual clock 300 s (no real sleep unless pace_s)
    ex.poll(h)                  # state and $ so far at the plan's hourly price

Per stage: work hours = the plan's work hours x slowdown x noise (a normal factor, sd `noise`, at least
0.5); spot GPU stages draw preemptions as a Poisson process at `preemption_rate` per hour of running,
each adding `recovery_h` (billed; default the recipe's costs.recovery_hours); startup is the plan's.
API stages take ~1 h (batch) and cost the plan's api_usd x slowdown x noise, reported the way a real
stage reports it: `ARTIFACTS/<stage>/summary.json` with `api_usage`, which the pipeline records.
Everything the pipeline writes for a simulated run is marked simulated in the ledger.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from reproduce.executors.base import RunContext, StageStatus

API_HOURS = {True: 1.0, False: 0.2}     # batch window actually used, synchronous calls (assumption)
CONTROLLER_HOURS = 10 / 3600           # convert: seconds on the controller


@dataclass
class _Sim:
    run: RunContext
    launched_at: float
    startup_h: float
    work_h: float
    preemptions_at: list = field(default_factory=list)   # hours since launch of each preemption
    recovery_h: float = 0.0
    fail_at_h: float | None = None
    api_factor: float = 1.0
    cancelled_at: float | None = None
    summary_written: bool = False

    @property
    def total_h(self) -> float:
        return self.startup_h + self.work_h + len(self.preemptions_at) * self.recovery_h


class SimExecutor:
    name = "sim"
    simulated = True

    def __init__(self, seed: int = 0, slowdown: float = 1.0, preemption_rate: float = 0.0,
                 recovery_h: float | None = None, noise: float = 0.1, start: float | None = None,
                 pace_s: float = 0.0, fail_stages=()):
        if slowdown <= 0:
            raise ValueError(f"slowdown {slowdown!r}: expected a positive factor")
        if preemption_rate < 0:
            raise ValueError(f"preemption rate {preemption_rate!r}: expected >= 0 per hour")
        self.seed, self.slowdown, self.rate = seed, slowdown, preemption_rate
        self.recovery_h, self.noise, self.pace_s = recovery_h, noise, pace_s
        self.fail_stages = set(fail_stages)
        self.clock = time.time() if start is None else float(start)
        self.sims: dict[str, _Sim] = {}

    # ---- the interface ------------------------------------------------------------------------------
    def launch(self, run: RunContext) -> str:
        plan, costs = run.plan, (run.recipe or {}).get("costs", {})
        handle = f"sim:{run.stage}:{len(self.sims)}"
        # one stream per (seed, stage, attempt): the same --sim-seed replays the same run, and a resumed
        # run draws what a fresh one would
        rng = random.Random(f"{self.seed}/{run.stage}/{len(self.sims)}")
        factor = self.slowdown * max(0.5, rng.gauss(1.0, self.noise))
        kind = plan.kind
        recovery = self.recovery_h if self.recovery_h is not None else float(costs.get("recovery_hours", 0.3))
        startup = 0.0
        if kind in ("gpu", "cpu"):
            base = float(plan.base_hours or plan.hours or 0.0)
            if plan.cloud or plan.price_per_hour:
                startup = min(float(costs.get("startup_hours", 0.0)) * int(plan.nodes or 1),
                              float(plan.overhead_hours or 0.0) or float("inf"))
            work = base * factor
        elif kind == "api":
            work = API_HOURS[bool((plan.api_tokens or {}).get("batch", True))] * max(0.5, rng.gauss(1, self.noise))
        else:
            work = CONTROLLER_HOURS
        sim = _Sim(run, self.clock, startup, work, recovery_h=recovery, api_factor=factor)
        if kind == "gpu" and plan.spot and self.rate > 0:
            t, done = 0.0, 0.0
            while True:   # Poisson arrivals over running (not recovering) hours
                gap = rng.expovariate(self.rate)
                if done + gap >= work:
                    break
                done += gap
                t = startup + done + len(sim.preemptions_at) * recovery
                sim.preemptions_at.append(t)
        if run.stage in self.fail_stages:
            sim.fail_at_h = sim.total_h / 2
        self.sims[handle] = sim
        return handle

    def poll(self, handle: str) -> StageStatus:
        sim = self.sims[handle]
        plan = sim.run.plan
        now_h = ((sim.cancelled_at if sim.cancelled_at is not None else self.clock) - sim.launched_at) / 3600
        end_h = sim.total_h if sim.fail_at_h is None else sim.fail_at_h
        elapsed_h = min(now_h, end_h)
        preempted = [p for p in sim.preemptions_at if p <= elapsed_h]
        if sim.cancelled_at is not None:
            state = "CANCELLED"
        elif now_h >= end_h:
            state = "FAILED" if sim.fail_at_h is not None else "SUCCEEDED"
        elif elapsed_h < sim.startup_h:
            state = "STARTING"
        elif preempted and elapsed_h < preempted[-1] + sim.recovery_h:
            state = "RECOVERING"
        else:
            state = "RUNNING"
        if state == "SUCCEEDED" and not sim.summary_written:
            self._write_summary(sim)
        price = float(plan.price_per_hour or 0.0)
        billed_h = elapsed_h if plan.kind in ("gpu", "cpu") else 0.0
        return StageStatus(state=state, elapsed_s=elapsed_h * 3600, cost_usd=billed_h * price, price_per_hour=price,
                           price_source=f"simulated at {plan.price_source or 'the plan price'}",
                           cloud=plan.cloud, region=plan.region, zone=plan.zone,
                           instance_type=plan.instance_type, spot=plan.spot,
                           gpus=int(plan.gpus or 0), preemptions=len(preempted),
                           message="simulated failure" if state == "FAILED" else "")

    def cancel(self, handle: str) -> None:
        sim = self.sims.get(handle)
        if sim is not None and sim.cancelled_at is None and not self.poll(handle).done:
            sim.cancelled_at = self.clock

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

    # ---- what a real stage program would leave behind -------------------------------------------------
    def _write_summary(self, sim: _Sim) -> None:
        run, plan = sim.run, sim.run.plan
        summary = {"stage": run.stage, "simulated": True, "wall_s": round(sim.total_h * 3600, 1),
                   "preemptions": len(sim.preemptions_at)}
        if plan.kind == "api":
            tokens = plan.api_tokens or {}
            f = sim.api_factor
            summary["api_usage"] = [{
                "model": tokens.get("model", "unknown"), "batch": bool(tokens.get("batch")),
                "prompt_tokens": round((tokens.get("prompt_tokens") or 0) * f), "cached_tokens": 0,
                "completion_tokens": round((tokens.get("completion_tokens") or 0) * f),
                "usd": float(plan.api_usd or 0.0) * f}]
        out = Path(run.artifacts) / run.stage
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(out / "summary.json")
        sim.summary_written = True
