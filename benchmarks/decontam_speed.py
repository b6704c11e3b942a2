"""Decontamination speed: training records/s through convert's screen, on synthetic problems.

    python benchmarks/decontam_speed.py [--records 100000] [--benchmark-problems 2000] [--plant 0.01]

Synthetic NuminaMath-like problems (~60 words, LaTeX, numbers) are screened against a benchmark set of the
size of the Sky-T1 eval (MATH500 + AIME24 + GPQA + LCB + OlympiadBench ~ 2,000 problems); `--plant` of the
training records are benchmark problems retyped (case, spacing, LaTeX spacing), which must all be caught.
Rows: building the n-gram index, the n-gram/exact screen alone, and the full screen (+ near-duplicates);
records/s by wall clock and by this process's CPU time (the second stays honest on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reproduce.stages.lib import decontam  # noqa: E402

WORDS = ("the of a and to in is that for be triangle circle integer real number sum product find compute "
         "let given points positive value function sequence probability area length angle side square prime "
         "digits remainder divided equation solutions ordered pairs such satisfies minimum maximum how many "
         "ways").split()


def problem(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(40, 80)):
        r = rng.random()
        if r < 0.12:
            parts.append(f"${rng.randint(1, 999)}$")
        elif r < 0.18:
            parts.append(f"$\\frac{{{rng.randint(1, 99)}}}{{{rng.randint(2, 99)}}}$")
        elif r < 0.22:
            parts.append(f"$x^{rng.randint(2, 9)} + {rng.randint(1, 50)}x$")
        else:
            parts.append(rng.choice(WORDS))
    return " ".join(parts).capitalize() + "."


def retype(text: str, rng: random.Random) -> str:
    """The same problem with other case, spacing and LaTeX spacing."""
    text = text.upper() if rng.random() < 0.5 else text.lower()
    text = text.replace(" + ", "+").replace("\\frac", "\\dfrac").replace("$", "$\\,", 1)
    return "  ".join(text.split(" "))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--benchmark-problems", type=int, default=2000)
    p.add_argument("--plant", type=float, default=0.01, help="share of training records copied from benchmarks")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    bench = [(f"b-{i}", problem(rng)) for i in range(args.benchmark_problems)]
    train, planted = [], 0
    for i in range(args.records):
        if rng.random() < args.plant:
            train.append(retype(rng.choice(bench)[1], rng))
            planted += 1
        else:
            train.append(problem(rng))
    words = sum(len(t.split()) for t in train) / len(train)
    print(f"{args.records:,} training problems (~{words:.0f} words), {planted:,} planted copies; "
          f"{args.benchmark_problems:,} benchmark problems; {os.cpu_count()} CPUs, one used")

    t0 = time.perf_counter()
    index = decontam.BenchmarkIndex({"bench": bench})
    t_index = time.perf_counter() - t0
    print(f"  index: {len(index.grams):,} 8-grams in {t_index:.2f} s")

    t0, c0 = time.perf_counter(), time.process_time()
    caught = sum(index.match(t) is not None for t in train)
    t_match, c_match = time.perf_counter() - t0, time.process_time() - c0
    print(f"  n-gram + exact screen: {args.records / t_match:,.0f} records/s wall, {args.records / c_match:,.0f} "
          f"per CPU-second ({t_match:.1f} s); caught {caught:,} of {planted:,} planted")

    screen = decontam.Screen(index, 0.8)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, t in enumerate(train):
        screen({"id": str(i), "source": "synthetic", "domain": "math", "problem": t}, t)
    t_full, c_full = time.perf_counter() - t0, time.process_time() - c0
    r = screen.report()
    print(f"  full screen (+ near-duplicates): {args.records / t_full:,.0f} records/s wall, "
          f"{args.records / c_full:,.0f} per CPU-second ({t_full:.1f} s); "
          f"{r['contaminated']:,} contaminated, {r['near_duplicates']:,} near-duplicates, {r['kept']:,} kept")
    return 0 if caught >= planted else 1


if __name__ == "__main__":
    sys.exit(main())
