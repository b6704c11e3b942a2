"""One run, one owner: two `reproduce all --resume RUN` started at once after the controller was SIGKILLed.

Exactly one proceeds; the other exits 2 with one line naming the owner and writes nothing; no stage is
finished twice; the takeover of the dead controller's lease is recorded.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from costmodel.ledger import Ledger

CLI = [sys.executable, "-c", "from reproduce.cli import main; main()"]
PACE = "0.02"     # real seconds per simulated poll: a resume lasts a few seconds, so the two overlap


def _env(home):
    return {**os.environ, "REPRODUCE_HOME": str(home / ".reproduce"), "REPRODUCE_OFFLINE": "1"}


def _start_and_kill(home, seed: int) -> str:
    """A simulated run, SIGKILLed once a stage or two are done and another is under way."""
    proc = subprocess.Popen(CLI + ["all", "--budget", "5000", "--backend", "sim", "--sim-seed", str(seed),
                                   "--sim-pace", PACE, "-y"], env=_env(home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    path = home / ".reproduce" / "ledger.db"
    deadline, run_id = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if path.exists():
            with Ledger(path) as led:
                run_id = led.latest_run_id()
                if run_id and len(led.finished_stages(run_id)) >= 1 + seed % 2 and led.open_attempts(run_id):
                    break
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert run_id, "the run never started"
    return run_id


def _counts(led, run_id):
    return {t: led.db.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id = ?", (run_id,)).fetchone()[0]
            for t in ("stage_rows", "api_usage", "events")}


@pytest.mark.parametrize("seed", [1, 2])
def test_two_resumes_at_once_one_proceeds(home, seed):
    run_id = _start_and_kill(home, seed)
    path = home / ".reproduce" / "ledger.db"
    argv = CLI + ["all", "--resume", run_id, "--sim-pace", PACE, "-y"]
    procs = [subprocess.Popen(argv, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [(p.returncode, e[-500:]) for p, (_, e) in zip(procs, outs)]
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    err = outs[loser][1].strip().splitlines()[-1]      # after the CLI's "backend: sim" note
    assert err.startswith(f"error: run {run_id} is in progress: "), outs[loser][1]
    assert outs[loser][1].count("error:") == 1 and "Traceback" not in outs[loser][1]
    assert f"pid {procs[winner].pid} on host" in err, err          # it names the owner

    with Ledger(path) as led:
        finished = dict(led.db.execute("SELECT stage, COUNT(*) FROM stage_rows WHERE run_id = ? AND "
                                       "event = 'finished' GROUP BY stage", (run_id,)).fetchall())
        assert finished and set(finished.values()) == {1}, finished   # no stage finished twice
        assert led.open_attempts(run_id) == []
        resumed = [e for e in led.events(run_id, "run") if e["reason"] == "resumed"]
        assert [e["numbers"]["pid"] for e in resumed] == [procs[winner].pid]   # the loser wrote nothing
        lease = [e["reason"] for e in led.events(run_id, "lease")]
        assert lease[0] == "claimed" and lease[-1] == "released"
        assert [r for r in lease if r.startswith("took over")] == [lease[1]] and "is not running" in lease[1]
        assert led.lease(run_id)["released_at"] is not None
        assert led.audit(run_id)["run"]["status"] == "finished"


def test_a_resume_of_a_live_run_is_refused_and_writes_nothing(home):
    """While the first controller is still alive (not killed), a resume is refused outright."""
    proc = subprocess.Popen(CLI + ["all", "--budget", "5000", "--backend", "sim", "--sim-pace", "0.05", "-y"],
                            env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = home / ".reproduce" / "ledger.db"
    try:
        deadline, run_id = time.monotonic() + 60, None
        while run_id is None and time.monotonic() < deadline:
            time.sleep(0.1)
            if path.exists():
                with Ledger(path) as led:
                    rid = led.latest_run_id()
                    run_id = rid if rid and led.open_attempts(rid) else None
        assert run_id
        with Ledger(path) as led:
            before = _counts(led, run_id)
        done = subprocess.run(CLI + ["all", "--resume", run_id, "-y"], env=_env(home), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: run {run_id} is in progress: pid {proc.pid} on host"), done.stderr
        assert "Traceback" not in done.stderr
        with Ledger(path) as led:
            after = _counts(led, run_id)
        # the live controller keeps writing; the refused resume added no run event of its own
        assert after["events"] >= before["events"]
        with Ledger(path) as led:
            assert not [e for e in led.events(run_id, "run") if e["reason"] == "resumed"]
    finally:
        proc.kill()
        proc.wait()
