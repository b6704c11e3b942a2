"""The eval stage end to end on tiny local models (stage environment: torch, transformers)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from reproduce import recipe as recipes  # noqa: E402
from reproduce.stages import evaluate, generate, problems, smoke_data, tinymodel  # noqa: E402

BENCHES = "math500,gpqa_diamond,livecodebench_easy"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    recipe = recipes.load(scale="smoke")
    (root / "recipe.yaml").write_text(recipes.dump(recipe))
    # A model that has learnt the right answers to 2 problems of each benchmark, asked as evaluate asks them
    # (the student's system prompt, the recipe's templates): it must score well, the untrained one 0.
    pairs = []
    for bench in recipe["eval"]["benchmarks"]:
        if bench["name"] in BENCHES.split(","):
            for rec in problems.load_benchmark(bench, "smoke", limit=2):
                msgs = generate.messages(rec, recipe["convert"]["system_prompt"], recipe["generate"]["user_templates"])
                pairs.append((msgs, smoke_data.reference_responses(rec)[0]))
    taught = tinymodel.build_tiny_model(root / "taught", pairs, steps=200)
    untrained = tinymodel.build_tiny_model(root / "artifacts" / "sft" / "model")
    return root, taught, untrained


def _run(root, *extra):
    return evaluate.main(["--recipe", str(root / "recipe.yaml"), "--artifacts", str(root / "artifacts"),
                          "--benchmarks", BENCHES, "--limit", "2", *extra])


def test_taught_model_scores_and_the_table_compares_with_published(setup):
    root, taught, _ = setup
    assert _run(root, "--model", str(taught)) == 0
    scores = json.loads((root / "artifacts" / "eval" / "scores.json").read_text())
    b = scores["benchmarks"]
    assert list(b) == BENCHES.split(",")
    assert b["math500"]["samples"] == 2 and b["gpqa_diamond"]["samples"] == 2 * 8     # n=8 at T=0.7
    assert b["math500"]["score"] == 100.0 and b["livecodebench_easy"]["score"] == 100.0  # greedy recites
    assert b["gpqa_diamond"]["score"] >= 50
    assert b["math500"]["published"] == 86.4 and b["math500"]["delta"] == pytest.approx(100 - 86.4)
    table = (root / "artifacts" / "eval" / "table.md").read_text()
    assert "| math500 | 100.0 | 86.4 | +13.6 | 2 (2 x 1) | T=0, top_p=1, n=1, max_tokens=64 |" in table
    assert "gpqa_diamond" in table and "Command: `python -m reproduce.stages.evaluate" in table
    samples = [json.loads(x) for x in (root / "artifacts" / "eval" / "gpqa_diamond.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and all({"response", "correct", "reason", "sample"} <= set(s) for s in samples)
    summary = json.loads((root / "artifacts" / "eval" / "summary.json").read_text())
    assert summary["samples"] == 2 + 16 + 2 and summary["tokens_per_s"] > 0


def test_default_model_is_sft_output_and_rerun_skips_scored(setup, capsys):
    root, _, _ = setup
    assert _run(root) == 0                                   # the untrained "sft/model": scores 0
    scores = json.loads((root / "artifacts" / "eval" / "scores.json").read_text())
    assert scores["model"].endswith("sft/model")
    assert all(v["score"] == 0.0 for v in scores["benchmarks"].values())
    capsys.readouterr()
    assert _run(root) == 0
    assert capsys.readouterr().err.count("already scored") == 3


def test_bad_input(setup, tmp_path, capsys):
    root, _, _ = setup
    assert evaluate.main(["--recipe", str(root / "recipe.yaml"), "--artifacts", str(tmp_path)]) == 2
    assert "no model at" in capsys.readouterr().err
    assert _run(root, "--benchmarks", "mmlu") == 2
    assert "--benchmarks mmlu: expected names from math500" in capsys.readouterr().err
