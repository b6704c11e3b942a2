"""Eval scores with their error bars, the published protocol as data, and the table that says what it is."""
from __future__ import annotations

import math

import pytest

from reproduce import recipe as recipes
from reproduce.stages.lib import eval_report, protocol


def test_standard_error_over_problems_and_samples():
    # 4 problems x 4 samples: pass rates 1, 0.5, 0.25, 0
    samples = [{"id": f"p{i}", "ok": k < c} for i, c in enumerate([4, 2, 1, 0]) for k in range(4)]
    rates = eval_report.pass_rates(samples, "ok")
    assert rates == [1.0, 0.5, 0.25, 0.0]
    s = eval_report.score_with_se(rates, n=4)
    mean = 0.4375
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / 3)
    assert s["score"] == 43.75 and s["se"] == pytest.approx(100 * sd / 2, abs=0.01)
    within = math.sqrt((0 + 0.25 + 0.1875 + 0) / 3) / 4
    assert s["se_sampling"] == pytest.approx(100 * within, abs=0.01) and s["se_sampling"] < s["se"]
    one = eval_report.score_with_se([1.0, 0.0, 1.0], n=1)
    assert one["se_sampling"] is None and one["se"] == pytest.approx(100 * math.sqrt(1 / 3 / 3), abs=0.01)
    assert eval_report.score_with_se([1.0], n=1)["se"] is None         # one problem: no spread to measure


def test_delta_is_flagged_beyond_two_standard_errors():
    # AIME24-sized: 30 problems; published 43.3 has SE ~9.0 as a binomial over 30
    near = eval_report.compare(36.7, 8.9, 43.3, 30)
    assert near["se_published"] == pytest.approx(9.05, abs=0.01) and near["beyond_2se"] is False
    far = eval_report.compare(10.0, 5.0, 43.3, 30)
    assert far["delta"] == -33.3 and far["beyond_2se"] is True
    assert eval_report.compare(50.0, None, 43.3, 1)["beyond_2se"] is None
    assert eval_report.compare(50.0, 1.0, None, 30)["delta"] is None


def test_published_protocol_per_benchmark_with_sources():
    recipe = recipes.load()
    by_name = {b["name"]: protocol.resolve(b, recipe) for b in recipe["eval"]["benchmarks"]}
    aime = by_name["aime24"]
    # ST@#25's Sky-T1 AIME prompt, concatenated (not formatted): the model read \boxed{{}} (test_prompts_golden.py)
    assert aime["published"]["template"].format(problem="P") == "P\nReturn your final response within \\boxed{{}}"
    assert aime["published"]["temperature"] == 0.7 and aime["published"]["n"] == 8
    assert aime["published"]["scorer"] == "math_equal" and aime["ours"]["scorer"] == "math_verify"
    assert by_name["gpqa_diamond"]["published"]["scorer"] == "last_letter"
    assert by_name["math500"]["published"]["max_tokens"] == 32768
    assert all(p["sources"][f] for p in by_name.values() for f in ("template", "temperature", "n", "scorer"))
    # full scale follows the published protocol, but for the system prompt's whitespace (the student is asked with
    # the text it was trained with; SkyThought's eval had the same words indented)
    assert by_name["math500"]["differs"] == ["system_prompt"]
    smoke = recipes.load(scale="smoke")
    assert protocol.resolve(smoke["eval"]["benchmarks"][0], smoke)["differs"] == ["system_prompt", "max_tokens"]
    lcb = by_name["livecodebench_hard"]["ours"]
    assert lcb["template_call_based"].startswith("Generate an executable Python function") and \
        "Return the function body" in lcb["template_call_based"]


def test_an_unknown_benchmark_gets_the_defaults_and_the_recipe_template():
    recipe = {"generate": {"user_templates": {"math": "Q: {problem}"}}, "eval": {"max_tokens": 100}}
    p = protocol.resolve({"name": "amc23", "domain": "math", "temperature": 0.6}, recipe)
    assert p["ours"]["template"] == "Q: {problem}" and p["published"]["scorer"] == "math_equal"
    assert p["sources"]["template"].startswith("not published")
    assert set(p["differs"]) == {"temperature", "max_tokens", "system_prompt"}   # this recipe has no system prompt


def test_environment_reads_versions_without_importing():
    import sys

    env = eval_report.environment()
    assert env["python"] and "math-verify" in env and "torch" not in sys.modules
