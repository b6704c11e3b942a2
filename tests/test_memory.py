"""The memory model: NovaSky's configuration fits, the ones that need more memory than a GPU has do not."""
import pytest

from costmodel import memory
from costmodel.errors import BadInput
from reproduce import recipe as recipes

GIB = memory.GIB


def sft(gpu=None, **changes):
    r = recipes.load()
    return memory.fits(memory.sft_config(r, **changes), gpu)


def test_qwen25_32b_shape_adds_up_to_32_8b_parameters():
    s = memory.shape(recipes.load()["models"]["student"])
    layer = (2 * s["hidden"] * s["hidden"] + 2 * s["hidden"] * s["kv_heads"] * s["head_dim"]
             + 3 * s["hidden"] * s["intermediate"])
    total = s["layers"] * layer + 2 * s["vocab"] * s["hidden"]  # untied embedding and lm_head
    assert total / 1e9 == pytest.approx(32.8, rel=0.01)


def test_novasky_zero3_offload_fits_h100_and_the_node_ram():
    ok, b, arithmetic = sft()
    assert ok and b["fits_gpu"] and b["fits_cpu"]
    assert b["params"] == b["grads"] == b["optimizer"] == 0  # all on CPU
    # 18 B/param on the host: fp32 master, m, v, fp32 grads, bf16 params
    assert b["node_cpu_ram_gib"] * GIB == pytest.approx(18 * 32.8e9)
    assert "fits" in arithmetic and "CPU offload" in arithmetic


def test_zero3_without_offload_at_16k_does_not_fit_h100_even_with_liger():
    ok, b, arithmetic = sft(cpu_offload=False)
    assert not ok
    # model states alone: 16 B x 32.8B / 8 GPUs = 61 GiB of the card's 79.6
    assert b["params"] + b["grads"] + b["optimizer"] == pytest.approx(16 * 32.8e9 / 8 / GIB)
    assert b["total_gib"] > b["capacity_gib"]
    assert "does NOT fit" in arithmetic
    assert not sft(cpu_offload=False, liger_kernel=True)[0]
    assert not sft(cpu_offload=False, accelerator="A100-80GB:8")[0]


def test_zero3_without_offload_fits_h200_and_two_h100_nodes():
    assert sft(cpu_offload=False, accelerator="H200:8")[0]
    ok, b, _ = sft(cpu_offload=False, num_nodes=2)
    assert ok
    one = sft(cpu_offload=False)[1]
    assert b["optimizer"] == pytest.approx(one["optimizer"] / 2)  # sharded over 16 GPUs


def test_liger_removes_the_fp32_logits_buffer():
    plain = sft(cpu_offload=False, accelerator="H200:8")[1]
    liger = sft(cpu_offload=False, accelerator="H200:8", liger_kernel=True)[1]
    assert plain["logits"] * GIB == pytest.approx(152064 * 16384 * 4)
    assert liger["logits"] < plain["logits"] / 20
    assert liger["activations"] < plain["activations"]


def test_without_gradient_checkpointing_activations_overflow_every_gpu():
    for gpu in ("H100:8", "H200:8"):
        ok, b, _ = sft(accelerator=gpu, gradient_checkpointing=False)
        assert not ok and b["activations"] > 200


def test_parts_add_up_to_the_total():
    _, b, _ = sft(cpu_offload=False, accelerator="H200:8")
    parts = ("params", "gathered_params", "grads", "optimizer", "activations", "logits", "overhead")
    # the logits and the recomputed layer are two phases of a step: the smaller is not added to the peak
    assert b["phase_overlap_gib"] > 0
    assert sum(b[p] for p in parts) - b["phase_overlap_gib"] == pytest.approx(b["total_gib"])


def test_vllm_tp1_on_80gb_leaves_too_little_kv_cache_tp2_does_not():
    teacher = recipes.load()["models"]["teacher"]
    ok1, b1, why = memory.vllm_fits(teacher, "H100", 1, 16734, 2600)
    ok2, b2, _ = memory.vllm_fits(teacher, "H100", 2, 16734, 2600)
    assert not ok1 and "< 30" in why
    assert ok2 and b2["seqs_in_flight_per_gpu"] > 50
    assert memory.vllm_fits(teacher, "H200", 1, 16734, 2600)[0]
    # eval's 32k max_tokens does not fit one H100's KV cache at all
    assert not memory.vllm_fits(teacher, "H100", 1, 33118, 2850)[1]["fits_max_len"]


def test_unknown_gpu_is_bad_input():
    with pytest.raises(BadInput, match="V100"):
        sft(gpu="V100")


# ---- published runs: what trained must fit, what ran out of memory must not ------------------------------------

def test_s1_published_configuration_fits_16_h100s_without_offload():
    """s1 (Muennighoff et al., arXiv 2501.19393, sec. 4.1 / D: Qwen2.5-32B-Instruct, 16 H100s, PyTorch FSDP, ~26 min)
    with the training script's settings (github.com/simplescaling/s1 train/sft_multinode.sh, read 2026-12-07 in a
    fork at the same path: --block_size=32768, micro batch 1, fsdp "full_shard auto_wrap", gradient checkpointing,
    bf16): FSDP full_shard shards like ZeRO-3. It trained, so the memory model must accept it."""
    ok, b, arithmetic = sft(cpu_offload=False, cutoff_len=32768, num_nodes=2, zero_stage=3)
    assert ok, arithmetic
    assert b["total_gib"] <= b["usable_gib"]
    # ... and not by a wide margin: the same run on one node of 8 does not fit (model states alone 61 GiB)
    assert not sft(cpu_offload=False, cutoff_len=32768, num_nodes=1)[0]


def test_llamafactory_6755_zero3_offload_on_744_gb_of_host_ram_is_refused():
    """github.com/hiyouga/LlamaFactory/issues/6755 (2025-01-25): full SFT of Qwen2.5-32B-Instruct with
    ds_z3_offload_config, batch 1, one H100 NVL (96 GB), 744 GB of host RAM: killed by the OOM killer (dmesg).
    DeepSpeed's own estimate (18 B x Psi x 1.5 buffers) is 885 GB: the memory model refuses it on that host."""
    ok, b, arithmetic = sft(accelerator="H100:1", node_ram_gib=744e9 / GIB)
    assert not ok and b["fits_gpu"] and not b["fits_cpu"]
    assert b["node_cpu_ram_peak_gib"] * GIB == pytest.approx(18 * 32.8e9 * 1.5)
    assert "> 693 GiB on the priced instance" in arithmetic


def test_novasky_offload_fits_the_box_they_used():
    """NovaSky's 8xH100 box had 1.73 TB of RAM (github.com/NovaSky-AI/SkyThought/issues/32, 2025-01-18)."""
    ok, b, _ = sft(node_ram_gib=1.73e12 / GIB)
    assert ok and b["fits_cpu"]
