"""The filter stage program end to end: standalone and pipeline modes, resume, bad input."""
import json
import subprocess
import sys

import pytest
import yaml

from reproduce import recipe as recipes
from reproduce.stages import filter as stage

ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
TESTS = {"inputs": ["1 2\n"], "outputs": ["3\n"]}


def traces(prefix="", n_math=6):
    out = []
    for i in range(n_math):
        out.append({"id": f"{prefix}m{i}", "source": "numina_math", "domain": "math", "answer": r"\frac{1}{2}",
                    "response": r"so \boxed{0.5}" if i % 2 == 0 else r"\boxed{3}"})
    out.append({"id": f"{prefix}c0", "source": "apps", "domain": "code", "tests": TESTS, "response": ADD})
    out.append({"id": f"{prefix}c1", "source": "taco_test", "domain": "code", "tests": json.dumps(TESTS),
                "response": ADD.replace("a + b", "a * b + 5")})
    out.append({"id": f"{prefix}c2", "source": "apps", "domain": "code", "tests": TESTS,
                "response": "```python\nwhile True:\n    pass\n```"})
    out.append({"id": f"{prefix}q0", "source": "gpqa", "domain": "mcq", "answer": "B", "response": "answer is (B)"})
    return out


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_standalone_grades_and_resumes(tmp_path, capsys):
    src, out = tmp_path / "traces.jsonl", tmp_path / "out" / "graded.jsonl"
    write_jsonl(src, traces())
    assert stage.main([str(src), "-o", str(out), "--workers", "1", "--code-timeout-s", "1"]) == 0
    graded = {r["id"]: r for r in read_jsonl(out)}
    assert len(graded) == 10
    assert [graded[f"m{i}"]["correct"] for i in range(6)] == [True, False] * 3
    assert graded["c0"]["correct"] and graded["c0"]["reason"] == "passed"
    assert graded["c1"]["reason"].startswith("wrong output")
    assert graded["c2"]["reason"] == "timeout: test 1 of 1"
    assert graded["q0"]["correct"]
    assert graded["m0"]["response"] == r"so \boxed{0.5}", "records keep their fields"

    # Resume: only the new ids are graded, nothing is graded twice.
    write_jsonl(src, traces() + traces(prefix="new-", n_math=2))
    capsys.readouterr()
    assert stage.main([str(src), "-o", str(out), "--workers", "1", "--code-timeout-s", "1"]) == 0
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 16
    assert "graded 6 " in capsys.readouterr().err


def test_resume_repairs_a_torn_last_line(tmp_path):
    src, out = tmp_path / "traces.jsonl", tmp_path / "graded.jsonl"
    records = [r for r in traces() if r["domain"] != "code"]
    write_jsonl(src, records)
    out.write_text(json.dumps({**records[0], "correct": True, "reason": "passed"}) + "\n" + '{"id": "m1", "cor')
    assert stage.main([str(src), "-o", str(out), "--workers", "1"]) == 0
    ids = [r["id"] for r in read_jsonl(out)]          # every line parses again
    assert sorted(ids) == sorted(r["id"] for r in records)


def test_pipeline_mode_with_workers(tmp_path):
    artifacts = tmp_path / "artifacts"
    records = traces()
    write_jsonl(artifacts / "generate" / "shard-00000.jsonl", records[:5])
    write_jsonl(artifacts / "generate" / "shard-00001.jsonl", records[5:])
    resolved = recipes.load("sky-t1-32b-preview", sets=["filter.code_timeout_s=1", "filter.cpus=2",
                                                        "filter.grade_after_rewrite=[]"], scale="smoke")
    (artifacts / "recipe.yaml").write_text(yaml.safe_dump(resolved))

    argv = ["--recipe", str(artifacts / "recipe.yaml"), "--artifacts", str(artifacts)]
    assert stage.main(argv) == 0
    kept = read_jsonl(artifacts / "filter" / "kept.jsonl")
    rejected = read_jsonl(artifacts / "filter" / "rejected.jsonl")
    assert sorted(r["id"] for r in kept) == ["c0", "m0", "m2", "m4", "q0"]
    assert all(r["correct"] for r in kept) and not any(r["correct"] for r in rejected)
    summary = json.loads((artifacts / "filter" / "summary.json").read_text())
    assert (summary["records"], summary["kept"], summary["rejected"]) == (10, 5, 5)
    assert summary["by_source"]["apps"] == {"kept": 1, "rejected": 1}
    assert summary["by_domain"]["math"] == {"kept": 3, "rejected": 3}
    assert summary["reasons"] == {"passed": 5, "wrong answer": 3, "wrong output": 1, "timeout": 1}
    assert summary["workers"] == 2 and summary["limits"]["code_timeout_s"] == 1
    assert summary["records_per_s"] > 0 and summary["wall_s"] > 0
    assert summary["mean_cpu_s_per_code"] > 0 and "mean_cpu_s_per_math" in summary
    assert "rlimits" in summary["sandbox_isolation"]

    # A second run grades nothing and keeps the totals.
    assert stage.main(argv) == 0
    again = json.loads((artifacts / "filter" / "summary.json").read_text())
    assert (again["records"], again["kept"], again["graded_this_run"]) == (10, 5, 0)
    assert len(read_jsonl(artifacts / "filter" / "kept.jsonl")) == 5


@pytest.mark.parametrize("argv, message", [
    (["missing.jsonl", "-o", "x.jsonl"], "is not a file"),
    (["in.jsonl"], "needs INPUT.jsonl and -o"),
    (["--artifacts", "."], "needs both --recipe and --artifacts"),
    (["in.jsonl", "-o", "x.jsonl", "--workers", "0"], "--workers 0"),
    (["in.jsonl", "-o", "x.jsonl", "--code-timeout-s", "-1"], "--code-timeout-s -1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": 1, "domain": "mcq", "answer": "A", "response": ""}) + "\n")
    assert stage.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_json_names_the_line(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "domain": "mcq", "answer": "A", "response": ""}) + "\n{not json\n")
    assert stage.main([str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert f"{src}:2: not a JSON line" in capsys.readouterr().err


def test_pipeline_without_traces(tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text("filter: {cpus: 1}\n")
    assert stage.main(["--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path)]) == 2
    assert "run the generate stage first" in capsys.readouterr().err


def test_runs_as_a_program(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [{"id": "q", "domain": "mcq", "answer": "C", "response": r"\boxed{C}"}])
    help_text = subprocess.run([sys.executable, "-m", "reproduce.stages.filter", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--recipe" in help_text and "--workers" in help_text
    done = subprocess.run([sys.executable, "-m", "reproduce.stages.filter", str(src), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_jsonl(out)[0]["correct"] is True


def test_code_is_kept_for_grading_after_the_rewrite_as_novasky_did(tmp_path):
    artifacts = tmp_path / "artifacts"
    write_jsonl(artifacts / "generate" / "shard-00000.jsonl", traces())
    resolved = recipes.load("sky-t1-32b-preview", sets=["filter.cpus=1"], scale="smoke")
    assert resolved["filter"]["grade_after_rewrite"] == ["code"] and resolved["rewrite"]["recheck"]
    (artifacts / "recipe.yaml").write_text(yaml.safe_dump(resolved))
    assert stage.main(["--recipe", str(artifacts / "recipe.yaml"), "--artifacts", str(artifacts)]) == 0
    kept = read_jsonl(artifacts / "filter" / "kept.jsonl")
    code = [r for r in kept if r["domain"] == "code"]
    assert code and all(r["correct"] is None and r["reason"] == stage.DEFERRED for r in code)
    assert all(r["domain"] != "code" for r in read_jsonl(artifacts / "filter" / "rejected.jsonl"))
    assert all(r["correct"] for r in kept if r["domain"] != "code")  # math and mcq still graded here
