"""The stage environments' locks (sky_tasks/locks/, `make lock`): every package pinned with a hash, in step
with sky_tasks/requirements/, one uv version everywhere, and the versions the plan names."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from reproduce import locks
from reproduce.errors import UserError

REPO = Path(__file__).resolve().parents[1]
REQS = REPO / "sky_tasks" / "requirements"
ENVS = ("smoke", "sft", "generate", "filter")


def entries(text: str) -> list[str]:
    """One string per requirement of a lock: its line plus its continuation lines."""
    out: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith((" ", "\t")) and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line.strip())
    return out


@pytest.mark.parametrize("env", ENVS + ("build",))
def test_every_package_is_pinned_with_a_hash(env):
    text = locks.lock_path(env).read_text()
    assert "make lock" in text.splitlines()[1]               # uv's header names the command that wrote it
    reqs = entries(text)
    assert reqs
    for req in reqs:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]+\])?==\S+ ", req), req
        assert "--hash=sha256:" in req, req


@pytest.mark.parametrize("env", ENVS + ("build",))
def test_lock_holds_every_requirement(env):
    """A requirement added without `make lock` fails here, not at the next launch."""
    wanted = [re.split(r"[<>=!~\[; ]", line.strip())[0] for line in (REQS / f"{env}.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    pinned = locks.all_versions(env)
    missing = [w for w in wanted if locks._canonical(w) not in pinned]
    assert not missing, f"{env}: not in sky_tasks/locks/{env}.txt: {missing}; run `make lock`"


def test_llamafactory_and_vllm_never_share_a_lock():
    for env in ENVS:
        assert not {"vllm", "llamafactory"} <= set(locks.all_versions(env)), env


def test_locked_versions_name_what_each_stage_runs():
    sft = locks.locked_versions("sft")
    assert list(sft) == ["llamafactory", "transformers", "torch", "deepspeed"]       # no vLLM in training
    assert sft["llamafactory"] == "0.9.5"
    gen = locks.locked_versions("generate")
    assert list(gen) == ["vllm", "transformers", "torch"]
    assert locks.locked_versions("smoke")["transformers"] == sft["transformers"]      # smoke trains as sft does
    assert locks.locked_versions("filter") == {}
    assert locks.locked_versions("sft", names=("DeepSpeed", "Liger_Kernel")) == \
        {"DeepSpeed": "0.19.8", "Liger_Kernel": "0.8.5"}                               # PEP 503 names


def test_torch_respects_the_lock_constraints():
    cap = re.search(r"^torch<=(\S+)", (REQS / "constraints.txt").read_text(), re.M).group(1)
    key = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])
    for env in ("smoke", "sft", "generate"):
        assert key(locks.all_versions(env)["torch"]) <= key(cap), env


def test_unknown_lock_is_one_line_user_error():
    with pytest.raises(UserError) as err:
        locks.locked_versions("nope")
    assert "make lock" in str(err.value) and "\n" not in str(err.value)


def test_one_uv_version_everywhere():
    make = re.search(r"^UV_VERSION := (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"uv=={make}" in deps
    for stage in ("generate", "sft", "eval", "filter"):     # every task's setup runs the one script
        assert "bash sky_tasks/setup.sh" in yaml.safe_load((REPO / "sky_tasks" / f"{stage}.yaml").read_text())["setup"]
    script = (REPO / "sky_tasks" / "setup.sh").read_text()
    assert set(re.findall(r"uv[-=]+(\d+\.\d+\.\d+)", script)) == {make}


def test_controller_needs_what_its_commands_import():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"].split("#")[0].strip() == ">=3.11"     # LLaMA-Factory 0.9.5: 3.11+
    assert any(d.startswith("matplotlib") for d in project["dependencies"])   # reproduce audit --plot
