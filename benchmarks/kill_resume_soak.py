"""Soak: SIGKILL the controller at random moments of a simulated run, resume it, for many seeds; print figures.

    python benchmarks/kill_resume_soak.py                        # both drills, the seeds the suite once ran
    python benchmarks/kill_resume_soak.py --drill concurrent --seeds 100-199 --kills 3

Drills (the same drivers and checks as the test suite, which keeps two seeds of each):
  concurrent   tests/test_fault_injection.py: killed, then resumed by one or two controllers at once (the loser
               exits 2); every stage finished once, every paid API line counted once, one resumer at a time
  sequential   tests/test_pipeline_sim.py: killed and resumed one at a time; the audit adds up
Each seed runs in its own throwaway REPRODUCE_HOME, offline, on the sim backend: no cloud, no network, $0.
Prints one line per seed (verdict, wall seconds, exit codes) and a summary; exits 1 if any seed failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

DEFAULT_SEEDS = {"concurrent": "100-119", "sequential": "20-39"}   # what the suite's slow tests ran


def bad(message: str):
    """Bad input: one line, exit 2 (the project's rule)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def seed_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    try:
        seeds = list(range(int(first), int(last or first) + 1))
    except ValueError:
        seeds = []
    if not seeds:
        bad(f"--seeds {text!r}: expected a seed or a range FIRST-LAST, e.g. 100-119")
    return seeds


def one_seed(drill: str, seed: int, kills: int) -> tuple[bool, str]:
    """Drive one seed in a fresh home; (passed, detail)."""
    with tempfile.TemporaryDirectory(prefix=f"soak-{drill}-{seed}-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ.update({"HOME": str(home), "REPRODUCE_HOME": str(home / ".reproduce"), "SKY_RUNTIME_DIR": str(home),
                           "REPRODUCE_OFFLINE": "1", "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"})
        try:
            if drill == "concurrent":
                import test_fault_injection as fi

                run_id, codes = fi._drive(home, seed, kills=kills)
                fi._check(home, run_id, codes)
                return True, f"exit codes {codes}"
            import test_pipeline_sim as ps

            ps._check_killed_run(home, ps._kill_and_resume(home, seed, kills=kills))
            return True, "audit adds up"
        except Exception as exc:         # a failed check is a figure here, not a crash: report and go on
            last = traceback.extract_tb(exc.__traceback__)[-1]
            return False, f"{type(exc).__name__} at {Path(last.filename).name}:{last.lineno}: {str(exc)[:300]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drill", choices=["concurrent", "sequential", "both"], default="both")
    ap.add_argument("--seeds", help="a seed or FIRST-LAST (default: 100-119 concurrent, 20-39 sequential)")
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs per seed before the run may finish (default 3)")
    args = ap.parse_args(argv)
    if args.kills < 0:
        bad(f"--kills {args.kills}: expected 0 or more")
    failed = 0
    for drill in (["concurrent", "sequential"] if args.drill == "both" else [args.drill]):
        seeds = seed_range(args.seeds or DEFAULT_SEEDS[drill])
        walls = []
        for seed in seeds:
            start = time.perf_counter()
            ok, detail = one_seed(drill, seed, args.kills)
            walls.append(time.perf_counter() - start)
            failed += not ok
            print(f"{drill:<10} seed {seed:>4}  {'ok  ' if ok else 'FAIL'}  {walls[-1]:6.1f} s  {detail}", flush=True)
        print(f"{drill}: {len(seeds)} seeds x {args.kills} kills, {sum(walls):.0f} s in all, "
              f"{sum(walls) / len(walls):.1f} s mean, {max(walls):.1f} s max per seed", flush=True)
    print(f"{failed} seed(s) failed" if failed else "every seed passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
