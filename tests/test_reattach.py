"""A controller that dies while a cloud stage runs leaves the stage's handle in the ledger (written before the
launch returned); the resumed run re-attaches to a job that is still alive instead of launching it again (no
GPU-hours paid twice), and tears down one it will not use. SkyPilot itself is the fake adapter's boundary."""
from __future__ import annotations

import io

import pytest

from costmodel.ledger import Ledger
from reproduce import pipeline
from reproduce import recipe as recipes
from reproduce.executors import bucket
from reproduce.executors.sky import SkyExecutor
from reproduce.plan import build_plan
from test_executor_sky import FakeAdapter


class ControllerDied(BaseException):
    """Like SIGKILL for the pipeline: nothing catches it, nothing is recorded after it."""


def rec(status):
    return {"status": status, "recoveries": 0, "cloud": "primeintellect", "region": "IS", "nodes": 1,
            "accelerators": {"H100": 8}, "start_at": None, "end_at": None}


class Dies(FakeAdapter):
    def managed_status(self, job_id):
        raise ControllerDied()


@pytest.fixture
def run_once(home, monkeypatch):
    for name in ("push", "pull"):
        monkeypatch.setattr(bucket, name, lambda *a, **k: 0)
    monkeypatch.setattr(bucket, "read_json", lambda *a, **k: None)
    recipe = recipes.load()
    plan = build_plan(recipe, 450, "sky").only(["sft"])
    quiet = pipeline.Progress(io.StringIO(), tty=False)
    led = Ledger()
    dead = Dies()
    with pytest.raises(ControllerDied):
        pipeline.run(plan, recipe, SkyExecutor(adapter=dead), led, 450.0, stages=["sft"], progress=quiet,
                     bucket="s3://my-runs", poll_s=1)
    assert [c[0] for c in dead.calls] == ["launch_managed"]
    run_id = led.latest_run_id()
    return led, plan, recipe, quiet, run_id


def resume(led, plan, recipe, quiet, run_id, adapter):
    from reproduce.resume import resumed_recipe  # noqa: F401 - the same module the CLI resumes through

    return pipeline.run(plan, recipe, SkyExecutor(adapter=adapter), led, 450.0, resume_run=run_id, stages=["sft"],
                        progress=quiet, bucket="s3://my-runs", poll_s=1)


def test_a_job_still_running_is_reattached_not_launched_again(run_once):
    led, plan, recipe, quiet, run_id = run_once
    alive = FakeAdapter([rec("RUNNING"), rec("SUCCEEDED")])
    result = resume(led, plan, recipe, quiet, run_id, alive)
    assert result.exit_code == 0
    assert not [c for c in alive.calls if c[0] == "launch_managed"]        # not launched twice
    assert ("managed_status", 42) in alive.calls                           # watched the job of the dead controller
    assert "sft" in led.finished_stages(run_id)


def test_a_dead_orphan_is_torn_down_and_the_stage_launched_again(run_once):
    led, plan, recipe, quiet, run_id = run_once
    failed = FakeAdapter([rec("FAILED"), rec("RUNNING"), rec("SUCCEEDED")])
    result = resume(led, plan, recipe, quiet, run_id, failed)
    assert result.exit_code == 0
    names = [c[0] for c in failed.calls]
    assert ("cancel_managed", 42, None) in failed.calls                    # the orphan goes down first
    assert names.index("cancel_managed") < names.index("launch_managed")
    handles = [e["numbers"]["handle"] for e in led.events(run_id, "handle")]
    assert handles[0] == handles[1].rsplit(":", 1)[0] + ":"                # the name was on record before launch
