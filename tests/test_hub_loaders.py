"""The stage loaders end to end with the real `datasets` and `huggingface_hub` (the generate lock's versions:
datasets 5.2.0, huggingface-hub 2.4.0) against the hub stand-in (tests/hub_standin.py) through HF_ENDPOINT:
every source and benchmark of the recipe at full scale, the refusal of a script-only repository, a gated one
without and with a token, the preflight's peeks and row counts, and no request leaving loopback."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("datasets")
pytest.importorskip("huggingface_hub")

from reproduce import recipe as recipes  # noqa: E402
from reproduce.stages.lib import problems  # noqa: E402

_spec = importlib.util.spec_from_file_location("hub_replicas", Path(__file__).parent / "fixtures/hub/build.py")
replicas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replicas)


@pytest.fixture(scope="module")
def recipe():
    return recipes.load("sky-t1-32b-preview")


def _bench(recipe, name):
    return next(b for b in recipe["eval"]["benchmarks"] if b["name"] == name)


def _resolved(hub, repo):
    return [p for m, _, p in hub.requests if f"/datasets/{repo}/resolve/" in p and m == "GET"]


def test_every_source_loads_as_the_recipe_says(hub, recipe):
    recs = problems.load_sources(recipe)
    by = {}
    for r in recs:
        by.setdefault(r["source"], []).append(r)
    # NuminaMath: source, boxed solution, difficulty bounds by the labels (fixture: level [2,5,9,8,4,9][i % 6])
    assert [r["id"] for r in by["numina_math"]] == ["numina_math-5", "numina_math-11", "numina_math-17",
                                                    "numina_math-29"]
    assert [r["id"] for r in by["numina_amc_aime"]] == [f"numina_amc_aime-{i}" for i in (1, 7, 19, 25)]
    assert [r["id"] for r in by["numina_olympiads"]] == [f"numina_olympiads-{i}" for i in (2, 14, 20, 26)]
    assert by["numina_math"][0]["answer"] == "35"
    # APPS test.jsonl beside apps.py: the row without tests is dropped; a call-based one keeps fn_name
    assert [r["id"] for r in by["apps"]] == ["apps-0", "apps-1"]
    assert by["apps"][1]["tests"]["fn_name"] == "total" and by["apps"][0]["tests"]["outputs"] == ["9\n", "16\n"]
    # TACO: all nine Arrow shards of train, MEDIUM only; test's one shard
    medium = sum(r["difficulty"] == "MEDIUM" for shard in replicas.TACO_TRAIN for r in shard)
    assert medium >= 4 and len(by["taco_medium"]) == medium
    assert {r["tests"].get("fn_name") for r in by["taco_medium"]} == {None, "echo"}
    assert len(by["taco_test"]) == 3
    # STILL-2 (traces: published): every domain but code, the published trace as the response
    assert [r["domain"] for r in by["still2"]] == ["puzzle", "physics", "math", "chemistry", "biology"]
    assert all(r["published"] and r["response"].endswith("<|end_of_solution|>") for r in by["still2"])
    assert not any("/api/datasets/" in p and "/tree/" not in p and "revision" not in p for _, _, p in hub.requests)


def test_numina_is_read_once_for_its_three_sources(hub, recipe):
    one = copy.deepcopy(recipe)
    one["sources"] = [s for s in one["sources"] if s["name"] == "numina_math"]
    problems.load_sources(one)
    alone = len(_resolved(hub, "AI-MO/NuminaMath-CoT"))
    labels_alone = len(_resolved(hub, problems.LABELS))
    hub.clear()
    three = copy.deepcopy(recipe)
    three["sources"] = [s for s in three["sources"] if s["dataset"] == problems.NUMINA]
    assert len(three["sources"]) == 3
    problems.load_sources(three)
    assert len(_resolved(hub, "AI-MO/NuminaMath-CoT")) == alone > 0
    assert len(_resolved(hub, problems.LABELS)) == labels_alone > 0


def test_problems_is_a_cap_and_the_stream_stops_at_it(hub, recipe, capsys):
    r = copy.deepcopy(recipe)
    r["sources"] = [{**s, "filter": {k: v for k, v in s["filter"].items() if k != "difficulty"}, "problems": 1}
                    for s in r["sources"] if s["name"] == "numina_amc_aime"]
    assert [x["id"] for x in problems.load_sources(r)] == ["numina_amc_aime-1"]
    shards = {p.rsplit("/", 1)[1] for p in _resolved(hub, "AI-MO/NuminaMath-CoT")}
    assert shards == {"train-00000-of-00005.parquet"}           # the cap was met in the first shard
    assert not _resolved(hub, problems.LABELS)                   # no difficulty filter: no labels read
    # with the difficulty filter every candidate is read and labelled; the cap then cuts, and says so
    r["sources"][0]["filter"]["difficulty"] = [1, 9]
    r["sources"][0]["problems"] = 2
    capsys.readouterr()
    assert [x["id"] for x in problems.load_sources(r)] == ["numina_amc_aime-1", "numina_amc_aime-7"]
    assert "numina_amc_aime: 4 pass its filter; sources.numina_amc_aime.problems caps them at 2" in \
        capsys.readouterr().err
    r["sources"][0]["problems"] = 9
    assert len(problems.load_sources(r)) == 4
    assert "4 pass its filter, fewer than the 9 the plan priced" in capsys.readouterr().err
    assert len(problems.load_sources(r, limit=1)) == 1


def test_every_benchmark_loads(hub, recipe, monkeypatch):
    assert [r["answer"] for r in problems.load_benchmark(_bench(recipe, "math500"))] == ["0", "1", "2", "3"]
    aime = problems.load_benchmark(_bench(recipe, "aime24"))
    assert [r["answer"] for r in aime] == ["101", "103"]        # url of 2024 only
    # release_v2 = test.jsonl + test2.jsonl: nothing of test3..6
    easy = problems.load_benchmark(_bench(recipe, "livecodebench_easy"))
    assert sorted(r["id"].rsplit("-", 1)[1] for r in easy) == ["1001", "2001"]
    medium = problems.load_benchmark(_bench(recipe, "livecodebench_medium"))
    assert sorted(r["id"].rsplit("-", 1)[1] for r in medium) == ["1002", "2002"]
    hard = problems.load_benchmark(_bench(recipe, "livecodebench_hard"))
    assert [r["id"] for r in hard] == ["livecodebench_hard-1003"]
    assert any("10\n" in r["tests"]["outputs"] for r in easy)   # a private test, decoded
    olymp = problems.load_benchmark(_bench(recipe, "olympiadbench_math_en"))
    assert [r["answer"] for r in olymp] == ["0+1", "1+1", "2+1"]
    monkeypatch.setenv("HF_TOKEN", hub.token)
    gpqa = problems.load_benchmark(_bench(recipe, "gpqa_diamond"))
    assert len(gpqa) == 3 and all(r["answer"] in "ABCD" for r in gpqa)


def test_a_moved_repository_is_followed(hub, recipe):
    old = {**_bench(recipe, "math500"), "dataset": "qq8933/MATH500"}
    assert len(problems.load_benchmark(old)) == 4
    assert any(p.startswith("/api/datasets/qq8933/MATH500") for _, _, p in hub.requests)


def test_gated_without_a_token_names_hf_token_and_where_to_ask(hub, recipe, monkeypatch):
    gpqa = _bench(recipe, "gpqa_diamond")
    with pytest.raises(problems.Gated) as e:
        problems.load_benchmark(gpqa)
    msg = str(e.value)
    assert "HF_TOKEN" in msg and f"{hub.url}/datasets/Idavidrein/gpqa" in msg and "\n" not in msg
    assert not hub.requests                                       # the recipe says gated: refused before a request
    unmarked = {k: v for k, v in gpqa.items() if k != "gated"}
    with pytest.raises(problems.Gated, match="HF_TOKEN"):         # the hub's 401
        problems.load_benchmark(unmarked)
    monkeypatch.setenv("HF_TOKEN", "hf_someone_without_access")
    with pytest.raises(problems.Gated, match="HF_TOKEN"):         # the hub's 403
        problems.load_benchmark(gpqa)
    assert "Authorization" not in msg and "hf_someone" not in msg


def test_a_script_only_repository_fails_with_the_fix(hub):
    src = {"name": "s", "dataset": "standin-org/script_only", "split": "train", "domain": "math",
           "fields": {"problem": "q", "answer": "a"}}
    with pytest.raises(problems.BadSource) as e:
        problems.load_hub_source(src)
    msg = str(e.value)
    assert "script_only.py" in msg and "files" in msg and "\n" not in msg
    # APPS without its `files`: its script is all `datasets` would find
    with pytest.raises(problems.BadSource, match="apps.py"):
        problems.load_hub_source({"name": "apps", "dataset": "codeparrot/apps", "split": "test", "domain": "code"})
    with pytest.raises(problems.BadSource, match="no file matches 'nope.jsonl'.*apps.py"):
        problems.load_hub_source({"name": "apps", "dataset": "codeparrot/apps", "split": "test", "domain": "code",
                                  "files": ["nope.jsonl"]})


def test_a_missing_repository_is_one_line(hub):
    with pytest.raises(problems.BadSource, match="nobody/nothing not found"):
        problems.load_hub_source({"name": "x", "dataset": "nobody/nothing", "split": "train", "domain": "math",
                                  "fields": {"problem": "q", "answer": "a"}})


def test_the_parquet_conversion_and_published_traces(hub):
    src = {"name": "still2", "dataset": "RUC-AIBOX/long_form_thought_data_5k", "split": "train", "domain": "math"}
    recs = problems.load_hub_source(src)
    assert [r["problem"].split()[1] for r in recs] == ["puzzle", "physics", "math", "chemistry", "biology"]
    assert recs[0]["response"].startswith("<|begin_of_thought|>") and recs[0]["published"] is True
    assert problems.row_count(src) == 6                           # refs/convert/parquet's footer
    picked = problems.load_hub_source({**src, "filter": {"domains": ["puzzle", "biology"]}})
    assert [r["domain"] for r in picked] == ["puzzle", "biology"]


def test_flash_source_exists(hub):
    flash = recipes.load("sky-t1-32b-flash")
    recs = problems.load_sources(flash)
    assert [r["answer"] for r in recs] == ["10", "11", "12", "13", "14"]


def test_peek_reads_only_the_first_rows(hub, recipe, monkeypatch):
    numina = recipe["sources"][0]
    got = problems.peek_source(numina, n=1, scan=6)
    assert [r["id"] for r in got] == ["numina_math-0"]           # the difficulty filter is not applied
    shards = {p.rsplit("/", 1)[1] for p in _resolved(hub, "AI-MO/NuminaMath-CoT")}
    assert shards == {"train-00000-of-00005.parquet"}
    assert {p.rsplit("/", 1)[1] for p in _resolved(hub, problems.LABELS)} == {"train-00000-of-00002.parquet"}
    taco = next(s for s in recipe["sources"] if s["name"] == "taco_medium")
    assert len(problems.peek_source(taco, n=2)) == 2
    bench = problems.peek_benchmark(_bench(recipe, "livecodebench_easy"), n=1)
    assert len(bench) == 1 and bench[0]["tests"]["inputs"]
    with pytest.raises(problems.Gated):
        problems.peek_benchmark(_bench(recipe, "gpqa_diamond"))
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert len(problems.peek_benchmark(_bench(recipe, "gpqa_diamond"), n=2)) == 2


def test_row_count_from_parquet_footers(hub, recipe, monkeypatch):
    assert problems.row_count(recipe["sources"][0]) == 30        # five NuminaMath shards' footers
    assert problems.row_count(_bench(recipe, "olympiadbench_math_en")) == 3
    assert problems.row_count(next(s for s in recipe["sources"] if s["name"] == "apps")) is None   # jsonl only
    with pytest.raises(problems.Gated):
        problems.row_count(_bench(recipe, "gpqa_diamond"))


def test_no_request_leaves_loopback(hub, recipe, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    problems.load_sources(recipe)
    for b in recipe["eval"]["benchmarks"]:
        problems.load_benchmark(b)
    own = hub.url.split("://", 1)[1]
    assert hub.requests
    for method, host, path in hub.requests:
        # the stand-in's own address, the dataset viewer's name it answers itself, or refused (never forwarded)
        assert host in (own, "datasets-server." + own) or (method, host, path) in hub.refused, (method, host, path)
    assert not any("huggingface.co" in host and (m, host, p) not in hub.refused for m, host, p in hub.requests)


def test_evaluate_stage_refuses_a_gated_benchmark_with_exit_2(hub, recipe, tmp_path, capsys):
    """The stage program itself: one line naming HF_TOKEN, exit 2, before any model is loaded."""
    import yaml

    from reproduce.stages import evaluate

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = evaluate.main(["--recipe", str(path), "--artifacts", str(tmp_path / "a"), "--model", str(tmp_path),
                          "--benchmarks", "gpqa_diamond"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "HF_TOKEN" in err[-1] and "Traceback" not in "\n".join(err)


def test_generate_stage_refuses_a_script_only_source_with_exit_2(hub, recipe, tmp_path, capsys):
    import yaml

    from reproduce.stages import generate

    r = copy.deepcopy(recipe)
    r["sources"] = [{"name": "apps", "dataset": "codeparrot/apps", "split": "test", "domain": "code",
                     "problems": 5, "keep_rate": 0.5}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(r))
    code = generate.main(["--recipe", str(path), "--artifacts", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "apps.py" in err[-1] and "files" in err[-1]


@pytest.fixture
def converted_hub(hub, tmp_path, monkeypatch):
    """Another stand-in whose TACO and APPS were converted: scripts gone, parquet where the hub's converter puts
    it (data/<split>-*.parquet), so the recipe's `files` match nothing and the repo's own layout is read."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hub_standin import HubStandin

    root = replicas.build(tmp_path / "converted")
    taco, apps = root / "BAAI/TACO", root / "codeparrot/apps"
    for d in (taco / "train", taco / "test"):
        shutil.rmtree(d)
    (taco / "TACO.py").unlink()
    (apps / "apps.py").unlink()
    (apps / "test.jsonl").unlink()
    for d in (taco / "data", apps / "data"):
        d.mkdir()
    pq.write_table(pa.Table.from_pylist([r for s in replicas.TACO_TRAIN for r in s]),
                   taco / "data/train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(replicas.TACO_TEST[0]), taco / "data/test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(replicas.APPS_TEST), apps / "data/test-00000-of-00001.parquet")
    with HubStandin(root) as other:
        for k, v in other.env.items():
            monkeypatch.setenv(k, v)
        from datasets import config
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", other.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            other.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(config, "HF_ENDPOINT", other.url)
        monkeypatch.setattr(config, "HUB_DATASETS_URL", other.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
        from huggingface_hub.utils import _http

        _http.close_session()        # its client holds the first stand-in's proxy
        yield other
        _http.close_session()


def test_converted_layouts_are_read_as_the_repo_lays_them_out(converted_hub, recipe):
    code = copy.deepcopy(recipe)
    code["sources"] = [s for s in code["sources"] if s["domain"] == "code"]
    by = {}
    for r in problems.load_sources(code):
        by.setdefault(r["source"], []).append(r)
    medium = sum(r["difficulty"] == "MEDIUM" for shard in replicas.TACO_TRAIN for r in shard)
    assert len(by["taco_medium"]) == medium and len(by["taco_test"]) == 3
    assert [r["id"] for r in by["apps"]] == ["apps-0", "apps-1"]
    assert any("data/train-00000-of-00001.parquet" in p for _, _, p in converted_hub.requests)
