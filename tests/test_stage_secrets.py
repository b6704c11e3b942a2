"""A stage run on this machine gets only the secrets its task declares (as SkyPilot's `secrets:` on a node)."""
import sys
import time

import pytest

from reproduce import tasks
from reproduce.executors.base import RunContext
from reproduce.executors.local import LocalExecutor
from reproduce.executors.stage_env import declared, looks_secret, scrub

PLANTED = {"OPENAI_API_KEY": "sk-planted-1", "HF_TOKEN": "hf_planted_2", "AWS_SECRET_ACCESS_KEY": "aws-planted-3",
           "AWS_ACCESS_KEY_ID": "AKIAPLANTED4", "WANDB_API_KEY": "wandb-planted-5", "GOOGLE_APPLICATION_CREDENTIALS":
           "/planted/6.json", "AZURE_CLIENT_SECRET": "azure-planted-7", "MY_SERVICE_TOKEN": "planted-8",
           "DB_PASSWORD": "planted-9", "GITHUB_TOKEN": "ghp_planted10", "SSH_AUTH_SOCK": "/planted/agent.sock"}
TASK = """\
name: {name}
workdir: .
resources: {{cpus: 1+}}
envs: {{ARTIFACTS: /artifacts, RUN_ID: "", STAGE_EXTRAS: x}}
{secrets}
run: |
  env > "$ARTIFACTS/env.txt"
"""


def test_names_that_look_like_credentials():
    for name in PLANTED:
        assert looks_secret(name), name
    for name in ("PATH", "HOME", "TOKENIZERS_PARALLELISM", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES",
                 "REPRODUCE_HOME", "WANDB_MODE", "PYTHONHASHSEED", "SKYPILOT_NUM_NODES", "LANG"):
        assert not looks_secret(name), name
    env = {**PLANTED, "PATH": "/bin", "TOKENIZERS_PARALLELISM": "false"}
    assert scrub(env, {"HF_TOKEN"}) == {"HF_TOKEN": "hf_planted_2", "PATH": "/bin", "TOKENIZERS_PARALLELISM": "false"}
    assert declared("rewrite", {"envs": {}}) >= {"OPENAI_API_KEY", "OPENAI_BASE_URL"}
    assert declared("convert", {"envs": {}}) == set()
    assert declared("sft", {"secrets": {"HF_TOKEN": "", "WANDB_API_KEY": ""}}) == {"HF_TOKEN", "WANDB_API_KEY"}


@pytest.fixture
def planted(tmp_path, monkeypatch):
    folder = tmp_path / "sky_tasks"
    folder.mkdir()
    (folder / "filter.yaml").write_text(TASK.format(name="filter", secrets="# no secrets: it runs model code"))
    (folder / "generate.yaml").write_text(TASK.format(name="generate", secrets='secrets: {HF_TOKEN: ""}'))
    monkeypatch.setattr(tasks, "TASKS_DIR", folder)
    venv = tmp_path / "ready-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setenv("REPRODUCE_STAGE_VENV", str(venv))
    for k, v in PLANTED.items():
        monkeypatch.setenv(k, v)
    return tmp_path


def _env_seen(tmp_path, stage) -> dict:
    ex = LocalExecutor("smoke", state_dir=tmp_path / "home")
    run = RunContext(run_id="r1", recipe={}, stage=stage, plan={}, artifacts=tmp_path / stage / "artifacts",
                     envs={"KNOB": "1"})
    handle = ex.launch(run)
    deadline = time.time() + 60
    while not ex.poll(handle).done and time.time() < deadline:
        time.sleep(0.05)
    assert ex.poll(handle).state == "SUCCEEDED", ex.poll(handle).message
    lines = (tmp_path / stage / "artifacts" / "env.txt").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_the_filter_gets_no_secret_at_all(planted):
    seen = _env_seen(planted, "filter")
    assert not set(PLANTED) & set(seen), sorted(set(PLANTED) & set(seen))
    assert not any(v in "\n".join(seen.values()) for v in PLANTED.values())
    assert seen["KNOB"] == "1" and seen["RUN_ID"] == "r1" and "PATH" in seen    # the rest still arrives


def test_a_stage_gets_what_its_task_declares_and_no_more(planted):
    seen = _env_seen(planted, "generate")
    assert seen["HF_TOKEN"] == "hf_planted_2"
    assert set(PLANTED) & set(seen) == {"HF_TOKEN"}
