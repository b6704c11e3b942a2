"""The eval stage end to end on tiny local models (stage environment: torch, transformers)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from reproduce import recipe as recipes  # noqa: E402
from reproduce.stages import evaluate  # noqa: E402
from reproduce.stages.lib import problems, protocol  # noqa: E402
from reproduce.stages.smoke import smoke_data, tinymodel  # noqa: E402

BENCHES = "math500,gpqa_diamond,livecodebench_easy"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    recipe = recipes.load(scale="smoke")
    (root / "recipe.yaml").write_text(recipes.dump(recipe))
    # A model that has learnt the right answers to 2 problems of each benchmark, asked as evaluate asks them
    # (the student's system prompt, the published protocol's templates): it must score well, the untrained one 0.
    pairs = []
    for bench in recipe["eval"]["benchmarks"]:
        if bench["name"] in BENCHES.split(","):
            ours = protocol.resolve(bench, recipe)["ours"]
            for rec in problems.load_benchmark(bench, "smoke", limit=2):
                msgs = evaluate.prompt_messages(rec, ours, recipe["convert"]["system_prompt"])
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
    # both graders: SkyThought's math_equal (the published scorer, the headline) and math-verify (ours)
    m = b["math500"]
    assert m["scorer"] == "math_equal" and m["ours_scorer"] == "math_verify"
    assert m["by_scorer"]["math_verify"]["score"] == 100.0 and m["disagreement"] == {"samples": 0, "fraction": 0.0}
    assert m["published"] == 86.4 and m["delta"] == pytest.approx(100 - 86.4)
    assert m["se"] == 0.0 and m["se_published"] == pytest.approx(100 * (0.864 * 0.136 / 2) ** 0.5, abs=0.01)
    assert m["beyond_2se"] is False            # +13.6 with 2 problems: well inside 2 SE of the difference
    g = b["gpqa_diamond"]
    assert g["scorer"] == "last_letter" and g["se"] is not None and g["se_sampling"] is not None
    assert 0 <= g["disagreement"]["fraction"] <= 1
    lcb = b["livecodebench_easy"]    # SkyThought's comparison (the headline) and our lenient one: both pass here
    assert lcb["scorer"] == "lcb_unit_tests" and lcb["disagreement"] == {"samples": 0, "fraction": 0.0}
    # smoke: 64 tokens, published 32,768; the system prompt is NovaSky's training text, SkyThought's eval had it
    # indented (test_prompts_golden.py)
    assert m["protocol"]["differs"] == ["system_prompt", "max_tokens"]
    assert m["protocol"]["sources"]["template"].startswith("NovaSky-AI/SkyThought@54a495f:")
    assert scores["made"]["seed"] == 0 and scores["made"]["environment"]["torch"]
    table = (root / "artifacts" / "eval" / "table.md").read_text()
    assert "| math500 | 100.0 ± 0.0 (math_equal) | 100.0 ± 0.0 (math_verify) | 0.0% (0) | 86.4 | +13.6 ± 24.2 | no | " \
           "2 (2 x 1) |" in table
    assert "| math500 | `sky_t1` [`sky_t1_eval`] | `Return your final response within \\boxed{{}}. {problem}` | 0 | 1 " \
           "| 1 | 64 [32768] | math_equal |" in table
    assert "- math500: system_prompt: whitespace only: ours 1310 chars, published 1454" in table
    assert "- every benchmark unless noted, max_tokens, n, system_prompt, temperature, top_p" not in table
    assert "max_tokens, n, temperature, top_p: ST@HEAD skythought/evals/cli.py SAMPLING_PARAMS_DEFAULT" in table
    assert "- gpqa_diamond: temperature, n: ST@#25/#67 README" in table
    assert "- environment: python " in table and "transformers " in table and "seed 0" in table
    assert "math500, gpqa_diamond, livecodebench_easy: 20" in table and "backend transformers: `python -m " \
           "reproduce.stages.evaluate --recipe" in table
    samples = [json.loads(x) for x in (root / "artifacts" / "eval" / "gpqa_diamond.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and all({"response", "correct", "correct_published_scorer", "reason", "sample"}
                                      <= set(s) for s in samples)
    summary = json.loads((root / "artifacts" / "eval" / "summary.json").read_text())
    assert summary["samples"] == 2 + 16 + 2 and summary["tokens_per_s"] > 0


def test_default_model_is_sft_output_and_rerun_skips_scored(setup, capsys):
    root, _, _ = setup
    assert _run(root) == 0                                   # the untrained "sft/model": scores 0
    scores = json.loads((root / "artifacts" / "eval" / "scores.json").read_text())
    assert scores["model"].endswith("sft/model")
    b = scores["benchmarks"]
    assert all(v["by_scorer"][v["ours_scorer"]]["score"] == 0.0 for v in b.values())
    assert b["math500"]["score"] == b["livecodebench_easy"]["score"] == 0.0
    # SkyThought's GPQA scorer takes the last standalone A-D anywhere in the text: babble can score, ours not
    g = b["gpqa_diamond"]
    assert g["disagreement"]["samples"] == g["by_scorer"]["last_letter"]["correct"]
    capsys.readouterr()
    assert _run(root) == 0
    assert capsys.readouterr().err.count("already scored") == 3


def test_bad_input(setup, tmp_path, capsys):
    root, _, _ = setup
    assert evaluate.main(["--recipe", str(root / "recipe.yaml"), "--artifacts", str(tmp_path)]) == 2
    assert "no model at" in capsys.readouterr().err
    assert _run(root, "--benchmarks", "mmlu") == 2
    assert "--benchmarks mmlu: expected names from math500" in capsys.readouterr().err
