"""Golden prompts: for fixture rows of every source and benchmark, the prompt our stages send equals the one
SkyThought's own code renders at the commit the recipe cites. SkyThought's code is the verbatim excerpt vendored
under tests/fixtures/skythought/ (each file names repo, commit and path), exec()ed here: our texts are never
compared with themselves.

The rows are made up, in each dataset's layout (columns as SkyThought's handlers read them: codeparrot/apps and
BAAI/TACO `input_output` JSON and `starter_code`; livecodebench/code_generation_lite public tests as JSON and
private tests as base64(zlib(pickle(json))), ST@init testing_util.py translate_private_test_cases; GPQA's
Question / Correct Answer / Incorrect Answer 1-3), with the awkward cases that part the prompts: empty vs real
starter code, fn_name with and without starter code, whitespace around GPQA answers.
"""
from __future__ import annotations

import base64
import json
import pickle
import random
import zlib
from pathlib import Path

import pytest
import yaml

from reproduce import recipe as recipes
from reproduce.stages import evaluate, generate
from reproduce.stages.lib import livecodebench_scorer, problems, prompts, protocol

FIXTURES = Path(__file__).parent / "fixtures" / "skythought"
SKY_T1 = "NovaSky-AI/Sky-T1-32B-Preview"
QWQ = "Qwen/QwQ-32B-Preview"


def skythought(name: str, **names) -> dict:
    """The namespace of a vendored SkyThought excerpt, executed with a stub base class and the names it uses."""
    ns = {"TaskHandler": object, "json": json, "random": random, "base64": base64, "zlib": zlib,
          "pickle": pickle, **names}
    exec(compile((FIXTURES / name).read_text(), str(FIXTURES / name), "exec"), ns)
    return ns


MODEL_UTILS = skythought("model_utils_0751518.py")
INIT = skythought("task_handlers_0751518.py")
PR25 = skythought("task_handlers_54a495f.py", MODEL_TO_NAME=MODEL_UTILS["MODEL_TO_NAME"])
PR44 = skythought("task_handlers_446e95a.py")
LCB_UTIL = skythought("testing_util_0751518.py")


def numina_7b():
    """ST@824b1cf's NUMINATaskHandler with its task config (the Sky-T1-7B distillation)."""
    import types

    config = yaml.safe_load((FIXTURES / "numina_824b1cf.yaml").read_text())
    handler = skythought("numina_handler_824b1cf.py")["NUMINATaskHandler"]()
    handler.task_config = types.SimpleNamespace(templating_parameters=config["templating_parameters"])
    return handler
INIT["has_test_type"] = LCB_UTIL["has_test_type"]


def their_chat(handler, rows: list[dict], system: str, **kw) -> list[list[dict]]:
    return handler().make_conversations([dict(r) for r in rows], system, **kw)


@pytest.fixture(scope="module")
def recipe():
    return recipes.load("sky-t1-32b-preview")


def our_generate_chat(recipe, records) -> list[list[dict]]:
    gen = recipe["generate"]
    return [generate.messages(r, gen.get("system_prompt"), gen["user_templates"]) for r in records]


def our_eval_chat(recipe, bench_name: str, records) -> list[list[dict]]:
    bench = next(b for b in recipe["eval"]["benchmarks"] if b["name"] == bench_name)
    ours = protocol.resolve(bench, recipe)["ours"]
    return [evaluate.prompt_messages(r, ours, ours["system_prompt"]) for r in records]


def users(chats) -> list[str]:
    return [chat[-1]["content"] for chat in chats]


# ---- the data file is SkyThought's text ----------------------------------------------------------------------

def test_prompts_yaml_is_what_skythought_renders():
    """Each prompts.yaml text equals the cited function's output with the body "{problem}"."""
    body = prompts.FIELD
    their = {
        "numina": INIT["NUMINATaskHandler"].generate_prompt(body),
        "numina_sky_t1_7b": numina_7b().generate_prompt(body),
        "apps_stdin": INIT["APPSTaskHandler"].generate_prompt({}, body, None),
        "apps_call_based": INIT["APPSTaskHandler"].generate_prompt({"fn_name": "f"}, body, None),
        "taco_stdin": INIT["TACOTaskHandler"].generate_prompt(body, None, None),
        "taco_call_based": INIT["TACOTaskHandler"].generate_prompt(body, None, "f"),
        "livecodebench_stdin": INIT["LiveCodeBenchTaskHandler"].generate_prompt({"prompt": body, "is_stdin": True}),
        "livecodebench_call_based": INIT["LiveCodeBenchTaskHandler"].generate_prompt({"prompt": body,
                                                                                      "is_stdin": False}),
        "math500": PR25["MathTaskHandler"].generate_prompt(body),
        "aime24": PR25["AIMETaskHandler"].generate_prompt(body, SKY_T1),
        "gpqa_diamond": INIT["GPQADiamondTaskHandler"].generate_prompt(body),
        "olympiadbench_math_en": PR44["OlympiadBenchMathTaskHandler"].generate_prompt(body),
        "qwen_cot": MODEL_UTILS["SYSTEM_PROMPT"][QWQ],
        "sky_t1_eval": MODEL_UTILS["SYSTEM_PROMPT"][SKY_T1],
        "sky_t1": skythought("prompts_0751518.py")["system_prompt"],
    }
    assert set(their) == set(prompts.published())
    for name, text in their.items():
        assert prompts.text(name) == text, name
        assert prompts.source(name).startswith("NovaSky-AI/SkyThought@"), name
    # the same two system prompts, as ST@HEAD's model_configs.yaml has them
    configs = yaml.safe_load((FIXTURES / "model_configs_0d190f1.yaml").read_text())["system_prompts"]
    assert configs["skythought"] == prompts.text("sky_t1") and configs["qwen_cot"] == prompts.text("qwen_cot")
    assert prompts.text("sky_t1").endswith("concise expression style and detail necessary step needed to reach the "
                                           "conclusion, formatted as follows: <|begin_of_solution|> {final formatted, "
                                           "precise, and clear solution} <|end_of_solution|> Now, try to solve the "
                                           "following question through the above guidelines:")


# ---- generate: the teacher's prompts (ST@init) -------------------------------------------------------------

APPS_ROWS = [   # codeparrot/apps columns (problem_id, question, solutions, input_output, difficulty, url, starter_code)
    {"problem_id": 0, "question": "Read n and print n squared.\n\n-----Input-----\nOne integer n.\n",
     "solutions": "[]", "input_output": json.dumps({"inputs": ["3\n"], "outputs": ["9\n"]}),
     "difficulty": "interview", "url": "u", "starter_code": ""},
    {"problem_id": 1, "question": "\nGiven a list, return its sum.\n\nExample 1:\nInput: [1,2]\nOutput: 3 ",
     "solutions": "[]", "input_output": json.dumps({"fn_name": "total", "inputs": [[[1, 2]]], "outputs": [3]}),
     "difficulty": "introductory", "url": "u", "starter_code": "class Solution:\n    def total(self, xs):\n        "},
]


def test_apps_stdin_and_call_based(recipe):
    records = problems.apps_records(APPS_ROWS, "apps")
    ours = our_generate_chat(recipe, records)
    their = their_chat(INIT["APPSTaskHandler"], APPS_ROWS, MODEL_UTILS["SYSTEM_PROMPT"][QWQ])
    assert ours == their
    assert "QUESTION" not in ours[0][1]["content"] and "stdin" not in ours[1][1]["content"]


TACO_ROWS = [   # BAAI/TACO columns as TACOTaskHandler reads them (question, starter_code, input_output)
    {"question": "Print the sum of two integers.\n", "starter_code": "", "difficulty": "MEDIUM",
     "input_output": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]})},
    {"question": "Return the number reversed. ", "starter_code": "def rev(n):\n\t", "difficulty": "MEDIUM",
     "input_output": json.dumps({"fn_name": "rev", "inputs": [[12]], "outputs": [21]})},
    {"question": "Return double.", "starter_code": "", "difficulty": "MEDIUM",          # fn_name, no starter code
     "input_output": json.dumps({"fn_name": "double", "inputs": [[2]], "outputs": [4]})},
    {"question": "Starter code, stdin tests.", "starter_code": "import sys\n", "difficulty": "MEDIUM",
     "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})},
]


def test_taco_with_and_without_starter_code(recipe):
    records = problems.taco_records(TACO_ROWS, "taco_medium", {"difficulty": "MEDIUM"})
    ours = our_generate_chat(recipe, records)
    assert ours == their_chat(INIT["TACOTaskHandler"], TACO_ROWS, MODEL_UTILS["SYSTEM_PROMPT"][QWQ])
    assert [u.split("\n")[-3] for u in users(ours)] == ["Use Standard Input format", "Use Call-Based format",
                                                        "Use Call-Based format", "Use Call-Based format"]
    assert not any("Generate an executable" in u for u in users(ours))     # TACO: the wrapper, no instruction


NUMINA_ROWS = [  # AI-MO/NuminaMath-CoT columns (source, problem, solution, messages)
    {"source": "amc_aime", "problem": "Find $x$ if $2x = 4$.", "solution": "So $x = \\boxed{2}$.", "messages": []},
    {"source": "amc_aime", "problem": " Let $f(x)=x^2$. Find $f(3)$.\n", "solution": "$\\boxed{9}$", "messages": []},
]


def test_numina(recipe):
    records = problems.numina_records(NUMINA_ROWS, "numina_amc_aime", {"source": "amc_aime"})
    ours = our_generate_chat(recipe, records)
    assert ours == their_chat(INIT["NUMINATaskHandler"], NUMINA_ROWS, MODEL_UTILS["SYSTEM_PROMPT"][QWQ])
    assert ours[0][1]["content"].startswith("Return your final response within \\boxed{{}}. ")  # as ST@init sent it


def test_numina_sky_t1_7b_is_formatted():
    """Sky-T1-7B's traces came from the refactored SkyThought, which formats the template: \\boxed{}."""
    recipe = recipes.load("sky-t1-7b")
    records = problems.numina_records(NUMINA_ROWS, "numina_amc_aime", {"source": "amc_aime"})
    ours = our_generate_chat(recipe, records)
    assert users(ours) == [numina_7b().generate_prompt(row["problem"]) for row in NUMINA_ROWS]
    assert ours[0][0]["content"] == MODEL_UTILS["SYSTEM_PROMPT"][QWQ]


# ---- evaluate: the benchmarks' prompts (the commits that made the published scores) -------------------------

def test_math500_aime_olympiadbench_user_turns(recipe):
    math_rows = [{"problem": "What is $1+1$?", "answer": "2"}, {"problem": "Solve\n$x^2=4$ for $x>0$. ", "answer": "2"}]
    recs = problems.math500_records([{**r, "solution": "", "subject": "", "level": 1, "unique_id": ""}
                                     for r in math_rows], "math500")
    assert users(our_eval_chat(recipe, "math500", recs)) == \
        users(their_chat(PR25["MathTaskHandler"], math_rows, "S"))
    aime_rows = [{"id": 60, "problem": "Find the remainder when $2^{10}$ is divided by 7.", "solution": "",
                  "answer": "2", "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/1"}]
    recs = problems.aime_records(aime_rows, "aime24")
    their = PR25["AIMETaskHandler"]().make_conversations([dict(r) for r in aime_rows], "S", model=SKY_T1)
    assert users(our_eval_chat(recipe, "aime24", recs)) == users(their)
    ob_rows = [{"id": 1, "question": "Compute $\\sqrt{16}$.", "final_answer": ["$4$"]}]
    recs = problems.olympiadbench_records(ob_rows, "olympiadbench_math_en")
    assert users(our_eval_chat(recipe, "olympiadbench_math_en", recs)) == \
        users(their_chat(PR44["OlympiadBenchMathTaskHandler"], ob_rows, "S"))


GPQA_ROWS = [   # Idavidrein/gpqa gpqa_diamond columns SkyThought reads, with the whitespace the real rows carry
    {"Question": f"Which particle is a lepton? (variant {i})\n", "Correct Answer": " electron",
     "Incorrect Answer 1": "proton ", "Incorrect Answer 2": "neutron", "Incorrect Answer 3": "pion",
     "Record ID": f"rec{i}"} for i in range(6)]


def test_gpqa_user_turns_and_letters(recipe):
    recs = problems.gpqa_records(GPQA_ROWS, "gpqa_diamond", seed=0)
    random.seed(0)          # SkyThought shuffles with the global RNG: seeded alike, it draws the same orders
    rows = [dict(r) for r in GPQA_ROWS]
    their = INIT["GPQADiamondTaskHandler"]().make_conversations(rows, "S")
    assert users(our_eval_chat(recipe, "gpqa_diamond", recs)) == users(their)
    assert [r["answer"] for r in recs] == [row["Answer"] for row in rows]   # make_conversations sets the letter


def _private(cases) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


LCB_ROWS = [    # livecodebench/code_generation_lite columns
    {"question_title": "A", "question_content": "You are given N.\nPrint N+1.\n\nInput\n\nN\n", "platform": "atcoder",
     "question_id": "abc300_a", "contest_id": "abc300", "contest_date": "2023-04-29T00:00:00", "starter_code": "",
     "difficulty": "easy",
     "public_test_cases": json.dumps([{"input": "1\n", "output": "2\n", "testtype": "stdin"}]),
     "private_test_cases": _private([{"input": "5\n", "output": "6\n", "testtype": "stdin"}]), "metadata": "{}"},
    {"question_title": "B", "question_content": "Return a + sum(b).\n \nExample 1:\n\nInput: a = 1, b = [2,3]\n",
     "platform": "leetcode", "question_id": "2777", "contest_id": "w1", "contest_date": "2023-05-01T00:00:00",
     "starter_code": "class Solution:\n    def add(self, a: int, b: List[int]) -> int:\n        ", "difficulty": "easy",
     "public_test_cases": json.dumps([{"input": "1\n[2, 3]", "output": "6", "testtype": "functional"}]),
     "private_test_cases": _private([{"input": "0\n[]", "output": "0", "testtype": "functional"}]),
     "metadata": json.dumps({"func_name": "add"})},
]


def _their_lcb_rows():
    rows = []
    for row in LCB_ROWS:     # what LiveCodeBenchTaskHandler.load_and_filter_dataset does to each row
        row = {**row, "private_test_cases": LCB_UTIL["translate_private_test_cases"](row["private_test_cases"])}
        rows.append(LCB_UTIL["map_to_example"](row))
    return rows


def test_livecodebench_stdin_and_functional_user_turns_and_tests(recipe):
    recs = problems.livecodebench_records(LCB_ROWS, "livecodebench_easy", "easy")
    their_rows = _their_lcb_rows()
    their = their_chat(INIT["LiveCodeBenchTaskHandler"], their_rows, "S")
    assert users(our_eval_chat(recipe, "livecodebench_easy", recs)) == users(their)
    assert "class Solution" not in users(their)[1]                     # no starter code in the prompt
    # graded on SkyThought's tests: the private ones, stdin vs functional from the public ones
    assert [r["lcb"]["cases"] for r in recs] == [t["test"] for t in their_rows]
    assert [r["lcb"]["is_stdin"] for r in recs] == [t["is_stdin"] for t in their_rows] == [True, False]


def test_eval_system_prompt_is_novasky_and_the_protocol_says_how_it_differs(recipe):
    """The student is asked with what it was trained with (NovaSky's sky_t1); SkyThought evaluated Sky-T1 with the
    same words indented by its source's line continuations: the protocol computes and says exactly that."""
    bench = next(b for b in recipe["eval"]["benchmarks"] if b["name"] == "math500")
    p = protocol.resolve(bench, recipe)
    assert p["ours"]["system_prompt"] == prompts.text("sky_t1") == recipe["convert"]["system_prompt"]
    assert p["published"]["system_prompt"] == MODEL_UTILS["SYSTEM_PROMPT"][SKY_T1]
    assert p["differs"] == ["system_prompt"]                       # the template is SkyThought's, byte for byte
    assert p["differences"]["system_prompt"].startswith("whitespace only")
    same = protocol.resolve(bench, {**recipe, "eval": {**recipe["eval"], "system_prompt": prompts.text("sky_t1_eval")}})
    assert same["differs"] == []
    other = protocol.resolve({**bench, "template": "{problem}\nPut the answer in \\boxed{{}}."}, recipe)
    assert other["differences"]["template"].startswith("from char 0: ours '{problem}")


def test_the_eval_table_says_identical_only_where_it_is(recipe):
    from reproduce.stages.lib import eval_report

    def bench_result(bench, rec):
        return {"protocol": protocol.resolve(bench, rec), "by_scorer": {}, "ours_scorer": "x", "scorer": "x",
                "score": 1.0, "se": None, "published": None, "delta": None, "samples": 1, "problems": 1,
                "settings": {"n": 1}}
    same = {**recipe, "eval": {**recipe["eval"], "system_prompt": prompts.text("sky_t1_eval")}}
    benches = {b["name"]: b for b in recipe["eval"]["benchmarks"]}
    result = {"model": "m", "benchmarks": {"math500": bench_result(benches["math500"], same),
                                          "aime24": bench_result(benches["aime24"], recipe)}}
    table = eval_report.table_md(result)
    assert "- math500: identical" in table
    assert "- aime24: system_prompt: whitespace only: ours 1310 chars, published 1454" in table
    assert "| aime24 | `sky_t1` [`sky_t1_eval`] |" in table


# ---- LiveCodeBench: SkyThought's comparison, ported -----------------------------------------------------------

@pytest.mark.parametrize("case", [
    {"input": "1\n[2, 3]", "output": "6"}, {"input": "\"ab\"\n3", "output": "\"abab\""},
    {"input": "a = 1, b = 2.5", "output": "[1, 2]"}, {"input": "n = \"x\"", "output": "true"},
    {"input": "[[1,2],[3]]\n-4\nword", "output": "  text  "},
])
def test_functional_inputs_parse_as_skythought_parses_them(case):
    assert livecodebench_scorer.prepare_functional(case) == \
        tuple(LCB_UTIL["prepare_test_input_output_functional"](case, True))


def test_post_process_code_is_skythoughts():
    for code in ("print(1)\n", "x = 1</code>junk", "<code>print(2)```tail", "```python\nprint(3)"):
        assert livecodebench_scorer.post_process_code(code) == LCB_UTIL["post_process_code"](code)


def test_lcb_scores_private_tests_with_skythoughts_comparison():
    recs = problems.livecodebench_records(LCB_ROWS, "livecodebench_easy", "easy")
    stdin, func = recs
    # passes the private test (5 -> 6) while printing spaces around: SkyThought strips both sides
    assert livecodebench_scorer.score("```python\nprint('  ' + str(int(input()) + 1) + ' ')\n```", stdin) == \
        (True, "passed")
    # only the private tests count: a program right on them and wrong on the public one passes
    assert livecodebench_scorer.score("```python\nprint(6)\n```", stdin)[0] is True
    # SkyThought compares text exactly: 6.0 is not 6 (our own grader's tolerance would not matter here either)
    assert livecodebench_scorer.score("```python\nprint(6.0)\n```", stdin)[0] is False
    # the fence must be ```lang\n (SkyThought's has_code); ```python3 is not code to it
    assert livecodebench_scorer.score("```python3\nprint(6)\n```", stdin) == (False, "no code")
    # functional: the function named before the code's first "(", called at module level, == the expected value
    assert livecodebench_scorer.score("```python\ndef add(a, b):\n    return a + sum(b)\n```", func) == \
        (True, "passed")
    ok, reason = livecodebench_scorer.score(
        "```python\nclass Solution:\n    def add(self, a, b):\n        return a + sum(b)\n```", func)
    assert not ok and "KeyError" in reason            # a method is not found: SkyThought's rule, ported as is


def test_a_recipe_without_the_template_a_loader_picked_is_told_which():
    from reproduce.stages.lib.common import BadInput

    record = problems.taco_records(TACO_ROWS[:1], "taco_test", {})[0]
    with pytest.raises(BadInput, match="no user template 'taco' for taco_test \\(code\\).*it has math, code"):
        generate.messages(record, None, {"math": "{problem}", "code": "{problem}"})
