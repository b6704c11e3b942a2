"""The stage table is the one home of a stage's facts: the schema, the re-plan, the fit advice and the secrets
read them off its rows, so a new row brings its own (no code elsewhere names it)."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from costmodel.checks import whole
from costmodel.stages import STAGES, stage
from reproduce import recipe as recipes
from reproduce import recipe_schema, replan
from reproduce.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _judge():
    """A made-up seventh stage: a vLLM pass of the student after eval, with one knob of its own."""
    return dataclasses.replace(stage("eval"), name="judge", program="judge", task="judge", section="judge",
                               needs=("eval",), knobs={"seed": whole(0)}, defaults={"seed": 0}, fit=())


def test_a_new_rows_section_gets_what_the_row_implies_and_its_own_knobs():
    rules, defaults = recipe_schema.section_rules(_judge()), recipe_schema.section_defaults(_judge())
    # a GPU stage: accelerator, fallbacks, market; a vLLM stage: its parallelism and token lengths
    assert {"judge.accelerator", "judge.use_spot", "judge.tensor_parallel", "judge.max_tokens",
            "judge.seed"} <= set(rules)
    assert "judge.where" not in rules and "judge.keep_checkpoints" not in rules   # neither CPU-here nor scratch
    assert rules["judge.seed"](3) and not rules["judge.seed"](-1)
    assert defaults == {"judge.use_spot": "auto", "judge.seed": 0}


def test_every_stage_sections_rules_come_from_its_row():
    for row in STAGES:
        own = {k for k in recipe_schema.RULES if k.startswith(row.section + ".")}
        assert own == set(recipe_schema.section_rules(row)), row.name
    assert "filter.where" in recipe_schema.RULES and recipe_schema.DEFAULTS["filter.where"] == "local"
    assert recipe_schema.DEFAULTS["sft.keep_checkpoints"] is False                 # sft has scratch
    assert recipe_schema.LISTS == ("sources", "eval.benchmarks")                     # read off the `*` keys


def test_a_rows_knob_refuses_a_bad_value_with_its_words():
    with pytest.raises(UserError, match=r"rewrite.max_tokens=0 \(from --set\): expected a whole number >= 1"):
        recipes.load(sets=["rewrite.max_tokens=0"])


def test_the_replan_applies_each_rows_handoff_in_pipeline_order():
    r = recipes.load("sky-t1-32b-preview")
    facts = {"generate": replan.facts("generate", {"records": 10, "response_tokens": 50_000}, {}, _NoGpu(), r,
                                      Path("/nonexistent")),
             "filter": replan.facts("filter", {"by_domain": {"math": {"kept": 3, "rejected": 1}}}, {}, _NoGpu(), r,
                                    Path("/nonexistent"))}
    assert facts["generate"] == {"traces": 10, "mean_response_tokens": 5000.0}
    assert facts["filter"] == {"keep_rate": {"math": 0.75}}
    variant, why = replan.apply(r, facts)
    assert variant["generate"]["mean_response_tokens"] == 5000.0
    assert all(s["keep_rate"] == 0.75 for s in variant["sources"] if s["domain"] == "math")
    assert why[0].startswith("generate wrote traces of 5,000 tokens") and why[-1] == "filter kept 75.0% of math traces"
    assert replan.facts("rewrite", {"records": 3}, {}, _NoGpu(), r, Path("/nonexistent")) == {}   # no handoff


class _NoGpu:
    kind, base_hours = "cpu", 0.0


def test_fit_advice_and_controller_secrets_are_the_rows():
    from reproduce.executors import stage_env
    from reproduce.plan import FIT_KNOBS

    assert FIT_KNOBS["sft"][0] == ("sft.liger_kernel", True)
    assert FIT_KNOBS["generate"][-1] == [("generate.accelerator", "H200:8"), ("generate.tensor_parallel", 8)]
    assert set(FIT_KNOBS) == {s.name for s in STAGES if s.fit}
    assert "OPENAI_API_KEY" in stage_env.declared("rewrite", None)
    assert stage_env.declared("convert", None) == set()


def test_the_literal_count_reads_the_tree():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stage_literals.py")], capture_output=True,
                         text=True, check=True).stdout
    assert "stage-name literals outside costmodel/stages.py" in out
    assert "a new stage touches 4 files" in out and "costmodel/estimates.py" in out
