"""Model shapes are data: ids resolve through costmodel/data/models.yaml (or a local config.json), and FLOPs,
memory, throughput and tensor-parallel feasibility follow the shape."""
from __future__ import annotations

import json

import pytest

from costmodel import estimates, memory, models
from costmodel.errors import BadInput
from reproduce import recipe as recipes
from reproduce.errors import UserError


def test_every_row_states_a_source_and_adds_up_to_its_parameter_count():
    for mid, row in models.known().items():
        assert "config.json" in row["source"] or mid == "tiny-qwen2", mid
        s = models.resolve(mid)
        if not s["experts"]:                          # a dense shape's weights are its stated params_b
            assert models.dense_params(s, tied=mid == "tiny-qwen2") / 1e9 == pytest.approx(s["params_b"], rel=0.01 if mid != "tiny-qwen2" else 0.1)
    r1 = models.resolve("deepseek-ai/DeepSeek-R1")
    assert (r1["params_b"], r1["active_params_b"], r1["experts"], r1["weight_bytes"]) == (671, 37, 256, 1)


def test_short_and_long_forms_resolve_alike_and_overrides_win():
    assert recipes.load(sets=["models.student=Qwen/Qwen2.5-7B-Instruct"])["models"]["student"] == \
        recipes.load(sets=["models.student.id=Qwen/Qwen2.5-7B-Instruct"])["models"]["student"]
    s = models.resolve({"id": "Qwen/Qwen2.5-7B-Instruct", "layers": 30})
    assert s["layers"] == 30 and s["hidden"] == 3584 and "overrides layers" in s["source"]
    assert models.resolve(models.resolve("Qwen/Qwen2.5-14B-Instruct")) == models.resolve("Qwen/Qwen2.5-14B-Instruct")


def test_a_local_config_json_gives_the_shape(tmp_path):
    cfg = {"num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = models.resolve({"id": "my/model", "config": str(tmp_path / "config.json")})
    assert s["params_b"] == pytest.approx(7.62, rel=0.01) and s["source"].endswith("config.json")
    assert models.resolve(str(tmp_path))["layers"] == 28          # a local folder with its config.json
    moe = dict(cfg, n_routed_experts=64, num_experts_per_tok=6)
    (tmp_path / "config.json").write_text(json.dumps(moe))
    with pytest.raises(BadInput, match="missing params_b"):       # the dense formula would miscount experts
        models.resolve({"id": "moe", "config": str(tmp_path / "config.json")})


@pytest.mark.parametrize("sets, needle", [
    (["models.student=nobody/unknown-7b"], "has no known shape (missing params_b"),
    (["models.student={id: nobody/unknown, params_b: 7}"], "missing layers"),
    (["models.teacher={id: Qwen/QwQ-32B-Preview, colour: red}"], "unknown recipe key 'models.teacher.colour'"),
    (["models.student={id: x, params_b: 7, active_params_b: 9, layers: 2, hidden: 64, intermediate: 128, "
      "heads: 4, kv_heads: 2, vocab: 512}"], "active_params_b 9 exceeds"),
])
def test_bad_model_entries_are_one_line(sets, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")) as e:
        recipes.load(sets=sets)
    assert "\n" not in str(e.value)
    if "unknown-7b" in sets[0]:
        assert "Qwen/Qwen2.5-7B-Instruct" in str(e.value)            # the known ids are listed


def test_a_7b_student_changes_flops_hours_and_memory():
    big, small = recipes.load(), recipes.load(sets=["models.student=Qwen/Qwen2.5-7B-Instruct"])
    hb, db = estimates.sft_hours(big["sft"], big["models"]["student"], "H100", 8, 1)
    hs, ds = estimates.sft_hours(small["sft"], small["models"]["student"], "H100", 8, 1)
    assert ds["flops"] < db["flops"] / 4 and hs < hb / 4
    mb = memory.fits(memory.sft_config(big, cpu_offload=False, accelerator="H200:8"))[1]
    ms = memory.fits(memory.sft_config(small, cpu_offload=False, accelerator="H200:8"))[1]
    assert ms["optimizer"] == pytest.approx(mb["optimizer"] * 7.62 / 32.8)
    assert ms["logits"] == mb["logits"]                            # same vocabulary, same tokens


def test_moe_flops_use_active_parameters_and_memory_the_total():
    r = recipes.load(sets=["models.student=deepseek-ai/DeepSeek-R1"])
    _, det = estimates.sft_hours(r["sft"], r["models"]["student"], "H100", 8, 1)
    dense_37 = estimates.sft_flops(37, 61, 7168, r["sft"]["samples"], r["sft"]["mean_sample_tokens"],
                                   r["sft"]["cutoff_len"], r["sft"]["num_train_epochs"])[0]
    assert det["flops"] == pytest.approx(dense_37)
    parts = memory.fits(memory.sft_config(r))[1]
    assert parts["node_cpu_ram_gib"] * memory.GIB == pytest.approx(18 * 671e9)   # every expert offloaded
    fast = estimates.decode_tok_s_per_gpu(671, "H100", 8, active_b=37)[0]
    assert fast == pytest.approx(estimates.decode_tok_s_per_gpu(37, "H100", 8)[0])


def test_self_hosted_r1_is_refused_naming_the_fix():
    with pytest.raises(UserError) as e:
        from reproduce import plan

        plan.build_plan(recipes.load(sets=["models.teacher=deepseek-ai/DeepSeek-R1"]))
    text = str(e.value)
    assert "stage generate does not fit in memory" in text
    assert "--set generate.accelerator=H200:8 --set generate.tensor_parallel=8" in text
    assert "generate.backend=api" in text
    ok, parts, arithmetic = memory.vllm_fits(models.resolve("deepseek-ai/DeepSeek-R1"), "H200", 8, 16734, 2600)
    assert ok and parts["weights_gib"] == pytest.approx(671e9 / 8 / memory.GIB)    # FP8: 1 byte a weight
    assert "576" not in arithmetic and parts["kv_tokens_per_replica"] > 16734


def test_tensor_parallel_must_divide_the_heads():
    seven = models.resolve("Qwen/Qwen2.5-7B-Instruct")                 # 28 heads
    assert not memory.vllm_fits(seven, "H100", 8, 16734, 2600)[0]
    assert memory.vllm_fits(seven, "H100", 4, 16734, 2600)[0]
