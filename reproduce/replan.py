"""Re-plan the stages still to run from what the run has measured, not from the recipe's assumptions.

After each finished stage the pipeline calls `facts()` on what it left (its summary.json, its ledger row) and
`replan()` with every fact so far. Facts change the recipe's workload assumptions, then the plan is priced
again by the same `build_plan`:

    a stage with a handoff (its row's, costmodel.handoff: generate's traces, filter's keep rates, convert's
                                                SFT dataset) -> the recipe's workload assumptions it measured
    a GPU stage's work hours vs its estimate    -> the same factor on the remaining stages of the same work
                                                   (vLLM decode: generate -> eval); a slowdown (never a
                                                   speedup) also on GPU work not measured yet (training)

Each re-plan is a ledger event (kind `replan`) with the rows and the reason of every change.
"""
from __future__ import annotations

import copy
from pathlib import Path

from reproduce import stagetable


def facts(stage: str, summary: dict, actual: dict, plan_row, recipe: dict, artifacts: Path) -> dict:
    """What a finished stage measured that the plan assumed: its row's handoff (costmodel.handoff), and for a
    GPU stage its work hours against the estimate. `actual`: its finished ledger row."""
    row = stagetable.stage(stage)
    out = row.handoff.read(summary, recipe, artifacts, lambda: _tokenizer(artifacts, recipe)) if row.handoff else {}
    if row.where == stagetable.GPU and plan_row.kind == "gpu" and plan_row.base_hours > 0 and actual.get("hours"):
        costs = recipe["costs"]
        overhead = (costs["startup_hours"] * (plan_row.nodes or 1) if plan_row.price_per_hour else 0.0) \
            + (actual.get("preemptions") or 0) * costs["recovery_hours"]
        work = max(actual["hours"] - overhead, 0.05 * plan_row.base_hours)
        out["throughput"] = {"work": row.work, "factor": work / plan_row.base_hours, "work_hours": work,
                             "planned_hours": plan_row.base_hours}
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
    for row in stagetable.STAGES:   # in pipeline order, as the facts were measured
        if row.handoff and known.get(row.name):
            why += row.handoff.apply(variant, known[row.name])
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
