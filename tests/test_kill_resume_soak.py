"""benchmarks/kill_resume_soak.py, the many-seed soak the suite no longer runs: its wiring, on one quick seed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kill_resume_soak.py"


def soak(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300)


def test_one_seed_runs_the_suites_checks_and_prints_its_figures():
    done = soak("--drill", "sequential", "--seeds", "3", "--kills", "0")     # no kill: one sim run, checked
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sequential seed    3  ok ") and lines[0].endswith("audit adds up")
    assert lines[1].startswith("sequential: 1 seeds x 0 kills, ") and lines[-1] == "every seed passed"


@pytest.mark.parametrize("argv, named", [(["--seeds", "x-y"], "'x-y'"), (["--seeds", "9-3"], "'9-3'"),
                                         (["--kills", "-1"], "--kills -1")])
def test_bad_input_is_one_line_exit_2(argv, named):
    done = soak(*argv)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and named in done.stderr
