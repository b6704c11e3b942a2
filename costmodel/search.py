"""The cheapest feasible way to run a recipe: every combination of the knobs that change what a stage costs,
kept only when the memory model says it runs, priced with the same estimators `reproduce plan` uses.

Stages are independent once the recipe fixes the work (problems, tokens, epochs), so each is searched on
its own and the cheapest feasible candidate wins; ties go to the one that changes the recipe least.
Nothing here changes what is computed (models, data, epochs, learning rate, cutoff, batch size): only
where and how. Pure: prices come in through `price_fn(accelerator, spot) -> Offer | None`.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field

from costmodel import estimates, memory, stages
from costmodel.errors import BadInput

ACCELERATORS = ("H100:8", "H200:8", "A100-80GB:8")
TENSOR_PARALLEL = (1, 2, 4, 8)
SFT_NODES = (1, 2)
# (zero_stage, cpu_offload): what reproduce.stages.sft renders (ZeRO-3, with or without offload). ZeRO-2 keeps
# a full bf16 copy of the weights on every GPU (2 B x 32.8B = 61 GiB): memory.fits rejects it at 32B anyway.
SFT_SHARDING = ((3, True), (3, False))
MARKETS = (True, False)                               # use_spot
# One ZeRO-3 checkpoint of a 32B model is ~460 GB (2 B bf16 weights + 12 B fp32 optimizer states per
# parameter), written by 8 ranks to local NVMe at ~2 GB/s: ~4 minutes (our estimate). Scaled by model size.
CHECKPOINT_WRITE_HOURS_32B = 0.07


@dataclass
class Candidate:
    stage: str
    changes: dict                       # dotted recipe key -> value, only keys that differ from the recipe
    estimate: estimates.StageEstimate | None = None
    feasible: bool = True
    rejected: str = ""                  # why it cannot run
    memory: str = ""                    # the memory arithmetic behind `feasible`
    notes: list = field(default_factory=list)   # why the derived settings are what they are

    @property
    def usd(self) -> float:
        return self.estimate.total_usd if self.estimate else math.inf

    def key(self):
        return (round(self.usd, 2), len(self.changes), self.estimate.hours if self.estimate else math.inf)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "changes": self.changes, "feasible": self.feasible, "rejected": self.rejected,
                "usd": None if self.estimate is None else self.usd,
                "hours": None if self.estimate is None else self.estimate.hours,
                "memory": self.memory, "notes": self.notes}


def search(recipe: dict, price_fn=None, calibration: dict | None = None, token_price=None, place_fn=None) -> dict:
    """{stage: {"anchor": Candidate, "best": Candidate, "candidates": [Candidate, ...] cheapest first}}.
    `price_fn` None prices GPUs at $0 (this machine), like `reproduce plan --backend local`.
    `place_fn(stage, variant) -> StageEstimate` prices a GPU candidate the way the plan does (only clouds that
    can run the task, the cheaper market when `use_spot: auto`); it raises for a placement that cannot run."""
    out = {}
    for row in (s for s in stages.STAGES if s.options):
        stage, options = row.name, OPTIONS[row.options](recipe, row.section, price_fn is not None)
        tried = [_evaluate(recipe, stage, opt, price_fn, calibration, token_price, place_fn=place_fn)
                 for opt in options]
        anchor = _evaluate(recipe, stage, {}, price_fn, calibration, token_price, derive=False, place_fn=place_fn)
        feasible = sorted((c for c in tried if c.feasible), key=Candidate.key)
        best = feasible[0] if feasible and feasible[0].key() < anchor.key() else anchor
        if not anchor.feasible and feasible:
            best = feasible[0]
        out[stage] = {"anchor": anchor, "best": best,
                      "candidates": sorted(tried, key=lambda c: (not c.feasible, c.usd))}
    return out


# A stage row's `options` (costmodel.stages) -> (recipe, its section, priced?) -> the settings to try.
OPTIONS = {
    "vllm": lambda recipe, section, priced: _generation_options(recipe, section),
    "where": lambda recipe, section, priced: _where_options(section),
    "api-batch": lambda recipe, section, priced: [{f"{section}.batch": b} for b in (True, False)],
    "training": lambda recipe, section, priced: _sft_options(recipe, priced),
}


def overrides(result: dict) -> dict:
    """Dotted key -> value that turn the recipe into the cheapest feasible one, stage order."""
    out = {}
    for stage in result.values():
        out.update(stage["best"].changes)
    return out


def apply(recipe: dict, changes: dict) -> dict:
    """The recipe with `changes`; sections not changed are shared with `recipe` (hundreds of candidates:
    a deep copy each would be most of the search's time), changed ones are copied."""
    variant = dict(recipe)
    for key, value in changes.items():
        section, _, leaf = key.partition(".")
        if section not in variant or not isinstance(variant[section], dict) or leaf not in variant[section]:
            raise BadInput(f"unknown recipe key {key!r}")
        if variant[section] is recipe[section]:
            variant[section] = copy.deepcopy(recipe[section])
        variant[section][leaf] = value
    return variant


# ---- options per stage ---------------------------------------------------------------------------

def _markets(cfg: dict) -> tuple:
    """`use_spot: auto` leaves the market to the plan (the cheaper expected cost); a pinned one is searched."""
    return ("auto",) if cfg["use_spot"] == "auto" else MARKETS


def _generation_options(recipe: dict, stage: str) -> list[dict]:
    out = []
    for accel, tp, spot in itertools.product(ACCELERATORS, TENSOR_PARALLEL, _markets(recipe[stage])):
        per_node = estimates.accelerator(accel)[1]
        if per_node % tp:
            continue
        out.append({f"{stage}.accelerator": accel, f"{stage}.tensor_parallel": tp,
                    f"{stage}.data_parallel": per_node // tp, f"{stage}.use_spot": spot})
    return out


def _where_options(section: str) -> list[dict]:
    """A CPU stage the recipe may keep here: here, or on a CPU node."""
    return [{f"{section}.where": w} for w in ("local", "cpu-node")]


def _sft_options(recipe: dict, priced: bool) -> list[dict]:
    sft = recipe["sft"]
    out = []
    for accel, nodes, (zero, offload), packing, liger, spot in itertools.product(
            ACCELERATORS, SFT_NODES, SFT_SHARDING, (False, True), (False, True), _markets(sft)):
        opt = {"sft.accelerator": accel, "sft.num_nodes": nodes, "sft.zero_stage": zero, "sft.cpu_offload": offload,
               "sft.packing": packing, "sft.liger_kernel": liger, "sft.use_spot": spot}
        opt["sft.gradient_accumulation_steps"] = _accumulation(sft, estimates.accelerator(accel)[1] * nodes, packing)
        out.append(opt)
    return out


def _accumulation(sft: dict, gpus: int, packing: bool) -> int:
    """Keep the recipe's optimizer step: the same samples per step (96 for Sky-T1) on a different GPU count,
    or with packing the same tokens per step (96 x 4,100 ~= 24 sequences of 16,384)."""
    anchor_gpus = estimates.accelerator(sft["accelerator"])[1] * int(sft["num_nodes"])
    samples = sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * anchor_gpus
    if sft.get("packing") == packing:
        per_step = samples
    elif packing:  # unpacked samples -> packed sequences
        per_step = samples * min(sft["mean_sample_tokens"], sft["cutoff_len"]) / sft["cutoff_len"]
    else:          # packed sequences -> unpacked samples
        per_step = samples * sft["cutoff_len"] / min(sft["mean_sample_tokens"], sft["cutoff_len"])
    return max(1, round(per_step / (sft["per_device_train_batch_size"] * gpus)))


def optimizer_steps(sft: dict) -> int:
    """Optimizer steps of the whole run on the section's GPUs (costmodel.estimates.optimizer_steps)."""
    _, per_node = estimates.accelerator(sft["accelerator"])
    return estimates.optimizer_steps(sft, per_node * int(sft["num_nodes"]))


def save_steps(sft: dict, base_hours: float, costs: dict, params_b: float) -> tuple[int, str]:
    """Young's optimum checkpoint interval (J. W. Young, CACM 17(9) 1974): sqrt(2 x write time / failure
    rate) balances time spent writing checkpoints against work lost to a preemption."""
    rate = costs["spot_preemptions_per_hour"]
    write = CHECKPOINT_WRITE_HOURS_32B * params_b / 32.8
    steps = optimizer_steps(sft)
    if rate <= 0 or write <= 0:
        return sft["save_steps"], "no preemptions assumed: keep the recipe's interval"
    interval = math.sqrt(2 * write / rate)
    per_step = base_hours / steps
    raw = interval / per_step
    nice = max(10, int(round(raw, -1)))
    nice = min(nice, steps)
    return nice, (f"Young's interval sqrt(2 x {write:.2f} h write / {rate} preemptions/h) = {interval:.2f} h"
                  f" = {raw:.0f} steps of {per_step * 60:.1f} min ({steps} steps in all) -> save_steps {nice}")


# ---- pricing one candidate -----------------------------------------------------------------------

def _offer(price_fn, accel: str, spot: bool):
    if price_fn is None:
        return None
    offer = price_fn(accel, spot)
    if offer is None and spot:  # no spot market anywhere: on-demand, as the plan does
        offer = price_fn(accel, False)
    return offer


def _evaluate(recipe: dict, stage: str, option: dict, price_fn, calibration, token_price,
              derive: bool = True, place_fn=None) -> Candidate:
    """`derive`: also choose the settings that follow from the others (save_steps); off for the anchor."""
    changes = {k: v for k, v in option.items() if _get(recipe, k) != v}
    variant = apply(recipe, changes)
    kind = stages.stage(stage).options
    if kind == "training" and variant[stage] is recipe[stage]:  # save_steps may be set below
        variant[stage] = dict(recipe[stage])
    cand = Candidate(stage, changes)
    try:
        if kind == "vllm":
            _check_vllm(variant, stage, cand)
            if cand.feasible and place_fn is not None:
                cand.estimate = _placed(place_fn, stage, variant, cand)
            elif cand.feasible:
                cfg = variant[stage]
                offer = _offer(price_fn, cfg["accelerator"], estimates.wants_spot(cfg))
                if price_fn is not None and offer is None:
                    cand.feasible, cand.rejected = False, f"no price for {cfg['accelerator']}"
                else:
                    cand.estimate = estimates.estimate_generate(variant, offer, calibration, stage=stage)
        elif kind == "where":
            cand.estimate = stages.stage(stage).estimate(variant)
        elif kind == "api-batch":
            from costmodel import api_prices

            cand.estimate = estimates.estimate_rewrite(variant, token_price or api_prices.token_price(
                variant[stage]["model"]))
        elif kind == "training":
            _evaluate_sft(recipe, variant, cand, price_fn, calibration, derive, place_fn)
    except BadInput as e:  # e.g. no MFU figure for this combination: not a candidate
        cand.feasible, cand.rejected, cand.estimate = False, str(e), None
    return cand


def _check_vllm(variant: dict, stage: str, cand: Candidate) -> None:
    cfg, gen = variant[stage], variant["generate"]
    row = stages.stage(stage)
    gpu = estimates.accelerator(cfg["accelerator"])[0]
    ok, _, arithmetic = memory.vllm_fits(variant["models"][row.model], gpu, int(cfg["tensor_parallel"]),
                                         *row.vllm_tokens(variant))
    cand.memory = arithmetic
    if not ok:
        cand.feasible, cand.rejected = False, arithmetic


def _placed(place_fn, stage: str, variant: dict, cand: Candidate):
    try:
        return place_fn(stage, variant)
    except Exception as e:   # noqa: BLE001 - no cloud can run it, or no price: not a candidate
        cand.feasible, cand.rejected = False, str(e)
        return None


def _evaluate_sft(recipe: dict, variant: dict, cand: Candidate, price_fn, calibration, derive: bool,
                  place_fn=None) -> None:
    sft = variant["sft"]
    ok, _, arithmetic = memory.fits(memory.sft_config(variant))
    cand.memory = arithmetic
    if not ok:
        cand.feasible, cand.rejected = False, arithmetic.splitlines()[-1].strip()
        return
    if "sft.gradient_accumulation_steps" in cand.changes:
        gpus = estimates.accelerator(sft["accelerator"])[1] * sft["num_nodes"]
        unit = "packed sequences of cutoff" if sft.get("packing") else "samples"
        cand.notes.append(f"gradient_accumulation_steps {recipe['sft']['gradient_accumulation_steps']} -> "
                          f"{sft['gradient_accumulation_steps']}: {sft['per_device_train_batch_size']} x "
                          f"{sft['gradient_accumulation_steps']} x {gpus} GPUs = "
                          f"{sft['per_device_train_batch_size'] * sft['gradient_accumulation_steps'] * gpus} {unit} "
                          f"per step, the recipe's optimizer step")
    if place_fn is not None:
        first = _placed(place_fn, "sft", variant, cand)
        on_spot = first is not None and first.spot
    else:
        offer = _offer(price_fn, sft["accelerator"], estimates.wants_spot(sft))
        if price_fn is not None and offer is None:
            cand.feasible, cand.rejected = False, f"no price for {sft['accelerator']}"
            return
        on_spot = estimates.wants_spot(sft) and offer is not None and offer.spot is not None
    if not cand.feasible:
        return
    if derive and on_spot:
        hours, _ = estimates.sft_hours(sft, variant["models"]["student"], *_gpu_count(sft), calibration)
        steps, why = save_steps(sft, hours, variant["costs"], variant["models"]["student"]["params_b"])
        if steps != recipe["sft"]["save_steps"]:
            sft["save_steps"] = cand.changes["sft.save_steps"] = steps
        cand.notes.append(why)
    if place_fn is not None:
        cand.estimate = _placed(place_fn, "sft", variant, cand)
    else:
        cand.estimate = estimates.estimate_sft(variant, offer, calibration)


def _gpu_count(sft: dict) -> tuple[str, int, int]:
    name, count = estimates.accelerator(sft["accelerator"])
    return name, count, int(sft["num_nodes"])


def _get(recipe: dict, key: str):
    section, _, leaf = key.partition(".")
    return recipe.get(section, {}).get(leaf)
