"""The guard travels with the job: each launch carries its allowance, the watchdog beside the program stops it
at that allowance with no controller alive, and the resumed run records the node's stop once."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
import time

import pytest

from costmodel.ledger import Ledger
from reproduce import pipeline, tasks, watchdog
from reproduce import recipe as recipes
from reproduce.executors.sim import SimExecutor
from reproduce.plan import build_plan

BUDGET = 450.0


class ControllerDied(BaseException):
    """Like SIGKILL for the pipeline: nothing catches it, nothing is recorded after it."""


class DyingSim(SimExecutor):
    """The sim whose controller dies once its virtual clock passes `die_at` (hours after it was made)."""

    def __init__(self, die_after_h: float, **kw):
        super().__init__(start=1.8e9, **kw)
        self.die_at = self.clock + die_after_h * 3600

    def wait(self, seconds):
        super().wait(seconds)
        if self.die_at is not None and self.clock >= self.die_at:
            self.die_at = None
            raise ControllerDied()


def _quiet():
    return pipeline.Progress(io.StringIO(), tty=False)


# ---- 1. the allowance rides in the rendered task -----------------------------------------------------------
def test_every_launch_carries_the_guards_own_figures_into_its_task(home, monkeypatch):
    from reproduce.executors import bucket
    from reproduce.executors.sky import SkyExecutor
    from test_executor_sky import FakeAdapter

    for name in ("push", "pull"):
        monkeypatch.setattr(bucket, name, lambda *a, **k: 0)
    monkeypatch.setattr(bucket, "read_json", lambda *a, **k: None)
    recipe = recipes.load()
    plan = build_plan(recipe, BUDGET, "sky")
    rows = {s.stage: s for s in plan.stages}
    done = {"status": "SUCCEEDED", "recoveries": 0, "cloud": "primeintellect", "region": "IS", "nodes": 1,
            "accelerators": {"H100": 8}, "start_at": None, "end_at": None}
    adapter = FakeAdapter([done])
    with Ledger() as led:
        result = pipeline.run(plan, recipe, SkyExecutor(adapter=adapter), led, BUDGET, stages=["generate", "sft"],
                              progress=_quiet(), bucket="s3://my-runs", poll_s=1)
        assert result.exit_code == 0, result.reason
        admits = {e["stage"]: e["numbers"] for e in led.events(result.run_id, "admit")}
        started = {a["stage"]: a for a in led.attempts(result.run_id)}
    assert [t.name for t in adapter.tasks] and len(adapter.tasks) == 2
    for task, stage in zip(adapter.tasks, ["generate", "sft"]):
        envs, n = task.envs, admits[stage]
        want = n["budget_usd"] - n["spent_usd"] - n["rest_estimate_usd"]
        assert float(envs["REPRODUCE_ALLOWANCE_USD"]) == pytest.approx(want, abs=0.01)
        assert float(envs["REPRODUCE_CAP_PER_HOUR"]) == pytest.approx(rows[stage].price_per_hour, abs=1e-3)
        assert int(envs["REPRODUCE_NODES"]) == rows[stage].nodes
        assert int(envs["REPRODUCE_ATTEMPT"]) == started[stage]["attempt"]
        a = watchdog.Allowance.from_envs(envs)
        from datetime import datetime

        deadline = datetime.strptime(envs["REPRODUCE_DEADLINE_UTC"] + "+0000", "%Y-%m-%dT%H:%M:%SZ%z")
        assert deadline.timestamp() == pytest.approx(a.deadline, abs=5)   # the same, to its rounding
        assert a.deadline == pytest.approx(a.launched_at + want / rows[stage].price_per_hour * 3600 - a.grace_s,
                                           abs=60)
        # the same figures in the YAML a dry run prints, and the run section is the watchdog's
        text = tasks.render_yaml(stage, dict(envs), rows[stage], "full")
        assert f"REPRODUCE_ALLOWANCE_USD: '{envs['REPRODUCE_ALLOWANCE_USD']}'" in text or \
            f"REPRODUCE_ALLOWANCE_USD: {envs['REPRODUCE_ALLOWANCE_USD']}" in text
        assert f"python -m reproduce.watchdog --stage {stage} -- python -m reproduce.stages." in text
    assert admits["generate"]["rest_estimate_usd"] > 0   # generate's allowance keeps sft's share back


# ---- 2. the watchdog on the node, a real process ----------------------------------------------------------
PROGRAM = textwrap.dedent("""
    import json, os, signal, sys, time
    out = os.path.join(os.environ["ARTIFACTS"], "sft")
    os.makedirs(out, exist_ok=True)
    def saved(*_):
        open(os.path.join(out, "saved"), "w").write("checkpoint")
        sys.exit(0)
    signal.signal(signal.SIGTERM, saved)
    total, report = int(sys.argv[1]), sys.argv[2] == "progress"
    for done in range(total + 1):
        if report:
            tmp = os.path.join(out, "progress.tmp")
            open(tmp, "w").write(json.dumps({"done": done, "total": total, "unit": "steps"}))
            os.replace(tmp, os.path.join(out, "progress.json"))
        time.sleep(0.05)
    open(os.path.join(out, "finished"), "w").write("yes")
""")


def _node(tmp_path, allowance_usd, cap, total=400, report="progress", attempt=1, grace_s=5.0):
    prog = tmp_path / "program.py"
    prog.write_text(PROGRAM)
    a = watchdog.Allowance("sft", attempt, allowance_usd, cap, 1, time.time(), stage_usd=allowance_usd / 2,
                           grace_s=grace_s)
    env = {**os.environ, **a.envs(), "ARTIFACTS": str(tmp_path / "artifacts"), "REPRODUCE_WATCH_S": "0.2"}
    return [sys.executable, "-m", "reproduce.watchdog", "--stage", "sft", "--", sys.executable, str(prog),
            str(total), report], env


def test_the_node_stops_a_stage_whose_forecast_passes_its_allowance(tmp_path):
    # $1 a second at the cap: 400 steps at 20 per second cost ~$20 against a $15 allowance
    cmd, env = _node(tmp_path, allowance_usd=15.0, cap=3600.0)
    rc = subprocess.run(cmd, env=env, timeout=60).returncode
    out = tmp_path / "artifacts" / "sft"
    stopped = json.loads((out / "stopped.json").read_text())
    assert rc == watchdog.STOPPED_EXIT
    assert "at the observed rate sft ends at" in stopped["why"] and "allowance" in stopped["why"]
    assert (out / "saved").exists() and not (out / "finished").exists()   # asked to save, then it ended
    assert json.loads((out / "progress.json").read_text())["done"] < 400
    assert stopped["attempt"] == 1 and stopped["cost_usd"] < 15.0


def test_the_deadline_stops_a_stage_that_reports_no_progress(tmp_path):
    cmd, env = _node(tmp_path, allowance_usd=3.0, cap=3600.0, report="silent", grace_s=1.0)   # gone in 3 s
    rc = subprocess.run(cmd, env=env, timeout=60).returncode
    stopped = json.loads((tmp_path / "artifacts" / "sft" / "stopped.json").read_text())
    assert rc == watchdog.STOPPED_EXIT and stopped["why"].startswith("deadline ")
    assert not (tmp_path / "artifacts" / "sft" / "finished").exists()


def test_a_restart_of_a_stopped_attempt_exits_at_once_and_a_new_attempt_runs(tmp_path):
    cmd, env = _node(tmp_path, allowance_usd=1e6, cap=1.0, total=3)
    out = tmp_path / "artifacts" / "sft"
    out.mkdir(parents=True)
    (out / "stopped.json").write_text(json.dumps({"attempt": 1, "why": "forecast"}))
    assert watchdog.main(cmd[3:], env) == watchdog.STOPPED_EXIT   # max_restarts_on_errors' restart
    assert not (out / "finished").exists()
    cmd, env = _node(tmp_path, allowance_usd=1e6, cap=1.0, total=3, attempt=2)   # a new launch of the stage
    assert subprocess.run(cmd, env=env, timeout=60).returncode == 0 and (out / "finished").exists()


def test_without_an_allowance_the_program_runs_unwatched(tmp_path):
    rc = subprocess.run([sys.executable, "-m", "reproduce.watchdog", "--", sys.executable, "-c", "exit(7)"],
                        env={k: v for k, v in os.environ.items() if not k.startswith("REPRODUCE_")}, timeout=60)
    assert rc.returncode == 7


# ---- 3. jobs that outlive their controller (sim) ----------------------------------------------------------
def _dead_then_resumed(slowdown, die_after_h, seed=0, preemption_rate=0.0):
    recipe = recipes.load("sky-t1-32b-preview")
    plan = build_plan(recipe, BUDGET, "sim")
    ex = DyingSim(die_after_h, seed=seed, slowdown=slowdown, preemption_rate=preemption_rate)
    with Ledger() as led:
        try:
            first = pipeline.run(plan, recipe, ex, led, BUDGET, progress=_quiet())
        except ControllerDied:
            first = None
        run_id = first.run_id if first else led.latest_run_id()
        led.release_run(run_id, {"pid": os.getpid(), "host": __import__("socket").gethostname()})
        again = pipeline.run(plan, recipe, ex, led, BUDGET, resume_run=run_id, progress=_quiet()) if first is None \
            else first
        return again, led.spent(run_id), led.events(run_id, "node_stop"), led.attempts(run_id)


def test_a_3x_overrun_with_a_dead_controller_ends_below_a_third_of_the_budget(home):
    # the node's forecast stops only what cannot fit: at 3x generate alone fits its allowance and ends; nothing
    # after it launches without a controller, and the resumed controller refuses the rest
    result, spent, node_stops, attempts = _dead_then_resumed(3.0, die_after_h=0.2)
    assert result.exit_code == 3 and spent < 0.35 * BUDGET


def test_a_4x_overrun_with_a_dead_controller_stops_early_on_the_node(home):
    result, spent, node_stops, attempts = _dead_then_resumed(4.0, die_after_h=0.2)
    assert node_stops and node_stops[0]["stage"] == "generate"
    assert result.exit_code == 3 and "stopped on the node" in result.reason
    assert spent < 0.35 * BUDGET
    gen = [a for a in attempts if a["stage"] == "generate"]
    assert len(gen) == 1 and gen[0]["event"] == "cancelled"       # one attempt, counted once, to the node's stop
    assert gen[0]["compute_usd"] == pytest.approx(node_stops[0]["numbers"]["cost_usd"])


@pytest.mark.parametrize("slowdown,seed,rate,within_h", [(1.5, 0, 0.0, 30.0), (1.5, 4, 0.3, 30.0), (2.0, 1, 0.3, 1.5),
                                                          (3.0, 2, 0.1, 1.5), (10.0, 3, 0.3, 1.5)])
def test_killed_at_random_points_spend_stays_within_the_budget(home, slowdown, seed, rate, within_h):
    """The controller killed at a random time (within the hours its guard would let the run go on); the
    resume watches again, or records the node's stop; once every job ended the spend is within the budget.
    More seeds: benchmarks/dead_controller.py."""
    die_after_h = random.Random(seed).uniform(0.05, within_h)
    result, spent, stops, attempts = _dead_then_resumed(slowdown, die_after_h, seed=seed, preemption_rate=rate)
    assert result.exit_code in (0, 3), result.reason
    assert spent <= BUDGET + 1e-6
    assert all(a["event"] != "started" for a in attempts)   # every job ended, and was recorded
    if slowdown >= 3:   # a run that cannot fit ends early, whoever stops it
        assert spent < 0.35 * BUDGET


# ---- 4. locally: SIGKILL the controller during a slowed stage ---------------------------------------------
STAGE_VENV = Path(__file__).resolve().parents[1] / ".venv-stage"


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "reproduce.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _until(check, timeout_s):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    return None


def _gone(pid: int) -> bool:
    try:   # a zombie under a pid 1 that does not reap counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


@pytest.mark.skipif(not (STAGE_VENV / "bin" / "python").exists(), reason="needs .venv-stage (make test builds it)")
def test_sigkill_the_controller_the_slowed_stage_stops_itself_and_the_resume_pays_it_once(home, monkeypatch):
    # this machine declared at $1 a second, generate slowed (1,024-token answers): its allowance runs out
    # mid-stage, with nobody but its watchdog to notice
    monkeypatch.setenv("REPRODUCE_STAGE_VENV", str(STAGE_VENV))
    monkeypatch.setenv("REPRODUCE_WATCH_S", "0.5")
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out = _cli("all", "--scale", "smoke", "--backend", "local", "--budget", "25", "-y", "--detach",
               "--set", "costs.local_usd_per_hour=3600", "--set", "generate.max_tokens=1024")
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]

    from reproduce.cli.control import liveness

    def launched():
        with Ledger() as led:
            handles = [e["numbers"]["handle"] for e in led.events(run_id, "handle") if e["stage"] == "generate"]
            live = liveness(led, run_id) if led.run(run_id) else {}
            return (handles[0], live["pid"]) if handles and live.get("alive") else None

    found = _until(launched, 120)
    assert found, _cli("logs", run_id).stdout[-2000:]
    handle, controller = found
    os.kill(controller, signal.SIGKILL)                       # the laptop closes
    assert _until(lambda: _gone(controller), 10)
    stage_pid = int(handle.rsplit(":", 1)[1])
    with Ledger() as led:
        artifacts = Path(led.run(run_id)["artifacts"])
    stopped = _until(lambda: watchdog.read_stopped(artifacts, "generate"), 120)
    assert stopped, (artifacts.parent / "logs" / "generate.log").read_text()[-2000:]
    assert _until(lambda: _gone(stage_pid), 30)                 # the stage stopped itself: nothing runs on
    assert stopped["cost_usd"] <= float(stopped["allowance"]["allowance_usd"])

    for _ in range(2):                                        # resumed twice: recorded once, paid once
        again = _cli("all", "--resume", run_id, "--budget", "25", "-y")
        assert again.returncode == 3 and "stopped on the node" in again.stderr, again.stderr[-2000:]
    with Ledger() as led:
        assert len(led.events(run_id, "node_stop")) == 1
        attempts = {a["attempt"] for a in led.attempts(run_id, "generate")}
        assert len(attempts) == 1                             # never launched again
        assert led.spent(run_id) == pytest.approx(stopped["cost_usd"], rel=0.05)
        assert led.spent(run_id) <= 25.0
        assert not led.open_attempts(run_id)
