"""SkyThought's published scorers (our reimplementation) against cases whose verdict the published code gives,
and where they part from our math-verify grader."""
from __future__ import annotations

import pytest

from reproduce.stages.lib import grading
from reproduce.stages.lib.math_equal import extract_answer, math_equal, score_math, score_mcq, strip_answer


@pytest.mark.parametrize("response, gold", [
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12"),                 # \dfrac, \frac12
    ("so \\boxed{0.5}", "\\frac{1}{2}"),                    # symbolic: sympy
    ("\\boxed{50\\%}", "0.5"),                              # a percentage is also x100
    ("\\boxed{(1,2)}", "(1, 2)"),                           # tuples
    ("\\boxed{x=3}", "3"),                                  # "x=" dropped
    ("\\boxed{3, 1, 2}", "1,2,3"),                          # integer lists are sorted
    ("The answer is 42.", "42"),                            # no box: "the answer is"
    ("we get 17 apples, then 23", "23"),                    # else the last number
    ("\\boxed{10 \\text{ cm}}", "10"),                      # trailing unit
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{2x+2}", "2(x+1)"),                            # simplify(a - b) == 0
    ("\\boxed{y = 2x + 1}", "y=1+2x"),                      # equations
    ("\\boxed{1.00001}", "1"),                              # relative 1e-4
    ("\\boxed{\\left[ 1, 2 \\right)}", "[1,2)"),
])
def test_equal(response, gold):
    assert score_math(response, gold) is True


@pytest.mark.parametrize("response, gold", [
    ("\\boxed{41}", "42"), ("\\boxed{\\frac{1}{3}}", "0.33"), ("no number here", "7"), ("\\boxed{1.001}", "1"),
    ("\\boxed{(1,3)}", "(1,2)"), ("\\boxed{x^2}", "2x"),
])
def test_not_equal(response, gold):
    assert score_math(response, gold) is False


def test_normalization_steps():
    assert strip_answer("\\left( \\dfrac{3}{4} \\right)") == "(\\frac{3}{4})"
    assert strip_answer("3/4") == "\\frac{3}{4}" and strip_answer("-1/2") == "\\frac{-1}{2}"
    assert strip_answer("5.000") == "5" and strip_answer(".5") == "0.5" and strip_answer("k = 7") == "7"
    assert strip_answer("\\text{(B)}") == "(B)" and strip_answer("\\$12") == "12"
    assert extract_answer("first \\boxed{1}, finally \\boxed{\\frac{a}{b}}.") == "\\frac{a}{b}"
    assert extract_answer("\\boxed 5$ done") == "5"
    assert math_equal("B", "B") and math_equal("(B)", "B")   # a letter reference accepts "(B)"


def test_where_published_and_ours_disagree():
    """What the disagreement column counts: SkyThought reads the last number when nothing is boxed, we
    want a box; its GPQA pick is the last standalone letter anywhere."""
    response = "Adding the two gives 12"
    assert score_math(response, "12") is True
    assert grading.grade_math(response, "12")[0] is False
    babble = "A cat. Then B, then I think the final answer: \\boxed{C}. OK D"
    assert score_mcq(babble, "D") is True and grading.grade_mcq(babble, "D")[0] is False
    assert score_mcq("\\boxed{C}", "C") is True


def test_a_slow_comparison_is_cut_off(monkeypatch):
    import time

    from reproduce.stages.lib import math_equal as me

    monkeypatch.setattr(me, "math_equal", lambda a, b: time.sleep(5) or True)
    start = time.monotonic()
    assert score_math("\\boxed{1}", "1", timeout_s=0.2) is False
    assert time.monotonic() - start < 2
