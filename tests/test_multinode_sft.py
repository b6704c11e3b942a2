"""Multi-node SFT for real: the sft stage program run as two SkyPilot "nodes" on this machine.

SkyPilot starts the task's `run:` on every node with SKYPILOT_NUM_NODES, SKYPILOT_NODE_RANK and
SKYPILOT_NODE_IPS (one IP a line, the head node first); sft.py turns them into LLaMA-Factory's NNODES /
NODE_RANK / MASTER_ADDR / MASTER_PORT and LLaMA-Factory starts torchrun on each node. Here both "nodes" are
local processes that meet at 127.0.0.1 (torch.distributed over gloo, CPU), on the tiny smoke model.
Runs in the stage environment: .venv-stage/bin/python -m pytest tests/test_multinode_sft.py
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reproduce import recipe as recipes
from reproduce.stages import sft

LAUNCH_VARS = ("WANDB_API_KEY", "RUN_ID", "SKYPILOT_NUM_NODES", "SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS",
               "SKYPILOT_NUM_GPUS_PER_NODE", "FORCE_TORCHRUN", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
               "NPROC_PER_NODE")
SAMPLES = 12


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)


def skypilot_vars(rank: int, nodes: int = 2, ips: str = "127.0.0.1\n127.0.0.1\n") -> dict:
    """What SkyPilot sets on each node of a task (SKYPILOT_NODE_IPS: one IP a line, in rank order)."""
    return {"SKYPILOT_NUM_NODES": str(nodes), "SKYPILOT_NODE_RANK": str(rank), "SKYPILOT_NODE_IPS": ips}


def set_vars(monkeypatch, **env) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


# ---- the launch environment, without training ----------------------------------------------------------
@pytest.mark.parametrize("per_node", [None, "0"])
def test_a_cpu_node_runs_one_torchrun_process(monkeypatch, per_node):
    """LLaMA-Factory defaults NPROC_PER_NODE to the GPU count, 0 on a CPU node, which torchrun refuses."""
    monkeypatch.setattr(sft, "local_gpus", lambda: 0)
    set_vars(monkeypatch, **skypilot_vars(1, ips="10.0.0.5\n10.0.0.6\n"))
    if per_node is not None:
        monkeypatch.setenv("SKYPILOT_NUM_GPUS_PER_NODE", per_node)
    env = sft.launch_env({})
    assert (env["FORCE_TORCHRUN"], env["NNODES"], env["NODE_RANK"], env["NPROC_PER_NODE"]) == ("1", "2", "1", "1")
    assert env["MASTER_ADDR"] == "10.0.0.5"        # the head node: the first line of SKYPILOT_NODE_IPS
    assert sft.gpu_count(env) == 0


def test_gpu_nodes_run_one_process_per_gpu(monkeypatch):
    monkeypatch.setattr(sft, "local_gpus", lambda: 8)
    set_vars(monkeypatch, **skypilot_vars(0, nodes=4, ips="10.0.0.9\n10.0.0.8\n10.0.0.7\n10.0.0.6"))
    env = sft.launch_env({"deepspeed": "ds_z3_offload.json"})
    assert (env["NNODES"], env["NODE_RANK"], env["MASTER_ADDR"], env["NPROC_PER_NODE"]) == ("4", "0", "10.0.0.9", "8")
    assert env["MASTER_PORT"] == sft.MASTER_PORT   # equal on every node


def test_other_ranks_keep_their_config_off_the_shared_bucket(tmp_path, monkeypatch, capsys):
    """Rank 1 renders the same config into a local temporary folder: ARTIFACTS is a bucket mount, and two
    nodes writing ARTIFACTS/sft/llamafactory.yaml would race."""
    a = tmp_path / "A"
    (a / "convert").mkdir(parents=True)
    (a / "convert" / "dataset_info.json").write_text("{}")
    (a / "recipe.yaml").write_text(yaml.safe_dump(recipes.load("sky-t1-32b-preview", scale="smoke")))
    set_vars(monkeypatch, **skypilot_vars(1))
    assert sft.main(["--recipe", str(a / "recipe.yaml"), "--artifacts", str(a), "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert "NNODES=2 NODE_RANK=1 MASTER_ADDR=127.0.0.1" in line and "NPROC_PER_NODE=" in line
    rendered = Path(line.split()[-1])
    assert rendered.name == "llamafactory.yaml" and a not in rendered.parents
    assert yaml.safe_load(rendered.read_text()) == sft.lf_config(recipes.load("sky-t1-32b-preview", scale="smoke"), a)
    assert not (a / "sft" / "llamafactory.yaml").exists()


# ---- two nodes, for real -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(a: Path) -> None:
    """The smoke recipe, 12 rewritten traces through the real convert stage, and the tiny student built
    once up front (at smoke scale each node would otherwise build it into the same folder at once)."""
    (a / "rewrite").mkdir(parents=True)
    r = recipes.load("sky-t1-32b-preview", scale="smoke", sets=["sft.save_steps=5"])
    (a / "recipe.yaml").write_text(yaml.safe_dump(r))
    (a / "rewrite" / "rewritten.jsonl").write_text("".join(json.dumps({
        "id": f"p{i}", "source": "numina_math", "domain": "math", "prompt": f"What is {i} plus {i}?",
        "response": f"{i} + {i} = {2 * i}", "rewritten": f"<|begin_of_thought|> {i} + {i} <|end_of_thought|> "
        f"<|begin_of_solution|> \\boxed{{{2 * i}}} <|end_of_solution|>", "recheck_correct": True}) + "\n"
        for i in range(SAMPLES)))
    convert = subprocess.run([sys.executable, "-m", "reproduce.stages.convert", "--recipe", str(a / "recipe.yaml"),
                              "--artifacts", str(a)], capture_output=True, text=True, timeout=120)
    assert convert.returncode == 0, convert.stderr[-2000:]
    build = subprocess.run([sys.executable, "-c", "import sys; from reproduce.stages.smoke.tinymodel import "
                            "build_tiny_model; build_tiny_model(sys.argv[1])", str(sft.student_path(r, a))],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-2000:]


@pytest.mark.slow
def test_two_nodes_train_one_model_with_the_data_split_between_them(tmp_path):
    """~75-90 s here (2 cores): each node pays LLaMA-Factory's imports twice (launcher, then torchrun's
    worker); the training itself is ~7 s."""
    pytest.importorskip("llamafactory")
    a = tmp_path / "A"
    prepare(a)
    init_weights = (a / "models" / "tiny-student" / "model.safetensors").read_bytes()
    port = str(free_port())   # not sft.MASTER_PORT: other tests on this machine may hold it
    cmd = [sys.executable, "-m", "reproduce.stages.sft", "--recipe", str(a / "recipe.yaml"), "--artifacts", str(a)]
    logs = {rank: (tmp_path / f"node{rank}.log").open("w+") for rank in (0, 1)}
    # SKYPILOT_NUM_GPUS_PER_NODE unset: a CPU node (sft.py must still start one process per node)
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    procs = {rank: subprocess.Popen(cmd, env={**base, **skypilot_vars(rank), "MASTER_PORT": port},
                                    stdout=logs[rank], stderr=subprocess.STDOUT) for rank in (0, 1)}
    try:
        codes = {rank: p.wait(timeout=400) for rank, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    out = {}
    for rank, f in logs.items():
        f.seek(0)
        out[rank] = f.read()
        f.close()
    assert codes == {0: 0, 1: 0}, f"node 0:\n{out[0][-3000:]}\nnode 1:\n{out[1][-3000:]}"

    for rank in (0, 1):
        assert f"NNODES=2 NODE_RANK={rank} MASTER_ADDR=127.0.0.1 MASTER_PORT={port} NPROC_PER_NODE=1" in out[rank]
        assert f"Multi-node training enabled: num nodes: 2, node rank: {rank}" in out[rank]
    both = out[0] + out[1]
    assert "Process rank: 0, world size: 2" in both and "Process rank: 1, world size: 2" in both
    assert "model in" in out[0] and "model in" not in out[1]    # only the head node exports and summarises

    summary = json.loads((a / "sft" / "summary.json").read_text())
    assert summary["nodes"] == 2 and summary["gpus"] == 0 and summary["deepspeed"] is None
    # 12 samples, 1 per device per step, 2 ranks: 6 optimizer steps (one node alone takes 12, test_sft.py)
    assert summary["train_samples"] == SAMPLES and summary["epochs"] == 1.0
    assert summary["global_step"] == SAMPLES // 2
    assert summary["train_tokens"] >= SAMPLES * 20 and summary["tokens_per_s"] > 0
    state = json.loads((a / "sft" / "checkpoints" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == SAMPLES // 2                                       # logging_steps: 1
    vocab = json.loads((a / "models" / "tiny-student" / "config.json").read_text())["vocab_size"]
    # a random tiny model starts near uniform over its vocabulary: loss ~ ln(vocab)
    assert all(math.isfinite(x) and abs(x - math.log(vocab)) < 1.0 for x in losses), (losses, vocab)
    assert summary["final_loss"] == losses[-1] and math.isfinite(summary["train_loss"])

    model = a / "sft" / "model"
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
    assert (model / "model.safetensors").read_bytes() != init_weights              # it trained
    ckpts = sorted(p.name for p in (a / "sft" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-5", "checkpoint-6"]                   # save_steps 5, then the last step
    rendered = yaml.safe_load((a / "sft" / "llamafactory.yaml").read_text())
    assert rendered["output_dir"] == str(a / "sft" / "checkpoints")
