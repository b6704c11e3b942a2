"""Workload -> hours -> dollars. Pure arithmetic: no cloud calls, no imports of `reproduce`.

Every figure that is an assumption says so, with its source or derivation; finished runs override
throughputs through `calibration` (a mapping passed in by the caller, see costmodel.calibration).

    generation   hours = output tokens / (tokens/s per GPU x GPUs)          (decode-bound)
    sft          hours = (6 N + 6 L d S) x tokens / (GPUs x peak FLOP/s x MFU)
    spot         + expected preemptions x (recovery + work lost since the last checkpoint)
    rewrite      $     = tokens x $/1M tokens x batch discount
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from costmodel.errors import BadInput


@dataclass(frozen=True)
class GpuSpec:
    bf16_tflops: float   # dense BF16 peak, per GPU
    mem_gb: float
    hbm_tbps: float      # memory bandwidth, decode throughput scales with it
    source: str


GPUS = {
    "H100": GpuSpec(989, 80, 3.35, "NVIDIA H100 SXM datasheet (dense BF16 989 TFLOPS, 3.35 TB/s)"),
    "H200": GpuSpec(989, 141, 4.8, "NVIDIA H200 SXM datasheet (dense BF16 989 TFLOPS, 4.8 TB/s)"),
    "A100-80GB": GpuSpec(312, 80, 2.04, "NVIDIA A100 80GB SXM datasheet (BF16 312 TFLOPS, 2.04 TB/s)"),
}
GPU_NAMES = tuple(GPUS)   # the GPUs a recipe may ask for: those with figures here and in costmodel.memory

# Decode throughput of a 32.8B bf16 model on one H100, tensor parallel 2, long outputs:
# KV cache 262 KB/token (64 layers x 8 KV heads x 128 x 2 x 2 B) leaves ~300k cached tokens for 4 replicas'
# worth of 40 GB, ~110 sequences in flight; a decode step reads 33 GB of weights + ~40 GB of KV per GPU pair
# at 3.35 TB/s ~= 25 ms -> ~4,400 tok/s per pair; at ~60% of that bound, 1,300 tok/s per GPU. Our derivation.
DECODE_TOK_S_PER_GPU_32B_H100 = 1300.0
TP_EFFICIENCY = {1: 1.0, 2: 1.0, 4: 0.85, 8: 0.7}  # all-reduce per layer costs more with wider TP (assumption)
PREFILL_SPEEDUP = 10.0  # prompt tokens process ~10x faster than decoded ones (assumption)

# Model FLOPs utilisation by SFT configuration, (zero_stage, cpu_offload, packing) -> (MFU, source).
MFU = {
    (3, True, False): (0.0764, "calibrated: NovaSky's 19 h on 8xH100 (BLOG) for ZeRO-3 + CPU offload, no packing"),
    (3, True, True): (0.085, "offload-bound: the CPU Adam step dominates, packing adds little (assumption)"),
    (3, False, False): (0.30, "ZeRO-3 in one NVLink node, flash-attention, batch 1 (assumption; Llama 3 "
                              "reports 38-43% MFU on H100, arXiv 2407.21783 Table 4)"),
    (3, False, True): (0.38, "packing fills every sequence to cutoff (Llama 3: 38-43% MFU on H100)"),
    (2, False, False): (0.32, "ZeRO-2 (assumption, as ZeRO-3 + less all-gather)"),
    (2, False, True): (0.40, "ZeRO-2 with packing (assumption)"),
    (0, False, False): (0.30, "single process / DDP (assumption)"),
    (0, False, True): (0.38, "single process / DDP with packing (assumption)"),
}
# Preference training (dpo/simpo) calibrated the same way from NovaSky's Sky-T1-32B-Flash: SimPO on 10k pairs, 1 epoch,
# ZeRO-3 + CPU offload, "about 2.5 h on 8xH100" (recipes/sky-t1-32b-flash.yaml: FLASH-BLOG, SkyThought
# recipes/sky-t1-flash/README.md). At the SFT figure that recipe plans 4.26 h; 0.0764 x 4.26 / 2.5 = 0.130. Why higher:
# a pair is one batch of two sequences, so each offloaded CPU Adam step is paid over twice the tokens.
# Configurations without offload are compute-bound: the SFT figures hold (assumption).
MFU_PREFERENCE = {
    (3, True, False): (0.130, "calibrated: NovaSky's ~2.5 h on 8xH100 for Sky-T1-32B-Flash SimPO (FLASH-BLOG) "
                              "for ZeRO-3 + CPU offload"),
}
LIGER_SPEEDUP = 1.10    # Liger-Kernel README claims ~20% throughput; we take half (assumption)
NODE_SCALING = 0.85     # each doubling of nodes keeps 85% per-GPU efficiency over the network (assumption)
# The launch may not take a node dearer than this over the planned $/h: spot prices move between plan and launch
# (SkyPilot's catalog refreshes every 7 h), and 5% is what we let them move before refusing (our choice).
PRICE_CAP_MARGIN = 0.05


@dataclass
class StageEstimate:
    stage: str
    kind: str                        # gpu | cpu | api | none
    accelerator: str | None = None   # "H100:8" per node
    nodes: int = 1
    gpus: int = 0                    # all nodes
    spot: bool = False
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    price_per_hour: float = 0.0      # whole placement (all nodes), $/h, in the chosen market
    price_source: str = ""
    price_date: str = ""
    base_hours: float = 0.0          # work alone
    overhead_hours: float = 0.0      # startup + expected preemption cost
    hours: float = 0.0               # wall hours billed
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    compute_usd: float = 0.0
    on_demand_usd: float | None = None   # same stage on-demand, for comparison
    spot_usd: float | None = None        # same stage on spot
    api_usd: float = 0.0
    api_tokens: dict = field(default_factory=dict)
    storage_usd: float = 0.0         # what the stage leaves in the run's bucket costs kept (costmodel.storage.cost)
    storage: dict = field(default_factory=dict)      # that cost's row: GB written and pulled, $, arithmetic
    total_usd: float = 0.0           # compute + API + storage
    arithmetic: str = ""
    assumptions: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    # What the launch must ask for, so the run is what was priced (reproduce.tasks renders these):
    max_hourly_cost: float | None = None  # $/h per node: the planned price plus PRICE_CAP_MARGIN
    memory: dict = field(default_factory=dict)      # {per_gpu_gib, usable_gib, fits, arithmetic}
    fallbacks: list = field(default_factory=list)   # other placements the launch may take, each priced

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StageEstimate":
        """A row read back from the ledger or a test: unknown keys dropped, missing ones defaulted."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in dict(d).items() if k in names})

    @property
    def infra(self) -> str | None:
        """SkyPilot's `infra:` of the placement: cloud/region, or None (local)."""
        if not self.cloud or self.cloud == "local":
            return None
        from costmodel.infra import infra_string

        return infra_string(self.cloud, self.region)


def gpu_spec(name: str) -> GpuSpec:
    if name not in GPUS:
        raise BadInput(f"no GPU spec for {name!r}: expected one of {', '.join(GPUS)}")
    return GPUS[name]


# ---- calibration keys: the one definition of how a measured figure is named (costmodel.calibration writes them,
# the estimators read them)

def decode_key(params_b: float, gpu: str, tp: int) -> str:
    return f"decode_tok_s_per_gpu/{params_b:g}B/{gpu}/tp{tp}"


def mfu_key(zero_stage: int, cpu_offload: bool, packing: bool, liger: bool, method: str = "sft") -> str:
    suffix = "" if method == "sft" else f"/{method}"
    return f"mfu/zero{zero_stage}/offload={cpu_offload}/packing={packing}/liger={liger}{suffix}"


def flops_per_token(params_b: float, layers: int, hidden: int, seq: float, method: str = "sft") -> float:
    """Training FLOPs per token: 2 N + 2 L d S per forward (matmuls, causal attention at length S), backward two
    more; `method`'s passes (DPO adds a reference forward). `params_b`: what a token passes through (MoE: active)."""
    return FORWARDS[method] * (2 * params_b * 1e9 + 2 * layers * hidden * seq)


def accelerator(spec: str) -> tuple[str, int]:
    """'H100:8' -> ('H100', 8): the one parser of a GPU request (BadInput for a name without figures)."""
    return _accel(spec)


def decode_tok_s_per_gpu(params_b: float, gpu: str, tp: int, calibration: dict | None = None,
                         active_b: float | None = None) -> tuple[float, str]:
    """`active_b`: a mixture of experts' parameters per token, what the speed scales with (our assumption: at
    large batches every expert is read each step, so this is optimistic for MoE); the calibration key keeps the
    total, the figure a measured run writes."""
    key = decode_key(params_b, gpu, tp)
    if calibration and key in calibration:
        return calibration[key], f"calibrated from finished runs ({key})"
    spec = gpu_spec(gpu)
    size = active_b or params_b
    tok_s = (DECODE_TOK_S_PER_GPU_32B_H100 * (32.8 / max(size, 0.1)) * (spec.hbm_tbps / GPUS["H100"].hbm_tbps)
             * TP_EFFICIENCY.get(tp, 0.6))
    moe = f" ({size:g}B active of {params_b:g}B)" if active_b and active_b != params_b else ""
    return tok_s, (f"{DECODE_TOK_S_PER_GPU_32B_H100:,.0f} tok/s/GPU for 32.8B on H100 (derived), scaled by model "
                   f"size{moe}, HBM bandwidth and TP={tp} efficiency {TP_EFFICIENCY.get(tp, 0.6)}")


def generation_hours(prompt_tokens: float, output_tokens: float, params_b: float, gpu: str, gpus: int,
                     tp: int, calibration: dict | None = None, active_b: float | None = None) -> tuple[float, dict]:
    tok_s, why = decode_tok_s_per_gpu(params_b, gpu, tp, calibration, active_b)
    seconds = (output_tokens + prompt_tokens / PREFILL_SPEEDUP) / (tok_s * gpus)
    return seconds / 3600, {"tok_s_per_gpu": tok_s, "throughput_source": why,
                            "output_tokens": output_tokens, "prompt_tokens": prompt_tokens}


def sft_mfu(zero_stage: int, cpu_offload: bool, packing: bool, liger: bool,
            calibration: dict | None = None, method: str = "sft") -> tuple[float, str]:
    key = mfu_key(zero_stage, cpu_offload, packing, liger, method)
    if calibration and key in calibration:
        return calibration[key], f"calibrated from finished runs ({key})"
    if (zero_stage, cpu_offload, packing) not in MFU:
        raise BadInput(f"no MFU figure for ZeRO-{zero_stage} offload={cpu_offload} packing={packing}: "
                       f"expected one of {sorted(MFU)}")
    table = MFU_PREFERENCE if method in ("dpo", "simpo") and (zero_stage, cpu_offload, packing) in MFU_PREFERENCE else MFU
    mfu, why = table[(zero_stage, cpu_offload, packing)]
    if liger:
        mfu, why = mfu * LIGER_SPEEDUP, why + f"; x{LIGER_SPEEDUP} Liger kernels"
    return mfu, why


# Preference training (LLaMA-Factory's pairwise trainer): a sample is a pair, chosen and rejected each a full
# sequence of prompt + response, so SEQUENCES x the tokens; forward + backward is 3 forwards. DPO also runs the
# frozen reference model forward over both (1 more forward: x 4/3); SimPO has no reference model.
SEQUENCES = {"sft": 1, "dpo": 2, "simpo": 2}
FORWARDS = {"sft": 3, "dpo": 4, "simpo": 3}


def sft_flops(params_b: float, layers: int, hidden: int, samples: int, mean_tokens: float, cutoff: int,
              epochs: float, method: str = "sft") -> tuple[float, float]:
    """Model FLOPs: 6 N per token for the matmuls + 6 L d S for causal attention at mean length S (2 N and 2 L d S
    per forward; backward is two more), over every sequence of every sample (pairs: 2). `params_b`: the
    parameters a token passes through (a mixture of experts' active ones)."""
    seq = min(mean_tokens, cutoff)
    tokens = samples * SEQUENCES[method] * seq * epochs
    return flops_per_token(params_b, layers, hidden, seq, method) * tokens, tokens


def optimizer_steps(sft: dict, gpus: int, packing: bool | None = None) -> int:
    """Optimizer steps of the whole run. Packing concatenates samples into sequences of cutoff_len: steps then
    count sequences, not samples."""
    packing = sft.get("packing", False) if packing is None else packing
    sequences = (math.ceil(sft["samples"] * min(sft["mean_sample_tokens"], sft["cutoff_len"]) / sft["cutoff_len"])
                 if packing else sft["samples"])
    per_step = sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * gpus
    return max(1, math.ceil(sequences * sft["num_train_epochs"] / per_step))


def sft_hours(sft: dict, student: dict, gpu: str, gpus_per_node: int, nodes: int,
              calibration: dict | None = None) -> tuple[float, dict]:
    method = sft["method"]
    flops, tokens = sft_flops(student.get("active_params_b", student["params_b"]), student.get("layers", 64),
                              student.get("hidden", 5120), sft["samples"], sft["mean_sample_tokens"],
                              sft["cutoff_len"], sft["num_train_epochs"], method)
    packing = bool(sft["packing"]) and method == "sft"   # LLaMA-Factory packs SFT only (neat_packing: "except SFT")
    mfu, why = sft_mfu(sft["zero_stage"], sft["cpu_offload"], packing, sft["liger_kernel"],
                       calibration, method)
    gpus = gpus_per_node * nodes
    scaling = NODE_SCALING ** math.log2(nodes) if nodes > 1 else 1.0
    peak = gpu_spec(gpu).bf16_tflops * 1e12
    seconds = flops / (gpus * peak * mfu * scaling)
    steps = optimizer_steps(sft, gpus, packing)
    return seconds / 3600, {"flops": flops, "train_tokens": tokens, "method": method,
                            "sequences_per_sample": SEQUENCES[method], "mfu": mfu, "mfu_source": why,
                            "node_scaling": scaling, "peak_tflops_per_gpu": peak / 1e12, "steps": steps,
                            "hours_per_step": seconds / 3600 / max(steps, 1)}


def spot_overhead(hours: float, rate_per_hour: float, recovery_hours: float, checkpoint_hours: float) -> tuple[float, float]:
    """Expected extra wall hours from preemptions: each one costs a recovery plus, on average, half the
    work since the last checkpoint. Returns (overhead hours, expected preemptions)."""
    expected = rate_per_hour * hours
    return expected * (recovery_hours + checkpoint_hours / 2), expected


def price_gpu_stage(est: StageEstimate, base_hours: float, offer, spot: bool, costs: dict,
                    checkpoint_hours: float, on_demand_offer=None) -> StageEstimate:
    """Fill placement, hours and dollars of a GPU stage from an Offer (costmodel.prices) or None (local).
    `on_demand_offer`: the cheapest on-demand placement, priced beside it for comparison."""
    est.base_hours = base_hours
    startup = costs["startup_hours"] * est.nodes if offer is not None else 0.0

    def total_hours(on_spot: bool) -> tuple[float, float]:
        if not on_spot:
            return base_hours + startup, 0.0
        extra, n = spot_overhead(base_hours, costs["spot_preemptions_per_hour"], costs["recovery_hours"],
                                 checkpoint_hours)
        return base_hours + startup + extra, n

    if offer is None:  # this machine: at what the user says an hour of it costs (costs.local_usd_per_hour)
        est.hours = base_hours
        est.gpu_hours = est.hours * est.gpus
        return _local(est, costs, f"local: {est.gpu_hours:,.2f} GPU-h", " at $0")
    est.cloud, est.region, est.zone, est.instance_type = offer.cloud, offer.region, offer.zone, offer.instance_type
    est.price_source, est.price_date = offer.source, offer.date
    # Spot and on-demand side by side: each at the cheapest offer of its own market.
    for market, market_offer in ((True, offer), (False, on_demand_offer or offer)):
        node_price = market_offer.price(market)
        if node_price is None:
            continue
        h, _ = total_hours(market)
        usd = node_price * est.nodes * h
        if market:
            est.spot_usd = usd
        else:
            est.on_demand_usd = usd
            est.details["on_demand_placement"] = f"{market_offer.cloud} {market_offer.region} ${node_price:,.2f}/h"
    est.spot = bool(spot) and offer.spot is not None
    est.price_per_hour = offer.price(est.spot) * est.nodes
    # the cap is on what the catalog lists (what SkyPilot filters by), not a billing-calibrated price
    listed = offer.list_price(est.spot) if hasattr(offer, "list_price") else offer.price(est.spot)
    # An own cluster (kubernetes/ssh) is priced at the user's declared rate, SkyPilot at its `kubernetes.pricing`
    # config ($0 unset): a cap would compare two different figures, so none is set.
    est.max_hourly_cost = None if str(offer.cloud).lower() in ("kubernetes", "ssh") else price_cap(listed)
    est.hours, preemptions = total_hours(est.spot)
    est.overhead_hours = est.hours - base_hours
    est.details["expected_preemptions"] = preemptions
    est.gpu_hours = est.hours * est.gpus
    est.compute_usd = est.price_per_hour * est.hours
    per_gpu = est.price_per_hour / est.gpus
    est.arithmetic = (f"{est.gpus} x ${per_gpu:,.2f}/h x {est.hours:,.2f} h = ${est.compute_usd:,.2f}"
                      f"  ({base_hours:,.2f} h work + {est.overhead_hours:,.2f} h startup/preemption)")
    return _total(est)


def _local(est: StageEstimate, costs: dict, work: str, free: str) -> StageEstimate:
    """A stage on this machine: free, or at the rate the user declared for it (a lab's own box), which the
    guard and the watchdog then hold it to like any cloud's."""
    rate = float(costs.get("local_usd_per_hour") or 0.0)
    est.price_per_hour, est.compute_usd = rate, rate * est.hours
    est.price_source = (f"local machine at ${rate:,.2f}/h (declared: recipe costs.local_usd_per_hour)" if rate
                        else "local machine ($0)")
    est.arithmetic = f"{work} x ${rate:,.2f}/h = ${est.compute_usd:,.2f}" if rate else work + free
    return _total(est)


def rescale(est: StageEstimate, factor: float, costs: dict) -> StageEstimate:
    """The same placement with `factor` times the work (a measured speed): startup stays, the expected
    preemption overhead grows with the hours at risk, dollars follow the hours."""
    startup = costs["startup_hours"] * est.nodes if est.price_per_hour else 0.0
    at_risk = max(est.overhead_hours - startup, 0.0)
    old_base = est.base_hours
    est.details["estimated_base_hours"] = old_base      # the estimator's figure, before the measured factor
    est.details["measured_factor"] = factor
    est.base_hours = old_base * factor
    est.overhead_hours = startup + at_risk * factor
    est.hours = est.base_hours + est.overhead_hours
    est.gpu_hours = est.hours * est.gpus
    est.compute_usd = est.price_per_hour * est.hours
    if est.spot_usd is not None and est.spot:
        est.spot_usd = est.compute_usd + est.api_usd
    if est.gpus and est.price_per_hour:
        est.arithmetic = (f"{est.gpus} x ${est.price_per_hour / est.gpus:,.2f}/h x {est.hours:,.2f} h = "
                          f"${est.compute_usd:,.2f}  ({old_base:,.2f} h work x {factor:.2f} measured + "
                          f"{est.overhead_hours:,.2f} h startup/preemption)")
    return _total(est)


def price_cap(node_price: float) -> float:
    """SkyPilot's `max_hourly_cost` for a node priced at `node_price`: the plan's price plus the margin,
    rounded up to the cent."""
    return math.ceil(node_price * (1 + PRICE_CAP_MARGIN) * 100) / 100


def _total(est: StageEstimate) -> StageEstimate:
    est.total_usd = est.compute_usd + est.api_usd
    return est


# ---- the six stages of a recipe ------------------------------------------------------------------

def workload(recipe: dict) -> dict:
    """Problems, samples and tokens the recipe implies, before any pricing."""
    gen = recipe["generate"]
    # a source with `traces: published` (STILL-2's) is used as published: no teacher, grader or rewrite to pay
    sources = [s for s in recipe["sources"] if s.get("traces", "generate") != "published"]
    samples = sum(s["problems"] for s in sources) * gen["samples_per_problem"]
    kept = sum(s["problems"] * s["keep_rate"] for s in sources) * gen["samples_per_problem"]
    # Domains graded only after the rewrite (filter.grade_after_rewrite) are all rewritten, kept or not.
    later = set(recipe["filter"].get("grade_after_rewrite") or ()) if recipe["rewrite"].get("recheck") else set()
    rewritten = sum(s["problems"] * (1.0 if s["domain"] in later else s["keep_rate"])
                    for s in sources) * gen["samples_per_problem"]
    by_domain = {}
    for s in sources:
        by_domain[s["domain"]] = by_domain.get(s["domain"], 0) + s["problems"] * gen["samples_per_problem"]
    ev = recipe["eval"]
    eval_samples = sum(b["problems"] * b["n"] for b in ev["benchmarks"])
    return {"samples": samples, "kept": kept, "rewritten": rewritten, "by_domain": by_domain,
            "prompt_tokens": samples * gen["mean_prompt_tokens"],
            "output_tokens": samples * gen["mean_response_tokens"],
            "eval_samples": eval_samples,
            "eval_output_tokens": eval_samples * ev["mean_response_tokens"],
            "eval_prompt_tokens": eval_samples * gen["mean_prompt_tokens"]}


def wants_spot(cfg: dict) -> bool:
    """A section's `use_spot`: true/false pins the market; auto (the default) lets the plan take the cheaper."""
    return cfg["use_spot"] is not False


def estimate_generate(recipe: dict, offer, calibration=None, stage="generate", on_demand_offer=None,
                      spot: bool | None = None) -> StageEstimate:
    """vLLM on `num_nodes` nodes of the section's accelerator, each node decoding its share of the problems:
    the same GPU-hours, the wall time divided by the nodes, one startup per node."""
    cfg = recipe[stage]
    gpu, per_node = _accel(cfg["accelerator"])
    nodes = int(cfg.get("num_nodes", 1))
    w = workload(recipe)
    from costmodel.stages import stage as row   # the table names the model each vLLM stage loads

    role = row(stage).model
    model = recipe["models"][role]
    prompt, output = ((w["prompt_tokens"], w["output_tokens"]) if role == "teacher"
                      else (w["eval_prompt_tokens"], w["eval_output_tokens"]))
    est = StageEstimate(stage, "gpu", cfg["accelerator"], nodes, per_node * nodes)
    hours, det = generation_hours(prompt, output, model["params_b"], gpu, per_node * nodes, cfg["tensor_parallel"],
                                  calibration, model.get("active_params_b"))
    est.details.update(det)
    est.assumptions += [f"{output:,.0f} output tokens at {det['tok_s_per_gpu']:,.0f} tok/s/GPU x {per_node} GPUs"
                        + (f" x {nodes} nodes, each its own share of the problems" if nodes > 1 else "")
                        + f" ({det['throughput_source']})"]
    # Shards are written as they finish: a preemption loses minutes, not hours.
    return price_gpu_stage(est, hours, offer, wants_spot(cfg) if spot is None else spot, recipe["costs"],
                           checkpoint_hours=0.1, on_demand_offer=on_demand_offer)


def estimate_generate_api(recipe: dict, token_price) -> StageEstimate:
    """The teacher through an OpenAI-compatible API (`generate.backend: api`): every sample's prompt in and its
    whole response out (a reasoning model's thinking is billed as output), at the model's token prices."""
    from costmodel.api_prices import BATCH_DISCOUNT, api_cost

    gen = recipe["generate"]
    w = workload(recipe)
    prompt, completion = w["prompt_tokens"], w["output_tokens"]
    batch = bool(gen["batch"])
    est = StageEstimate("generate", "api")
    est.api_usd = api_cost(gen["model"], int(prompt), int(completion), batch=batch)
    est.api_tokens = {"model": gen["model"], "requests": round(w["samples"]), "prompt_tokens": round(prompt),
                      "completion_tokens": round(completion), "batch": batch}
    disc = f" x {BATCH_DISCOUNT} batch" if batch else ""
    est.arithmetic = (f"({prompt / 1e6:,.1f}M in x ${token_price.input}/M + {completion / 1e6:,.1f}M out x "
                      f"${token_price.output}/M){disc} = ${est.api_usd:,.2f}")
    est.price_source, est.price_date = token_price.source, token_price.date
    est.assumptions.append(f"{w['samples']:,.0f} samples x {gen['mean_response_tokens']:,.0f} response tokens "
                           f"(generate.mean_response_tokens) from {gen['model']}; no GPU placement")
    return _total(est)


def estimate_filter(recipe: dict) -> StageEstimate:
    f, costs = recipe["filter"], recipe["costs"]
    w = workload(recipe)
    cpu_s = sum(n * f[f"mean_cpu_s_per_{'code' if d == 'code' else 'math'}"] for d, n in w["by_domain"].items())
    est = StageEstimate("filter", "cpu")
    est.cpu_hours = cpu_s / 3600
    if f["where"] == "local":
        est.hours = est.base_hours = est.cpu_hours / costs["filter_cpus_local"]
        _local(est, costs, f"{est.cpu_hours:,.2f} CPU-h on {costs['filter_cpus_local']} local cores", " = $0.00")
    else:
        est.base_hours = est.cpu_hours / f["cpus"]
        est.hours = est.base_hours + costs["startup_hours"]
        est.price_per_hour = costs["cpu_node_usd_per_hour"]
        est.price_source = "cpu node (recipe costs.cpu_node_usd_per_hour)"
        est.compute_usd = est.hours * est.price_per_hour
        est.arithmetic = f"1 node x ${est.price_per_hour:,.2f}/h x {est.hours:,.2f} h = ${est.compute_usd:,.2f}"
    counts = " + ".join(f"{n:,.0f} {d}" for d, n in w["by_domain"].items())
    est.assumptions.append(f"{cpu_s:,.0f} CPU-s of grading {counts} traces (recipe filter.mean_cpu_s_per_*)")
    return _total(est)


def estimate_rewrite(recipe: dict, token_price) -> StageEstimate:
    """`token_price`: costmodel.api_prices.TokenPrice of the rewrite model."""
    from costmodel.api_prices import BATCH_DISCOUNT, api_cost

    rw, gen = recipe["rewrite"], recipe["generate"]
    w = workload(recipe)
    kept = w["rewritten"]
    prompt = kept * (rw["prompt_overhead_tokens"] + gen["mean_prompt_tokens"] + gen["mean_response_tokens"])
    completion = kept * gen["mean_response_tokens"] * rw["output_ratio"]
    est = StageEstimate("rewrite", "api")
    est.api_usd = api_cost(rw["model"], int(prompt), int(completion), batch=rw["batch"])
    est.api_tokens = {"model": rw["model"], "requests": round(kept), "prompt_tokens": round(prompt),
                      "completion_tokens": round(completion), "batch": rw["batch"]}
    disc = f" x {BATCH_DISCOUNT} batch" if rw["batch"] else ""
    est.arithmetic = (f"({prompt / 1e6:,.1f}M in x ${token_price.input}/M + {completion / 1e6:,.1f}M out x "
                      f"${token_price.output}/M){disc} = ${est.api_usd:,.2f}")
    est.price_source, est.price_date = token_price.source, token_price.date
    later = ", ".join(recipe["filter"].get("grade_after_rewrite") or []) if rw.get("recheck") else ""
    est.assumptions.append(f"{kept:,.0f} traces rewritten: those the filter kept"
                           + (f", and every {later} trace (graded after the rewrite)" if later else ""))
    return _total(est)


def estimate_sft(recipe: dict, offer, calibration=None, on_demand_offer=None, spot: bool | None = None) -> StageEstimate:
    sft = recipe["sft"]
    gpu, per_node = _accel(sft["accelerator"])
    nodes = sft["num_nodes"]
    est = StageEstimate("sft", "gpu", sft["accelerator"], nodes, per_node * nodes)
    hours, det = sft_hours(sft, recipe["models"]["student"], gpu, per_node, nodes, calibration)
    est.details.update(det)
    est.assumptions.append(
        f"{det['flops']:.3g} FLOPs ({det['train_tokens'] / 1e6:,.0f}M tokens) / ({est.gpus} x "
        f"{det['peak_tflops_per_gpu']:g} TFLOPS x MFU {det['mfu']:.3f}) ({det['mfu_source']})")
    method = det["method"]
    if method != "sft":
        est.assumptions.append(
            f"{method}: {sft['samples']:,} pairs x 2 sequences (chosen + rejected) of {sft['mean_sample_tokens']:,} "
            "tokens" + (", plus the reference model's forward over both" if method == "dpo" else
                        ", no reference model"))
    checkpoint_hours = det["hours_per_step"] * sft["save_steps"]
    return price_gpu_stage(est, hours, offer, wants_spot(sft) if spot is None else spot, recipe["costs"],
                           checkpoint_hours, on_demand_offer)


# ---- what each stage leaves in the run's bucket (its row's `writes`: (recipe) -> (GB, what)) -----------
# Priced by costmodel.storage: kept so many days, and pulled to the controller where the stage ran elsewhere.

BYTES_PER_TOKEN = 4.0   # Sky-T1_data_17k: 268,380,746 B / 16,401 rows / ~4.1k tokens (recipe sft.mean_sample_tokens)
CHECKPOINT_BYTES_PER_PARAM = 14   # bf16 weights 2 + fp32 master and Adam m, v 12 (sky_tasks/sft.yaml disk_size)
WEIGHT_BYTES_PER_PARAM = 2        # the saved bf16 model
SAVE_TOTAL_LIMIT = 2              # sky_tasks/llamafactory/sft.yaml keeps the last two checkpoints
GB = 1e9


def _trace_bytes(recipe: dict) -> float:
    gen = recipe["generate"]
    return (gen["mean_prompt_tokens"] + gen["mean_response_tokens"]) * BYTES_PER_TOKEN


def traces_written(recipe: dict) -> tuple[float, str]:
    samples, trace = workload(recipe)["samples"], _trace_bytes(recipe)
    return samples * trace / GB, f"{samples:,.0f} traces x {trace / 1e3:,.1f} KB"


def graded_written(recipe: dict) -> tuple[float, str]:
    samples, trace = workload(recipe)["samples"], _trace_bytes(recipe)
    return samples * trace / GB, f"{samples:,.0f} graded traces (kept + rejected) x {trace / 1e3:,.1f} KB"


def rewritten_written(recipe: dict) -> tuple[float, str]:
    rows = workload(recipe)["rewritten"]
    rewritten = _trace_bytes(recipe) + (recipe["generate"]["mean_response_tokens"] * recipe["rewrite"]["output_ratio"]
                                        * BYTES_PER_TOKEN)
    return rows * rewritten / GB, f"{rows:,.0f} traces + rewrites x {rewritten / 1e3:,.1f} KB"


def records_written(recipe: dict) -> tuple[float, str]:
    sft = recipe["sft"]
    record = sft["mean_sample_tokens"] * BYTES_PER_TOKEN
    return sft["samples"] * record / GB, f"{sft['samples']:,} SFT records x {record / 1e3:,.1f} KB"


def model_written(recipe: dict) -> tuple[float, str]:
    keep = recipe["sft"]["keep_checkpoints"]
    student = recipe["models"]["student"]["params_b"] * 1e9
    kept, weights = checkpoints(recipe), student * WEIGHT_BYTES_PER_PARAM
    return ((weights + (checkpoint_bytes(recipe) if keep else 0.0)) / GB,
            f"{kept} checkpoint{'s' if kept != 1 else ''} x {student / 1e9:g}B params x {CHECKPOINT_BYTES_PER_PARAM} B"
            + (" (kept)" if keep else " while it trains (deleted when it succeeds)")
            + f" + model {student / 1e9:g}B x {WEIGHT_BYTES_PER_PARAM} B")


def answers_written(recipe: dict) -> tuple[float, str]:
    answers = workload(recipe)["eval_samples"]
    answer = (recipe["generate"]["mean_prompt_tokens"] + recipe["eval"]["mean_response_tokens"]) * BYTES_PER_TOKEN
    return answers * answer / GB, f"{answers:,.0f} answers x {answer / 1e3:,.1f} KB"


def checkpoint_bytes(recipe: dict) -> float:
    return checkpoints(recipe) * recipe["models"]["student"]["params_b"] * 1e9 * CHECKPOINT_BYTES_PER_PARAM


def checkpoints(recipe: dict) -> int:
    """Checkpoints left in the bucket: every save_steps optimizer steps, at most save_total_limit kept."""
    sft = recipe["sft"]
    from costmodel.prices import parse_accelerator

    gpus = parse_accelerator(sft["accelerator"])[1] * sft["num_nodes"]
    batch = sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * gpus
    steps = math.ceil(sft["samples"] * sft["num_train_epochs"] / batch)
    return min(steps // max(1, int(sft["save_steps"])), int(sft.get("save_total_limit", SAVE_TOTAL_LIMIT)))


def _accel(s: str) -> tuple[str, int]:
    name, _, count = str(s).partition(":")
    if name not in GPUS or not count.isdigit() or int(count) < 1:
        raise BadInput(f"accelerator {s!r}: expected NAME:COUNT with NAME one of {', '.join(GPUS)}, e.g. H100:8")
    return name, int(count)
