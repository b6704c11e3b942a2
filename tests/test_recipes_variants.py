"""The shipped variants plan as their headers say, and sources are data: a dataset of a known shape needs no code,
a bad or incomplete source is one line at load."""
from __future__ import annotations

import pytest

from reproduce import plan, recipe as recipes
from reproduce.errors import UserError
from reproduce.stages.lib import problems


def rows(name, sets=()):
    p = plan.build_plan(recipes.load(name, list(sets)))
    return {s.stage: s for s in p.stages}, p


def test_flash_is_simpo_on_pairs_from_eight_samples():
    r = recipes.load("sky-t1-32b-flash")
    assert r["sft"]["method"] == "simpo" and r["sft"]["samples"] == 10000 and r["sft"]["num_train_epochs"] == 1.0
    assert r["models"]["student"]["id"] == "NovaSky-AI/Sky-T1-32B-Preview" and r["generate"]["samples_per_problem"] == 8
    s, _ = rows("sky-t1-32b-flash")
    sft = s["sft"]
    assert sft.details["train_tokens"] == 10000 * 2 * 2300
    # published: about 2.5 h on 8xH100; preference training's MFU is calibrated on it (costmodel.estimates)
    assert 2.4 < sft.base_hours < 2.6 and sft.memory["fits"]


def test_7b_student_is_cheaper_in_flops_hours_and_memory():
    s7, _ = rows("sky-t1-7b")
    s32, _ = rows("sky-t1-32b-preview", ["sft.samples=5000"])
    assert s7["sft"].details["flops"] < s32["sft"].details["flops"] / 4
    assert s7["sft"].base_hours < s32["sft"].base_hours / 4
    assert s7["sft"].memory["per_gpu_gib"] < s32["sft"].memory["per_gpu_gib"]
    assert s7["eval"].base_hours < s32["eval"].base_hours


def test_bespoke_stratos_buys_r1_traces_and_trains_like_sky_t1():
    s, p = rows("bespoke-stratos-32b")
    assert s["generate"].kind == "api" and s["generate"].api_tokens["model"] == "deepseek-reasoner"
    assert s["sft"].kind == "gpu" and s["sft"].details["method"] == "sft"
    assert p.api_usd > s["rewrite"].api_usd


def test_a_dataset_described_by_fields_needs_no_code():
    src = {"name": "m", "dataset": "someone/new-math", "split": "train", "domain": "math",
           "fields": {"problem": "question", "answer": "solution", "id": "uid"}, "answer_from": "boxed",
           "filter": {"equals": {"lang": "en"}, "contains": {"solution": "boxed"}, "end": 3}}
    rows_ = [{"uid": 7, "question": "1+1?", "solution": "so \\boxed{2}", "lang": "en"},
             {"uid": 8, "question": "2+2?", "solution": "\\boxed{4}", "lang": "fr"},
             {"uid": 9, "question": "3+3?", "solution": "six", "lang": "en"},
             {"uid": 10, "question": "4+4?", "solution": "\\boxed{8}", "lang": "en"}]   # past `end`
    assert problems.table_records(rows_, src) == [
        {"id": "m-7", "source": "m", "domain": "math", "problem": "1+1?", "answer": "2"}]
    code = {"name": "c", "dataset": "someone/new-code", "split": "train", "domain": "code",
            "fields": {"problem": "prompt", "tests": "io"}}
    got = problems.table_records([{"prompt": "Add.", "io": '{"inputs": ["1 2\\n"], "outputs": ["3\\n"]}'}], code)
    assert got[0]["tests"] == {"inputs": ["1 2\n"], "outputs": ["3\n"]} and got[0]["user_template"] == "code"


@pytest.mark.parametrize("item, needle", [
    ("{name: x, dataset: someone/new, split: train, domain: math, problems: 10}", "keep_rate is missing"),
    ("{name: x, dataset: someone/new, split: train, domain: math, problems: 10, keep_rate: 0.5}",
     "needs `fields` naming the columns of problem, answer"),
    ("{name: x, dataset: someone/new, split: train, domain: math, problems: 10, keep_rate: 0.5, "
     "fields: {problem: q, answer: a}, filter: {level: 5}}", "filter key 'level' is unknown"),
])
def test_bad_sources_exit_at_load(tmp_path, item, needle):
    text = (recipes.RECIPES_DIR / "sky-t1-32b-preview.yaml").read_text()
    variant = tmp_path / "v.yaml"
    variant.write_text(f"base: sky-t1-32b-preview\nname: v\nsources:\n  - {item}\n")
    assert text  # the base is read through `base:`
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        recipes.load(str(variant))
