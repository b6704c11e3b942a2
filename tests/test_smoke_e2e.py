"""`reproduce all --budget 450 --scale smoke` end to end on this CPU: every stage's real code, the real
local executor installing the smoke lock with the task's `setup:` into the per-user environment cache
(or REPRODUCE_STAGE_VENV when set), the ledger recording every stage, and `--resume` doing no work twice.
The environment is shared with every other run: after `make test` built .venv-stage from the same lock,
uv hard-links it from its cache in seconds. Minutes, so marked slow."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def reproduce(*args, home, timeout=1800):
    env = {**os.environ, "REPRODUCE_HOME": str(home), "REPRODUCE_OFFLINE": "1",
           "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    env.pop("OPENAI_BASE_URL", None)
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "reproduce.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    result = reproduce("all", "--budget", "450", "--scale", "smoke", "--backend", "local", "-y", home=home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    audit = json.loads(reproduce("audit", "--json", home=home).stdout)
    return home, result, audit


def test_every_stage_finishes_and_is_recorded(smoke_run):
    home, result, audit = smoke_run
    stages = {s["stage"]: s for s in audit["stages"]}
    assert list(stages) == ["generate", "filter", "rewrite", "convert", "sft", "eval"]
    assert all(s["actual"]["state"] == "finished" for s in stages.values()), stages
    assert audit["totals"]["actual_usd"] == pytest.approx(0.0)  # this machine and the local formatter: $0


def test_stage_outputs_chain_through_the_artifacts(smoke_run):
    home, _, audit = smoke_run
    art = home / "runs" / audit["run"]["run_id"] / "artifacts"
    generated = sum(1 for f in (art / "generate").glob("shard-*.jsonl") for _ in f.open())
    kept = sum(1 for _ in (art / "filter" / "kept.jsonl").open())
    rejected = sum(1 for _ in (art / "filter" / "rejected.jsonl").open())
    assert generated == kept + rejected > 0
    assert kept > 0, "the smoke teacher is trained to answer: rejection sampling must keep some traces"
    train = json.loads((art / "convert" / "train.json").read_text())
    assert 0 < len(train) <= kept and train[0]["conversations"][0]["from"] == "user"
    assert (art / "sft" / "model" / "config.json").is_file()
    scores = json.loads((art / "eval" / "scores.json").read_text())
    assert scores and (art / "eval" / "table.md").is_file()
    assert "| math500 |" in smoke_run[1].stdout  # the run ends with ours vs published


def test_resume_does_no_work_twice(smoke_run):
    home, _, audit = smoke_run
    run_id = audit["run"]["run_id"]
    again = reproduce("all", "--resume", run_id, "--budget", "450", "--scale", "smoke",
                      "--backend", "local", "-y", home=home, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    after = json.loads(reproduce("audit", run_id, "--json", home=home).stdout)
    attempts = {s["stage"]: s["actual"]["attempts"] for s in after["stages"]}
    assert attempts == {s["stage"]: s["actual"]["attempts"] for s in audit["stages"]} == {s: 1 for s in attempts}


def test_one_stage_environment_for_every_stage(smoke_run):
    """Every task has the same setup and the smoke lock: at most one build (none when the per-user cache
    already holds it), and a resumed run adds none."""
    home, _, audit = smoke_run
    logs = home / "runs" / audit["run"]["run_id"] / "logs"
    builds = [p.name for p in logs.glob("*.log") if "::reproduce setup" in p.read_text()]
    assert len(builds) <= 1, builds
