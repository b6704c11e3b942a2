"""Kill the controller (SIGKILL) at random points of a simulated run, resume it, sometimes twice at once.

After every seed: the ledger is consistent, no stage finished twice, no API line counted twice, at most one
resumer drove the run at a time (the other exited 2), and the run finishes. The suite runs two seeds; the
soak, `python benchmarks/kill_resume_soak.py` (`make soak`), runs these drivers and checks over twenty or more.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from costmodel.ledger import Ledger

CLI = [sys.executable, "-c", "from reproduce.cli import main; main()"]


def _env(home):
    return {**os.environ, "REPRODUCE_HOME": str(home / ".reproduce"), "REPRODUCE_OFFLINE": "1"}


def _latest(path):
    if not path.exists():
        return None
    with Ledger(path) as led:
        return led.latest_run_id()


def _drive(home, seed: int, kills: int) -> tuple[str, list[int]]:
    """Start, kill `kills` times at random moments, resuming after each (two at once on odd draws); finish."""
    rng = random.Random(seed)
    path = home / ".reproduce" / "ledger.db"
    run_id, codes = None, []
    for attempt in range(kills + 1):
        if run_id is None:
            argv = [CLI + ["all", "--budget", "5000", "--backend", "sim", "--sim-seed", str(seed),
                           "--sim-preemption-rate", "0.2", "--sim-pace", "0.02", "-y"]]
        else:
            one = CLI + ["all", "--resume", run_id, "--sim-pace", "0.02", "-y"]
            argv = [one, one] if rng.random() < 0.5 else [one]
        procs = [subprocess.Popen(a, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for a in argv]
        if attempt < kills:
            time.sleep(rng.uniform(1.0, 4.0))
            for p in procs:
                p.send_signal(signal.SIGKILL)
        for p in procs:
            _, err = p.communicate(timeout=120)
            if p.returncode not in (-9, 0):
                assert p.returncode == 2 and "is in progress" in err, err[-800:]
            if p.returncode != -9:
                codes.append(p.returncode)
        run_id = run_id or _latest(path)
    if run_id is not None and 0 not in codes[-2:]:     # the last round was all losers: one more resume
        done = subprocess.run(CLI + ["all", "--resume", run_id, "-y"], env=_env(home), capture_output=True,
                              text=True, timeout=120)
        codes.append(done.returncode)
    return run_id, codes


def _check(home, run_id: str, codes: list[int]) -> None:
    assert run_id and 0 in codes, codes
    with Ledger(home / ".reproduce" / "ledger.db") as led:
        finished = dict(led.db.execute("SELECT stage, COUNT(*) FROM stage_rows WHERE run_id = ? AND "
                                       "event = 'finished' GROUP BY stage", (run_id,)).fetchall())
        assert finished and set(finished.values()) == {1}, finished          # no stage finished twice
        assert led.open_attempts(run_id) == []
        assert led.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        api = led.db.execute("SELECT COUNT(*), COALESCE(SUM(usd), 0) FROM api_usage WHERE run_id = ? AND "
                             "kind = 'usage'", (run_id,)).fetchone()
        resumed = [e["numbers"]["pid"] for e in led.events(run_id, "run") if e["reason"] == "resumed"]
        leases = led.events(run_id, "lease")
        audit = led.audit(run_id)
    assert len(resumed) == len(set(resumed))                                  # each resumer at most once
    assert len([e for e in leases if e["reason"] != "released"]) >= 1
    log = Path(audit["run"]["artifacts"]) / "rewrite" / "usage.jsonl"
    if log.exists():                               # every paid line in the ledger once
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        assert api[0] == len(lines) and api[1] == pytest.approx(sum(x["usd"] for x in lines))
    assert audit["run"]["status"] == "finished"


def test_kills_and_concurrent_resumes_few_seeds(home):
    for seed in (5, 6):
        run_id, codes = _drive(home, seed, kills=2)
        _check(home, run_id, codes)
