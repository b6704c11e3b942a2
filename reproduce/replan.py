"""Re-plan the stages still to run from what the run has measured, not from the recipe's assumptions.

After each finished stage the pipeline calls `facts()` on what it left (its summary.json, its ledger row) and
`replan()` with every fact so far. Facts change the recipe's workload assumptions, then the plan is priced
again by the same `build_plan`:

    generate  traces written and their tokens   -> generate.mean_response_tokens, sources.*.problems (scaled)
    filter    records graded and kept by domain -> sources.*.keep_rate of the domains it graded
    convert   the SFT dataset, tokenized        -> sft.samples, sft.mean_sample_tokens (packed sequences shown)
    a GPU stage's work hours vs its estimate    -> the same factor on the remaining stages of the same work
                                                   (vLLM decode: generate -> eval); a slowdown (never a
                                                   speedup) also on GPU work not measured yet (training)

Each re-plan is a ledger event (kind `replan`) with the rows and the reason of every change.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from reproduce import stagetable


def facts(stage: str, summary: dict, actual: dict, plan_row, recipe: dict, artifacts: Path) -> dict:
    """What a finished stage measured that the plan assumed. `actual`: its finished ledger row."""
    out: dict = {}
    if stage == "generate":
        traces = summary.get("records")
        tokens = summary.get("response_tokens") or summary.get("output_tokens")
        if traces:
            out["traces"] = int(traces)
        if traces and tokens:
            out["mean_response_tokens"] = float(tokens) / int(traces)
    elif stage == "filter":
        deferred = set(recipe["filter"]["grade_after_rewrite"]) if recipe["rewrite"]["recheck"] else set()
        rates = {}
        for domain, d in (summary.get("by_domain") or {}).items():   # {domain: {kept, rejected}}
            graded = (d.get("kept") or 0) + (d.get("rejected") or 0)
            if graded and domain not in deferred:    # a deferred domain passes through ungraded
                rates[domain] = (d.get("kept") or 0) / graded
        if rates:
            out["keep_rate"] = rates
    elif stage == "convert":
        workload = sft_workload(artifacts, recipe)
        if workload:
            out["sft"] = workload
    row = stagetable.stage(stage)
    if row.where == stagetable.GPU and plan_row.kind == "gpu" and plan_row.base_hours > 0 and actual.get("hours"):
        costs = recipe["costs"]
        overhead = (costs["startup_hours"] * (plan_row.nodes or 1) if plan_row.price_per_hour else 0.0) \
            + (actual.get("preemptions") or 0) * costs["recovery_hours"]
        work = max(actual["hours"] - overhead, 0.05 * plan_row.base_hours)
        out["throughput"] = {"work": row.work, "factor": work / plan_row.base_hours, "work_hours": work,
                             "planned_hours": plan_row.base_hours}
    return out


def sft_workload(artifacts: Path, recipe: dict) -> dict | None:
    """The exact SFT workload convert wrote: samples, tokens each (with the student's tokenizer where one is
    at hand: tokenizer.json of the smoke model or a local student folder; else bytes / 4, said so), truncated
    at cutoff_len, and with packing the number of packed sequences."""
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

    count, how = _tokenizer(artifacts, recipe)
    cutoff = int(recipe["sft"]["cutoff_len"])
    # tokens per sequence; a pair's two averaged, as sft.mean_sample_tokens is for preference methods
    lengths = [sum(min(count(t), cutoff) for t in seqs) / len(seqs)
               for seqs in (sequences(r) for r in records if isinstance(r, dict))]
    tokens = sum(lengths)
    out = {"samples": len(lengths), "tokens": tokens, "mean_tokens": tokens / len(lengths), "how": how}
    if recipe["sft"].get("packing"):   # first-fit in order, as LLaMA-Factory packs: sequences of <= cutoff
        sequences, room = 0, 0
        for n in lengths:
            if n > room:
                sequences, room = sequences + 1, cutoff
            room -= n
        out["packed_sequences"] = sequences
    return out


def _tokenizer(artifacts: Path, recipe: dict):
    """(count tokens, how) with the student's tokenizer: at smoke scale the tiny student's BPE (built the
    same way the sft stage builds it), else a local student folder's tokenizer.json, else the hub's
    (downloaded once into the per-user cache). Without one: 4 bytes per token, and the fact says so."""
    student = str(((recipe.get("models") or {}).get("student") or {}).get("id", ""))
    try:
        from tokenizers import Tokenizer

        if recipe.get("scale") == "smoke":
            from reproduce.stages.smoke.tinymodel import build_bpe

            tok, how = build_bpe(), "tokenized with the tiny student's BPE"
        else:
            file = _student_tokenizer_file(student)
            tok, how = (Tokenizer.from_file(str(file)), f"tokenized with {student}'s tokenizer") if file else (None, "")
        if tok is not None:
            return (lambda t: len(tok.encode(t).ids)), how
    except Exception:   # noqa: BLE001 - no tokenizers library, or a file it cannot read: estimate
        pass
    return (lambda t: max(1, len(t.encode()) // 4)), "estimated at 4 bytes per token (no student tokenizer here)"


def _student_tokenizer_file(student: str) -> Path | None:
    import os

    local = Path(student) / "tokenizer.json"
    if local.is_file():
        return local
    from reproduce.paths import user_cache

    cache = user_cache() / "tokenizers" / student.replace("/", "--") / "tokenizer.json"
    if cache.is_file():
        return cache
    if os.environ.get("REPRODUCE_OFFLINE") or "/" not in student:
        return None
    try:
        import requests

        token = os.environ.get("HF_TOKEN")
        r = requests.get(f"https://huggingface.co/{student}/resolve/main/tokenizer.json", timeout=10,
                         headers={"Authorization": f"Bearer {token}"} if token else {})
        r.raise_for_status()
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(r.content)
        return cache
    except Exception:   # noqa: BLE001 - offline or gated: the estimate, said so
        return None


def apply(recipe: dict, known: dict) -> tuple[dict, list[str]]:
    """The recipe with the measured workload in place of its assumptions, and why each change."""
    variant = copy.deepcopy(recipe)
    why = []
    gen = known.get("generate") or {}
    if gen.get("mean_response_tokens"):
        old = variant["generate"]["mean_response_tokens"]
        variant["generate"]["mean_response_tokens"] = gen["mean_response_tokens"]
        why.append(f"generate wrote traces of {gen['mean_response_tokens']:,.0f} tokens on average (assumed {old:,.0f})")
    if gen.get("traces"):
        planned = sum(s["problems"] for s in variant["sources"]) * variant["generate"]["samples_per_problem"]
        if planned and gen["traces"] != planned:
            scale = gen["traces"] / planned
            for s in variant["sources"]:
                s["problems"] = max(1, round(s["problems"] * scale))
            why.append(f"generate wrote {gen['traces']:,} traces (planned {planned:,.0f})")
    for domain, rate in ((known.get("filter") or {}).get("keep_rate") or {}).items():
        for s in variant["sources"]:
            if s["domain"] == domain:
                s["keep_rate"] = min(max(rate, 1e-6), 1.0)
        why.append(f"filter kept {rate:.1%} of {domain} traces")
    sft = (known.get("convert") or {}).get("sft")
    if sft:
        old = (variant["sft"]["samples"], variant["sft"]["mean_sample_tokens"])
        variant["sft"]["samples"] = int(sft["samples"])
        variant["sft"]["mean_sample_tokens"] = max(float(sft["mean_tokens"]), 1.0)
        packed = f", {sft['packed_sequences']:,} packed sequences" if "packed_sequences" in sft else ""
        why.append(f"convert wrote {sft['samples']:,} samples of {sft['mean_tokens']:,.0f} tokens ({sft['tokens']:,} "
                   f"in all{packed}; {sft['how']}); assumed {old[0]:,} x {old[1]:,.0f}")
    return variant, why


def replan(recipe: dict, known: dict, remaining: list[str], budget, backend: str, calibration: dict | None):
    """(rows for `remaining` re-priced from the measured facts, {stage: [reasons]}, [recipe-level reasons])."""
    from costmodel import estimates
    from reproduce.plan import build_plan

    variant, why = apply(recipe, known)
    plan = build_plan(variant, budget, backend, calibration, suggest=False)
    rows = {s.stage: s for s in plan.stages if s.stage in remaining}
    reasons: dict[str, list[str]] = {name: [] for name in rows}
    measured = {f["throughput"]["work"]: (stage_name, f["throughput"]) for stage_name, f in known.items()
                if f.get("throughput")}   # the latest measurement of each kind of work
    slowest = max(measured.values(), key=lambda m: m[1]["factor"], default=None)
    for name, row in rows.items():
        work = stagetable.stage(name).work
        if row.kind != "gpu" or work is None:
            continue
        if work in measured:
            src, t = measured[work]
            reason = f"{name}'s {work} scaled the same"
        elif slowest is not None and slowest[1]["factor"] > 1:
            # No measurement of this kind of work yet: a slowdown seen elsewhere on the run is assumed here
            # too (the same images, drivers and clouds), a speedup is not. Its own forecast takes over once it
            # runs. Our choice: a guard that waits for proof of a slowdown pays for the proof.
            src, t = slowest
            reason = f"no {work} measured yet: the run's slowdown assumed for {name} until it measures its own"
        else:
            continue
        estimates.rescale(row, t["factor"], variant["costs"])
        # the guard's bounds (costmodel.forecast) trust a borrowed factor less than one of the same work
        row.details["factor_basis"] = "measured" if work in measured else "borrowed"
        reasons[name].append(f"{src} ran {t['factor']:.2f}x its estimate ({t['work_hours']:,.2f} h of work vs "
                             f"{t['planned_hours']:,.2f} h): {reason}")
    return rows, reasons, why
