"""The pipeline on the sim executor: the budget guard, resume, Ctrl-C and SIGKILL, through the real CLI."""
import csv
import io
import json
from pathlib import Path
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import cli
from costmodel.ledger import Ledger
from reproduce import pipeline
from reproduce import recipe as recipes
from reproduce.stagetable import NAMES as STAGES
from reproduce.executors.sim import SimExecutor
from reproduce.plan import build_plan


def audit_json(capsys, run=None):
    code, out, err = cli(capsys, "audit", *([run] if run else []), "--json")
    assert code == 0, err
    return json.loads(out)


def assert_adds_up(a):
    t = a["totals"]
    assert t["actual_usd"] == pytest.approx(sum(s["actual"]["total_usd"] for s in a["stages"]))
    assert t["compute_usd"] == pytest.approx(sum(c["compute_usd"] for c in a["by_cloud"]))
    assert t["api_usd"] == pytest.approx(sum(m["usd"] for m in a["by_model"]))
    assert t["actual_usd"] == pytest.approx(t["compute_usd"] + t["api_usd"] + t["storage_usd"])


def test_slow_run_stops_as_soon_as_it_cannot_finish_and_says_why(home, capsys):
    code, out, err = cli(capsys, "all", "--budget", "450", "--backend", "sim", "--sim-slowdown", "4", "-y")
    assert code == 3
    # 4x is visible early in generate: even the low end of the forecast (~$600 at that rate) passes $450, so it
    # stops there, not at the cap
    assert "stage generate stopped by the budget guard: at the observed rate generate ends at $" in err
    assert "--resume" in err and "--budget" in err          # what would finish it, as a command
    assert "Audit: run" in out and "within budget" in out
    a = audit_json(capsys)
    assert a["totals"]["actual_usd"] < 0.05 * 450          # money spent without a model: a few dollars
    assert a["run"]["simulated"] and a["run"]["status"] == "stopped"
    states = {s["stage"]: s["actual"]["state"] for s in a["stages"]}
    assert states == {"generate": "cancelled", "filter": "not started", "rewrite": "not started",
                      "convert": "not started", "sft": "not started", "eval": "not started"}
    stop = [d for d in a["decisions"] if d["kind"] == "forecast" and d["ok"]]
    assert len(stop) == 1 and stop[0]["stage"] == "generate" and stop[0]["numbers"]["needed_low_usd"] > 450
    assert_adds_up(a)


def test_measured_speed_replans_the_rest_and_the_audit_shows_it(home, capsys):
    code, out, err = cli(capsys, "all", "--budget", "450", "--backend", "sim", "--sim-slowdown", "2", "-y")
    assert code == 0, err
    a = audit_json(capsys)
    ev = next(s for s in a["stages"] if s["stage"] == "eval")
    sft = next(s for s in a["stages"] if s["stage"] == "sft")
    # generate ran ~2x: eval (the same vLLM decode) and sft (not measured yet) re-planned at that speed
    assert ev["replans"] and ev["replans"][0]["total_usd"] > 1.6 * ev["planned"]["total_usd"]
    assert "vLLM decode scaled the same" in " ".join(ev["replans"][0]["reasons"])
    assert "until it measures its own" in " ".join(sft["replans"][0]["reasons"])
    # the re-plan was closer to what it cost than the first plan
    assert abs(ev["replans"][-1]["total_usd"] - ev["actual"]["total_usd"]) < \
        abs(ev["planned"]["total_usd"] - ev["actual"]["total_usd"])
    code, out, _ = cli(capsys, "audit")
    assert "re-planned after generate: $" in out


def test_resume_with_more_budget_finishes_without_redoing_work(home, capsys):
    assert cli(capsys, "all", "--budget", "450", "--backend", "sim", "--sim-slowdown", "2.6", "-y")[0] == 3
    run = json.loads(cli(capsys, "runs", "--json")[1])[-1]["run"]
    code, out, err = cli(capsys, "all", "--resume", run, "--budget", "900", "-y")
    assert code == 0, err
    assert "[generate] already finished in this run: skipped" in err
    with Ledger() as led:
        finished = led.db.execute("SELECT stage, COUNT(*) FROM stage_rows WHERE run_id = ? AND event = 'finished' "
                                  "GROUP BY stage", (run,)).fetchall()
    assert dict(finished) == {s: 1 for s in STAGES}
    a = audit_json(capsys, run)
    sft = next(s for s in a["stages"] if s["stage"] == "sft")
    assert sft["actual"]["attempts"] == 2 and sft["actual"]["state"] == "finished"
    assert a["totals"]["budget"] == 900 and a["run"]["status"] == "finished"
    assert_adds_up(a)


def test_plan_over_budget_is_refused_and_nothing_recorded(home, capsys):
    code, out, err = cli(capsys, "all", "--budget", "100", "--backend", "sim", "-y")
    assert code == 3 and "over the $100.00 budget" in err
    assert cli(capsys, "runs", "--json")[1].strip() == "[]"


def test_without_yes_and_without_a_terminal_nothing_runs(home, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = cli(capsys, "all", "--budget", "450", "--backend", "sim")
    assert code == 1 and "pass -y" in err
    assert cli(capsys, "runs", "--json")[1].strip() == "[]"


@pytest.mark.parametrize("value", ["0", "-3", "abc", "nan"])
def test_bad_budget_is_one_line_exit_2(home, capsys, value):
    code, out, err = cli(capsys, "all", "--budget", value, "--backend", "sim", "-y")
    assert code == 2 and err.count("\n") == 1 and "--budget" in err and "positive number" in err


def test_dry_run_renders_and_records_nothing(home, capsys):
    code, out, err = cli(capsys, "all", "--budget", "450", "--backend", "sim", "--dry-run")
    assert code == 0
    assert "# stage sft: simulated (gpu)" in out and "nothing spent" in err
    assert cli(capsys, "runs", "--json")[1].strip() == "[]"


def test_one_stage_command_and_status(home, capsys):
    code, out, err = cli(capsys, "stage", "generate", "--budget", "450", "--backend", "sim", "-y")
    assert code == 0, err
    a = audit_json(capsys)
    assert [s["stage"] for s in a["stages"]] == ["generate"]
    code, out, err = cli(capsys, "stage", "generate", "--run", a["run"]["run_id"], "-y")
    assert code == 0 and "already finished" in err
    assert cli(capsys, "stage", "train", "--budget", "450")[0] == 2
    assert cli(capsys, "status")[1].strip() == "no runs in progress"


def _plan(slowdown=1.0, budget=450.0):
    recipe = recipes.load("sky-t1-32b-preview")
    return recipe, build_plan(recipe, budget, "sim")


def test_preemptions_are_billed_and_counted(home):
    recipe, plan = _plan()
    with Ledger() as led:
        result = pipeline.run(plan, recipe, SimExecutor(seed=3, preemption_rate=0.5, recovery_h=0.5), led, 450.0,
                              progress=pipeline.Progress(io.StringIO(), tty=False))
        a = led.audit(result.run_id)
    assert result.exit_code == 0
    sft = next(s for s in a["stages"] if s["stage"] == "sft")["actual"]
    assert sft["preemptions"] >= 3                         # ~0.5/h over ~19 h
    plan_sft = plan.stage("sft")
    assert sft["hours"] > plan_sft.base_hours * 0.7 + sft["preemptions"] * 0.5 * 0.99
    assert a["totals"]["preemptions"] == sum(s["actual"]["preemptions"] for s in a["stages"])


class _FilterFails(SimExecutor):
    """The simulation with the filter failing half way (a crashed stage program)."""

    def launch(self, run):
        handle = super().launch(run)
        if run.stage == "filter":
            self.sims[handle].fail_at_h = self.sims[handle].total_h / 2
        return handle


def test_failed_stage_exits_1_and_resume_reruns_only_it(home):
    recipe, plan = _plan()
    quiet = pipeline.Progress(io.StringIO(), tty=False)
    with Ledger() as led:
        first = pipeline.run(plan, recipe, _FilterFails(seed=1), led, 450.0, progress=quiet)
        assert first.exit_code == 1 and first.stage == "filter"
        assert led.finished_stages(first.run_id) == {"generate"}
        again = pipeline.run(plan, recipe, SimExecutor(seed=1), led, 450.0, resume_run=first.run_id, progress=quiet)
        assert again.exit_code == 0
        rows = led.db.execute("SELECT stage, event FROM stage_rows WHERE run_id = ? AND event IN "
                              "('finished', 'failed')", (first.run_id,)).fetchall()
    assert sorted(map(tuple, rows)) == sorted([(s, "finished") for s in STAGES] + [("filter", "failed")])


class _InterruptingSim(SimExecutor):
    def __init__(self, after, **kw):
        super().__init__(**kw)
        self.after, self.waits, self.cancelled = after, 0, []

    def wait(self, seconds):
        self.waits += 1
        if self.waits == self.after:
            raise KeyboardInterrupt
        super().wait(seconds)

    def cancel(self, handle):
        self.cancelled.append(handle)
        super().cancel(handle)


def test_ctrl_c_cancels_tears_down_and_records(home):
    recipe, plan = _plan()
    ex = _InterruptingSim(after=5, seed=2)
    with Ledger() as led:
        with pytest.raises(KeyboardInterrupt):
            pipeline.run(plan, recipe, ex, led, 450.0, progress=pipeline.Progress(io.StringIO(), tty=False))
        run_id = led.latest_run_id()
        [attempt] = led.attempts(run_id)
        assert attempt["event"] == "cancelled" and attempt["message"] == "cancelled by Ctrl-C; torn down"
        assert attempt["compute_usd"] > 0
        assert led.run_state(run_id)["reason"] == "cancelled"
    assert ex.cancelled == ["sim:generate:0"]


def test_progress_is_one_line_per_state_change_when_not_a_tty(home):
    recipe, plan = _plan()
    stream = io.StringIO()
    with Ledger() as led:
        pipeline.run(plan, recipe, SimExecutor(seed=0), led, 450.0, progress=pipeline.Progress(stream, tty=False),
                     stages=["generate"])
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["STARTING", "RUNNING", "SUCCEEDED"]
    assert "of est $" in lines[-1]


# ---- SIGKILL at random points, then resume --------------------------------------------------------------

def _kill_and_resume(home, seed: int, kills: int = 2) -> str:
    env = {**os.environ, "REPRODUCE_HOME": str(home / ".reproduce"), "REPRODUCE_OFFLINE": "1"}
    base = [sys.executable, "-c", "from reproduce.cli import main; main()"]
    rng = random.Random(seed)
    run_id = None
    for attempt in range(kills + 1):
        if run_id is None:
            # a budget the guard never reaches: a killed sft re-runs from zero in the simulation, and this
            # test is about bookkeeping, not the guard
            argv = base + ["all", "--budget", "5000", "--backend", "sim", "--sim-seed", str(seed),
                           "--sim-preemption-rate", "0.2", "--sim-pace", "0.002", "-y"]
        else:
            argv = base + ["all", "--resume", run_id, "--sim-pace", "0.002", "-y"]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt < kills:
            time.sleep(rng.uniform(0.3, 1.6))
            proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        if run_id is None:
            with Ledger(home / ".reproduce" / "ledger.db") as led:
                run_id = led.latest_run_id()
            if run_id is None:   # killed before the run was created: start over
                continue
    assert proc.returncode == 0
    return run_id


def _check_killed_run(home, run_id):
    with Ledger(home / ".reproduce" / "ledger.db") as led:
        finished = led.db.execute("SELECT stage, COUNT(*) FROM stage_rows WHERE run_id = ? AND event = 'finished' "
                                  "GROUP BY stage", (run_id,)).fetchall()
        assert dict(finished) == {s: 1 for s in STAGES}      # no finished stage recorded twice
        assert led.open_attempts(run_id) == []
        api = led.db.execute("SELECT COUNT(*), SUM(usd) FROM api_usage WHERE run_id = ?", (run_id,)).fetchone()
        a = led.audit(run_id)
    # every result the rewrite paid for is in the ledger once: its usage log, line for line
    log = Path(a["run"]["artifacts"]) / "rewrite" / "usage.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert api[0] == len(lines) and api[1] == pytest.approx(sum(x["usd"] for x in lines))
    assert_adds_up(a)
    assert a["run"]["status"] == "finished"


def test_sigkill_and_resume_few_seeds(home):      # many seeds: benchmarks/kill_resume_soak.py --drill sequential
    for seed in (11, 12):
        _check_killed_run(home, _kill_and_resume(home, seed))


def test_sigterm_tears_down_and_records_like_ctrl_c(home):
    env = {**os.environ, "REPRODUCE_HOME": str(home / ".reproduce"), "REPRODUCE_OFFLINE": "1"}
    argv = [sys.executable, "-c", "from reproduce.cli import main; main()", "all", "--budget", "450",
            "--backend", "sim", "--sim-pace", "0.01", "-y"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    run_id = None
    while run_id is None and time.monotonic() < deadline:   # wait until a stage is under way
        time.sleep(0.2)
        if (home / ".reproduce" / "ledger.db").exists():
            with Ledger(home / ".reproduce" / "ledger.db") as led:
                run_id = led.latest_run_id() if led.open_attempts(led.latest_run_id() or "") else None
    assert run_id, "the run never started a stage"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130
    with Ledger(home / ".reproduce" / "ledger.db") as led:
        assert led.open_attempts(run_id) == []                # nothing left running unrecorded
        events = led.db.execute("SELECT event FROM stage_rows WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        assert events[-1][0] == "cancelled"


@pytest.mark.parametrize("keep", [False, True])
def test_sft_deletes_its_checkpoints_once_it_succeeds_unless_the_recipe_keeps_them(home, capsys, monkeypatch, keep):
    """The checkpoints only resume a preempted sft: once it succeeds the executor deletes them (a sim has no
    bucket: here it records the call), and the bucket bill is the model's month plus the checkpoints' hours."""
    from reproduce.executors.sim import SimExecutor

    calls = []
    monkeypatch.setattr(SimExecutor, "discard", lambda self, run, prefixes: calls.append((run.stage, prefixes)) or 7)
    extra = ["--set", "sft.keep_checkpoints=true"] if keep else []
    code, _, err = cli(capsys, "all", "--budget", "450", "--backend", "sim", *extra, "-y")
    assert code == 0, err
    a = audit_json(capsys)
    run_id = a["run"]["run_id"]
    with Ledger() as led:
        events = led.events(run_id, "discarded")
        sft = led.storage(run_id)["sft"]
    if keep:
        assert calls == [] and events == [] and sft["scratch_gb"] == 0 and sft["gb_written"] > 900
    else:
        assert calls == [("sft", ("checkpoints/checkpoint-",))] and events[0]["numbers"]["objects"] == 7
        assert "keep_checkpoints keeps them" in err
        assert sft["gb_written"] < 70 and sft["scratch_gb"] > 900 and sft["usd"] < 3
    # where the money went, per stage, bucket included: the text, the CSV and the JSON agree
    text = cli(capsys, "audit")[1]
    assert "bucket $" in text and f"+ bucket ${a['totals']['storage_usd']:,.2f}" in text and "  bucket: " in text
    rows = list(csv.DictReader(io.StringIO(cli(capsys, "audit", "--csv")[1])))
    assert sum(float(r["storage_usd"]) for r in rows[:-1]) == pytest.approx(a["totals"]["storage_usd"], abs=1e-6)
    assert float(rows[-1]["total_usd"]) == pytest.approx(a["totals"]["actual_usd"])
    assert_adds_up(a)
