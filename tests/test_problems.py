"""Problem records: the smoke problems, and each hub dataset's transform run on rows built in that
dataset's real column layout (the hub is not reachable here)."""
from __future__ import annotations

import base64
import json
import pickle
import zlib

import pytest

from reproduce import recipe as recipes
from reproduce.stages.lib import problems
from reproduce.stages.smoke import smoke_data


def test_smoke_sources_follow_the_recipe_and_are_deterministic():
    r = recipes.load(scale="smoke")
    first, again = problems.load_sources(r), problems.load_sources(r)
    assert first == again
    assert len(first) == 4 * len(r["sources"])
    assert len({p["id"] for p in first}) == len(first)
    assert {p["source"] for p in first} == {s["name"] for s in r["sources"]}
    for p in first:
        if p.get("published"):          # STILL-2 (traces: published): a trace in the Sky-T1 format, no grader
            assert p["domain"] == "science" and p["response"].startswith("<|begin_of_thought|>")
            continue
        assert p["domain"] in ("math", "code", "mcq")
        assert ("tests" in p) == (p["domain"] == "code") and ("answer" in p) != (p["domain"] == "code")
    assert {p["source"] for p in first if p.get("published")} == {"still2"}
    assert [p["id"] for p in problems.load_sources(r, limit=1)] == [f"{s['name']}-0000" for s in r["sources"]]
    # different sources ask different questions
    math_sources = [[p["problem"] for p in first if p["source"] == s["name"]] for s in r["sources"][:2]]
    assert math_sources[0] != math_sources[1]


def test_smoke_benchmarks_capped_per_benchmark():
    r = recipes.load(scale="smoke")
    for bench in r["eval"]["benchmarks"]:
        recs = problems.load_benchmark(bench, "smoke")
        assert len(recs) == bench["problems"] == 4  # the recipe's smoke block
        assert {x["domain"] for x in recs} == {bench["domain"]}
    assert len(problems.load_benchmark(r["eval"]["benchmarks"][0], "smoke", limit=2)) == 2


@pytest.mark.parametrize("domain", ["math", "code", "mcq"])
def test_reference_responses_grade_right_and_wrong(domain):
    """The smoke teacher learns these: the right one must pass the real grader, the wrong one fail."""
    from reproduce.stages.lib.grading import grade

    for rec in smoke_data.problems(f"t-{domain}", domain, 3):
        right, wrong = smoke_data.reference_responses(rec)
        assert grade({**rec, "response": right}) == (True, "passed")
        assert grade({**rec, "response": wrong})[0] is False


def test_unknown_smoke_domain():
    with pytest.raises(ValueError, match="expected one of math, code, mcq"):
        smoke_data.problems("x", "poetry", 1)


def _numina(problem, solution, source):
    return {"source": source, "problem": problem, "solution": solution,
            "messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": solution}]}


def test_numina_filters_source_boxed_difficulty_and_end():
    rows = [_numina("p0", "so \\boxed{\\frac{1}{2}}.", "olympiads"),
            _numina("p1", "no box here, 3", "olympiads"),
            _numina("p2", "\\boxed{7}", "math"),
            _numina("p3", "first \\boxed{1} then \\boxed{x^{2}}", "olympiads"),
            _numina("p4", "\\boxed{9}", "olympiads"),
            _numina("p5", "\\boxed{10}", "olympiads")]
    labels = {"p0": 9, "p3": 9.0, "p4": 8, "p5": 9}
    flt = {"source": "olympiads", "solution_contains": "boxed", "difficulty": [9, 9], "end": 4}
    recs = problems.numina_records(rows, "numina_olympiads", flt, labels)
    # p1 no boxed; p2 other source; p4 difficulty 8; p5 past the first 4 olympiads rows
    assert [(r["id"], r["answer"]) for r in recs] == [("numina_olympiads-0", "\\frac{1}{2}"),
                                                      ("numina_olympiads-3", "x^{2}")]
    assert recs[0] == {"id": "numina_olympiads-0", "source": "numina_olympiads", "domain": "math",
                       "problem": "p0", "answer": "\\frac{1}{2}"}
    # a problem without a label is dropped, as pandas' .map(diff_dict) drops it
    assert [r["problem"] for r in problems.numina_records(rows, "n", {**flt, "end": None}, {"p0": 9})] == ["p0"]
    with pytest.raises(problems.BadSource, match="needs difficulty labels"):
        problems.numina_records(rows, "n", flt, None)
    # no difficulty filter (amc_aime-style bounds aside): every boxed row of the source
    assert len(problems.numina_records(rows, "n", {"source": "olympiads", "solution_contains": "boxed"})) == 4


def test_apps_rows_to_tests():
    rows = [
        {"problem_id": 4000, "question": "Print a+b.", "solutions": json.dumps(["print(1)"]),
         "input_output": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]}), "difficulty": "interview",
         "url": "u", "starter_code": ""},
        {"problem_id": 4001, "question": "Add.", "solutions": "[]", "difficulty": "introductory", "url": "u",
         "input_output": json.dumps({"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}),
         "starter_code": "def add(a, b):"},
        {"problem_id": 4002, "question": "No tests.", "solutions": "[]", "input_output": "", "difficulty": "x",
         "url": "u", "starter_code": ""},
    ]
    recs = problems.apps_records(rows, "apps")
    assert [r["id"] for r in recs] == ["apps-4000", "apps-4001"]
    assert recs[0]["tests"] == {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    # SkyThought's APPS prompt: the instruction by fn_name, no QUESTION/ANSWER wrapper (tests/test_prompts_golden.py)
    assert recs[0]["user_template"] == "code" and "QUESTION" not in recs[0]["problem"]
    assert recs[1]["tests"]["fn_name"] == "add" and recs[1]["problem"].endswith("\ndef add(a, b):")
    assert recs[1]["user_template"] == "code_call_based"


def test_taco_medium_filter_and_the_grader_runs_its_tests():
    from reproduce.stages.lib.grading import grade

    io_ = json.dumps({"inputs": ["2\n", "5\n"], "outputs": ["4\n", "25\n"]})
    rows = [{"question": "Square n.", "solutions": "[]", "starter_code": "", "input_output": io_,
             "difficulty": d, "raw_tags": "[]", "name": None, "source": "codeforces", "tags": "[]",
             "skill_types": "[]", "url": "u", "Expected Auxiliary Space": None, "time_limit": None,
             "date": None, "picture_num": None, "memory_limit": None, "Expected Time Complexity": None}
            for d in ("EASY", "MEDIUM", "MEDIUM_HARD", "MEDIUM")]
    recs = problems.taco_records(rows, "taco_medium", {"difficulty": "MEDIUM"})
    assert [r["id"] for r in recs] == ["taco_medium-1", "taco_medium-3"]
    assert len(problems.taco_records(rows, "taco_test", {})) == 4
    ok = grade({**recs[0], "response": "```python\nn = int(input())\nprint(n * n)\n```"})
    assert ok == (True, "passed")


def test_math500_aime_olympiadbench():
    m = problems.math500_records([{"problem": "1+1?", "solution": "\\boxed{2}", "answer": "2",
                                   "subject": "Algebra", "level": 1, "unique_id": "test/x.json"}], "math500")
    assert m == [{"id": "math500-0", "source": "math500", "domain": "math", "problem": "1+1?", "answer": "2"}]
    aime = problems.aime_records([
        {"id": 60, "problem": "a", "solution": "s", "answer": 204,
         "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1"},
        {"id": 61, "problem": "b", "solution": "s", "answer": 5,
         "url": "https://artofproblemsolving.com/wiki/index.php/2023_AIME_I_Problems/Problem_1"}], "aime24")
    assert [(r["id"], r["answer"]) for r in aime] == [("aime24-60", "204")]
    ob = problems.olympiadbench_records([
        {"id": 1606, "question": "Find x.", "solution": ["..."], "final_answer": ["$\\frac{3}{4}$"],
         "context": None, "modality": "Text-only", "difficulty": "Competition", "is_multiple_answer": False,
         "unit": None, "answer_type": "Numerical", "error": None, "question_type": "Open-ended",
         "subfield": "Algebra", "subject": "Math", "language": "English"},
        {"id": 1607, "question": "No answer.", "final_answer": []}], "olympiadbench_math_en")
    assert ob == [{"id": "olympiadbench_math_en-1606", "source": "olympiadbench_math_en", "domain": "math",
                   "problem": "Find x.", "answer": "\\frac{3}{4}"}]


def test_gpqa_shuffles_choices_and_keeps_the_gold_letter():
    rows = [{"Question": f"Q{i}?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
             "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "Record ID": f"rec{i}"} for i in range(12)]
    recs = problems.gpqa_records(rows, "gpqa_diamond")
    assert recs == problems.gpqa_records(rows, "gpqa_diamond")        # seeded: a rerun asks the same
    for r in recs:
        assert r["domain"] == "mcq" and r["id"].startswith("gpqa_diamond-rec")
        q, listing = r["problem"].split("\n")
        choices = dict(part.split(") ", 1) for part in listing.split(", "))
        assert sorted(choices) == ["A", "B", "C", "D"] and choices[r["answer"]] == "right"
    assert len({r["answer"] for r in recs}) > 1                        # the gold letter moves around


def _lcb_private(cases) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def test_livecodebench_stdin_functional_and_difficulty():
    stdin_row = {"question_title": "t", "question_content": "Print n+1.", "platform": "atcoder",
                 "question_id": "abc001_a", "contest_id": "abc001", "contest_date": "2023-05-01T00:00:00",
                 "starter_code": "", "difficulty": "easy",
                 "public_test_cases": json.dumps([{"input": "1\n", "output": "2\n", "testtype": "stdin"}]),
                 "private_test_cases": _lcb_private([{"input": "5\n", "output": "6\n", "testtype": "stdin"}]),
                 "metadata": "{}"}
    func_row = {**stdin_row, "question_id": "2777", "platform": "leetcode", "difficulty": "easy",
                "starter_code": "class Solution:\n    def add(self, a: int, b: List[int]) -> int:\n        ",
                "public_test_cases": json.dumps([{"input": "1\n[2, 3]", "output": "6", "testtype": "functional"}]),
                "private_test_cases": json.dumps([]), "metadata": json.dumps({"func_name": "add"})}
    hard_row = {**stdin_row, "question_id": "x", "difficulty": "hard"}
    recs = problems.livecodebench_records([stdin_row, func_row, hard_row], "livecodebench_easy", "easy")
    assert [r["id"] for r in recs] == ["livecodebench_easy-abc001_a", "livecodebench_easy-2777"]
    # SkyThought grades the private tests only, and asks without the starter code (map_to_example)
    assert recs[0]["tests"] == {"inputs": ["5\n"], "outputs": ["6\n"]} and recs[0]["user_template"] == "code"
    assert recs[1]["tests"] == {"fn_name": "add", "inputs": [], "outputs": []}
    assert recs[1]["user_template"] == "code_call_based" and recs[1]["problem"] == "Print n+1."


def test_livecodebench_refuses_pickles_that_import_code():
    evil = base64.b64encode(zlib.compress(pickle.dumps(pytest.raises))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        problems.decode_lcb_tests(evil)


def test_unknown_dataset_is_a_bad_source():
    with pytest.raises(problems.BadSource, match="no loader"):
        problems.load_hub_source({"name": "x", "dataset": "someone/else", "split": "train"})
    with pytest.raises(problems.BadSource, match="no loader"):
        problems.load_hub_benchmark({"name": "x", "dataset": "someone/else", "split": "test"})


def test_recipe_layout_keys_are_checked():
    """`files`, `format`, `gated`, `revision`: where a source's or benchmark's rows are (reproduce/stages/lib/hub.py)."""
    from reproduce.errors import UserError

    r = recipes.load()
    assert r["sources"][3]["files"] == ["test.jsonl"]
    gpqa = next(b for b in r["eval"]["benchmarks"] if b["name"] == "gpqa_diamond")
    assert gpqa["gated"] is True and gpqa["files"] == ["gpqa_diamond.csv"]
    with pytest.raises(UserError, match="sources.apps.files=.*non-empty list of paths"):
        recipes.load(sets=["sources.apps.files=test.jsonl"])
    import copy

    from reproduce import recipe_schema

    for key, value, accepted in (("format", "xml", "one of json, parquet, arrow, csv"),
                                 ("gated", "yes", "true or false"), ("revision", "", "a non-empty string")):
        bad = copy.deepcopy(r)
        bad["sources"][3][key] = value
        with pytest.raises(UserError, match=f"sources.apps.{key}=.*expected {accepted}"):
            recipe_schema.check(bad)
    assert "trust_remote_code" not in open(problems.__file__).read()


def test_science_only_with_published_traces():
    import copy

    from reproduce import recipe_schema
    from reproduce.errors import UserError

    r = recipes.load()
    still2 = next(s for s in r["sources"] if s["name"] == "still2")
    assert still2["traces"] == "published" and still2["domain"] == "science"
    bad = copy.deepcopy(r)
    next(s for s in bad["sources"] if s["name"] == "still2")["traces"] = "generate"
    with pytest.raises(UserError, match="science only with traces: published"):
        recipe_schema.check(bad)


def test_published_traces_cost_no_teacher_grader_or_rewrite():
    import copy

    from costmodel import estimates

    r = recipes.load()
    without = copy.deepcopy(r)
    without["sources"] = [s for s in without["sources"] if s.get("traces") != "published"]
    assert estimates.workload(r) == estimates.workload(without)
