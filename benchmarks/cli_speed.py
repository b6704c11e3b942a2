"""CLI start-up: `reproduce --help` and `reproduce plan` against `sky --help`, the tool we wrap.

    python benchmarks/cli_speed.py          # CLI timings, median of --runs subprocess runs
    python benchmarks/cli_speed.py --all    # ... then every other benchmark in this folder, one report

Each command runs in a fresh process (what a user waits for), offline (REPRODUCE_OFFLINE=1, prices from the
bundled snapshot), in a throwaway HOME so no ~/.sky or ~/.reproduce state changes the result. The first run
of each command is discarded as a warm-up (disk cache, .pyc).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OTHERS = ("grading_throughput.py", "audit_ledger.py")  # run by --all when present


def find(tool: str) -> str | None:
    """The tool beside this interpreter (a venv's bin) first, then PATH."""
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.exists() else shutil.which(tool)


def time_command(argv: list[str], runs: int, env: dict) -> tuple[float, float, int]:
    """(median s, min s, exit code) over `runs` runs after one warm-up."""
    times, rc = [], 0
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        elapsed = time.perf_counter() - start
        rc = proc.returncode
        if rc != 0:
            raise SystemExit(f"{' '.join(argv)} exited {rc}: {proc.stderr.decode()[-500:]}")
        if i:
            times.append(elapsed)
    return statistics.median(times), min(times), rc


def cli_speed(runs: int) -> list[dict]:
    reproduce, sky = find("reproduce"), find("sky")
    if reproduce is None:
        raise SystemExit("`reproduce` is not installed in this environment: pip install -e .")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HOME": home, "REPRODUCE_HOME": f"{home}/.reproduce", "SKY_RUNTIME_DIR": home,
               "REPRODUCE_OFFLINE": "1", "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
        cases = [("reproduce --help", [reproduce, "--help"]),
                 ("reproduce plan", [reproduce, "plan"]),
                 ("reproduce plan --optimize", [reproduce, "plan", "--optimize"])]
        if sky:
            cases.append(("sky --help", [sky, "--help"]))
        rows = []
        for name, argv in cases:
            median, best, _ = time_command(argv, runs, env)
            rows.append({"command": name, "median_s": median, "min_s": best})
    return rows


def print_cli(rows: list[dict], runs: int) -> None:
    sky = next((r["median_s"] for r in rows if r["command"] == "sky --help"), None)
    print(f"CLI wall time, median of {runs} fresh processes (offline, throwaway HOME)")
    print(f"  {'command':<28} {'median':>9} {'min':>9}   vs sky --help")
    for r in rows:
        ratio = f"{sky / r['median_s']:.1f}x faster" if sky and r["command"] != "sky --help" else ""
        print(f"  {r['command']:<28} {r['median_s'] * 1000:>7.0f} ms {r['min_s'] * 1000:>6.0f} ms   {ratio}")
    if sky is None:
        print("  (sky is not installed here: no comparison)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command (after one warm-up)")
    ap.add_argument("--all", action="store_true", help="also run the other benchmarks in benchmarks/")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: expected 1 or more")
    print_cli(cli_speed(args.runs), args.runs)
    status = 0
    if args.all:
        for name in OTHERS:
            path = HERE / name
            print()
            if not path.exists():
                print(f"{name}: not in this checkout, skipped")
                continue
            print(f"== {name}", flush=True)
            status |= subprocess.run([sys.executable, str(path)]).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
