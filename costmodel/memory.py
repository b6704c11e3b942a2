"""Will it fit? Bytes per GPU of a full-SFT configuration (DeepSpeed ZeRO) or of a vLLM replica, with the
arithmetic shown, so the planner only prices configurations that can run.

SFT, per GPU (D = GPUs per node x nodes, Psi = parameters):
    model states   2 Psi bf16 params + 2 Psi bf16 grads + 12 Psi fp32 master/m/v      (ZeRO paper, sec. 3.1)
                   ZeRO-1 shards the 12 Psi, ZeRO-2 also the grads, ZeRO-3 also the params, each / D;
                   offload moves the optimizer (and with ZeRO-3 the params) to CPU RAM
    gathered       ZeRO-3 all-gathers a layer or two at a time (stage3_max_live_parameters caps it)
    activations    gradient checkpointing: every layer's input (S x h x 2 B) + one layer recomputed
                   (and its gradients) during backward; without it: every layer's saved tensors
    logits         S x vocab x 4 B fp32 for the loss, unless Liger's fused linear cross-entropy
    overhead       CUDA context, NCCL, DeepSpeed buckets, allocator fragmentation
vLLM, per GPU of a replica of TP GPUs:  weights 2 Psi / TP + runtime, the rest of gpu_memory_utilization is KV cache.
"""
from __future__ import annotations

from costmodel.errors import BadInput

GIB = 1024 ** 3
MIB = 1024 ** 2

# Usable memory per GPU: what nvidia-smi reports as total, not the marketing "80 GB".
GPU_MEMORY = {
    "H100": (81559 * MIB, "H100 SXM5 80GB: nvidia-smi total 81,559 MiB"),
    "H200": (143771 * MIB, "H200 SXM 141GB: nvidia-smi total 143,771 MiB"),
    "A100-80GB": (81920 * MIB, "A100 SXM4 80GB: nvidia-smi total 81,920 MiB"),
}

# Architecture of the models the recipes name: costmodel/data/models.yaml, resolved by costmodel.models.

# ZeRO (Rajbhandari et al. 2020, arXiv 1910.02054, sec. 3.1): mixed-precision Adam keeps 2 Psi bf16 params,
# 2 Psi bf16 grads and K = 12 Psi of fp32 master params, momentum and variance.
PARAM_BYTES, GRAD_BYTES, OPTIM_BYTES = 2, 2, 12
# CPU side of ZeRO-Offload: fp32 master/m/v (12) + fp32 grad partitions for the CPU Adam (4) + bf16 params when
# offload_param is on (2): DeepSpeed stage3 keeps fp32 grads on CPU for DeepSpeedCPUAdam.
CPU_OFFLOAD_BYTES = OPTIM_BYTES + 4
# LLaMA-Factory's ds_z3_config.json and ds_z3_offload_config.json: stage3_max_live_parameters 1e9.
MAX_LIVE_PARAMS = 1e9
# CUDA context and cuBLAS workspace (~0.6 GiB), NCCL buffers for 8-16 ranks (~1 GiB), DeepSpeed reduce and
# prefetch buckets (~0.5 GiB), caching-allocator fragmentation with variable-length batches (~2 GiB): our estimate.
SFT_OVERHEAD = 4 * GIB
# Keep 5% of the GPU free: activation sizes vary with kernels and library versions, and the caching allocator
# fragments with variable-length batches; a plan that needs 96% of the card is a plan that OOMs (our margin).
HEADROOM = 0.05
# fp32 logits for the loss: transformers' ForCausalLMLoss upcasts logits to float before cross-entropy.
LOGIT_BYTES = 4
# Host RAM of 8-GPU nodes when the priced instance's own figure is not known (`node_ram_gib` in sft_config
# carries the catalog row's MemoryGiB): AWS p5.48xlarge 2,048 GiB, p4de.24xlarge 1,152 GiB, GCP a3-highgpu-8g
# 1,872 GB, DataCrunch 8xH100 1,480 GB (SkyPilot catalog): we assume at least 1,000 GiB.
NODE_RAM = 1000 * GIB
# DeepSpeed's own estimate of ZeRO-3 offload host memory (deepspeed/runtime/zero/stage3.py,
# estimate_zero3_model_states_mem_needs, zero_init on as under LLaMA-Factory): 18 B x Psi / nodes x
# additional_buffer_factor 1.5 (pinned buffers, partition copies). With it, LLaMA-Factory issue #6755 (Qwen2.5-32B,
# ZeRO-3 offload, one H100 NVL, 744 GB host RAM: killed by the kernel OOM killer) is refused, as it should be.
OFFLOAD_BUFFER_FACTOR = 1.5
# vLLM: --gpu-memory-utilization 0.9 (its default); runtime = activations of the profile run, CUDA graphs and
# sampler buffers, ~3 GiB for a 32B model (our estimate from vLLM's startup log lines "model weights took ...").
VLLM_UTILIZATION = 0.9
VLLM_RUNTIME = 3 * GIB
# costmodel.estimates' 1,300 tok/s/GPU is derived for TP=2 on H100 with ~300k cached tokens per pair, ~60
# sequences in flight per GPU at the recipe's lengths. A replica with room for fewer than half that many is
# batch-starved: decode would be slower than assumed, so such a placement is not offered.
VLLM_MIN_SEQS_PER_GPU = 30


def gpu_memory(gpu: str) -> tuple[int, str]:
    if gpu not in GPU_MEMORY:
        raise BadInput(f"no memory figure for GPU {gpu!r}: expected one of {', '.join(GPU_MEMORY)}")
    return GPU_MEMORY[gpu]


def shape(model) -> dict:
    """Architecture of a recipe's model entry (costmodel.models.resolve), plus params and head_dim. A mixture of
    experts holds every expert: params is the total, not the active count."""
    from costmodel import models

    s = models.resolve(model)
    s["params"] = s["params_b"] * 1e9
    s["head_dim"] = s["hidden"] // s["heads"]
    return s


def layer_activation_bytes_per_token(s: dict, liger: bool) -> int:
    """Tensors autograd saves in one Qwen2 decoder layer, per token, bf16, with flash-attention (no S x S
    scores): RMSNorm in/out x2, q, k, v, rotated q and k, attention output; SwiGLU gate, up, silu(gate) and
    their product (4 x intermediate). Liger's fused RMSNorm and SwiGLU recompute the norm output and silu, so
    they save 2 fewer hidden-sized and 2 fewer intermediate-sized tensors. Our count from the module code."""
    h, kv = s["hidden"], s["kv_heads"] * s["head_dim"]
    hidden_sized = (5 if liger else 7) * h + 3 * kv
    mlp = (2 if liger else 4) * s["intermediate"]
    return 2 * (hidden_sized + mlp)


def sft_config(recipe: dict, **changes) -> dict:
    """The fields of a recipe's `sft` section (plus changes) that decide memory, with the student's shape."""
    sft = {**recipe["sft"], **changes}
    from costmodel.estimates import accelerator

    name, count = accelerator(sft["accelerator"])
    return {"gpu": name, "gpus_per_node": count, "nodes": int(sft["num_nodes"]),
            "zero_stage": int(sft["zero_stage"]), "cpu_offload": bool(sft["cpu_offload"]),
            "cutoff_len": int(sft["cutoff_len"]), "batch": int(sft["per_device_train_batch_size"]),
            "gradient_checkpointing": bool(sft.get("gradient_checkpointing", True)),
            "liger_kernel": bool(sft["liger_kernel"]), "shape": shape(recipe["models"]["student"]),
            "method": sft["method"], "node_ram_gib": sft.get("node_ram_gib")}


def fits(config: dict, gpu: str | None = None) -> tuple[bool, dict, str]:
    """(fits, bytes per GPU by part plus node CPU RAM, arithmetic) for an `sft_config` on `gpu`."""
    gpu = gpu or config["gpu"]
    capacity, capacity_source = gpu_memory(gpu)
    s, zero, offload = config["shape"], config["zero_stage"], config["cpu_offload"]
    if offload and zero not in (1, 2, 3):
        raise BadInput(f"cpu_offload needs ZeRO stage 1, 2 or 3, got stage {zero}")
    psi, d = s["params"], config["gpus_per_node"] * config["nodes"]
    method = config.get("method", "sft")
    # LLaMA-Factory's pairwise collator puts chosen and rejected in one batch: twice the sequences per step
    pairwise = 2 if method in ("dpo", "simpo") else 1
    tokens = config["batch"] * config["cutoff_len"] * pairwise
    layer_params = psi / s["layers"]

    params = 0.0 if (zero == 3 and offload) else PARAM_BYTES * psi / (d if zero == 3 else 1)
    grads = 0.0 if offload else GRAD_BYTES * psi / (d if zero >= 2 else 1)
    optim = 0.0 if offload else OPTIM_BYTES * psi / (d if zero >= 1 else 1)
    # ZeRO-3 gathers the running layer and prefetches the next, up to stage3_max_live_parameters.
    gathered = PARAM_BYTES * min(2 * layer_params, MAX_LIVE_PARAMS) if zero == 3 else 0.0
    per_layer = layer_activation_bytes_per_token(s, config["liger_kernel"]) * tokens
    if config["gradient_checkpointing"]:
        checkpoints = s["layers"] * tokens * s["hidden"] * 2
        # backward recomputes one layer and holds its activations and their gradients at once
        held, recompute = checkpoints, 2 * per_layer
        act_why = (f"{s['layers']} layers x {tokens:,} tok x {s['hidden']} x 2 B checkpoints + 2 x one layer "
                   f"({per_layer / GIB:.2f} GiB) recomputed")
    else:
        held, recompute = s["layers"] * per_layer, 0.0
        act_why = f"{s['layers']} layers x {per_layer / GIB:.2f} GiB saved"
    activations = held + recompute
    if config["liger_kernel"]:  # fused linear cross-entropy: one chunk of ~tokens x hidden fp32
        logits, logit_why = tokens * s["hidden"] * 4, "Liger fused linear cross-entropy (chunked, no logits)"
    else:
        logits, logit_why = tokens * s["vocab"] * LOGIT_BYTES, f"{tokens:,} tok x {s['vocab']:,} vocab x 4 B fp32"
    # DPO's frozen reference model: bf16 weights, sharded (ZeRO-3) or offloaded with the policy's, no grads/optimizer
    ref = 0.0
    if method == "dpo" and not (zero == 3 and offload):
        ref = PARAM_BYTES * psi / (d if zero == 3 else 1)
    parts = {"params": params, "gathered_params": gathered, "grads": grads, "optimizer": optim,
             "reference_model": ref, "activations": activations, "logits": logits, "overhead": SFT_OVERHEAD}
    # The loss's fp32 logits live at the end of the forward (and their gradient at the start of the backward),
    # freed before the first layer is recomputed: the peak is the larger of the two phases, not their sum.
    # Without it s1's published run (Qwen2.5-32B, 32,768-token blocks, 16 H100s, no offload; arXiv 2501.19393)
    # would need 93 GiB per GPU; it trained.
    overlap = min(recompute, logits)
    total = sum(parts.values()) - overlap
    cpu = 0.0
    ref_cpu = PARAM_BYTES if (method == "dpo" and zero == 3 and offload) else 0
    if offload:
        cpu = (CPU_OFFLOAD_BYTES + (PARAM_BYTES if zero == 3 else 0) + ref_cpu) * psi / config["nodes"]
    cpu_peak = cpu * OFFLOAD_BUFFER_FACTOR if zero == 3 else cpu
    node_ram = config["node_ram_gib"] * GIB if config.get("node_ram_gib") else NODE_RAM
    ram_source = (f"{node_ram / GIB:,.0f} GiB on the priced instance" if config.get("node_ram_gib")
                  else f"{NODE_RAM / GIB:,.0f} GiB assumed per node")
    usable = capacity * (1 - HEADROOM)
    ok_gpu, ok_cpu = total <= usable, cpu_peak <= node_ram
    breakdown = {**{k: v / GIB for k, v in parts.items()}, "total_gib": total / GIB, "capacity_gib": capacity / GIB,
                 "usable_gib": usable / GIB, "node_cpu_ram_gib": cpu / GIB, "node_cpu_ram_peak_gib": cpu_peak / GIB,
                 "node_ram_assumed_gib": NODE_RAM / GIB, "node_ram_gib": node_ram / GIB, "gpu": gpu,
                 "phase_overlap_gib": overlap / GIB,
                 "fits_gpu": ok_gpu, "fits_cpu": ok_cpu}
    lines = [
        f"ZeRO-{zero}{' + CPU offload' if offload else ''}, {d} x {gpu}, {psi / 1e9:.1f}B params, "
        f"{tokens:,} tokens/GPU, checkpointing {'on' if config['gradient_checkpointing'] else 'off'}, "
        f"Liger {'on' if config['liger_kernel'] else 'off'}"
        + (f", {method}: chosen + rejected = {pairwise} sequences per sample" if pairwise > 1 else ""),
        f"  params    {PARAM_BYTES} B x Psi {_where(params, d if zero == 3 else 1)} = {params / GIB:6.1f} GiB",
        f"  grads     {GRAD_BYTES} B x Psi {_where(grads, d if zero >= 2 else 1)} = {grads / GIB:6.1f} GiB",
        f"  optimizer {OPTIM_BYTES} B x Psi {_where(optim, d if zero >= 1 else 1)} = {optim / GIB:6.1f} GiB",
        f"  gathered  ZeRO-3 live layers = {gathered / GIB:6.1f} GiB",
        *([f"  reference DPO's frozen model, {PARAM_BYTES} B x Psi "
           f"{'on CPU (offload)' if ref == 0 else _where(ref, d if zero == 3 else 1)} = {ref / GIB:6.1f} GiB"]
          if method == "dpo" else []),
        f"  activations {act_why} = {activations / GIB:6.1f} GiB",
        f"  logits    {logit_why} = {logits / GIB:6.1f} GiB",
        f"  overhead  CUDA/NCCL/buckets/fragmentation = {SFT_OVERHEAD / GIB:6.1f} GiB",
        *([f"  peak      logits and the recomputed layer never coexist: - {overlap / GIB:6.1f} GiB"] if overlap else []),
        f"  total {total / GIB:.1f} GiB {'<=' if ok_gpu else '>'} {usable / GIB:.1f} GiB = {1 - HEADROOM:.0%} of "
        f"{capacity / GIB:.1f} GiB ({capacity_source})"
        f" -> {'fits' if ok_gpu else 'does NOT fit'}",
    ]
    if offload:
        factor = f" x {OFFLOAD_BUFFER_FACTOR} DeepSpeed buffers" if zero == 3 else ""
        lines.append(f"  node CPU RAM {CPU_OFFLOAD_BYTES + (PARAM_BYTES if zero == 3 else 0) + ref_cpu} B x Psi / "
                     f"{config['nodes']} node(s){factor} = {cpu_peak / GIB:,.0f} GiB {'<=' if ok_cpu else '>'} "
                     f"{ram_source}")
    return ok_gpu and ok_cpu, breakdown, "\n".join(lines)


def _where(on_gpu: float, shards: int) -> str:
    return "on CPU (offload)" if on_gpu == 0 else f"/ {shards} GPU{'s' if shards > 1 else ''}"


def vllm_fits(model: dict, gpu: str, tp: int, max_model_len: int, mean_context: float) -> tuple[bool, dict, str]:
    """Whether one vLLM replica over `tp` GPUs holds the weights and enough KV cache: at least one sequence of
    `max_model_len` (vLLM refuses to start otherwise) and VLLM_MIN_SEQS_PER_GPU sequences of `mean_context`
    tokens in flight (the batch the decode throughput assumes)."""
    capacity, capacity_source = gpu_memory(gpu)
    s = shape(model)
    if tp < 1 or s["heads"] % tp:
        return False, {"tp": tp, "need_gib": float("inf"), "usable_gib": VLLM_UTILIZATION * capacity / GIB}, \
            f"TP={tp} does not divide {s['heads']} attention heads"
    weights = s["weight_bytes"] * s["params"] / tp      # bf16: 2 B; checkpoints shipped in FP8 (DeepSeek-R1): 1 B
    kv_budget = VLLM_UTILIZATION * capacity - weights - VLLM_RUNTIME
    if s.get("kv_cache_dim"):
        # multi-head latent attention: one compressed latent per token per layer, bf16, on every TP rank
        kv_per_token = s["layers"] * s["kv_cache_dim"] * 2
    else:
        # K and V, every layer, bf16; KV heads split across TP ranks (replicated when TP > KV heads).
        kv_per_token = 2 * s["layers"] * s["kv_heads"] * s["head_dim"] * 2 / min(tp, s["kv_heads"])
    kv_tokens = max(kv_budget, 0) / kv_per_token
    seqs_per_gpu = kv_tokens / mean_context / tp
    ok_len, ok_batch = kv_tokens >= max_model_len, seqs_per_gpu >= VLLM_MIN_SEQS_PER_GPU
    # What one GPU of the replica needs: weights, runtime and the KV cache of whichever is larger, one sequence
    # of max_model_len or the batch the throughput assumes; vLLM may use VLLM_UTILIZATION of the card.
    wanted_tokens = max(max_model_len, VLLM_MIN_SEQS_PER_GPU * mean_context * tp)
    need = weights + VLLM_RUNTIME + wanted_tokens * kv_per_token
    breakdown = {"gpu": gpu, "tp": tp, "weights_gib": weights / GIB, "runtime_gib": VLLM_RUNTIME / GIB,
                 "need_gib": need / GIB, "usable_gib": VLLM_UTILIZATION * capacity / GIB,
                 "kv_cache_gib": max(kv_budget, 0) / GIB, "kv_tokens_per_replica": kv_tokens,
                 "seqs_in_flight_per_gpu": seqs_per_gpu, "capacity_gib": capacity / GIB,
                 "fits_max_len": ok_len, "enough_batch": ok_batch}
    arithmetic = (f"{s['id']} ({s['params_b']:g}B x {s['weight_bytes']} B) TP={tp} on {gpu}: {VLLM_UTILIZATION} x {capacity / GIB:.1f} GiB - weights {weights / GIB:.1f} GiB"
                  f" - runtime {VLLM_RUNTIME / GIB:.0f} GiB = KV {max(kv_budget, 0) / GIB:.1f} GiB/GPU"
                  f" / {kv_per_token / 1024:.0f} KiB per token = {kv_tokens:,.0f} tokens per replica"
                  f" ({'>=' if ok_len else '<'} max_model_len {max_model_len:,}),"
                  f" {seqs_per_gpu:.0f} sequences of {mean_context:,.0f} tokens per GPU"
                  f" ({'>=' if ok_batch else '<'} {VLLM_MIN_SEQS_PER_GPU} the throughput assumes)")
    return ok_len and ok_batch, breakdown, arithmetic
