"""Graders: real math-verify, real sandboxed code runs."""
import json

import pytest

from reproduce.stages.lib import grading
from reproduce.stages.lib.grading import (extract_boxed, extract_choice, extract_code, grade, grade_code, grade_math,
                                      grade_mcq, outputs_match)


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{42}.", "42"),
    (r"first \boxed{1} then \boxed{\frac{a}{b^{2}}} done", r"\frac{a}{b^{2}}"),
    (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),
    (r"\fbox{7}", "7"),
    ("no box here", None),
    (r"\boxed{unclosed", None),
    (r"\boxed{1} then \boxed{unclosed", "1"),       # the last complete one
    (r"\boxed { 5 }", "5"),
    ("a \\boxed{1} b \\boxed{\\frac{a}{b}} c", "\\frac{a}{b}"),
    ("none", None),
    (None, None),
])
def test_extract_boxed(text, expected):
    """The one \\boxed{} extractor: graders, the hub loaders' `answer_from: boxed` and the local formatter."""
    assert extract_boxed(text) == expected


# (gold, response's boxed answer, equivalent?)
MATH_TABLE = [
    (r"\frac{1}{2}", "0.5", True),
    (r"\frac12", r"\dfrac{1}{2}", True),
    ("3/4", r"\frac{3}{4}", True),
    ("3", "3.0", True),
    ("1000", "1,000", True),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("5", r"5 \text{ cm}", True),              # units are dropped
    ("5", r"5\text{cm}", True),
    (r"90^\circ", "90", True),
    (r"10\%", "10", True),
    ("[1,2)", "[1,2)", True),                  # intervals: endpoints and brackets both count
    ("[1,2)", "(1,2)", False),
    (r"\{1,2\}", r"\{2,1\}", True),
    (r"\infty", r"\infty", True),
    ("3", "3.01", False),
    (r"\pi", "3.14159", False),
    ("7", "8", False),
    (r"\frac{1}{3}", "0.33", False),
]


@pytest.mark.parametrize("gold, answer, same", MATH_TABLE)
def test_math_equivalence_table(gold, answer, same):
    ok, reason = grade_math(f"Thinking... so the answer is \\boxed{{{answer}}}.", gold)
    assert ok is same, reason
    assert reason == "passed" if same else reason.startswith("wrong answer")


def test_math_gold_may_be_a_full_solution():
    solution = r"We compute $2+2$. Hence the result is $\boxed{4}$."
    assert grade_math(r"... \boxed{4}", solution) == (True, "passed")
    assert grade_math(r"... \boxed{5}", solution)[0] is False


@pytest.mark.parametrize("response", ["The answer is 5.", "", None, r"\boxed{}"])
def test_math_without_a_boxed_answer_is_rejected(response):
    assert grade_math(response, "5") == (False, "no answer")


def test_math_missing_gold_is_a_bad_record():
    ok, reason = grade_math(r"\boxed{5}", "")
    assert not ok and grading.category(reason) == "bad record"


@pytest.mark.parametrize("response, letter", [
    (r"... so \boxed{C}", "C"),
    (r"\boxed{(B)}", "B"),
    (r"\boxed{\text{D}}", "D"),
    (r"\boxed{A. 42 meters}", "A"),
    ("Therefore, the answer is (B).", "B"),
    ("Answer: D", "D"),
    ("The answer is A, no wait, the answer is **C**", "C"),
    ("I am not sure.", None),
])
def test_extract_choice(response, letter):
    assert extract_choice(response) == letter


def test_grade_mcq():
    assert grade_mcq("the answer is (c)", "C") == (True, "passed")
    assert grade_mcq(r"\boxed{B}", "(B)") == (True, "passed")
    assert grade_mcq(r"\boxed{B}", "A") == (False, "wrong answer: got B, expected A")
    assert grade_mcq("hmm", "A") == (False, "no answer")


def test_extract_code_takes_the_last_fenced_block():
    text = "Try:\n```python\nprint(1)\n```\nBetter:\n```py\nprint(2)\n```\nand prose"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("print(4) without fences") is None


@pytest.mark.parametrize("got, expected, same", [
    ("3\n", "3", True),
    ("1 2  \n3\n\n", "1 2\n3", True),
    ("0.5000000\n", "0.5", True),
    ("0.3333333\n", "0.333333333", True),
    ("1000000\n", "1000001", False),          # integers exactly
    ("0.34\n", "0.333333", False),
    ("YES\n", "NO", False),
    ("1 2\n", "1 2 3", False),
])
def test_outputs_match(got, expected, same):
    assert outputs_match(got, expected) is same


ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
STDIN_TESTS = {"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}


def test_code_passing_and_failing():
    assert grade_code(ADD, STDIN_TESTS) == (True, "passed")
    ok, reason = grade_code(ADD.replace("a + b", "a - b"), STDIN_TESTS)
    assert not ok and reason.startswith("wrong output: test 1 of 2")
    ok, reason = grade_code(ADD, {"inputs": ["1 2\n", "2 2\n"], "outputs": ["3\n", "5\n"]})
    assert not ok and reason.startswith("wrong output: test 2 of 2"), "every test must pass"


def test_code_tests_as_json_string_and_line_lists():
    tests = json.dumps({"inputs": [["1 2"]], "outputs": [["3"]]})
    assert grade_code(ADD, tests) == (True, "passed")


def test_code_runtime_error_timeout_and_no_code():
    ok, reason = grade_code("```python\nraise ValueError('boom')\n```", STDIN_TESTS)
    assert not ok and reason.startswith("runtime error") and "ValueError: boom" in reason
    ok, reason = grade_code("```python\nwhile True:\n    pass\n```", STDIN_TESTS, timeout_s=1)
    assert (ok, reason) == (False, "timeout: test 1 of 2")
    assert grade_code("just prose", STDIN_TESTS) == (False, "no code")
    assert grade_code(ADD, {"inputs": [], "outputs": []}) == (False, "no tests")


def test_code_call_based_function_and_solution_class():
    fn = "```python\ndef add(a, b):\n    print('noise')\n    return a + b\n```"
    tests = {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [3, [7]]}   # APPS wraps some in a list
    assert grade_code(fn, tests) == (True, "passed")
    cls = "```python\nclass Solution:\n    def pair(self, a):\n        return (a, a * 0.1)\n```"
    assert grade_code(cls, {"fn_name": "pair", "inputs": [[2]], "outputs": [[2, 0.2000000001]]}) == (True, "passed")
    ok, reason = grade_code(fn, {"fn_name": "add", "inputs": [[1, 2]], "outputs": [4]})
    assert not ok and reason.startswith("wrong output")


def test_code_call_based_failures():
    slow = "```python\ndef f(x):\n    while x:\n        pass\n    return x\n```"
    assert grade_code(slow, {"fn_name": "f", "inputs": [[0], [1]], "outputs": [0, 1]}, timeout_s=1) == \
        (False, "timeout: test 2 of 2")
    ok, reason = grade_code("```python\ndef g(x):\n    return x\n```", {"fn_name": "f", "inputs": [[1]], "outputs": [1]})
    assert not ok and reason.startswith("runtime error") and "load" in reason
    # A __main__ block that reads stdin must not run (nor hang) when the function is called.
    main = "```python\ndef f(x):\n    return 2 * x\nif __name__ == '__main__':\n    print(f(int(input())))\n```"
    assert grade_code(main, {"fn_name": "f", "inputs": [[4]], "outputs": [8]}) == (True, "passed")


def test_grade_dispatch():
    assert grade({"domain": "math", "answer": "2", "response": r"\boxed{2}"}) == (True, "passed")
    assert grade({"domain": "mcq", "answer": "A", "response": r"\boxed{A}"}) == (True, "passed")
    assert grade({"domain": "code", "tests": STDIN_TESTS, "response": ADD}, code_timeout_s=5) == (True, "passed")
    assert grade({"domain": "code", "response": ADD})[1] == "bad record: no tests"
    assert grade({"domain": "poem", "response": "x"})[1].startswith("bad record: domain 'poem'")
    # the recipe's whole filter: section may be passed through
    assert grade({"domain": "math", "answer": "2", "response": r"\boxed{2}"}, where="local", cpus=4)[0]
