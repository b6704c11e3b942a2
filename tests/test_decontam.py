"""Decontamination: planted benchmark overlaps are dropped from the training set, with their counts."""
from __future__ import annotations

import json

import pytest
import yaml

from reproduce.stages import convert
from reproduce.stages.lib import decontam, problems

AIME = ("Let $x,y$ and $z$ be positive real numbers that satisfy the following system of equations: "
        "$\\log_2\\left({x \\over yz}\\right) = {1 \\over 2}$. Find the value of $|\\log_2(x^4y^3z^2)|$.")
MATH = ("If $f(x) = \\dfrac{3x-2}{x-2}$, what is the value of $f(-2) + f(-1) + f(0)$? "
        "Express your answer as a common fraction.")
SHORT = "Compute $\\dbinom{8}{4}$."
BENCH = {"aime24": [("aime24-60", AIME)], "math500": [("math500-7", MATH), ("math500-9", SHORT)]}

PLANTED = {
    # copies whose spacing, case and LaTeX spacing were retyped
    "retyped": "let  $x , y$ AND $z$ be positive real numbers that satisfy the following system of equations:\n"
               "$\\log_2 \\left( {x \\over yz} \\right)={1\\over 2}$.  find the value of $|\\log_2 (x^4 y^3 z^2)|$.",
    "latex_spacing": "If $f(x)=\\frac{3x-2}{x-2}$,\\; what is the value of $f(-2)+f(-1)+f(0)$?\\quad "
                     "Express your answer as a common fraction.",
    "embedded": "Solve this. The value we want: what is the value of $f(-2) + f(-1) + f(0)$? Express your answer "
                "as a common fraction. Show your work.",
    "short_exact": "COMPUTE  $\\dbinom{8}{4}$ .",
}
CLEAN = ["What is the sum of the first 100 positive integers?",
         "Compute $\\dbinom{9}{4}$.",                      # a short problem that differs: kept
         "Find the value of $x$ such that $2x + 3 = 11$."]


def test_normalize_ignores_case_whitespace_and_latex_spacing():
    a = "Find $x^2 + 1$ when $x = \\dfrac{1}{2}$,\\quad  and \\left( a , b \\right)."
    b = "find x^2+1 when x=\\frac {1} {2},and (a,b)."
    assert decontam.normalize(a) == decontam.normalize(b) == "find x^2+1 when x=\\frac{1}{2},and(a,b)."


def test_index_finds_each_planted_copy_and_nothing_clean():
    index = decontam.BenchmarkIndex(BENCH, ngram=8, common_ngram_problems=0)
    hits = {k: index.match(v) for k, v in PLANTED.items()}
    assert hits["retyped"].benchmark == "aime24" and hits["retyped"].how == "ngram"
    assert hits["latex_spacing"].benchmark_id == "math500-7" and hits["latex_spacing"].how == "exact"
    assert hits["embedded"].benchmark_id == "math500-7" and hits["embedded"].ngram == \
        "what is the value of f 2 f"
    assert hits["short_exact"] == decontam.Hit("math500", "math500-9", "exact", None)
    assert [index.match(t) for t in CLEAN] == [None, None, None]


def test_boilerplate_ngrams_match_nothing_but_exact_copies_still_do():
    phrase = "The input is given from Standard Input in the following format:"
    bench = {"lcb": [(f"lcb-{i}", f"Task {i}: print {i} things. {phrase} N") for i in range(6)]}
    index = decontam.BenchmarkIndex(bench, ngram=8, common_ngram_problems=5)
    assert index.boilerplate > 0
    assert index.match(f"Read two numbers and add them. {phrase} A B") is None       # shares only boilerplate
    assert index.match(f"TASK 3:  print 3 things. {phrase}  N").how == "exact"
    plain = decontam.BenchmarkIndex(bench, ngram=8, common_ngram_problems=0)        # open-r1's rule
    assert plain.match(f"Read two numbers and add them. {phrase} A B").how == "ngram"


def test_near_duplicates_are_deterministic():
    base = ("A bag has 5 red balls and 7 blue balls. Two balls are drawn without replacement. "
            "What is the probability that both are red?")
    near = decontam.NearDuplicates(0.8)
    assert near.seen(base) is False
    assert near.seen(base.replace("drawn", "picked").upper()) is True    # one word changed: Jaccard ~0.83
    assert near.seen("How many positive divisors does 3600 have?") is False
    assert near.seen(base.replace("5 red", "9 red").replace("7 blue", "2 blue")) is False  # a new problem
    one, other = decontam.NearDuplicates(0.8), decontam.NearDuplicates(0.8)
    ws = decontam.words(base)
    assert one.signature(one.shingles(ws)) == other.signature(other.shingles(ws))  # CRC32, not salted hash()


def _record(i, source, user):
    return {"id": f"{source}-{i}", "source": source, "domain": "math", "recheck_correct": True,
            "prompt": f"<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\n"
                      f"Return your final response within \\boxed{{}}. {user}<|im_end|>\n<|im_start|>assistant\n",
            "response": f"trace {i}", "rewritten": f"<|begin_of_thought|> {i} <|end_of_thought|> \\boxed{{{i}}}"}


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    """A recipe with two benchmarks whose problems are BENCH (the hub loader is replaced by them)."""
    a = tmp_path / "A"
    (a / "rewrite").mkdir(parents=True)
    recipe = {"scale": "full",
              "generate": {"user_templates": {"math": "Return your final response within \\boxed{{}}. {problem}"}},
              "convert": {"dataset_name": "Sky-T1", "system_prompt": "S", "dedupe": True,
                          "decontaminate": {"ngram": 8, "common_ngram_problems": 0, "near_duplicates": 0.8}},
              "eval": {"benchmarks": [{"name": "aime24", "dataset": "x", "domain": "math"},
                                      {"name": "math500", "dataset": "y", "domain": "math"}]}}
    (a / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.setattr(problems, "load_hub_benchmark", lambda b: [
        {"id": pid, "problem": text, "domain": "math", "source": b["name"]} for pid, text in BENCH[b["name"]]])
    return a


def _convert(a, records):
    (a / "rewrite" / "rewritten.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert convert.main(["--recipe", str(a / "recipe.yaml"), "--artifacts", str(a)]) == 0
    return (json.loads((a / "convert" / "train.json").read_text()),
            json.loads((a / "convert" / "summary.json").read_text()))


def test_convert_drops_planted_overlaps_and_reports_counts(artifacts, capsys):
    records = [_record(0, "numina_olympiads", PLANTED["retyped"]),
               _record(1, "numina_math", PLANTED["latex_spacing"]),
               _record(2, "numina_math", PLANTED["embedded"]),
               _record(3, "numina_amc_aime", PLANTED["short_exact"])]
    records += [_record(10 + i, "numina_math", t) for i, t in enumerate(CLEAN)]
    records.append(_record(20, "numina_math", CLEAN[0] + " Explain."))           # near-duplicate: Jaccard 0.9
    train, summary = _convert(artifacts, records)
    users = [r["conversations"][0]["value"] for r in train]
    assert users == [f"Return your final response within \\boxed{{}}. {t}" for t in CLEAN]  # the user turn only
    d = summary["decontamination"]
    assert summary["contaminated"] == d["contaminated"] == 4 and summary["near_duplicates"] == 1
    assert summary["records_out"] == 3 and d["checked"] == 8 and d["kept"] == 3
    assert d["by_source"]["numina_math"] == {"checked": 6, "contaminated": 2, "near_duplicates": 1, "kept": 3}
    assert d["by_source"]["numina_olympiads"]["contaminated"] == 1
    assert d["by_benchmark"] == {"aime24": {"exact": 0, "ngram": 1, "total": 1},
                                 "math500": {"exact": 2, "ngram": 1, "total": 3}}
    assert d["source_x_benchmark"]["numina_math"] == {"math500": 2}
    assert d["benchmark_problems"] == {"aime24": 1, "math500": 2} and d["ngram"] == 8
    dropped = [json.loads(x) for x in (artifacts / "convert" / "dropped.jsonl").read_text().splitlines()]
    assert {x["id"] for x in dropped} == {"numina_olympiads-0", "numina_math-1", "numina_math-2",
                                          "numina_amc_aime-3", "numina_math-20"}
    assert "4 overlap a benchmark, 1 near-duplicates" in capsys.readouterr().out


def test_off_keeps_everything_and_bad_config_is_one_line(artifacts, capsys):
    recipe = yaml.safe_load((artifacts / "recipe.yaml").read_text())
    recipe["convert"]["decontaminate"]["enabled"] = False
    (artifacts / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    train, summary = _convert(artifacts, [_record(0, "numina_math", PLANTED["latex_spacing"])])
    assert len(train) == 1 and "decontamination" not in summary
    recipe["convert"]["decontaminate"] = {"ngrams": 8}
    (artifacts / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert convert.main(["--recipe", str(artifacts / "recipe.yaml"), "--artifacts", str(artifacts)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "convert.decontaminate.ngrams: unknown; expected enabled, ngram," in err


def test_smoke_recipe_screens_against_its_own_benchmarks(tmp_path):
    """Smoke scale: the benchmarks come from smoke_data, as evaluate reads them; a copy is caught."""
    from reproduce import recipe as recipes

    recipe = recipes.load(scale="smoke")
    screen = decontam.screen_for(recipe)
    bench = recipe["eval"]["benchmarks"][0]
    copy = problems.load_benchmark(bench, "smoke")[1]["problem"]
    assert screen({"id": "t-1", "source": "numina_math", "domain": "math"}, "  " + copy.upper()) == "contaminated"
    assert screen.report()["by_benchmark"][bench["name"]]["exact"] == 1


def test_export_writes_the_files_convert_reads(artifacts, tmp_path):
    assert decontam.main(["export", "--recipe", str(artifacts / "recipe.yaml"), "--artifacts", str(artifacts)]) == 0
    rows = [json.loads(x) for x in (artifacts / "benchmarks" / "math500.jsonl").read_text().splitlines()]
    assert rows == [{"id": "math500-7", "problem": MATH}, {"id": "math500-9", "problem": SHORT}]
    recipe = yaml.safe_load((artifacts / "recipe.yaml").read_text())
    found = decontam.benchmark_problems({**recipe, "eval": {"benchmarks": [{"name": "math500", "dataset": "zz"}]}},
                                        artifacts)          # read from the file: the unknown dataset is not loaded
    assert found == {"math500": [("math500-7", MATH), ("math500-9", SHORT)]}
