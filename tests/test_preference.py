"""Preference training (sft.method dpo | simpo): pairs written in LLaMA-Factory's ranking layout, its own keys
rendered, the cost model counting both sequences (and DPO's reference model), and (stage venv) the tiny model
trained with SimPO by LLaMA-Factory on this CPU."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from costmodel import estimates, memory
from reproduce import recipe as recipes
from reproduce.errors import UserError
from reproduce.stages import convert, sft


def trace(pid, answer, source="prm800k", recheck=True):
    return {"id": f"{pid}#{len(answer)}", "problem_id": pid, "source": source, "domain": "math",
            "prompt": f"What is {pid}?", "response": answer, "rewritten": answer, "recheck_correct": recheck}


def test_pairs_take_the_shortest_and_longest_answer_of_one_problem():
    records = [trace("a", "x" * 10), trace("a", "x" * 50), trace("a", "x" * 30),
               trace("b", "only one"),                                   # one answer: no pair
               trace("c", "y" * 5), trace("c", "y" * 90, recheck=False),   # the rewrite broke one: one left
               trace("d", "same"), trace("d", "same")]                    # two identical answers are one
    pairs, s = convert.preference_pairs(records, "SYS", {"chosen": "shortest", "rejected": "longest",
                                                         "min_correct": 2})
    assert len(pairs) == 1 and s["pairs"] == 1 and s["too_few_answers"] == 3 and s["dropped_recheck"] == 1
    p = pairs[0]
    assert p["system"] == "SYS" and p["conversations"] == [{"from": "user", "value": "What is a?"}]
    assert p["chosen"] == {"from": "assistant", "value": "x" * 10}
    assert p["rejected"] == {"from": "assistant", "value": "x" * 50}
    flipped, _ = convert.preference_pairs(records, "SYS", {"chosen": "longest", "rejected": "shortest"})
    assert flipped[0]["chosen"]["value"] == "x" * 50
    assert convert.preference_pairs(records, "S", {"min_correct": 3})[1]["pairs"] == 1   # a: 3 answers


def test_convert_writes_a_ranking_dataset_for_simpo(tmp_path):
    r = recipes.load(sets=["sft.method=simpo", "convert.decontaminate.enabled=false"])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(r))
    (tmp_path / "rewrite").mkdir()
    (tmp_path / "rewrite" / "rewritten.jsonl").write_text(
        "".join(json.dumps(t) + "\n" for t in [trace("a", "short"), trace("a", "a much longer answer")]))
    assert convert.main(["--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "convert" / "dataset_info.json").read_text())["Sky-T1"]
    assert info["ranking"] is True and info["formatting"] == "sharegpt"
    assert info["columns"] == {"messages": "conversations", "system": "system", "chosen": "chosen",
                               "rejected": "rejected"}
    rows = json.loads((tmp_path / "convert" / "train.json").read_text())
    assert [x["chosen"]["value"] for x in rows] == ["short"]
    # plain SFT of the same traces: no ranking, one record per problem
    assert "ranking" not in convert.dataset_info_entry()


def test_convert_without_any_pair_is_exit_2(tmp_path, capsys):
    r = recipes.load(sets=["sft.method=dpo", "convert.decontaminate.enabled=false"])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(r))
    (tmp_path / "rewrite").mkdir()
    (tmp_path / "rewrite" / "rewritten.jsonl").write_text(json.dumps(trace("a", "one")) + "\n")
    assert convert.main(["--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path)]) == 2
    assert "no preference pair" in capsys.readouterr().err


def test_lf_config_renders_llamafactorys_own_keys(tmp_path):
    plain = sft.lf_config(recipes.load(), tmp_path)
    assert plain["stage"] == "sft" and "pref_loss" not in plain
    simpo = sft.lf_config(recipes.load(sets=["sft.method=simpo", "sft.pref_beta=2.0", "sft.simpo_gamma=0.3",
                                             "sft.packing=true"]), tmp_path)
    assert simpo["stage"] == "dpo" and simpo["pref_loss"] == "simpo"
    assert simpo["pref_beta"] == 2.0 and simpo["simpo_gamma"] == 0.3
    assert simpo["packing"] is False and "neat_packing" not in simpo   # LLaMA-Factory packs SFT only
    dpo = sft.lf_config(recipes.load(sets=["sft.method=dpo"]), tmp_path)
    assert dpo["stage"] == "dpo" and dpo["pref_loss"] == "sigmoid" and "simpo_gamma" not in dpo


def test_pref_loss_must_agree_with_the_method():
    r = recipes.load()
    r["sft"].update(method="simpo", pref_loss="sigmoid")
    from reproduce import recipe_schema

    with pytest.raises(UserError, match="expected one of simpo for sft.method=simpo"):
        recipe_schema.check(r)
    with pytest.raises(UserError, match="sft.method.*expected one of sft, dpo, simpo"):
        recipes.load(sets=["sft.method=orpo"])
    with pytest.raises(UserError, match="expected the other end"):
        recipes.load(sets=["sft.method=simpo", "convert.pairs.rejected=shortest"])


def test_pairs_cost_twice_the_tokens_and_dpo_a_reference_forward():
    def det(method):
        r = recipes.load(sets=[f"sft.method={method}"])
        return estimates.sft_hours(r["sft"], r["models"]["student"], "H100", 8, 1)

    (h_sft, d_sft), (h_simpo, d_simpo), (h_dpo, d_dpo) = det("sft"), det("simpo"), det("dpo")
    assert d_simpo["train_tokens"] == 2 * d_sft["train_tokens"]
    # a step is 96 pairs; twice the FLOPs, at preference training's own (Flash-calibrated) MFU
    assert h_simpo == pytest.approx(2 * h_sft * d_sft["mfu"] / d_simpo["mfu"]) and d_simpo["steps"] == d_sft["steps"]
    assert h_dpo == pytest.approx(h_simpo * 4 / 3)                  # one more forward, of the reference model


def test_pairs_double_the_activations_and_dpo_holds_a_reference_model():
    def mem(method, **changes):
        return memory.fits(memory.sft_config(recipes.load(sets=[f"sft.method={method}"]), **changes))

    sft_b, simpo_b = mem("sft")[1], mem("simpo")[1]
    assert simpo_b["logits"] == pytest.approx(2 * sft_b["logits"])     # chosen + rejected in one batch
    assert simpo_b["reference_model"] == 0
    offload = mem("dpo")[1]
    assert offload["reference_model"] == 0                               # ZeRO-3 offload: on the host
    assert offload["node_cpu_ram_gib"] == pytest.approx(sft_b["node_cpu_ram_gib"] * 20 / 18)
    ok, on_gpu, text = mem("dpo", cpu_offload=False, accelerator="H200:8")
    assert on_gpu["reference_model"] == pytest.approx(2 * 32.8e9 / 8 / memory.GIB) and "reference" in text


LF_CHECK = """
import json, sys
import transformers.training_args as ta
ta.is_torch_bf16_gpu_available = lambda: True
from llamafactory.hparams import get_train_args
from reproduce import recipe as recipes
from reproduce.stages import sft
cfg = sft.lf_config(recipes.load("sky-t1-32b-flash"), sys.argv[1])
cfg.pop("deepspeed")            # DeepSpeed needs a torchrun launch; the JSON is checked by test_sft
_, data, train, fin, _ = get_train_args(cfg)
print(json.dumps({"stage": fin.stage, "loss": fin.pref_loss, "beta": fin.pref_beta, "gamma": fin.simpo_gamma,
                  "ref": fin.use_ref_model, "cutoff": data.cutoff_len, "epochs": train.num_train_epochs}))
"""


def test_flash_config_passes_llamafactorys_parser(tmp_path):
    pytest.importorskip("llamafactory")
    env = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29571",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", LF_CHECK, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {**got, "stage": "dpo", "loss": "simpo", "ref": False, "cutoff": 16384, "epochs": 1.0}


@pytest.mark.slow
def test_tiny_model_trains_with_simpo_on_cpu(tmp_path):
    """Real LLaMA-Factory SimPO through convert and sft.py: pairs from the kept traces, the dpo stage with
    pref_loss simpo, a trained model out."""
    pytest.importorskip("llamafactory")
    a = tmp_path / "A"
    (a / "rewrite").mkdir(parents=True)
    r = recipes.load("sky-t1-32b-flash", scale="smoke")
    (a / "recipe.yaml").write_text(yaml.safe_dump(r))
    rows = [trace(f"p{i}", ans) for i in range(6)
            for ans in (f"{i}+{i}={2 * i}", f"Let me think. {i} plus {i}. Wait, check again: {2 * i}.")]
    (a / "rewrite" / "rewritten.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    cmd = [sys.executable, "-m", "reproduce.stages.{}", "--recipe", str(a / "recipe.yaml"), "--artifacts", str(a)]
    run = lambda stage: subprocess.run([c.format(stage) for c in cmd], capture_output=True, text=True, timeout=600)
    conv = run("convert")
    assert conv.returncode == 0, conv.stderr
    assert "6 simpo pairs" in conv.stdout
    trained = run("sft")
    assert trained.returncode == 0, trained.stderr[-3000:]
    rendered = yaml.safe_load((a / "sft" / "llamafactory.yaml").read_text())
    assert rendered["stage"] == "dpo" and rendered["pref_loss"] == "simpo"
    summary = json.loads((a / "sft" / "summary.json").read_text())
    assert summary["global_step"] >= 1 and summary["train_samples"] == 6
    assert (a / "sft" / "model" / "model.safetensors").is_file()
    log = [json.loads(x) for x in (a / "sft" / "checkpoints" / "trainer_log.jsonl").read_text().splitlines()]
    assert log and all("loss" in x for x in log if "loss" in x)
