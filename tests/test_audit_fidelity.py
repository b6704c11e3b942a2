"""`reproduce audit` shows the decontamination counts and what made the eval table."""
from __future__ import annotations

import json

from reproduce.cli import audit as cli_audit

DECONTAM = {"ngram": 8, "checked": 24, "contaminated": 12, "near_duplicates": 1, "kept": 11,
            "by_source": {"apps": {"checked": 4, "contaminated": 4, "near_duplicates": 0, "kept": 0},
                          "numina_math": {"checked": 4, "contaminated": 0, "near_duplicates": 1, "kept": 3}},
            "by_benchmark": {"math500": {"exact": 0, "ngram": 0, "total": 0},
                             "livecodebench_easy": {"exact": 2, "ngram": 2, "total": 4}}}
SCORES = {"model": "/runs/r/artifacts/sft/model", "made": {"date": "2026-12-01 10:00:00 UTC", "seed": 0,
                                                           "environment": {"torch": "2.14.1", "transformers": "5.6.0"}},
          "benchmarks": {"math500": {"beyond_2se": True, "made": {"command": "python -m reproduce.stages.evaluate x"}},
                         "aime24": {"beyond_2se": False, "made": {"command": "python -m reproduce.stages.evaluate x"}}}}


def _audit(artifacts, stages=()):
    return {"run": {"artifacts": str(artifacts)}, "stages": list(stages)}


def test_read_from_the_run_artifacts(tmp_path):
    (tmp_path / "convert").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "convert" / "summary.json").write_text(json.dumps({"decontamination": DECONTAM}))
    (tmp_path / "eval" / "scores.json").write_text(json.dumps(SCORES))
    f = cli_audit.fidelity(_audit(tmp_path))
    assert f["decontamination"] == DECONTAM and f["eval"]["beyond_2se"] == ["math500"]
    text = "\n".join(cli_audit.render_fidelity(f))
    assert "Decontamination (convert, 8-gram or same text): 12 of 24 training problems overlap a benchmark " \
           "(livecodebench_easy 4), 1 near-duplicates; 11 kept" in text
    assert "  apps: 4 contaminated, 0 near-duplicates of 4" in text and "numina_math: 0 contaminated, 1 near" in text
    assert "Eval table: /runs/r/artifacts/sft/model, 2026-12-01 10:00:00 UTC, seed 0, torch 2.14.1, " \
           "transformers 5.6.0; beyond 2 SE of published: math500" in text
    assert text.count("made by `python -m reproduce.stages.evaluate x`") == 1


def test_the_ledger_facts_win_and_nothing_shows_without_them(tmp_path):
    stage = {"stage": "convert", "actual": {}, "summary": {"decontamination": {**DECONTAM, "checked": 99}}}
    assert cli_audit.fidelity(_audit(tmp_path, [stage]))["decontamination"]["checked"] == 99
    empty = cli_audit.fidelity(_audit(tmp_path / "missing"))
    assert empty == {"decontamination": None, "eval": None} and cli_audit.render_fidelity(empty) == []
