"""The budget guard beside the program on the node: the stage stops itself when the controller cannot.

    python -m reproduce.watchdog --stage sft -- python -m reproduce.stages.sft --recipe ... --artifacts ...

Every launched job carries its allowance in its task envs (Allowance.envs): what this stage may still spend
(budget - spent - the re-planned rest), the capped $/h and node count, the launch time and the absolute UTC
deadline at which the allowance is gone at the cap even with no progress. A managed job's recoveries re-run
the same task, so they keep the same allowance and deadline. The watchdog prices the job at the cap from its
launch (an upper bound: it cannot see the bill), reads the stage's own ARTIFACTS/<stage>/progress.json, and
applies the controller's forecast rule (`decide`, the one call into costmodel's forecast). When the forecast
passes the allowance or the deadline comes it asks the program to save (SIGTERM: the stage programs save what
they can and exit), waits REPRODUCE_STOP_GRACE_S, kills what is left, writes ARTIFACTS/<stage>/stopped.json
(the bucket on clouds: the controller reads it when it polls and when it resumes) and exits STOPPED_EXIT.
SkyPilot 0.14.1 has no exit code that forbids a restart (`recover_on_exit_codes` only adds restarts), so a
job restarted by `max_restarts_on_errors` finds its own attempt's stopped.json and exits at once.
Without an allowance in its envs (a stage run by hand) the program runs unwatched.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

STOPPED_EXIT = 3            # the project's "stopped by the budget guard"
STOPPED = "stopped.json"
PREFIX = "REPRODUCE_"
# seconds between two looks at progress.json and between SIGTERM and SIGKILL; ours: a ZeRO-3 checkpoint of a
# 32B model takes minutes to write (the grace is billed, so `deadline` keeps it inside the allowance)
WATCH_S = 60.0
GRACE_S = 300.0


@dataclass
class Allowance:
    """What one launched attempt may spend, and until when."""
    stage: str
    attempt: int
    allowance_usd: float        # budget - spent before the stage - the re-planned rest
    cap_per_hour: float         # the plan's $/h for all nodes (the launch's max_hourly_cost)
    nodes: int
    launched_at: float          # epoch seconds
    stage_usd: float = 0.0      # the stage's planned paid $ (the forecast's overrun factor is over this)
    storage_usd: float = 0.0    # the bucket $ the stage commits (by GB, not by the hour)
    rest_scalable_usd: float = 0.0   # the rest's GPU stages not measured yet: they scale with the overrun
    grace_s: float = GRACE_S

    @property
    def deadline(self) -> float:
        """When the allowance is gone at the cap with no progress, less the grace the stop takes."""
        if self.cap_per_hour <= 0:
            return float("inf")
        return self.launched_at + self.allowance_usd / self.cap_per_hour * 3600 - self.grace_s

    def deadline_utc(self) -> str:
        if self.deadline == float("inf"):
            return ""
        return datetime.fromtimestamp(self.deadline, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def envs(self) -> dict:
        """The task envs that carry it (not secrets: figures only)."""
        return {f"{PREFIX}STAGE": self.stage, f"{PREFIX}ATTEMPT": str(self.attempt),
                f"{PREFIX}ALLOWANCE_USD": f"{self.allowance_usd:.2f}",
                f"{PREFIX}CAP_PER_HOUR": f"{self.cap_per_hour:.4f}", f"{PREFIX}NODES": str(self.nodes),
                f"{PREFIX}LAUNCHED_AT": f"{self.launched_at:.0f}", f"{PREFIX}DEADLINE_UTC": self.deadline_utc(),
                f"{PREFIX}STAGE_USD": f"{self.stage_usd:.2f}", f"{PREFIX}STORAGE_USD": f"{self.storage_usd:.2f}",
                f"{PREFIX}REST_SCALABLE_USD": f"{self.rest_scalable_usd:.2f}",
                f"{PREFIX}STOP_GRACE_S": f"{self.grace_s:.0f}"}

    @classmethod
    def from_envs(cls, env) -> "Allowance | None":
        if not env.get(f"{PREFIX}ALLOWANCE_USD"):
            return None
        f = lambda k, d=0.0: float(env.get(PREFIX + k) or d)   # noqa: E731
        return cls(env.get(f"{PREFIX}STAGE", ""), int(f("ATTEMPT")), f("ALLOWANCE_USD"), f("CAP_PER_HOUR"),
                   int(f("NODES", 1)), f("LAUNCHED_AT"), f("STAGE_USD"), f("STORAGE_USD"), f("REST_SCALABLE_USD"),
                   f("STOP_GRACE_S", GRACE_S))


def allowance(stage: str, attempt: int, p, budget: float | None, spent_before: float, later: list,
              launched_at: float, grace_s: float = GRACE_S) -> Allowance | None:
    """The allowance of one attempt of stage `p` (a plan row), from the same figures the controller's guard
    admits it with; None without a budget."""
    if budget is None:
        return None
    from costmodel import forecast

    rest = forecast.rest_bounds(later).low   # the controller's admission: what the run cannot do with less
    scalable = sum(r.total_usd - r.storage_usd for r in later if r.kind == "gpu" and "measured_factor" not in r.details)
    return Allowance(stage, attempt, budget - spent_before - rest, float(p.price_per_hour or 0.0),
                     int(p.nodes or 1), launched_at, p.total_usd - p.storage_usd, p.storage_usd, scalable, grace_s)


class Watch:
    """The node's view of its attempt: the progress it saw, for the observed rate and its spread."""

    def __init__(self, a: Allowance):
        from costmodel.forecast import StageRate

        self.a = a
        self.rate = StageRate()

    def cost(self, now: float) -> float:
        return max(now - self.a.launched_at, 0.0) / 3600 * self.a.cap_per_hour

    def check(self, progress: dict | None, now: float) -> str | None:
        """Why the job must stop now, or None."""
        a, cost = self.a, self.cost(now)
        if now >= a.deadline:
            return (f"deadline {a.deadline_utc()}: ${cost:,.2f} at the ${a.cap_per_hour:,.2f}/h cap leaves no "
                    f"room in the ${a.allowance_usd:,.2f} allowance for the {a.grace_s:.0f} s stop")
        prog = progress or {}
        done, total = float(prog.get("done") or 0), float(prog.get("total") or 0)
        if total <= 0:
            return None
        self.rate.feed(cost, done, total, now)
        decision = decide(a, self.rate)
        return decision.reason if decision is not None and decision.ok else None


def decide(a: Allowance, rate):
    """The controller's forecast rule on the node (costmodel.forecast, as reproduce.stage_loop.StageForecast
    applies it): the stage at completion, with its spread, + the rest's GPU stages at the overrun it shows,
    against the allowance; it stops only when even the low end passes. None until enough is measured. A
    Decision whose ok means stop."""
    from costmodel import forecast

    fc = rate.estimate()
    if fc is None:
        return None
    factor = fc.factor(a.stage_usd)
    central, low = forecast.row_bounds(a.rest_scalable_usd, 0.0, "gpu", {}, factor, fc.spread)
    rest = forecast.Rest(central - a.rest_scalable_usd, low - a.rest_scalable_usd,
                         f" (rest: GPU stages not measured yet x {factor:.2f}: +${central - a.rest_scalable_usd:,.2f}, "
                         f"at least +${low - a.rest_scalable_usd:,.2f})" if factor > 1 else "")
    decision = forecast.decide(a.stage, 0.0, fc, a.storage_usd, rest, a.allowance_usd)
    decision.reason += " (on the node: the budget here is its allowance, budget - spent - the rest at launch)"
    return decision


def stopped_path(artifacts, stage: str) -> Path:
    return Path(artifacts) / stage / STOPPED


def read_stopped(artifacts, stage: str) -> dict | None:
    try:
        return json.loads(stopped_path(artifacts, stage).read_text())
    except (OSError, ValueError):
        return None


def main(argv=None, env=None, clock=time.time) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    if "--" not in argv:
        print("usage: python -m reproduce.watchdog [--stage NAME] -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    cut = argv.index("--")
    opts, cmd = argv[:cut], argv[cut + 1:]
    a = Allowance.from_envs(env)
    if a is not None and "--stage" in opts:
        a.stage = opts[opts.index("--stage") + 1]
    if a is None or env.get("SKYPILOT_NODE_RANK", "0") != "0":   # unwatched, or a worker node: rank 0 decides
        os.execvp(cmd[0], cmd)
    artifacts = env.get("ARTIFACTS", "/artifacts")
    before = read_stopped(artifacts, a.stage)
    if before and int(before.get("attempt", -1)) == a.attempt:
        print(f"[watchdog] {a.stage} attempt {a.attempt} was stopped on the node: {before['why']}; not restarting",
              file=sys.stderr)
        return STOPPED_EXIT
    from reproduce.stages.lib.common import read_progress

    watch_s = float(env.get(f"{PREFIX}WATCH_S") or WATCH_S)
    child = subprocess.Popen(cmd, start_new_session=True)
    w = Watch(a)
    while True:
        try:
            return child.wait(timeout=watch_s)
        except subprocess.TimeoutExpired:
            pass
        now = clock()
        why = w.check(read_progress(Path(artifacts) / a.stage), now)
        if why:
            break
    print(f"[watchdog] stopping {a.stage}: {why}", file=sys.stderr, flush=True)
    saved = _stop(child, a.grace_s)
    end = clock()
    record = {"stage": a.stage, "attempt": a.attempt, "why": why, "at": end, "cost_usd": w.cost(end),
              "saved": saved, "allowance": asdict(a)}
    path = stopped_path(artifacts, a.stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return STOPPED_EXIT


def _stop(child: subprocess.Popen, grace_s: float) -> bool:
    """SIGTERM the program's process group (it saves and exits), SIGKILL what is left after the grace.
    True when it exited within the grace."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    try:
        child.wait(timeout=grace_s)
        return True
    except subprocess.TimeoutExpired:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
        return False


if __name__ == "__main__":
    sys.exit(main())
