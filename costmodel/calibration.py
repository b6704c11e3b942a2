"""Finished runs calibrate the estimator: measured throughputs, keyed the way costmodel.estimates asks.

    decode_tok_s_per_gpu/<params>B/<gpu>/tp<N>                  generate and eval (vLLM decode)
    mfu/zero<S>/offload=<bool>/packing=<bool>/liger=<bool>      sft

`observations()` turns a finished stage's summary.json into figures (the pipeline stores them in the
ledger with the stage's terminal row); `load()` gives the estimator the median per key over real runs
(simulated runs only echo the estimator, so they never calibrate it); `figures()` is what
`reproduce calibration` shows, with how many runs each figure rests on.

Billing calibrates prices: `price_factors()` turns the `billed` events of `reproduce audit --billed`
(costmodel.reconcile) into billed / recorded $ per cloud, accelerator and market, the median over runs, which
costmodel.prices applies to offers, so the next plan is priced at what was really charged.

    price/<cloud>/<ACCEL:N>/<spot|on-demand>                     billed / recorded compute $
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from costmodel import estimates


def observations(stage: str, summary: dict, recipe: dict, plan_row: dict) -> list[tuple[str, float, str]]:
    """(key, value, how it was measured) from one finished stage; [] when the stage ran without GPUs
    (smoke scale on a CPU says nothing about an H100)."""
    gpus = int(summary.get("gpus") or plan_row.get("gpus") or 0)
    accel = str(plan_row.get("accelerator") or recipe.get(stage, {}).get("accelerator") or "")
    gpu = accel.partition(":")[0]   # not estimates.accelerator: an accelerator without figures is no error here
    if gpus <= 0 or gpu not in estimates.GPUS or plan_row.get("kind") != "gpu":
        return []
    from costmodel.stages import stage as row   # the table names what each stage's run measures

    this = row(stage)
    if this.measures == "decode":
        wall = _first(summary, "generation_wall_s", "wall_s")
        output = _first(summary, "output_tokens", "response_tokens", "completion_tokens")
        prompt = _first(summary, "prompt_tokens") or 0.0
        if not wall or not output:
            return []
        params = recipe["models"][this.model]["params_b"]
        tp = recipe[stage]["tensor_parallel"]
        # the estimator's own formula, inverted: seconds = (output + prompt / PREFILL_SPEEDUP) / (tok/s x GPUs)
        tok_s = (output + prompt / estimates.PREFILL_SPEEDUP) / (wall * gpus)
        key = estimates.decode_key(params, gpu, tp)
        return [(key, tok_s, f"({output:,.0f} out + {prompt:,.0f} in / {estimates.PREFILL_SPEEDUP:g}) tokens / "
                             f"({wall:,.0f} s x {gpus} GPUs)")]
    if this.measures == "mfu":
        runtime = _first(summary, "train_runtime", "wall_s")
        tokens = _first(summary, "train_tokens")
        if not runtime or not tokens:
            return []
        sft, student = recipe["sft"], recipe["models"]["student"]
        seq = min(sft["mean_sample_tokens"], sft["cutoff_len"])
        method = sft["method"]   # LLaMA-Factory counts chosen and rejected tokens both; DPO adds a forward
        per_token = estimates.flops_per_token(student.get("active_params_b", student["params_b"]),
                                              student.get("layers", 64), student.get("hidden", 5120), seq, method)
        nodes = int(summary.get("nodes") or plan_row.get("nodes") or 1)
        scaling = estimates.NODE_SCALING ** math.log2(nodes) if nodes > 1 else 1.0
        peak = estimates.gpu_spec(gpu).bf16_tflops * 1e12
        mfu = per_token * tokens / (gpus * peak * runtime * scaling)
        key = estimates.mfu_key(sft["zero_stage"], sft["cpu_offload"], sft["packing"] and method == "sft",
                                sft["liger_kernel"])
        return [(key, mfu, f"{per_token * tokens:.3g} FLOPs / ({gpus} x {peak / 1e12:g} TFLOPS x {runtime:,.0f} s)")]
    return []


def figures(ledger=None, include_simulated: bool = False) -> list[dict]:
    """One row per key: the median of its observations, and how many runs and stages it rests on."""
    rows = _rows(ledger, include_simulated)
    by_key: dict = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    out = []
    for key, obs in sorted(by_key.items()):
        values = [o["value"] for o in obs]
        out.append({"key": key, "value": statistics.median(values), "runs": len({o["run_id"] for o in obs}),
                    "observations": len(obs), "min": min(values), "max": max(values),
                    "last_run": obs[-1]["run_id"], "how": obs[-1]["detail"]})
    return out


def price_factors(ledger=None) -> dict:
    """{(cloud, "H100:8", "spot" | "on-demand"): {factor, runs, effective_per_hour, recorded_per_hour, last_run,
    how}}: billed / recorded compute $ of each run's stages on that placement, the median over runs. A bill is a
    bill whatever produced the ledger rows, so simulated runs count here (a real one has no tagged costs)."""
    from costmodel.prices import parse_accelerator

    per_run: dict = {}
    for run_id, stage, n in _billed_events(ledger):
        if not n.get("calibrates"):
            continue
        try:
            name, count = parse_accelerator(n["accelerator"])
        except Exception:
            continue
        key = (str(n["cloud"]).lower(), f"{name}:{count}", "spot" if n.get("spot") else "on-demand")
        agg = per_run.setdefault(key, {}).setdefault(run_id, {"billed": 0.0, "recorded": 0.0, "hours": 0.0})
        agg["billed"] += n["billed_compute_usd"]
        agg["recorded"] += n["recorded_compute_usd"]
        agg["hours"] += n["hours"]
    out = {}
    for key, runs in per_run.items():
        ratios = [r["billed"] / r["recorded"] for r in runs.values()]
        last_run, last = list(runs.items())[-1]
        factor = statistics.median(ratios)
        out[key] = {"factor": factor, "runs": len(runs), "last_run": last_run,
                    "effective_per_hour": last["billed"] / last["hours"],
                    "recorded_per_hour": last["recorded"] / last["hours"],
                    "how": f"billed ${last['billed']:,.2f} / recorded ${last['recorded']:,.2f} over "
                           f"{last['hours']:,.2f} h (run {last_run})"}
    return out


def price_rows(ledger=None) -> list[dict]:
    """price_factors() as `reproduce calibration` rows."""
    rows = []
    for (cloud, accel, market), f in sorted(price_factors(ledger).items()):
        rows.append({"key": f"price/{cloud}/{accel}/{market}", "value": f["factor"], "runs": f["runs"],
                     "observations": f["runs"], "min": None, "max": None, "last_run": f["last_run"],
                     "how": f["how"] + f"; ${f['recorded_per_hour']:,.2f}/h recorded -> "
                                       f"${f['effective_per_hour']:,.2f}/h billed"})
    return rows


def _billed_events(ledger) -> list[tuple[str, str, dict]]:
    """The latest `billed` event of each run and stage, oldest run first: (run_id, stage, numbers)."""
    import json

    from costmodel.ledger import Ledger, default_path

    sql = "SELECT run_id, stage, numbers FROM events WHERE kind = 'billed' ORDER BY id"
    if ledger is None:
        if not Path(default_path()).is_file():
            return []
        with Ledger(default_path()) as led:
            rows = led.db.execute(sql).fetchall()
    else:
        rows = ledger.db.execute(sql).fetchall()
    latest = {}
    for run_id, stage, numbers in rows:
        latest.pop((run_id, stage), None)   # re-inserted: the order follows the latest event
        latest[(run_id, stage)] = json.loads(numbers or "{}")
    return [(run_id, stage, n) for (run_id, stage), n in latest.items()]


def load(ledger=None) -> dict:
    """{key: value} for the estimator; {} when there is no ledger yet (a plan never creates one)."""
    return {f["key"]: f["value"] for f in figures(ledger)}


def _rows(ledger, include_simulated: bool) -> list[dict]:
    from costmodel.ledger import Ledger, default_path

    if ledger is None:
        path = default_path()
        if not Path(path).is_file():
            return []
        with Ledger(path) as led:
            return led.calibration_rows(include_simulated)
    return ledger.calibration_rows(include_simulated)


def _first(d: dict, *names):
    for n in names:
        v = d.get(n)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None
