"""Finished runs calibrate the estimator: measured throughputs, keyed the way costmodel.estimates asks.

    decode_tok_s_per_gpu/<params>B/<gpu>/tp<N>                  generate and eval (vLLM decode)
    mfu/zero<S>/offload=<bool>/packing=<bool>/liger=<bool>      sft

`observations()` turns a finished stage's summary.json into figures (the pipeline stores them in the
ledger with the stage's terminal row); `load()` gives the estimator the median per key over real runs
(simulated runs only echo the estimator, so they never calibrate it); `figures()` is what
`reproduce calibration` shows, with how many runs each figure rests on.
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
    gpu = accel.partition(":")[0]
    if gpus <= 0 or gpu not in estimates.GPUS or plan_row.get("kind") != "gpu":
        return []
    if stage in ("generate", "eval"):
        wall = _first(summary, "generation_wall_s", "wall_s")
        output = _first(summary, "output_tokens", "response_tokens", "completion_tokens")
        prompt = _first(summary, "prompt_tokens") or 0.0
        if not wall or not output:
            return []
        role = "teacher" if stage == "generate" else "student"
        params = recipe["models"][role]["params_b"]
        tp = recipe[stage].get("tensor_parallel", 1)
        # the estimator's own formula, inverted: seconds = (output + prompt / PREFILL_SPEEDUP) / (tok/s x GPUs)
        tok_s = (output + prompt / estimates.PREFILL_SPEEDUP) / (wall * gpus)
        key = f"decode_tok_s_per_gpu/{params:g}B/{gpu}/tp{tp}"
        return [(key, tok_s, f"({output:,.0f} out + {prompt:,.0f} in / {estimates.PREFILL_SPEEDUP:g}) tokens / "
                             f"({wall:,.0f} s x {gpus} GPUs)")]
    if stage == "sft":
        runtime = _first(summary, "train_runtime", "wall_s")
        tokens = _first(summary, "train_tokens")
        if not runtime or not tokens:
            return []
        sft, student = recipe["sft"], recipe["models"]["student"]
        seq = min(sft["mean_sample_tokens"], sft["cutoff_len"])
        per_token = 6 * student["params_b"] * 1e9 + 6 * student.get("layers", 64) * student.get("hidden", 5120) * seq
        nodes = int(summary.get("nodes") or plan_row.get("nodes") or 1)
        scaling = estimates.NODE_SCALING ** math.log2(nodes) if nodes > 1 else 1.0
        peak = estimates.gpu_spec(gpu).bf16_tflops * 1e12
        mfu = per_token * tokens / (gpus * peak * runtime * scaling)
        key = (f"mfu/zero{sft['zero_stage']}/offload={sft['cpu_offload']}/packing={sft['packing']}"
               f"/liger={sft.get('liger_kernel', False)}")
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


def load(ledger=None) -> dict:
    """{key: value} for the estimator; {} when there is no ledger yet (a plan never creates one)."""
    return {f["key"]: f["value"] for f in figures(ledger)}


def calibrated(key: str, ledger=None):
    return load(ledger).get(key)


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
