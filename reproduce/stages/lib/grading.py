"""Graders for rejection sampling: is a teacher's response correct? Pure functions, each -> (bool, reason).

    grade({"domain": "math", "answer": "\\frac12", "response": "... \\boxed{0.5}"})   -> (True, "passed")
    grade({"domain": "code", "tests": {"inputs": ["1 2\\n"], "outputs": ["3\\n"]}, "response": "```python..."})
    grade({"domain": "mcq", "answer": "C", "response": "... the answer is (C)"})

`reason` is "category" or "category: detail"; the filter stage counts the categories. Categories:
passed, no answer, wrong answer, no code, no tests, wrong output, timeout (CPU time, or the sandbox's wall
backstop), memory, runtime error, killed, output limit, bad record.

Math uses math-verify (`verify(parse(gold), parse(answer))`, gold first). Its timeouts use signal.alarm,
which only works in a process's main thread: run graders in processes, not threads (elsewhere they run
without a timeout). Code runs in `sandbox.run_python`, one process per stdin test (APPS/TACO style) or one
process for all calls of a call-based problem; a response passes only if every test passes (Sky-T1: BLOG,
"we execute the unit tests provided in datasets"; ST@init keeps a sample only if all tests pass).
Code time limits are CPU seconds, so a busy machine never turns a correct program into a timeout. Expected
outputs never enter the sandbox: they are compared here.
"""
from __future__ import annotations

import json
import math
import re
import secrets
import threading

from reproduce.stages.lib import sandbox

PASSED = "passed"


# ---- math -------------------------------------------------------------------------------------------------

def extract_boxed(text: str | None) -> str | None:
    """Contents of the last complete \\boxed{...} (or \\fbox{...}) in `text`, nested braces included, stripped;
    None if none. The project's one extractor: graders, the hub loaders' `answer_from: boxed`, the local formatter."""
    if not text:
        return None
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start:i - 1].strip()
    return None


def grade_math(response: str | None, gold: str | None, timeout_s: float = 5) -> tuple[bool, str]:
    """The response's last \\boxed{} answer against `gold` (a bare answer, or a solution with \\boxed{})."""
    from math_verify import parse, verify

    answer = extract_boxed(response)
    if answer is None or not answer:
        return False, "no answer"
    gold_text = extract_boxed(gold) if gold and "boxed" in gold else gold
    if gold_text is None or not str(gold_text).strip():
        return False, "bad record: no gold answer"
    gold_text = str(gold_text).strip()
    # signal.alarm takes whole seconds, and raises outside the main thread: no timeout there.
    t = max(1, math.ceil(timeout_s)) if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"\\boxed{{{gold_text}}}", parsing_timeout=t)
    answer_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=t)
    if not gold_parsed:          # math-verify could not read the gold: fall back to exact text
        ok = _squash(answer) == _squash(gold_text)
    elif not answer_parsed:
        ok = False
    else:
        ok = verify(gold_parsed, answer_parsed, timeout_seconds=t)
    return (True, PASSED) if ok else (False, f"wrong answer: got {_short(answer)}, expected {_short(gold_text)}")


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def _short(s, n: int = 60) -> str:
    s = str(s).replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."


# ---- multiple choice --------------------------------------------------------------------------------------

_LETTER = r"([A-J])"
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(?:option\s*)?[\(\[*\s]*" + _LETTER + r"(?![A-Za-z])", re.I)


def extract_choice(text: str | None) -> str | None:
    """The chosen letter: from the last \\boxed{} ("B", "(B)", "\\text{B}", "B. 42"), else the last
    "answer is (B)" / "Answer: B"."""
    boxed = extract_boxed(text)
    if boxed is not None:
        inner = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", boxed).strip()
        m = re.fullmatch(r"[\(\[]?" + _LETTER + r"[\)\]]?(?:[.:)\s].*)?", inner, re.S)
        if m:
            return m.group(1)
    found = [m.group(1) for m in _ANSWER_IS.finditer(text or "")]
    return found[-1].upper() if found else None


def grade_mcq(response: str | None, gold_letter: str | None) -> tuple[bool, str]:
    gold = re.sub(r"[^A-Za-z]", "", str(gold_letter or "")).upper()
    if len(gold) != 1:
        return False, f"bad record: gold {gold_letter!r} is not a letter"
    choice = extract_choice(response)
    if choice is None:
        return False, "no answer"
    return (True, PASSED) if choice == gold else (False, f"wrong answer: got {choice}, expected {gold}")


# ---- code -------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.S)


def extract_code(text: str | None) -> str | None:
    """The last fenced code block (ST@init: "the last code block"); None if there is none."""
    blocks = _FENCE.findall(text or "")
    return blocks[-1][1] if blocks and blocks[-1][1].strip() else None


def grade_code(response: str | None, tests, timeout_s: float = 10, memory_mb: int = 1024) -> tuple[bool, str]:
    """Run the response's last code block against every test in the sandbox.

    tests: {"inputs": [stdin, ...], "outputs": [stdout, ...]} (standard input, APPS/TACO), or
           {"fn_name": "f", "inputs": [[args], ...], "outputs": [value, ...]} (call-based); a JSON string
           of either is accepted (TACO stores `input_output` that way).
    """
    code = extract_code(response)
    if code is None:
        return False, "no code"
    try:
        tests = json.loads(tests) if isinstance(tests, (str, bytes)) else tests
        inputs, outputs = list(tests["inputs"]), list(tests["outputs"])
    except (ValueError, TypeError, KeyError):
        return False, "bad record: tests need inputs and outputs"
    if not inputs or len(inputs) != len(outputs):
        return False, "no tests" if not inputs else "bad record: inputs and outputs differ in length"
    if tests.get("fn_name"):
        return _grade_call_based(code, tests["fn_name"], inputs, outputs, timeout_s, memory_mb)
    n = len(inputs)
    for i, (stdin, expected) in enumerate(zip(inputs, outputs), 1):
        stdin, expected = _text(stdin), _text(expected)
        result = sandbox.run_python(code, stdin, timeout_s=timeout_s, memory_mb=memory_mb,
                                    max_output_bytes=max(1 << 20, 2 * len(expected) + 4096))
        if not result.ok:
            return False, _failure(result, f"test {i} of {n}")
        if not outputs_match(result.stdout, expected):
            return False, f"wrong output: test {i} of {n}: got {_short(result.stdout.strip(), 40)!r}"
    return True, PASSED


def _text(value) -> str:
    """APPS stores some inputs/outputs as lists of lines."""
    if isinstance(value, list):
        return "\n".join(map(str, value)) + "\n"
    return str(value)


def _failure(result: sandbox.Result, where: str) -> str:
    """A failed run's reason, by the limit that ended it (however it was ended: SIGXCPU, SIGKILL, our kill)."""
    if result.limit == "timeout":
        return f"timeout: {where}"
    if result.limit == "output":
        return f"output limit: {where}"
    if result.limit == "memory":
        return f"memory: {where}: {_short(result.why() if result.returncode is None else _last_line(result), 120)}"
    if result.returncode is not None and result.returncode < 0:
        return f"killed: {where}: {result.why()}"
    return f"runtime error: {where}: {_short(result.why(), 120)}"


def _last_line(result: sandbox.Result) -> str:
    return (result.stderr.strip().splitlines() or [f"killed by signal {-(result.returncode or 0)}"])[-1]


def outputs_match(got: str, expected: str) -> bool:
    """APPS-style: whitespace-insensitive (trailing spaces, blank lines, line breaks), and numbers with a
    decimal point or exponent equal within 1e-6 absolute or relative (the usual judge tolerance)."""
    got_tokens, expected_tokens = got.split(), expected.split()
    if got_tokens == expected_tokens:
        return True
    return len(got_tokens) == len(expected_tokens) and all(
        a == b or _floats_close(a, b) for a, b in zip(got_tokens, expected_tokens))


def _floats_close(a: str, b: str) -> bool:
    if not any(c in s for s in (a, b) for c in ".eE"):
        return False                                  # integers compare exactly
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)


# Runs inside the sandbox. Reads the tests from stdin before the solution can, imports the solution as a
# module (so `if __name__ == "__main__"` stays quiet), swallows its prints, and reports each call's result
# on a line tagged with a nonce. Comparison happens outside, in the grader. CALL_PRELUDE is shared with
# livecodebench_scorer's harness.
CALL_PRELUDE = r'''
import io, json, signal, sys
_tests = json.loads(sys.stdin.read())
_out, _tag = sys.stdout, %(tag)r
sys.stdin = io.StringIO("")
def _report(obj):
    _out.write(_tag + json.dumps(obj, default=repr) + "\n"); _out.flush()
'''
_HARNESS = CALL_PRELUDE + r'''
class _Timeout(BaseException): pass
def _alarm(*_): raise _Timeout()
def _limit(s): signal.setitimer(signal.ITIMER_PROF, s)   # CPU seconds of this process, not wall time
signal.signal(signal.SIGPROF, _alarm)
sys.stdout = io.StringIO()
try:
    _ns = {"__name__": "solution"}
    _limit(%(timeout)r)
    exec(compile(%(code)r, "solution.py", "exec"), _ns)
    _limit(0)
    _fn = _ns.get(%(fn)r)
    if not callable(_fn):
        _fn = getattr(_ns["Solution"](), %(fn)r)
except BaseException as e:
    _limit(0)
    _report({"error": "timeout" if isinstance(e, _Timeout) else "memory" if isinstance(e, MemoryError)
             else "load: " + type(e).__name__ + ": " + str(e)[:200]}); sys.exit(0)
for _args in _tests:
    try:
        _limit(%(timeout)r)
        _value = _fn(*_args)
        _limit(0)
        _report({"value": _value})
    except _Timeout:
        _report({"error": "timeout"}); break
    except MemoryError:
        _limit(0)
        _report({"error": "memory"}); break
    except BaseException as e:
        _limit(0)
        _report({"error": type(e).__name__ + ": " + str(e)[:200]}); break
    sys.stdout = io.StringIO()
'''


def _grade_call_based(code, fn_name, inputs, outputs, timeout_s, memory_mb) -> tuple[bool, str]:
    tag = f"@@{secrets.token_hex(8)}@@"
    harness = _HARNESS % {"tag": tag, "timeout": float(timeout_s), "code": code, "fn": str(fn_name)}
    args = [a if isinstance(a, list) else [a] for a in inputs]
    result = sandbox.run_python(harness, json.dumps(args), timeout_s=min(timeout_s * len(args) + 2, 86_400),
                                memory_mb=memory_mb, max_output_bytes=16 << 20)
    reports = [json.loads(line[len(tag):]) for line in result.stdout.splitlines() if line.startswith(tag)]
    n = len(args)
    for i, expected in enumerate(outputs, 1):
        if i > len(reports):
            return False, _failure(result, f"test {i} of {n}") if not result.ok else f"runtime error: test {i} of {n}"
        report = reports[i - 1]
        if "error" in report:
            if report["error"] in ("timeout", "memory"):
                return False, f"{report['error']}: test {i} of {n}"
            return False, f"runtime error: test {i} of {n}: {_short(report['error'], 120)}"
        if not values_match(report["value"], expected):
            return False, f"wrong output: test {i} of {n}: got {_short(json.dumps(report['value'], default=repr), 40)}"
    return True, PASSED


def values_match(got, expected) -> bool:
    """Call-based results after a JSON round trip (tuples are lists). APPS wraps some outputs in a list."""
    if _same(got, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and _same(got, expected[0])


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b if isinstance(a, bool) and isinstance(b, bool) else False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (isinstance(a, float) or isinstance(b, float)) and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        return a == b or a.strip() == b.strip()
    return a == b


# ---- dispatch ---------------------------------------------------------------------------------------------

DOMAINS = ("math", "code", "mcq")


def grade(record: dict, math_timeout_s: float = 5, code_timeout_s: float = 10, code_memory_mb: int = 1024,
          **_ignored) -> tuple[bool, str]:
    """Grade one trace record by its `domain`: math (`answer`), code (`tests`), mcq (`answer`, a letter).
    Extra keyword limits (e.g. the recipe's whole `filter:` section) are ignored."""
    domain = record.get("domain")
    response = record.get("response") or ""
    if domain == "math":
        return grade_math(response, record.get("answer"), timeout_s=math_timeout_s)
    if domain == "code":
        if record.get("tests") is None:
            return False, "bad record: no tests"
        return grade_code(response, record["tests"], timeout_s=code_timeout_s, memory_mb=code_memory_mb)
    if domain == "mcq":
        return grade_mcq(response, record.get("answer"))
    return False, f"bad record: domain {domain!r} is not one of {', '.join(DOMAINS)}"


def category(reason: str) -> str:
    """The histogram key of a reason: the part before the first colon."""
    return reason.split(":", 1)[0]
