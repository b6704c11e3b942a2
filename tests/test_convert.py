"""convert: rewritten traces -> ShareGPT + dataset_info.json, checked by LLaMA-Factory's own loader."""
from __future__ import annotations

import json

import pytest
import yaml

from reproduce.stages import convert

SYSTEM = "Your role as an assistant involves thoroughly exploring questions"


def rec(i, source="numina_math", domain="math", prompt=None, recheck=True, rewritten="auto", response=None):
    return {"id": f"{source}-{i}", "source": source, "domain": domain,
            "prompt": prompt or f"What is {i} plus {i}?", "response": response or f"raw trace {2 * i}",
            "rewritten": (f"<|begin_of_thought|> {i}+{i} <|end_of_thought|> <|begin_of_solution|> "
                          f"\\boxed{{{2 * i}}} <|end_of_solution|>") if rewritten == "auto" else rewritten,
            "recheck_correct": recheck}


@pytest.fixture
def artifacts(tmp_path):
    a = tmp_path / "A"
    (a / "rewrite").mkdir(parents=True)
    recipe = {"convert": {"dataset_name": "Sky-T1", "system_prompt": SYSTEM, "dedupe": True}}
    (a / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return a


def write(a, records):
    (a / "rewrite" / "rewritten.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


SAMPLE = [
    rec(1), rec(2),
    rec(3, prompt="What is 1 plus 1?"),                    # same problem as rec(1): dropped
    rec(4, prompt="  What is 2   plus 2?\n"),              # whitespace aside, same as rec(2): dropped
    rec(5, recheck=False),                                 # the rewrite broke the answer: dropped
    rec(6, recheck=None, rewritten=None),                  # rewrite off: the filter-kept trace
    rec(7, "apps", "code", prompt="Read n, print 2n."),
    rec(8, "taco_test", "code", prompt="Print hello.", rewritten=""),  # empty rewrite: original kept
]


def test_records_counts_and_dedupe(artifacts):
    write(artifacts, SAMPLE)
    assert convert.main(["--recipe", str(artifacts / "recipe.yaml"), "--artifacts", str(artifacts)]) == 0
    train = json.loads((artifacts / "convert" / "train.json").read_text())
    assert [r["conversations"][0]["value"] for r in train] == [
        "What is 1 plus 1?", "What is 2 plus 2?", "What is 6 plus 6?", "Read n, print 2n.", "Print hello."]
    first = train[0]
    assert first == {"system": SYSTEM, "conversations": [
        {"from": "user", "value": "What is 1 plus 1?"},
        {"from": "assistant", "value": SAMPLE[0]["rewritten"]}]}
    assert train[2]["conversations"][1]["value"] == "raw trace 12"
    assert train[4]["conversations"][1]["value"] == "raw trace 16"
    summary = json.loads((artifacts / "convert" / "summary.json").read_text())
    assert summary["records_in"] == 8 and summary["records_out"] == 5
    assert summary["duplicates"] == 2 and summary["dropped_recheck"] == 1
    assert summary["from_rewritten"] == 3 and summary["from_original"] == 2
    assert summary["per_source"] == {"apps": 1, "numina_math": 3, "taco_test": 1}
    assert summary["per_domain"] == {"code": 2, "math": 3}
    info = json.loads((artifacts / "convert" / "dataset_info.json").read_text())
    assert info == {"Sky-T1": {"file_name": "train.json", "formatting": "sharegpt",
                               "columns": {"messages": "conversations", "system": "system"},
                               "tags": {"role_tag": "from", "content_tag": "value",
                                        "user_tag": "user", "assistant_tag": "assistant"}}}


def test_dedupe_off_keeps_repeats(artifacts):
    write(artifacts, [rec(1), rec(1)])
    (artifacts / "recipe.yaml").write_text(yaml.safe_dump(
        {"convert": {"dataset_name": "mine", "system_prompt": "", "dedupe": False}}))
    assert convert.main(["--recipe", str(artifacts / "recipe.yaml"), "--artifacts", str(artifacts)]) == 0
    assert len(json.loads((artifacts / "convert" / "train.json").read_text())) == 2
    assert list(json.loads((artifacts / "convert" / "dataset_info.json").read_text())) == ["mine"]


def test_bad_input_is_one_line_exit_2(artifacts, capsys):
    args = ["--recipe", str(artifacts / "recipe.yaml"), "--artifacts", str(artifacts)]
    assert convert.main(args) == 2                                   # no rewrite output yet
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rewritten.jsonl is missing" in err and "rewrite stage" in err
    (artifacts / "rewrite" / "rewritten.jsonl").write_text('{"id": 1}\nnot json\n')
    assert convert.main(args) == 2
    assert "rewritten.jsonl:2: not a JSON line" in capsys.readouterr().err
    write(artifacts, [rec(1, recheck=False)])
    assert convert.main(args) == 2
    assert "no record left to train on" in capsys.readouterr().err


def test_llamafactory_loader_reads_it(artifacts, tmp_path):
    """LLaMA-Factory 0.9.5's own loader (get_dataset_list + _load_single_dataset, what `train` calls) turns
    every record into a prompt/response pair; a wrong tag would make it skip them all silently."""
    pytest.importorskip("llamafactory")
    from llamafactory.data.loader import _load_single_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import get_train_args

    write(artifacts, SAMPLE)
    assert convert.main(["--recipe", str(artifacts / "recipe.yaml"), "--artifacts", str(artifacts)]) == 0
    data_dir = str(artifacts / "convert")
    model_args, data_args, training_args, *_ = get_train_args({
        "model_name_or_path": "unused", "stage": "sft", "do_train": True, "finetuning_type": "full",
        "dataset": "Sky-T1", "dataset_dir": data_dir, "template": "qwen", "output_dir": str(tmp_path / "out"),
        "report_to": "none", "preprocessing_num_workers": 1})
    (attr,) = get_dataset_list(["Sky-T1"], data_dir)
    ds = _load_single_dataset(attr, model_args, data_args, training_args)
    assert len(ds) == 5
    for row in ds:
        assert row["_system"] == SYSTEM
        assert [m["role"] for m in row["_prompt"]] == ["user"]
        assert [m["role"] for m in row["_response"]] == ["assistant"] and row["_response"][0]["content"]
    assert ds[0]["_response"][0]["content"] == SAMPLE[0]["rewritten"]
