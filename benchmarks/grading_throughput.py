"""Grading throughput: records/s per core for math and code, and raw math-verify on the same inputs.

    python benchmarks/grading_throughput.py [--n-math 400] [--n-code 40] [--tests-per-problem 3] [--workers N]

Rows:
  math-verify raw     verify(parse(gold), parse(answer)) on the boxed strings, one process
  grade_math          our grader on whole responses (boxed extraction + the same math-verify calls)
  grade_code          our grader: sandboxed process per stdin test, every test must pass
  filter (N workers)  the filter stage program end to end on a JSONL of all the above (records/s in all
                      and per worker)
Compare `grade_math` with `math-verify raw` to see our overhead. The recipe's cost-model knobs
filter.mean_cpu_s_per_math / _code are the inverse of the per-core rates.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from fractions import Fraction

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reproduce.stages import filter as filter_stage  # noqa: E402
from reproduce.stages.lib import grading  # noqa: E402


def math_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """(gold, answer) in the forms graders meet: fractions vs decimals, LaTeX vs plain, sqrt, some wrong."""
    pairs = []
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(2, 99)
        kind = i % 4
        if kind == 0:
            pairs.append((rf"\frac{{{a}}}{{{b}}}", rf"\dfrac{{{a}}}{{{b}}}"))
        elif kind == 1:
            f = Fraction(a, 8)
            pairs.append((rf"\frac{{{f.numerator}}}{{{f.denominator}}}", str(float(f))))
        elif kind == 2:
            pairs.append((rf"{a}\sqrt{{{b}}}", rf"\sqrt{{{b}}} \cdot {a}"))
        else:
            pairs.append((str(a), str(a + 1)))                      # wrong
    return pairs


def code_records(n: int, tests: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        xs = [(rng.randint(-99, 99), rng.randint(-99, 99)) for _ in range(tests)]
        body = "a, b = map(int, input().split())\nprint(a + b)" if i % 3 else \
            "a, b = map(int, input().split())\nprint(a - b)"         # a third are wrong
        out.append({"id": f"c{i}", "source": "bench", "domain": "code",
                    "tests": {"inputs": [f"{a} {b}\n" for a, b in xs], "outputs": [f"{a + b}\n" for a, b in xs]},
                    "response": f"Reasoning...\n```python\n{body}\n```"})
    return out


def rate(n: int, fn) -> tuple[float, float]:
    start_wall, start_cpu = time.perf_counter(), _cpu()
    fn()
    wall, cpu = time.perf_counter() - start_wall, _cpu() - start_cpu
    return n / wall, cpu / n


def _cpu() -> float:
    import resource

    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-math", type=int, default=400)
    p.add_argument("--n-code", type=int, default=40)
    p.add_argument("--tests-per-problem", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    rng = random.Random(0)
    from math_verify import parse, verify

    pairs = math_pairs(args.n_math, rng)
    for gold, answer in math_pairs(50, random.Random(1)):             # import and warm up sympy once
        verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{answer}}}"))
    rows = []

    def raw():
        for gold, answer in pairs:
            verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{answer}}}"))
    rows.append(("math-verify raw", args.n_math, *rate(args.n_math, raw)))

    # Fresh values for our grader: math-verify caches parses, so reusing `pairs` would flatter us.
    responses = [(f"Let me think step by step... so the answer is $\\boxed{{{a}}}$.", g) for g, a in math_pairs(args.n_math, random.Random(2))]
    rows.append(("grade_math", args.n_math, *rate(args.n_math, lambda: [grading.grade_math(r, g) for r, g in responses])))

    codes = code_records(args.n_code, args.tests_per_problem, rng)
    rows.append((f"grade_code ({args.tests_per_problem} tests)", args.n_code,
                 *rate(args.n_code, lambda: [grading.grade(r) for r in codes])))

    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "traces.jsonl"), os.path.join(tmp, "graded.jsonl")
        records = [{"id": f"m{i}", "source": "bench", "domain": "math", "answer": g, "response": r}
                   for i, (r, g) in enumerate(responses)] + codes
        with open(src, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        devnull = open(os.devnull, "w")
        stderr, sys.stderr = sys.stderr, devnull
        try:
            per_s, _ = rate(len(records), lambda: filter_stage.main([src, "-o", out, "--workers", str(args.workers)]))
        finally:
            sys.stderr = stderr
            devnull.close()

    # Per core from CPU time (wall time on a shared machine includes other people's work).
    print(f"{'what':32s} {'records':>8s} {'records/s per core':>19s} {'CPU ms/record':>14s} {'wall records/s':>15s}")
    for name, n, per_s_wall, cpu_per in rows:
        print(f"{name:32s} {n:8d} {1 / cpu_per:19.1f} {cpu_per * 1000:14.2f} {per_s_wall:15.1f}")
    print(f"{'filter, ' + str(args.workers) + ' workers (mixed)':32s} {len(records):8d} "
          f"{per_s / args.workers:19.1f}   (wall: {per_s:.1f} records/s in all / {args.workers}, incl. worker start-up)")
    overhead = rows[1][3] / rows[0][3] if rows[0][3] else float("nan")
    print(f"grade_math CPU / raw math-verify CPU: {overhead:.2f}x")
    print(f"sandbox isolation: {', '.join(filter_stage._isolation())}")


if __name__ == "__main__":
    main()
