"""The tiny local model and the generate stage, end to end at smoke scale (stage environment: torch,
transformers). Skipped where those are not installed (the controller venv)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from reproduce import recipe as recipes  # noqa: E402
from reproduce.stages import generate  # noqa: E402
from reproduce.stages.smoke import tinymodel  # noqa: E402


@pytest.fixture(scope="module")
def smoke_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    path = root / "recipe.yaml"
    path.write_text(recipes.dump(recipes.load(scale="smoke")))
    return path


@pytest.fixture(scope="module")
def generated(smoke_recipe):
    """generate --limit 2 (3 shards of <=5 problems), then the full run resumes from there."""
    artifacts = smoke_recipe.parent / "artifacts"
    args = ["--recipe", str(smoke_recipe), "--artifacts", str(artifacts)]
    assert generate.main(args + ["--limit", "2", "--shard-size", "5"]) == 0
    first = {p.name: p.read_text() for p in (artifacts / "generate").glob("shard-*.jsonl")
             if not p.name.startswith("shard-published-")}          # STILL-2's traces as published, no teacher
    summary1 = json.loads((artifacts / "generate" / "summary.json").read_text())
    assert generate.main(args) == 0
    return artifacts, first, summary1


def _records(artifacts):
    """The teacher's traces (a `traces: published` source's are written beside them, untouched)."""
    return [r for r in generate.read_shards(artifacts / "generate") if not r.get("published")]


def test_student_builds_offline_generates_and_is_cached(tmp_path):
    out = tinymodel.build_tiny_model(tmp_path / "student")
    marker = json.loads((out / tinymodel.MARKER).read_text())
    assert 50_000 < marker["params"] < 200_000 and marker["trained_steps"] == 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with generate.open_backend(str(out), backend="auto") as (info, complete):
        outs = complete([text, text + "x"], {"n": 2, "temperature": 0.7, "top_p": 1.0, "max_tokens": 8})
    assert info["backend"] == "transformers" and len(outs) == 2 and all(len(s) == 2 for s in outs)
    for s in outs[0]:
        assert 1 <= s["response_tokens"] <= 8 and s["finish_reason"] in ("stop", "length")
        assert s["prompt_tokens"] == len(tok(text, add_special_tokens=False)["input_ids"])
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert tinymodel.build_tiny_model(tmp_path / "student") == out          # same inputs: the folder as is
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written  # not rewritten (load-independent)


def test_generate_writes_traces_for_every_problem(generated, smoke_recipe):
    artifacts, _, _ = generated
    recipe = recipes.load(scale="smoke")
    records = _records(artifacts)
    teacher = [s for s in recipe["sources"] if s.get("traces") != "published"]
    assert len(records) == 4 * len(teacher) and len({r["id"] for r in records}) == len(records)
    published = [r for r in generate.read_shards(artifacts / "generate") if r.get("published")]
    assert len(published) == 4 and all(r["response_tokens"] == 0 and r["source"] == "still2" for r in published)
    for r in records:
        assert set(r) >= {"id", "source", "domain", "prompt", "response", "prompt_tokens", "response_tokens",
                          "finish_reason"}
        assert ("tests" in r) if r["domain"] == "code" else ("answer" in r)
        assert r["prompt"].startswith("<|im_start|>system\n" + recipe["generate"]["system_prompt"])
        assert r["prompt"].endswith("<|im_start|>assistant\n")
        assert 0 < r["response_tokens"] <= recipe["generate"]["max_tokens"]
    summary = json.loads((artifacts / "generate" / "summary.json").read_text())
    assert summary["records"] == len(records) and summary["backend"] == "transformers"
    assert summary["response_tokens"] == sum(r["response_tokens"] for r in records)
    assert summary["tokens_per_s"] > 0 and summary["gpus"] == 0


def test_smoke_teacher_is_mostly_right_and_sometimes_wrong(generated):
    """Real rejection sampling: the real graders keep some traces and reject others."""
    from reproduce.stages.lib.grading import grade

    verdicts = [grade(r)[0] for r in _records(generated[0])]
    assert 0.4 <= sum(verdicts) / len(verdicts) < 1.0


def test_resume_skips_problems_already_written(generated):
    artifacts, first, summary1 = generated
    assert summary1["records"] == 12 and sorted(first) == ["shard-00000.jsonl", "shard-00001.jsonl",
                                                           "shard-00002.jsonl"]
    for name, text in first.items():                                  # earlier shards untouched
        assert (artifacts / "generate" / name).read_text() == text
    summary = json.loads((artifacts / "generate" / "summary.json").read_text())
    assert summary["skipped_problems"] == 12 and summary["records_this_run"] == 12


def test_a_run_killed_mid_way_resumes_without_duplicates(smoke_recipe, tmp_path, monkeypatch):
    artifacts = tmp_path / "a"
    (artifacts / "models").mkdir(parents=True)
    # reuse the teacher the module fixture built
    import shutil
    shutil.copytree(smoke_recipe.parent / "artifacts" / "models" / "tiny-teacher", artifacts / "models" / "tiny-teacher")
    real = generate.write_shard
    calls = []

    def dying(*args):
        if calls:
            raise KeyboardInterrupt          # preempted after the first shard
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(generate, "write_shard", dying)
    args = ["--recipe", str(smoke_recipe), "--artifacts", str(artifacts), "--shard-size", "7"]
    assert generate.main(args) == 130
    assert len(_records(artifacts)) == 7 and not list((artifacts / "generate").glob("*.tmp"))
    monkeypatch.setattr(generate, "write_shard", real)
    assert generate.main(args) == 0
    ids = [r["id"] for r in _records(artifacts)]
    assert len(ids) == 24 == len(set(ids))


def test_samples_per_problem_makes_unique_ids(smoke_recipe, tmp_path):
    r = recipes.load(scale="smoke", sets=["generate.samples_per_problem=3"])
    path = tmp_path / "recipe.yaml"
    path.write_text(recipes.dump(r))
    student = tinymodel.build_tiny_model(tmp_path / "student")
    assert generate.main(["--recipe", str(path), "--artifacts", str(tmp_path / "a"), "--limit", "1",
                          "--model", str(student)]) == 0
    records = _records(tmp_path / "a")
    assert len(records) == 3 * len([s for s in r["sources"] if s.get("traces") != "published"])
    assert len({x["id"] for x in records}) == len(records)
    assert {x["sample"] for x in records} == {0, 1, 2}


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert generate.main(["--recipe", str(tmp_path / "missing.yaml"), "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("generate: --recipe") and "\n" not in err
    bad = tmp_path / "r.yaml"
    bad.write_text("generate: {}\nsources: []\n")
    assert generate.main(["--recipe", str(bad), "--artifacts", str(tmp_path), "--limit", "0"]) == 2
    assert "--limit 0" in capsys.readouterr().err


FAKE_VLLM = '''
import os
from types import SimpleNamespace

class SamplingParams:
    def __init__(self, n=1, temperature=0.0, top_p=1.0, max_tokens=16):
        self.n, self.max_tokens = n, max_tokens

class LLM:
    def __init__(self, model, tensor_parallel_size=1, seed=0):
        if os.environ.get("FAKE_VLLM_FAIL") == os.environ["CUDA_VISIBLE_DEVICES"]:
            raise RuntimeError("CUDA out of memory")
        self.gpus = os.environ["CUDA_VISIBLE_DEVICES"]
        self.tp = tensor_parallel_size

    def generate(self, prompts, params, use_tqdm=False):
        return [SimpleNamespace(prompt_token_ids=[0] * len(p), outputs=[
            SimpleNamespace(text=f"{p}|gpus={self.gpus}|tp={self.tp}|k={k}", token_ids=[1] * params.max_tokens,
                            finish_reason="length") for k in range(params.n)]) for p in prompts]
'''


def test_vllm_data_parallel_pins_each_replica_to_its_gpus(tmp_path, monkeypatch):
    """The real pool (spawned processes, queues, CUDA_VISIBLE_DEVICES slices) around a stand-in vllm."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5")
    prompts = [f"p{i}" for i in range(5)]
    with generate.open_backend("m", tensor_parallel=2, data_parallel=3, backend="vllm") as (info, complete):
        outs = complete(prompts, {"n": 2, "temperature": 0.7, "top_p": 1.0, "max_tokens": 3})
        again = complete(prompts[:1], {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 3})
    assert info == {"backend": "vllm", "gpus": 6}
    assert [o[0]["text"].split("|")[0] for o in outs] == prompts          # order kept across replicas
    assert [o[0]["text"].split("|")[1] for o in outs] == ["gpus=0,1"] * 2 + ["gpus=2,3"] * 2 + ["gpus=4,5"]
    assert all("tp=2" in c["text"] and c["response_tokens"] == 3 and c["finish_reason"] == "length"
               for o in outs for c in o) and all(len(o) == 2 for o in outs)
    assert len(again) == 1 and again[0][0]["prompt_tokens"] == 2

    monkeypatch.setenv("FAKE_VLLM_FAIL", "2,3")                           # one replica fails to load
    with pytest.raises(RuntimeError, match="replica 1 failed: RuntimeError: CUDA out of memory"):
        with generate.open_backend("m", tensor_parallel=2, data_parallel=3, backend="vllm"):
            pass
    with pytest.raises(generate.BadInput, match="needs 8 GPUs; 6 visible"):
        with generate.open_backend("m", tensor_parallel=2, data_parallel=4, backend="vllm"):
            pass
