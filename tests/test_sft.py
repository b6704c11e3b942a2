"""sft: the LLaMA-Factory config rendered from the recipe, checkpoint recovery, the launch environment, and
(slow) a real LLaMA-Factory run of the tiny model on CPU, preempted and resumed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reproduce import recipe as recipes
from reproduce.stages import sft

DS = Path(sft.__file__).resolve().parents[2] / "sky_tasks" / "deepspeed"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("WANDB_API_KEY", "RUN_ID", "SKYPILOT_NUM_NODES", "SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS",
                "SKYPILOT_NUM_GPUS_PER_NODE", "FORCE_TORCHRUN", "NNODES", "NODE_RANK", "MASTER_ADDR",
                "MASTER_PORT", "NPROC_PER_NODE"):
        monkeypatch.delenv(var, raising=False)


def test_full_scale_config_is_novaskys(tmp_path):
    cfg = sft.lf_config(recipes.load("sky-t1-32b-preview"), tmp_path)
    assert cfg["model_name_or_path"] == "Qwen/Qwen2.5-32B-Instruct"
    assert cfg["deepspeed"] == str(DS / "ds_z3_offload.json")
    assert (cfg["template"], cfg["cutoff_len"], cfg["learning_rate"], cfg["num_train_epochs"]) == \
        ("qwen", 16384, 1e-5, 3.0)
    assert cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"] * 8 == 96  # the blog's batch
    assert cfg["bf16"] is True and cfg["packing"] is False and cfg["save_steps"] == 100
    assert cfg["dataset"] == "Sky-T1" and cfg["dataset_dir"] == str(tmp_path / "convert")
    assert cfg["output_dir"] == str(tmp_path / "sft" / "checkpoints")
    assert cfg["report_to"] == "none"             # no WANDB_API_KEY here
    assert "resume_from_checkpoint" not in cfg


def test_smoke_scale_config(tmp_path):
    cfg = sft.lf_config(recipes.load("sky-t1-32b-preview", scale="smoke"), tmp_path)
    assert "deepspeed" not in cfg                 # sft.zero_stage: 0 -> one plain process
    assert cfg["model_name_or_path"] == str(tmp_path / "models" / "tiny-student")
    assert cfg["bf16"] is False and cfg["cutoff_len"] == 512 and cfg["report_to"] == "none"


def test_recipe_knobs_map_to_llamafactory_keys(tmp_path, monkeypatch):
    r = recipes.load("sky-t1-32b-preview", sets=[
        "sft.cpu_offload=false", "sft.liger_kernel=true", "sft.packing=true", "sft.gradient_checkpointing=false",
        "sft.num_train_epochs=6", "sft.template=default", "sft.save_steps=25", "convert.dataset_name=mine"])
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key")
    monkeypatch.setenv("RUN_ID", "r7")
    cfg = sft.lf_config(r, tmp_path)
    assert cfg["deepspeed"] == str(DS / "ds_z3.json")
    assert cfg["enable_liger_kernel"] is True and cfg["packing"] is True
    assert cfg["disable_gradient_checkpointing"] is True
    assert (cfg["num_train_epochs"], cfg["template"], cfg["save_steps"], cfg["dataset"]) == (6, "default", 25, "mine")
    assert cfg["report_to"] == "wandb" and cfg["run_name"] == "Sky-T1-r7"
    assert "wandb-key" not in yaml.safe_dump(cfg)  # the key stays in the environment


def test_unsupported_zero_stage_is_exit_2(tmp_path, capsys):
    from reproduce.errors import UserError

    with pytest.raises(UserError, match="sft.zero_stage=2 .*expected one of 0, 3"):   # refused at load
        recipes.load("sky-t1-32b-preview", sets=["sft.zero_stage=2"])
    r = recipes.load("sky-t1-32b-preview")
    r["sft"]["zero_stage"] = 2          # a recipe.yaml written by hand: the stage program refuses it too
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(r))
    assert sft.main(["--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sft.zero_stage=2" in err and "expected 0" in err


def test_latest_complete_checkpoint(tmp_path):
    assert sft.latest_checkpoint(tmp_path) is None
    for step, complete in ((5, True), (10, True), (15, False), (9, True)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert sft.latest_checkpoint(tmp_path).name == "checkpoint-10"   # 15 was cut off mid-save


def test_launch_env_multi_node(monkeypatch):
    monkeypatch.setenv("SKYPILOT_NUM_NODES", "2")
    monkeypatch.setenv("SKYPILOT_NODE_RANK", "1")
    monkeypatch.setenv("SKYPILOT_NODE_IPS", "10.0.0.5\n10.0.0.6\n")
    monkeypatch.setenv("SKYPILOT_NUM_GPUS_PER_NODE", "8")
    env = sft.launch_env({"deepspeed": "x.json"})
    assert (env["NNODES"], env["NODE_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("2", "1", "10.0.0.5", "29501")
    assert env["NPROC_PER_NODE"] == "8" and env["FORCE_TORCHRUN"] == "1"
    assert sft.gpu_count(env) == 16


def test_launch_env_single_cpu_process():
    env = sft.launch_env({})
    assert "FORCE_TORCHRUN" not in env and "NNODES" not in env


def test_dry_run_renders_config_and_resumes(tmp_path, capsys):
    r = recipes.load("sky-t1-32b-preview", scale="smoke")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(r))
    args = ["--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path), "--dry-run"]
    assert sft.main(args) == 2
    assert "run the convert stage first" in capsys.readouterr().err
    (tmp_path / "convert").mkdir()
    (tmp_path / "convert" / "dataset_info.json").write_text("{}")
    ckpt = tmp_path / "sft" / "checkpoints" / "checkpoint-40"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    assert sft.main(args) == 0
    out = capsys.readouterr().out
    assert "llamafactory-cli train" in out and "resuming from checkpoint-40" in out
    rendered = yaml.safe_load((tmp_path / "sft" / "llamafactory.yaml").read_text())
    assert rendered["resume_from_checkpoint"] == str(ckpt)
    assert not (tmp_path / "models").exists()   # a dry run builds nothing


def test_llamafactory_accepts_the_configs(tmp_path):
    """LLaMA-Factory's own argument parser: unknown keys and bad values fail here, offline."""
    pytest.importorskip("llamafactory")
    from llamafactory.hparams import get_train_args

    smoke = sft.lf_config(recipes.load("sky-t1-32b-preview", scale="smoke"), tmp_path)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(dict(smoke))
    assert data_args.template == "qwen" and data_args.cutoff_len == 512 and data_args.packing is False
    assert training_args.deepspeed is None and finetuning_args.stage == "sft"

    full = sft.lf_config(recipes.load("sky-t1-32b-preview"), tmp_path)
    # Not checkable on a CPU-only machine: bf16 needs a GPU, and DeepSpeed needs a torchrun launch.
    assert Path(full.pop("deepspeed")).is_file()
    full["bf16"] = False
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(dict(full))
    assert training_args.gradient_accumulation_steps == 12 and training_args.learning_rate == 1e-5
    assert training_args.save_steps == 100 and training_args.num_train_epochs == 3.0
    assert model_args.disable_gradient_checkpointing is False and model_args.enable_liger_kernel is False


@pytest.mark.slow
def test_trains_tiny_model_on_cpu_and_resumes_after_preemption(tmp_path):
    """Real LLaMA-Factory SFT through sft.py (~1 min): train with checkpoints, lose the newest one mid-upload
    and the final model, run again: it resumes from the last complete checkpoint and finishes."""
    pytest.importorskip("llamafactory")
    a = tmp_path / "A"
    (a / "rewrite").mkdir(parents=True)
    r = recipes.load("sky-t1-32b-preview", scale="smoke", sets=["sft.save_steps=5"])
    (a / "recipe.yaml").write_text(yaml.safe_dump(r))
    (a / "rewrite" / "rewritten.jsonl").write_text("".join(json.dumps({
        "id": f"p{i}", "source": "numina_math", "domain": "math", "prompt": f"What is {i} plus {i}?",
        "response": f"{i} + {i} = {2 * i}", "rewritten": f"<|begin_of_thought|> {i} + {i} <|end_of_thought|> "
        f"<|begin_of_solution|> \\boxed{{{2 * i}}} <|end_of_solution|>", "recheck_correct": True}) + "\n"
        for i in range(12)))
    cmd = [sys.executable, "-m", "reproduce.stages.{}", "--recipe", str(a / "recipe.yaml"), "--artifacts", str(a)]
    run = lambda stage: subprocess.run([c.format(stage) for c in cmd], capture_output=True, text=True, timeout=600)

    assert run("convert").returncode == 0
    first = run("sft")          # builds the tiny student itself (reproduce.stages.smoke.tinymodel)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((a / "sft" / "summary.json").read_text())
    assert summary["global_step"] == 12 and summary["train_samples"] == 12 and summary["epochs"] == 1.0
    assert summary["train_tokens"] > 12 * 20 and summary["tokens_per_s"] > 0
    assert summary["train_runtime"] > 0 and summary["train_samples_per_second"] > 0
    assert summary["final_loss"] > 0 and summary["wall_s"] >= summary["train_runtime"]
    assert summary["gpus"] == 0 and summary["deepspeed"] is None and summary["resumed_from"] is None
    model = a / "sft" / "model"
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert (model / "tokenizer.json").is_file()
    assert not any(p.name.startswith("checkpoint-") for p in model.iterdir())
    ckpts = sorted(p.name for p in (a / "sft" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-10", "checkpoint-12"]              # save_total_limit: 2

    # second run with everything done: nothing to do
    again = run("sft")
    assert again.returncode == 0 and "already done" in again.stdout

    # preemption: the final model never made it, checkpoint-12 was half uploaded
    (a / "sft" / "summary.json").unlink()
    shutil.rmtree(model)
    (a / "sft" / "checkpoints" / "checkpoint-12" / "trainer_state.json").unlink()
    resumed = run("sft")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-10" in resumed.stdout
    summary = json.loads((a / "sft" / "summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-10" and summary["global_step"] == 12
    assert (model / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(model)
    assert AutoModelForCausalLM.from_pretrained(model).config.num_hidden_layers == 2


def test_packing_renders_neat_packing_so_samples_do_not_attend_to_each_other(tmp_path):
    from reproduce import recipe as recipes
    from reproduce.stages.sft import lf_config

    packed = lf_config(recipes.load(sets=["sft.packing=true"]), tmp_path)
    assert packed["packing"] is True and packed["neat_packing"] is True
    assert "neat_packing" not in lf_config(recipes.load(), tmp_path)
