"""A run from another terminal: `all --detach` outlives its terminal, `status` says whether its controller is
alive, `logs` follows it, `cancel` stops it and leaves nothing running (the fake SkyPilot adapter counts)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from costmodel.ledger import Ledger, pid_alive
from reproduce import pipeline
from reproduce import recipe as recipes
from reproduce.executors import bucket, sky_adapter
from reproduce.executors.sky import SkyExecutor
from reproduce.plan import build_plan
from test_executor_sky import FakeAdapter


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "reproduce.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _wait_for(check, timeout_s=60.0):
    """Until check() is true (the verdict is the check, not the wait); False past the timeout."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_detach_runs_in_the_background_and_cancel_stops_it(home):
    # a paced sim run: long enough to be caught running, in its own session without a terminal
    out = _cli("all", "--budget", "450", "--backend", "sim", "--sim-pace", "0.2", "-y", "--detach")
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    assert f"reproduce logs {run_id} --follow" in out.stderr and f"reproduce cancel {run_id}" in out.stderr

    def alive():
        rows = json.loads(_cli("status", "--json").stdout or "[]")
        return [r for r in rows if r["run"] == run_id and r["controller"] == "alive"]

    assert _wait_for(alive), _cli("logs", run_id).stdout
    pid = alive()[0]["pid"]
    assert os.getsid(pid) == pid != os.getsid(0)                 # its own session: no terminal to lose
    again = _cli("all", "--resume", run_id, "-y")                # one owner
    assert again.returncode == 2 and str(pid) in again.stderr
    cancelled = _cli("cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "paid" in cancelled.stdout
    assert _wait_for(lambda: not pid_alive(pid), 30)
    with Ledger() as led:
        assert led.run_state(run_id)["reason"] == "cancelled"
        assert not led.open_attempts(run_id)
    log = _cli("logs", run_id)
    assert log.returncode == 0 and "[generate]" in log.stdout   # the controller's progress, in its log
    assert _cli("logs", "no-such-run").returncode == 2


class ControllerDied(BaseException):
    """Like SIGKILL for the pipeline."""


class Dies(FakeAdapter):
    def managed_status(self, job_id):
        raise ControllerDied()


def test_cancel_of_a_run_whose_controller_died_tears_its_jobs_down(home, monkeypatch, capsys):
    for name in ("push", "pull"):
        monkeypatch.setattr(bucket, name, lambda *a, **k: 0)
    monkeypatch.setattr(bucket, "read_json", lambda *a, **k: None)
    recipe = recipes.load()
    plan = build_plan(recipe, 450, "sky").only(["sft"])
    with Ledger() as led:
        with pytest.raises(ControllerDied):
            pipeline.run(plan, recipe, SkyExecutor(adapter=Dies()), led, 450.0, stages=["sft"], bucket="s3://b",
                         progress=pipeline.Progress(io.StringIO(), tty=False), poll_s=1)
        run_id = led.latest_run_id()
        led.release_run(run_id, {"pid": os.getpid(), "host": __import__("socket").gethostname()})
    cloud = FakeAdapter([{"status": "RUNNING", "recoveries": 0}])
    for name in ("cancel_managed", "down", "managed_status", "cluster_status"):
        monkeypatch.setattr(sky_adapter, name, getattr(cloud, name))
    from reproduce import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["cancel", run_id])
    assert done.value.code == 0
    assert ("cancel_managed", 42, None) in cloud.calls                 # the managed job the dead controller left
    with Ledger() as led:
        assert not led.open_attempts(run_id)
        assert led.run_state(run_id)["reason"] == "cancelled"
    assert "cancelled managed:" in capsys.readouterr().err
