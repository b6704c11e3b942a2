"""What a finished stage hands the stages after it: the workload it measured, in place of the recipe's assumptions.

Each row of the stage table (costmodel.stages) points at one `Handoff` (or none). reproduce.replan reads it after
the stage finishes (`read`: its summary.json and artifacts -> facts, recorded in the ledger) and re-prices the rest
from a recipe with every fact applied (`apply`: the facts -> the recipe changed, and why):

    generate  traces written and their tokens   -> generate.mean_response_tokens, sources.*.problems (scaled)
    filter    records graded and kept by domain -> sources.*.keep_rate of the domains it graded
    convert   the SFT dataset, tokenized        -> sft.samples, sft.mean_sample_tokens (packed sequences shown)

A GPU stage's measured speed is read the same way for every such stage (its row's `work`): reproduce.replan.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# reads (summary, recipe, artifacts, tokenizer) -> facts ({} when it measured nothing); `tokenizer()` gives
# (count tokens of a text, how they were counted) and is called only by a handoff that tokenizes
Read = Callable[[dict, dict, Path, Callable], dict]
Apply = Callable[[dict, dict], list]   # (the recipe, changed in place, its stage's facts) -> [why each change]


@dataclass(frozen=True)
class Handoff:
    read: Read
    apply: Apply


def _generate_read(summary: dict, recipe: dict, artifacts: Path, tokenizer: Callable) -> dict:
    out: dict = {}
    traces = summary.get("records")
    tokens = summary.get("response_tokens") or summary.get("output_tokens")
    if traces:
        out["traces"] = int(traces)
    if traces and tokens:
        out["mean_response_tokens"] = float(tokens) / int(traces)
    return out


def _generate_apply(variant: dict, gen: dict) -> list[str]:
    why = []
    if gen.get("mean_response_tokens"):
        old = variant["generate"]["mean_response_tokens"]
        variant["generate"]["mean_response_tokens"] = gen["mean_response_tokens"]
        why.append(f"generate wrote traces of {gen['mean_response_tokens']:,.0f} tokens on average "
                   f"(assumed {old:,.0f})")
    if gen.get("traces"):
        planned = sum(s["problems"] for s in variant["sources"]) * variant["generate"]["samples_per_problem"]
        if planned and gen["traces"] != planned:
            scale = gen["traces"] / planned
            for s in variant["sources"]:
                s["problems"] = max(1, round(s["problems"] * scale))
            why.append(f"generate wrote {gen['traces']:,} traces (planned {planned:,.0f})")
    return why


def _filter_read(summary: dict, recipe: dict, artifacts: Path, tokenizer: Callable) -> dict:
    deferred = set(recipe["filter"]["grade_after_rewrite"]) if recipe["rewrite"]["recheck"] else set()
    rates = {}
    for domain, d in (summary.get("by_domain") or {}).items():   # {domain: {kept, rejected}}
        graded = (d.get("kept") or 0) + (d.get("rejected") or 0)
        if graded and domain not in deferred:    # a deferred domain passes through ungraded
            rates[domain] = (d.get("kept") or 0) / graded
    return {"keep_rate": rates} if rates else {}


def _filter_apply(variant: dict, facts: dict) -> list[str]:
    why = []
    for domain, rate in (facts.get("keep_rate") or {}).items():
        for s in variant["sources"]:
            if s["domain"] == domain:
                s["keep_rate"] = min(max(rate, 1e-6), 1.0)
        why.append(f"filter kept {rate:.1%} of {domain} traces")
    return why


def _convert_read(summary: dict, recipe: dict, artifacts: Path, tokenizer: Callable) -> dict:
    workload = sft_workload(artifacts, recipe, tokenizer)
    return {"sft": workload} if workload else {}


def _convert_apply(variant: dict, facts: dict) -> list[str]:
    sft = facts.get("sft")
    if not sft:
        return []
    old = (variant["sft"]["samples"], variant["sft"]["mean_sample_tokens"])
    variant["sft"]["samples"] = int(sft["samples"])
    variant["sft"]["mean_sample_tokens"] = max(float(sft["mean_tokens"]), 1.0)
    packed = f", {sft['packed_sequences']:,} packed sequences" if "packed_sequences" in sft else ""
    return [f"convert wrote {sft['samples']:,} samples of {sft['mean_tokens']:,.0f} tokens ({sft['tokens']:,} "
            f"in all{packed}; {sft['how']}); assumed {old[0]:,} x {old[1]:,.0f}"]


def sft_workload(artifacts: Path, recipe: dict, tokenizer: Callable) -> dict | None:
    """The exact SFT workload convert wrote: samples, tokens each (counted by `tokenizer()`), truncated at
    cutoff_len, and with packing the number of packed sequences."""
    path = Path(artifacts) / "convert" / "train.json"
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(records, list) or not records:
        return None

    def sequences(r: dict) -> list[str]:   # a preference pair trains two: prompt + chosen, prompt + rejected
        text = "".join(str(m.get("value", "")) for m in r.get("conversations", [])) + str(r.get("system", ""))
        ends = [str((r.get(k) or {}).get("value", "")) for k in ("chosen", "rejected") if isinstance(r.get(k), dict)]
        return [text + e for e in ends] or [text]

    count, how = tokenizer()
    cutoff = int(recipe["sft"]["cutoff_len"])
    # tokens per sequence; a pair's two averaged, as sft.mean_sample_tokens is for preference methods
    lengths = [sum(min(count(t), cutoff) for t in seqs) / len(seqs)
               for seqs in (sequences(r) for r in records if isinstance(r, dict))]
    tokens = sum(lengths)
    out = {"samples": len(lengths), "tokens": tokens, "mean_tokens": tokens / len(lengths), "how": how}
    if recipe["sft"].get("packing"):   # first-fit in order, as LLaMA-Factory packs: sequences of <= cutoff
        packed, room = 0, 0
        for n in lengths:
            if n > room:
                packed, room = packed + 1, cutoff
            room -= n
        out["packed_sequences"] = packed
    return out


GENERATE = Handoff(_generate_read, _generate_apply)
FILTER = Handoff(_filter_read, _filter_apply)
CONVERT = Handoff(_convert_read, _convert_apply)
