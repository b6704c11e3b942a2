"""sft: render the LLaMA-Factory config from the recipe and train (full SFT, DeepSpeed ZeRO-3 on GPUs).

    python -m reproduce.stages.sft --recipe A/recipe.yaml --artifacts A [--dry-run]

Reads `A/convert/` (train.json + dataset_info.json). Writes `A/sft/llamafactory.yaml` (what ran),
`A/sft/checkpoints/checkpoint-N/` every `sft.save_steps` steps (on clouds A is the bucket mount, so a
preempted job resumes from the newest complete checkpoint), `A/sft/model/` (the final model) and
`A/sft/summary.json`. Multi-node: SkyPilot's SKYPILOT_NODE_IPS / NODE_RANK / NUM_NODES become
LLaMA-Factory's NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT and it starts torchrun on every node.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SKY_TASKS = Path(__file__).resolve().parents[2] / "sky_tasks"
TEMPLATE = SKY_TASKS / "llamafactory" / "sft.yaml"
DEEPSPEED = SKY_TASKS / "deepspeed"
MASTER_PORT = "29501"  # NovaSky's launch line (skythought/train/README.md); must be equal on every node

# recipe `sft:` key -> LLaMA-Factory key, copied as is
SAME_NAME = ("template", "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
             "learning_rate", "num_train_epochs", "lr_scheduler_type", "warmup_ratio", "bf16", "save_steps",
             "packing")


from reproduce.stages.lib.common import BadInput, load_recipe, run_main, write_progress


def lf_config(recipe: dict, artifacts: str | Path) -> dict:
    """The LLaMA-Factory train config for this recipe: sky_tasks/llamafactory/sft.yaml with the recipe's
    `sft:` values and this run's paths. Pure: touches no files, so tests can check it with
    `llamafactory.hparams.get_train_args`."""
    artifacts = Path(artifacts).resolve()
    sft = recipe.get("sft") or {}
    cfg = yaml.safe_load(TEMPLATE.read_text())

    cfg["model_name_or_path"] = str(student_path(recipe, artifacts))
    for key in SAME_NAME:
        if key in sft:
            cfg[key] = sft[key]
    cfg.update(preference_keys(sft))
    if cfg.get("packing"):
        # Packed samples must not attend to each other: NovaSky trained unpacked, one sample per sequence.
        cfg["neat_packing"] = True
    if "liger_kernel" in sft:
        cfg["enable_liger_kernel"] = bool(sft["liger_kernel"])
    if "gradient_checkpointing" in sft:
        cfg["disable_gradient_checkpointing"] = not sft["gradient_checkpointing"]

    ds = deepspeed_config(sft)
    if ds is None:
        cfg.pop("deepspeed", None)
    else:
        cfg["deepspeed"] = str(ds)

    cfg["dataset"] = (recipe.get("convert") or {}).get("dataset_name", cfg["dataset"])
    cfg["dataset_dir"] = str(artifacts / "convert")
    cfg["output_dir"] = str(artifacts / "sft" / "checkpoints")
    cfg["preprocessing_num_workers"] = max(1, min(cfg["preprocessing_num_workers"], os.cpu_count() or 1))
    # wandb only with a key (a SkyPilot secret); smoke scale never reports anywhere.
    wandb = bool(os.environ.get("WANDB_API_KEY")) and recipe.get("scale") != "smoke"
    cfg["report_to"] = "wandb" if wandb else "none"
    if os.environ.get("RUN_ID"):
        cfg["run_name"] = f"{cfg['run_name']}-{os.environ['RUN_ID']}"
    return cfg


# sft.method -> LLaMA-Factory's stage and default pref_loss (LLaMA-Factory hparams/finetuning_args.py: SimPO is
# the dpo stage with pref_loss simpo, which drops the reference model)
METHODS = {"sft": ("sft", None), "dpo": ("dpo", "sigmoid"), "simpo": ("dpo", "simpo")}


def preference_keys(sft: dict) -> dict:
    """LLaMA-Factory's own keys for `sft.method`: stage, pref_loss, pref_beta (dpo/simpo), simpo_gamma (simpo).
    Preference data is pairs, not packed sequences: packing is off."""
    method = sft.get("method", "sft")
    if method not in METHODS:
        raise BadInput(f"sft.method={method!r}: expected one of {', '.join(METHODS)}")
    stage, loss = METHODS[method]
    if stage == "sft":
        return {"stage": "sft"}
    out = {"stage": stage, "pref_loss": sft.get("pref_loss", loss), "packing": False}
    if "pref_beta" in sft:
        out["pref_beta"] = sft["pref_beta"]
    if out["pref_loss"] == "simpo" and "simpo_gamma" in sft:
        out["simpo_gamma"] = sft["simpo_gamma"]
    return out


def student_path(recipe: dict, artifacts: Path) -> Path | str:
    """The model to fine-tune: the tiny local model at smoke scale, else the recipe's student (a hub id or
    a local folder)."""
    if recipe.get("scale") == "smoke":
        return artifacts / "models" / "tiny-student"
    student = ((recipe.get("models") or {}).get("student") or {}).get("id")
    if not student:
        raise BadInput("recipe has no models.student.id: set it to a Hugging Face id or a local folder")
    return student


def deepspeed_config(sft: dict) -> Path | None:
    stage = sft.get("zero_stage", 3)
    if stage in (0, None, False):
        return None  # one process (smoke scale on a CPU)
    if stage != 3:
        raise BadInput(f"sft.zero_stage={stage!r}: expected 0 (no DeepSpeed) or 3 (ZeRO-3; "
                       "sft.cpu_offload picks the offload variant)")
    return DEEPSPEED / ("ds_z3_offload.json" if sft.get("cpu_offload", True) else "ds_z3.json")


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest `checkpoint-N` that finished saving. The HF Trainer writes trainer_state.json last
    (transformers Trainer._save_checkpoint), so a folder without it was cut off by a preemption."""
    done = [p for p in output_dir.glob("checkpoint-*")
            if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def launch_env(cfg: dict) -> dict:
    """Environment for `llamafactory-cli train`: torchrun across SkyPilot's nodes, or a plain process."""
    env = dict(os.environ)
    nodes = int(env.get("SKYPILOT_NUM_NODES", "1") or 1)
    if nodes > 1:
        env["NNODES"] = str(nodes)
        env["NODE_RANK"] = env.get("SKYPILOT_NODE_RANK", "0")
        env["MASTER_ADDR"] = env.get("SKYPILOT_NODE_IPS", "127.0.0.1").split()[0]
        env["MASTER_PORT"] = env.get("MASTER_PORT", MASTER_PORT)
    if env.get("SKYPILOT_NUM_GPUS_PER_NODE"):
        env["NPROC_PER_NODE"] = env["SKYPILOT_NUM_GPUS_PER_NODE"]
    if nodes > 1 or "deepspeed" in cfg or int(env.get("NPROC_PER_NODE", "0") or 0) > 1:
        env["FORCE_TORCHRUN"] = "1"  # DeepSpeed needs a distributed launch even on one process
        if int(env.get("NPROC_PER_NODE") or 0) < 1:
            # LLaMA-Factory's default is this node's GPU count: 0 on a CPU node (SkyPilot says 0 or nothing),
            # and `torchrun --nproc_per_node 0` fails; a CPU node runs one process (gloo)
            env["NPROC_PER_NODE"] = str(max(1, local_gpus()))
        # torchrun lives beside the interpreter running us (a venv not on PATH, in local runs)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch, no GPUs
        return 0


def gpu_count(env: dict) -> int:
    per_node = env.get("SKYPILOT_NUM_GPUS_PER_NODE")
    if per_node:
        return int(per_node) * int(env.get("SKYPILOT_NUM_NODES", "1") or 1)
    return local_gpus()


def export_model(output_dir: Path, model_dir: Path) -> None:
    """The Trainer leaves the final model at the top of output_dir; copy it (not the checkpoints) out."""
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in output_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, tmp / item.name)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)


def summarize(cfg: dict, output_dir: Path, wall_s: float, gpus: int, resumed_from: str | None) -> dict:
    results = _read_json(output_dir / "train_results.json")
    state = _read_json(output_dir / "trainer_state.json")
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    tokens = state.get("num_input_tokens_seen") or results.get("num_input_tokens_seen")
    runtime = results.get("train_runtime")
    samples = len(_read_json(Path(cfg["dataset_dir"]) / "train.json", default=[]))
    return {
        "stage": "sft",
        "model": cfg["model_name_or_path"],
        "template": cfg["template"],
        "train_samples": samples,
        "epochs": results.get("epoch", state.get("epoch")),
        "global_step": state.get("global_step"),
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / runtime, 2) if tokens and runtime else None,
        "effective_tokens_per_sec": results.get("effective_tokens_per_sec"),
        "train_runtime": runtime,
        "train_samples_per_second": results.get("train_samples_per_second"),
        "train_steps_per_second": results.get("train_steps_per_second"),
        "train_loss": results.get("train_loss"),
        "final_loss": losses[-1] if losses else None,
        "wall_s": round(wall_s, 2),
        "gpus": gpus,
        "nodes": int(os.environ.get("SKYPILOT_NUM_NODES", "1") or 1),
        "deepspeed": Path(cfg["deepspeed"]).name if cfg.get("deepspeed") else None,
        "resumed_from": resumed_from,
    }


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {} if default is None else default


def run(recipe_path: Path, artifacts: Path, dry_run: bool = False) -> int:
    recipe = load_recipe(recipe_path)

    sft_dir = artifacts / "sft"
    model_dir = sft_dir / "model"
    summary_path = sft_dir / "summary.json"
    if summary_path.is_file() and (model_dir / "config.json").is_file() and not dry_run:
        print(f"sft: already done ({model_dir}); remove {summary_path} to train again")
        return 0

    cfg = lf_config(recipe, artifacts)
    if not (Path(cfg["dataset_dir"]) / "dataset_info.json").is_file():
        raise BadInput(f"{cfg['dataset_dir']}/dataset_info.json is missing: run the convert stage first")
    output_dir = Path(cfg["output_dir"])
    ckpt = latest_checkpoint(output_dir) if output_dir.is_dir() else None
    if ckpt is not None:
        cfg["resume_from_checkpoint"] = str(ckpt)  # preemption recovery: same step, optimizer and data order

    env = launch_env(cfg)
    rank0 = env.get("SKYPILOT_NODE_RANK", "0") in ("", "0")
    sft_dir.mkdir(parents=True, exist_ok=True)
    if rank0:
        config_path = sft_dir / "llamafactory.yaml"
    else:  # other nodes render the same config locally: a bucket mount is not a shared filesystem
        config_path = Path(tempfile.mkdtemp(prefix="reproduce-sft-")) / "llamafactory.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    command = ["llamafactory-cli", "train", str(config_path)]
    cli = Path(sys.executable).parent / "llamafactory-cli"
    if cli.exists():
        command[0] = str(cli)
    launch = " ".join(f"{k}={env[k]}" for k in ("FORCE_TORCHRUN", "NNODES", "NODE_RANK", "MASTER_ADDR",
                                                  "MASTER_PORT", "NPROC_PER_NODE") if k in env)
    print(f"sft: {launch + ' ' if launch else ''}{' '.join(command)}"
          + (f"  (resuming from {ckpt.name})" if ckpt else ""), flush=True)
    if dry_run:
        return 0

    model_path = Path(cfg["model_name_or_path"])
    if recipe.get("scale") == "smoke" and not (model_path / "config.json").is_file():
        from reproduce.stages.smoke.tinymodel import build_tiny_model

        build_tiny_model(model_path, train_on=None)

    start = time.time()
    proc = _train(command, env, output_dir, sft_dir if rank0 else None)
    if proc.returncode != 0:
        print(f"sft: llamafactory-cli train exited with {proc.returncode}", file=sys.stderr)
        return 1
    if not rank0:
        return 0
    export_model(output_dir, model_dir)
    summary = summarize(cfg, output_dir, time.time() - start, gpu_count(env), ckpt.name if ckpt else None)
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.rename(summary_path)
    print(f"sft: {summary['global_step']} steps, {summary['train_tokens']} tokens, "
          f"final loss {summary['final_loss']}, model in {model_dir}")
    return 0


def _train(command: list[str], env: dict, output_dir: Path, progress_dir: Path | None):
    """Run the trainer; meanwhile turn LLaMA-Factory's trainer_log.jsonl (current_steps / total_steps, one line
    per logging step) into progress.json, the optimizer steps the pipeline forecasts from."""
    import threading

    proc = subprocess.Popen(command, env=env)
    stop = threading.Event()

    def watch():
        log = output_dir / "trainer_log.jsonl"
        while not stop.wait(5.0):
            try:
                last = log.read_text().strip().splitlines()[-1]
                entry = json.loads(last)
                write_progress(progress_dir, int(entry["current_steps"]), int(entry["total_steps"]), "steps")
            except (OSError, ValueError, IndexError, KeyError, TypeError):
                continue

    watcher = threading.Thread(target=watch, daemon=True) if progress_dir is not None else None
    if watcher:
        watcher.start()
    try:
        proc.wait()
    finally:
        stop.set()
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reproduce sft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True, type=Path, help="the resolved recipe (ARTIFACTS/recipe.yaml)")
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts folder or bucket mount")
    parser.add_argument("--dry-run", action="store_true", help="render the config and print the command only")
    return run_main("sft", parser, lambda args: run(args.recipe, args.artifacts.resolve(), args.dry_run), argv)


if __name__ == "__main__":
    sys.exit(main())
