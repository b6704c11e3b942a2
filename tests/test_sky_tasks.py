"""The shipped sky_tasks/: every task YAML through SkyPilot's own parser, and the configs sft.py renders from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

TASKS = Path(__file__).resolve().parents[1] / "sky_tasks"
STAGES = ["generate", "filter", "sft", "eval"]
GPU_STAGES = ["generate", "sft", "eval"]
PROGRAM = {"generate": "generate", "filter": "filter", "sft": "sft", "eval": "evaluate"}
SECRETS = {"HF_TOKEN": "hf_SECRETtoken123", "WANDB_API_KEY": "wandbSECRET456", "OPENAI_API_KEY": "sk-SECRET789"}


@pytest.fixture
def sky(home):
    import sky

    return sky


def raw(stage: str) -> dict:
    return yaml.safe_load((TASKS / f"{stage}.yaml").read_text())


@pytest.mark.parametrize("stage", STAGES)
def test_loads_with_skypilot_parser(sky, stage):
    task = sky.Task.from_yaml(str(TASKS / f"{stage}.yaml"))
    assert task.name == f"reproduce-{stage}"
    assert {"ARTIFACTS", "BUCKET", "STAGE_EXTRAS", "RUN_ID"} <= set(task.envs)
    assert task.envs["ARTIFACTS"] == "/artifacts"
    assert task.envs["STAGE_EXTRAS"] == {"eval": "generate"}.get(stage, stage)
    assert (TASKS / "requirements" / f"{task.envs['STAGE_EXTRAS']}.txt").is_file()
    assert f"python -m reproduce.stages.{PROGRAM[stage]} --recipe $ARTIFACTS/recipe.yaml --artifacts $ARTIFACTS" \
        in task.run
    assert task.workdir == "."
    storage = task.storage_mounts["/artifacts"]
    assert storage.mode.value == "MOUNT_CACHED"


def test_setup_is_one_text_for_all_stages():
    # the local executor caches stage environments by a hash of `setup`: one text, one smoke environment
    setups = {raw(s)["setup"] for s in STAGES}
    assert len(setups) == 1
    setup = setups.pop()
    assert "bash sky_tasks/setup.sh sky_tasks/locks/$STAGE_EXTRAS.txt" in setup    # one script, given the lock
    script = (TASKS / "setup.sh").read_text()
    assert "--require-hashes" in script and '-r "$lock"' in script                # the lock, hashed


def test_setup_script_refuses_a_missing_lock_in_one_line(tmp_path):
    import shutil
    import subprocess

    shutil.copytree(TASKS / "locks", tmp_path / "sky_tasks" / "locks")
    out = subprocess.run(["bash", str(TASKS / "setup.sh"), "sky_tasks/locks/nope.txt"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("setup.sh: no lock sky_tasks/locks/nope.txt; locks: ") and "smoke.txt" in out.stderr


@pytest.mark.parametrize("stage", GPU_STAGES)
def test_gpu_stages_by_hand_ask_for_the_recipe_accelerator_on_spot(sky, stage):
    from reproduce import recipe

    task = sky.Task.from_yaml(str(TASKS / f"{stage}.yaml"))
    (r,) = task.resources               # launched by hand: one request; the plan renders the fallbacks
    section = {"eval": "eval"}.get(stage, stage)
    assert r.accelerators == {recipe.load()[section]["accelerator"].split(":")[0]: 8}
    assert r.use_spot is True
    assert r.cloud is None and r.region is None      # no cloud pinned: the plan pins it (reproduce.tasks.place)
    assert r.disk_size >= 512


def test_sft_is_a_recoverable_managed_job(sky):
    task = sky.Task.from_yaml(str(TASKS / "sft.yaml"))
    for r in task.resources:
        assert r.job_recovery == {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 3}
    assert task.num_nodes == 1
    storage = task.storage_mounts["/artifacts"]
    assert storage.file_mount_type.value == "MODEL_CHECKPOINT_RW"
    # more nodes is a plain override; sft.py turns SKYPILOT_NODE_IPS into torchrun's master address
    cfg = raw("sft")
    cfg["num_nodes"] = 2
    assert sky.Task.from_yaml_config(cfg).num_nodes == 2


def test_filter_is_a_cpu_node(sky):
    task = sky.Task.from_yaml(str(TASKS / "filter.yaml"))
    (r,) = task.resources
    assert r.accelerators is None
    assert r.cpus == "32+"
    assert r.use_spot is False


@pytest.mark.parametrize("bucket", ["s3://my-bucket/runs/r1", "gs://other-bucket"])
def test_env_overrides_reach_the_bucket_mount(sky, bucket):
    task = sky.Task.from_yaml_config(raw("sft"), env_overrides=[("BUCKET", bucket), ("RUN_ID", "r1")])
    assert task.envs["BUCKET"] == bucket and task.envs["RUN_ID"] == "r1"
    assert task.storage_mounts["/artifacts"].source == bucket
    task.update_envs({"STAGE_EXTRAS": "smoke"})
    assert task.envs["STAGE_EXTRAS"] == "smoke"


@pytest.mark.parametrize("stage", STAGES)
def test_secrets_declared_empty_and_never_rendered(sky, stage, monkeypatch):
    text = (TASKS / f"{stage}.yaml").read_text()
    cfg = raw(stage)
    declared = cfg.get("secrets") or {}
    assert all(v in (None, "") for v in declared.values())          # names only, never values
    assert not set(SECRETS) & set(cfg["envs"])                         # keys are secrets, not envs
    if stage in GPU_STAGES:
        assert "HF_TOKEN" in declared and "OPENAI_API_KEY" not in declared
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
        assert value not in text
    import os

    overrides = [(k, os.environ[k]) for k in declared]
    task = sky.Task.from_yaml_config(cfg, env_overrides=[("BUCKET", "s3://b")], secrets_overrides=overrides)
    assert {k: v.get_secret_value() for k, v in task.secrets.items()} == {k: SECRETS[k] for k in declared}
    # What may be shown or stored: SkyPilot's redacted form. (task.to_yaml_config() with no argument is
    # the launch payload and does carry the values: never print or save it.)
    rendered = yaml.safe_dump(task.to_yaml_config(use_user_specified_yaml=True))
    rendered += json.dumps(task.envs)
    for value in SECRETS.values():
        assert value not in rendered
    assert not any(value in task.setup + task.run for value in SECRETS.values())


def test_llamafactory_template_is_novaskys_config():
    cfg = yaml.safe_load((TASKS / "llamafactory" / "sft.yaml").read_text())
    # sky-t1.md section 2 (qwen2_full_sft.yaml), with 0.9.5's template name
    expected = {"model_name_or_path": "Qwen/Qwen2.5-32B-Instruct", "stage": "sft", "finetuning_type": "full",
                "dataset": "Sky-T1", "template": "qwen", "cutoff_len": 16384, "max_samples": 1000000,
                "save_steps": 100, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 12,
                "learning_rate": 1.0e-5, "num_train_epochs": 3.0, "lr_scheduler_type": "cosine",
                "warmup_ratio": 0.1, "bf16": True, "ddp_timeout": 180000000, "packing": False}
    assert {k: cfg[k] for k in expected} == expected


def test_deepspeed_configs():
    off = json.loads((TASKS / "deepspeed" / "ds_z3_offload.json").read_text())
    on_gpu = json.loads((TASKS / "deepspeed" / "ds_z3.json").read_text())
    z = off["zero_optimization"]
    assert z["stage"] == 3
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": True} == z["offload_param"]
    assert z["overlap_comm"] and z["contiguous_gradients"] and z["stage3_gather_16bit_weights_on_model_save"]
    assert z["sub_group_size"] == z["stage3_max_live_parameters"] == z["stage3_max_reuse_distance"] == 1e9
    assert off["bf16"] == {"enabled": "auto"}
    assert "offload_optimizer" not in on_gpu["zero_optimization"]
    assert "offload_param" not in on_gpu["zero_optimization"]
    del z["offload_optimizer"], z["offload_param"]
    assert off == on_gpu                         # otherwise the same file
