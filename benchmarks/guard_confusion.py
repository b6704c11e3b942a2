"""How often the budget guard stops a run that would have fitted, and whether any run passes the budget.

    python benchmarks/guard_confusion.py                 # x1.5..x3, seeds 0-4, $450, then x3..x10
    python benchmarks/guard_confusion.py --budget 300 --seeds 0-9 --workers 2

Each case is the default recipe through the simulation (`reproduce all --backend sim`), twice: once without a
budget (what the run would cost uninterrupted) and once with it. A false stop is a run stopped by the guard whose
uninterrupted cost was within the budget; "near" false stops are those whose uninterrupted run ends within 95% of
it (the target: at most one). Past the budget must be 0. The second table is the slow runs, which must stop early
(at x3 below 35% of the budget). Every run is a separate process with its own REPRODUCE_HOME: no state is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

SLOW_FITS = (1.5, 1.75, 2.0, 2.1, 2.25, 2.5, 2.75, 3.0)
SLOW_STOPS = (3.0, 4.0, 5.0, 7.5, 10.0)
NO_BUDGET = 1e7


def run(slowdown: float, seed: int, budget: float, recipe: str, preemption: float | None) -> dict:
    """One simulated run: its status, the stage it ended in and what it spent (from `reproduce runs --json`)."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "REPRODUCE_HOME": home, "REPRODUCE_OFFLINE": "1"}
        cli = [sys.executable, "-m", "reproduce"]
        argv = cli + ["all", "--recipe", recipe, "--budget", f"{budget:g}", "--backend", "sim", "--sim-slowdown",
                      f"{slowdown:g}", "--sim-seed", str(seed), "--sim-pace", "0", "-y"]
        if preemption is not None:
            argv += ["--sim-preemption-rate", f"{preemption:g}"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        runs = json.loads(subprocess.run(cli + ["runs", "--json"], env=env, capture_output=True, text=True,
                                         check=True).stdout)
        r = runs[0]
        return {"code": done.returncode, "status": r["status"], "stage": r.get("stage"), "spent": r["spent_usd"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=450.0)
    ap.add_argument("--seeds", default="0-4", help="A-B or a comma list")
    ap.add_argument("--recipe", default="sky-t1-32b-preview")
    ap.add_argument("--preemption-rate", type=float, default=None, help="sim spot preemptions per hour")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    seeds = (list(range(int(a.seeds.split("-")[0]), int(a.seeds.split("-")[1]) + 1)) if "-" in a.seeds
             else [int(s) for s in a.seeds.split(",")])
    cases = [(x, s) for x in SLOW_FITS for s in seeds]
    slow = [(x, s) for x in SLOW_STOPS for s in seeds]
    with ThreadPoolExecutor(a.workers) as pool:
        free = dict(zip(cases, pool.map(lambda c: run(c[0], c[1], NO_BUDGET, a.recipe, a.preemption_rate), cases)))
        guarded = dict(zip(cases + slow, pool.map(lambda c: run(c[0], c[1], a.budget, a.recipe, a.preemption_rate),
                                                  cases + slow)))

    print(f"budget ${a.budget:,.2f}, recipe {a.recipe}, seeds {a.seeds}" +
          (f", preemptions {a.preemption_rate:g}/h" if a.preemption_rate is not None else ""))
    print(f"{'slowdown':>8} {'seed':>4} {'uninterrupted':>13} {'guarded':>9} {'outcome':<28} verdict")
    counts = {"true pass": 0, "true stop": 0, "false stop": 0, "false stop (near)": 0, "past budget": 0,
              "ran over": 0}
    for (x, s) in cases:
        u, g = free[(x, s)], guarded[(x, s)]
        fits = u["spent"] <= a.budget
        finished = g["status"] == "finished"
        if g["spent"] > a.budget + 1e-6:
            verdict = "past budget"
        elif finished:
            verdict = "true pass" if fits else "ran over"   # finished though uninterrupted > budget: impossible
        elif fits:
            verdict = "false stop (near)" if u["spent"] >= 0.95 * a.budget else "false stop"
        else:
            verdict = "true stop"
        counts[verdict] += 1
        outcome = "finished" if finished else f"{g['status']} in {g['stage']}"
        print(f"{x:>8g} {s:>4} {u['spent']:>13,.2f} {g['spent']:>9,.2f} {outcome:<28} {verdict}")
    print()
    print("confusion (x%g-x%g):" % (SLOW_FITS[0], SLOW_FITS[-1]))
    fit = counts["true pass"] + counts["false stop"] + counts["false stop (near)"]
    print(f"  fits uninterrupted: {fit:>3}  finished {counts['true pass']:>3}  false stops {counts['false stop']:>3}"
          f"  (of which within 5% of the budget: {counts['false stop (near)']})")
    print(f"  does not fit:       {counts['true stop'] + counts['ran over']:>3}  stopped  {counts['true stop']:>3}")
    print(f"  past the budget:    {counts['past budget']:>3}")
    print()
    print(f"slow runs (must stop early; x3 below 35% = ${0.35 * a.budget:,.2f}):")
    print(f"{'slowdown':>8} {'seed':>4} {'spent':>9} {'% budget':>8}  outcome")
    for (x, s) in slow:
        g = guarded[(x, s)]
        outcome = "finished" if g["status"] == "finished" else f"{g['status']} in {g['stage']}"
        print(f"{x:>8g} {s:>4} {g['spent']:>9,.2f} {g['spent'] / a.budget:>8.1%}  {outcome}")


if __name__ == "__main__":
    main()
