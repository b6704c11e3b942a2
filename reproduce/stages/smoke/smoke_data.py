"""Problems the project makes itself, with known answers, for `--scale smoke` (no hub, no downloads).

    problems("numina_math", "math", 4)   -> 4 records {id, source, domain, problem, answer}
    problems("apps", "code", 4)          -> records with tests {"inputs": [...], "outputs": [...]}
    problems("gpqa_diamond", "mcq", 4)   -> records with a shuffled A-D list and the answer letter
    reference_responses(record)          -> (a correct response, a wrong one): what the smoke teacher learns

Deterministic: the same (name, domain, n, seed) always gives the same problems, and different names give
different ones (the seed mixes in a CRC of the name). The problems are small on purpose: a ~100k-parameter
model can learn them in seconds, so rejection sampling at smoke scale has real right and wrong answers.
"""
from __future__ import annotations

import copy
import functools
import random
import zlib

DOMAINS = ("math", "code", "mcq")


def _rng(name: str, seed: int) -> random.Random:
    return random.Random(zlib.crc32(name.encode()) * 1000 + seed)


# ---- math: one arithmetic step, answer in \boxed{} -------------------------------------------------------

_MATH_OPS = (("+", "plus", lambda a, b: a + b), ("-", "minus", lambda a, b: a - b),
             ("*", "times", lambda a, b: a * b))


def _math(rng: random.Random) -> dict:
    sym, word, fn = rng.choice(_MATH_OPS)
    a, b = rng.randint(2, 49), rng.randint(2, 19)
    c = fn(a, b)
    return {"problem": f"What is {a} {word} {b}?", "answer": str(c),
            "right": f"We compute {a} {sym} {b} = {c}.\nThe answer is \\boxed{{{c}}}.",
            "wrong": f"We compute {a} {sym} {b} = {c + 1}.\nThe answer is \\boxed{{{c + 1}}}."}


# ---- code: read stdin, print one line ----------------------------------------------------------------------

def _code(rng: random.Random) -> dict:
    kind, k = rng.choice(("times", "plus", "sum", "reverse")), rng.randint(2, 9)
    if kind == "times":
        text, body, bad = (f"Read an integer n from standard input and print n times {k}.",
                           f"n = int(input())\nprint(n * {k})", f"n = int(input())\nprint(n * {k} + 1)")
        cases = [(f"{x}\n", f"{x * k}\n") for x in rng.sample(range(-20, 100), 3)]
    elif kind == "plus":
        text, body, bad = (f"Read an integer n from standard input and print n plus {k}.",
                           f"n = int(input())\nprint(n + {k})", f"n = int(input())\nprint(n - {k})")
        cases = [(f"{x}\n", f"{x + k}\n") for x in rng.sample(range(-20, 100), 3)]
    elif kind == "sum":
        text, body, bad = ("Read two integers a and b on one line and print their sum.",
                           "a, b = map(int, input().split())\nprint(a + b)",
                           "a, b = map(int, input().split())\nprint(a * b)")
        pairs = [(rng.randint(0, 50), rng.randint(0, 50)) for _ in range(3)]
        cases = [(f"{a} {b}\n", f"{a + b}\n") for a, b in pairs]
    else:
        text, body, bad = ("Read a word from standard input and print it reversed.",
                           "s = input().strip()\nprint(s[::-1])", "s = input().strip()\nprint(s)")
        words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6))) for _ in range(3)]
        cases = [(f"{w}\n", f"{w[::-1]}\n") for w in words]
    tests = {"inputs": [i for i, _ in cases], "outputs": [o for _, o in cases]}
    return {"problem": text, "tests": tests,
            "right": f"Read the input and print the result.\n```python\n{body}\n```",
            "wrong": f"Read the input and print the result.\n```python\n{bad}\n```"}


# ---- mcq: an arithmetic question with four shuffled choices ------------------------------------------------

def _mcq(rng: random.Random) -> dict:
    a, b = rng.randint(2, 49), rng.randint(2, 49)
    c = a + b
    choices = [c] + rng.sample([c + d for d in (-3, -2, -1, 1, 2, 3, 10)], 3)
    rng.shuffle(choices)
    letters = "ABCD"
    gold = letters[choices.index(c)]
    bad = letters[(choices.index(c) + 1) % 4]
    listing = ", ".join(f"{letter}) {value}" for letter, value in zip(letters, choices))
    return {"problem": f"What is {a} plus {b}?\n{listing}", "answer": gold,  # GPQA layout (SkyThought handler)
            "right": f"{a} + {b} = {c}, which is choice {gold}.\n\\boxed{{{gold}}}",
            "wrong": f"{a} + {b} = {choices[letters.index(bad)]}, which is choice {bad}.\n\\boxed{{{bad}}}"}


_MAKERS = {"math": _math, "code": _code, "mcq": _mcq}


@functools.lru_cache(maxsize=64)
def _full(name: str, domain: str, n: int, seed: int) -> tuple[dict, ...]:
    if domain not in _MAKERS:
        raise ValueError(f"domain {domain!r}: expected one of {', '.join(DOMAINS)}")
    rng, out, seen, misses = _rng(name, seed), [], set(), 0
    while len(out) < n:
        item = _MAKERS[domain](rng)
        if item["problem"] in seen and misses < 100:  # unique texts while they last (code has ~18)
            misses += 1
            continue
        seen.add(item["problem"])
        item.update(id=f"{name}-{len(out):04d}", source=name, domain=domain)
        out.append(item)
    return tuple(out)


def problems(name: str, domain: str, n: int, seed: int = 0) -> list[dict]:
    """`n` problem records for source/benchmark `name`, in the record layout of `problems.py`."""
    keep = ("id", "source", "domain", "problem", "answer", "tests")
    return [copy.deepcopy({k: item[k] for k in keep if k in item}) for item in _full(name, domain, n, seed)]


def reference_responses(record: dict, seed: int = 0) -> tuple[str, str]:
    """(correct, wrong) responses for a record made by `problems()`, rebuilt from its id."""
    name, _, index = record["id"].rpartition("-")
    item = _full(name, record["domain"], int(index) + 1, seed)[int(index)]
    return item["right"], item["wrong"]
