"""SkyThought's LiveCodeBench check, ported: the published scorer of the livecodebench_* benchmarks.

    score(response, record) -> (passed, reason)

Ported from NovaSky-AI/SkyThought@0751518 (the release that produced the published LCB scores):
skythought/tools/util/task_handlers.py (has_code, LiveCodeBenchTaskHandler.update_results/check_correctness)
and skythought/tools/util/livecodebench/testing_util.py (post_process_code, prepare_test_input_output_std,
prepare_test_input_output_functional, run_test_std, run_test_func, run_tests_for_one_example). What it does:
- the code is the last ```lang\\n...``` block (no block: fail), cut at </code> and its first ``` ;
- the tests are the problem's *private* tests (map_to_example's `test`); all must pass, stopping at the first
  failure; a problem without tests fails (`result_list and all_passed`);
- stdin tests: the program's stdout, stripped, equals the expected output stripped (a trailing "-" dropped);
- functional tests (is_stdin false, so `is_extracted`): the arguments parsed from the input text by SkyThought's
  rules, the function named by the first "(" of the code called at module level, its return value `==` the
  expected value (json.loads of the output, else the stripped text).
Where this differs, on purpose: the code runs in our sandbox (sandbox.run_python: a process with CPU, memory
and output limits, `timeout_s` CPU seconds per test) instead of SkyThought's in-process exec under
reliability_guard with one wall-clock limit of (6 + 1) x tests + 5 s; return values cross back as JSON, so a
tuple equals the list it would print as.
"""
from __future__ import annotations

import json
import re
import secrets

from reproduce.stages.lib import sandbox
from reproduce.stages.lib.grading import CALL_PRELUDE, PASSED, _failure, _short

_HAS_CODE = re.compile(r"```(?:[a-zA-Z]*)\n(.*?)```", re.DOTALL)          # task_handlers.py has_code


def post_process_code(code: str) -> str:
    """testing_util.py post_process_code, verbatim."""
    code = code.split("</code>")[0]
    code = code.replace("```python", "")
    code = code.split("```")[0]
    code = code.replace("<code>", "")
    return code


def _scalar(value: str):
    """int, else float, else the text without its quotes (prepare_test_input_output_functional, key=value)."""
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value.strip('"')


def prepare_functional(case: dict) -> tuple[list, object]:
    """testing_util.py prepare_test_input_output_functional(test_case, is_extracted=True): arguments, expected."""
    input_str, expected = case["input"], case["output"].strip()
    inputs = []
    if "=" in input_str:
        parts = [p.strip() for p in input_str.split(",")] if "," in input_str else [input_str]
        for part in parts:
            _key, value = part.split("=")       # SkyThought's own: a ValueError here fails the test
            inputs.append(_scalar(value.strip()))
    else:
        for part in input_str.split("\n"):
            part = part.strip()
            if not part:
                continue
            if part.startswith('"') and part.endswith('"'):
                inputs.append(part.strip('"'))
            elif part.startswith("[") and part.endswith("]"):
                inputs.append(json.loads(part))
            else:
                try:
                    inputs.append(int(part))
                except ValueError:
                    try:
                        inputs.append(float(part))
                    except ValueError:
                        inputs.append(part)
    try:
        expected = json.loads(expected)
    except json.JSONDecodeError:
        expected = expected.strip()
    return inputs, expected


def prepare_std(case: dict) -> tuple[str, str]:
    """testing_util.py prepare_test_input_output_std."""
    test_output = case["output"].strip()
    if test_output.endswith("-"):
        test_output = test_output[: test_output.rfind("-")].rstrip()
    return case["input"], test_output


# Runs in the sandbox: SkyThought's run_test_std exec()s the code in an empty namespace (so `__name__` is the
# builtins module's unless the code holds '__name__ == "__main__"', which gets a `__name__ = "__main__"` line).
# Any exception, SystemExit included (it ended SkyThought's test process), fails the test: exit status 1.
_STD = r'''
import sys
_code = %(code)r
if '__name__ == "__main__"' in _code:
    _code = '__name__ = "__main__"\n' + _code
try:
    exec(_code, {})
except BaseException as e:
    sys.stdout.flush()
    sys.stderr.write(type(e).__name__ + ": " + str(e)[:200] + "\n")
    sys.exit(1)
'''

# run_test_func (is_extracted): exec the code, call the name before its first "(" with each argument list.
_FUNC = CALL_PRELUDE + r'''
_code = %(code)r
try:
    sys.stdout = io.StringIO()
    _ns = {}
    exec(_code, _ns)
    _fn = _ns[_code.split("(")[0].split()[-1]]
except BaseException as e:
    _report({"error": "load: " + type(e).__name__ + ": " + str(e)[:200]}); sys.exit(0)
for _args in _tests:
    try:
        _value = _fn(*_args)
        _report({"value": _value})
    except BaseException as e:
        _report({"error": type(e).__name__ + ": " + str(e)[:200]}); break
    sys.stdout = io.StringIO()
'''


def _cases(record: dict) -> tuple[bool, list[dict]]:
    """(is_stdin, the tests as LiveCodeBench stores them): the loader's `lcb`, else made from `tests`."""
    if record.get("lcb"):
        return bool(record["lcb"]["is_stdin"]), list(record["lcb"]["cases"])
    tests = record.get("tests") or {}
    if tests.get("fn_name"):
        return False, [{"input": "\n".join(json.dumps(a) for a in args), "output": json.dumps(out),
                        "testtype": "functional"} for args, out in zip(tests["inputs"], tests["outputs"])]
    return True, [{"input": i, "output": o, "testtype": "stdin"} for i, o in zip(tests["inputs"], tests["outputs"])]


def score(response: str | None, record: dict, timeout_s: float = 6, memory_mb: int = 1024) -> tuple[bool, str]:
    blocks = _HAS_CODE.findall(response or "")
    if not blocks:
        return False, "no code"
    code = post_process_code(blocks[-1])
    is_stdin, cases = _cases(record)
    if not cases:
        return False, "no tests"
    n = len(cases)
    if cases[0].get("testtype") != "functional":       # run_tests_for_one_example: the first test's type decides
        for i, case in enumerate(cases, 1):
            stdin, expected = prepare_std(case)
            result = sandbox.run_python(_STD % {"code": code}, stdin, timeout_s=timeout_s, memory_mb=memory_mb,
                                        max_output_bytes=max(1 << 20, 2 * len(expected) + 4096))
            if not result.ok:
                return False, _failure(result, f"test {i} of {n}")
            if result.stdout.strip() != expected:
                return False, f"wrong output: test {i} of {n}: got {_short(result.stdout.strip(), 40)!r}"
        return True, PASSED
    if is_stdin:
        return False, "bad record: functional tests on a stdin problem (SkyThought passes them whole; not ported)"
    try:
        prepared = [prepare_functional(c) for c in cases]
    except ValueError as e:                              # SkyThought: the exception fails that test
        return False, f"wrong output: test input unreadable by SkyThought's parser: {_short(str(e), 80)}"
    tag = f"@@{secrets.token_hex(8)}@@"
    result = sandbox.run_python(_FUNC % {"tag": tag, "code": code}, json.dumps([a for a, _ in prepared]),
                                timeout_s=min(timeout_s * n + 2, 86_400), memory_mb=memory_mb,
                                max_output_bytes=16 << 20)
    reports = [json.loads(line[len(tag):]) for line in result.stdout.splitlines() if line.startswith(tag)]
    for i, (_args, expected) in enumerate(prepared, 1):
        if i > len(reports):
            return False, _failure(result, f"test {i} of {n}") if not result.ok else f"runtime error: test {i} of {n}"
        report = reports[i - 1]
        if "error" in report:
            return False, f"runtime error: test {i} of {n}: {_short(report['error'], 120)}"
        if report["value"] != expected:
            return False, f"wrong output: test {i} of {n}: got {_short(json.dumps(report['value'], default=repr), 40)}"
    return True, PASSED
