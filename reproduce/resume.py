"""Resuming a run, in one home: what `--resume RUN` continues from, what it may change, and taking it over.

    r = open_run(ledger, run_id, recipe_name, scale, sets, budget_usd, backend, sim)   # the CLI, before the plan
    plan = rest_of_plan(r, plan, only)                                                 # the stages not finished
    artifacts = take_over(ledger, run_id, me, budget, executor)                        # the pipeline, at its start

A resumed run keeps its own recipe (with every `--set` recorded on a resume since), budget and backend unless
given; its plan is the stages not finished yet, re-priced from what the run measured; taking it over claims its
lease (one owner) and counts the attempts a dead controller left open at their last progress row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reproduce.errors import UserError

# the attempt fields an interrupted row copies from the last row the dead controller wrote
_KEPT = ("state", "kind", "accelerator", "nodes", "gpus", "spot", "cloud", "region", "zone", "instance_type",
         "price_per_hour", "price_source", "price_date", "started_at", "hours", "gpu_hours", "preemptions",
         "compute_usd", "simulated")


@dataclass
class Resumed:
    run_id: str
    found: dict              # the run's ledger row
    recipe: dict             # its recipe, with --set changes applied
    budget: float | None
    backend: str
    sim: dict
    spent: float
    changed_stages: list | None = None   # the stages a --set on this resume re-plans


def open_run(ledger, run_id: str, recipe_name, scale, sets: list, budget: float | None, backend: str,
             sim: dict) -> Resumed:
    """The run to resume, refusing (UserError) what would change it mid-run."""
    found = ledger.run(run_id)
    if found is None:
        raise UserError(f"--resume {run_id!r}: no such run in {ledger.path}; see `reproduce runs`")
    changed = [flag for flag, given, was in (("--recipe", recipe_name, found["recipe"]), ("--scale", scale, found["scale"]))
               if given and given != was and not (flag == "--recipe" and _same_recipe(given, was))]
    if changed:   # the run's recipe is what its plan, ledger rows and artifacts were made from
        raise UserError(f"--resume {run_id} continues the run's own recipe; {', '.join(changed)} would change "
                        f"it mid-run: start a new run instead (reproduce all {' '.join(changed)} ...)")
    recipe = resumed_recipe(ledger, run_id, found)
    changed_stages = change_on_resume(ledger, run_id, recipe, sets) if sets else None
    if budget is None:
        budget = ledger.budget(run_id)
    if backend == "auto":
        backend = found["backend"]
    if backend == "sim":   # the virtual clock goes on from where the run's records end
        sim = {**sim, "start": max([r["at"] for r in ledger.progress_rows(run_id)] + [found["created_at"]])}
    return Resumed(run_id, found, recipe, budget, backend, sim, ledger.spent(run_id), changed_stages)


def rest_of_plan(ledger, r: Resumed, plan, backend: str, only: list | None) -> tuple[object, list[str]]:
    """(the plan of the stages not finished yet, after what was spent, re-priced from what the run measured
    before it stopped; the finished stages skipped)."""
    if only:
        check_inputs(ledger, r.run_id, only[0], r.found)
    finished = ledger.finished_stages(r.run_id)
    skipped = [s.stage for s in plan.stages if s.stage in finished and (not only or s.stage in only)]
    plan = plan.only([s.stage for s in plan.stages if s.stage not in finished])
    plan.spent_usd = r.spent
    known = known_facts(ledger, r.run_id)
    if known and plan.stages:
        from reproduce import replan

        rows, _, _ = replan.replan(r.recipe, known, [s.stage for s in plan.stages], r.budget, backend, None)
        plan.stages = [rows[s.stage] for s in plan.stages]
    return plan, skipped


def take_over(ledger, run_id: str, me: dict, budget: float | None, executor) -> Path:
    """Claim the run (atomic: of two resumers one proceeds, the other exits 2 naming it), record the resume,
    and close every attempt the controller left open: at what it last saw, or, where the node's watchdog stopped
    it, at what it cost to that stop. Returns (the run's artifacts, {stage: why its node stopped it})."""
    found = ledger.run(run_id)
    if found is None:
        raise UserError(f"--resume {run_id!r}: no such run; see `reproduce runs`")
    ledger.claim_run(run_id, me)
    ledger.add_event(run_id, None, "run", ok=True, reason="resumed", numbers={**me, "budget": budget},
                     at=executor.now())
    same_budget = budget is None or budget == ledger.budget(run_id)
    if budget is not None and budget != found["budget"]:
        ledger.add_event(run_id, None, "budget", ok=True, reason=f"budget changed to ${budget:,.2f} on resume",
                         numbers={"budget": budget, "was": found["budget"]}, at=executor.now())
    artifacts = Path(found["artifacts"])
    stops = {}
    for a in ledger.open_attempts(run_id):   # the controller died mid-stage: count what we last saw
        fields = {k: a[k] for k in _KEPT}
        stopped = _stopped_on_node(executor, run_id, a, artifacts, found)
        if stopped:   # its watchdog stopped it: what it cost to its stop, once, on the same attempt
            why = f"stopped on the node: {stopped.get('why', '')}"
            hours = max(float(stopped.get("at", 0)) - float(a["started_at"] or 0), 0.0) / 3600
            fields.update(state="CANCELLED", ended_at=stopped.get("at"), hours=hours,
                          gpu_hours=hours * (a["gpus"] or 0), compute_usd=max(float(stopped.get("cost_usd") or 0),
                                                                              a["compute_usd"] or 0.0), message=why)
            ledger.add_stage_row(run_id, a["stage"], "cancelled", at=executor.now(), attempt=a["attempt"], **fields)
            ledger.add_event(run_id, a["stage"], "node_stop", ok=True, reason=f"stage {a['stage']} {why}",
                             numbers=stopped, at=executor.now())
            stops[a["stage"]] = f"stage {a['stage']} {why}"
            continue
        fields.update(state="INTERRUPTED", ended_at=a["at"],
                      message="the controller stopped without recording an end; spend counted to its last "
                              "progress row" + ("" if executor.simulated else "; check `sky status` and `sky jobs queue`"))
        ledger.add_stage_row(run_id, a["stage"], "interrupted", at=executor.now(), attempt=a["attempt"], **fields)
    if not same_budget:
        return artifacts, {}   # a new budget re-admits a stage its node stopped
    return artifacts, {**_stopped_before(ledger, run_id), **stops}


def _stopped_before(ledger, run_id: str) -> dict:
    """{stage: why} of stages whose last attempt its node stopped on an earlier resume, with neither the budget
    nor the recipe changed since: the same stop holds (a resume does not launch what cannot fit again)."""
    stops, finished = {}, ledger.finished_stages(run_id)
    events = ledger.events(run_id)
    for e in ledger.events(run_id, "node_stop"):
        stage, attempt = e["stage"], int(e["numbers"].get("attempt", -1))
        if stage in finished or any(int(a["attempt"]) > attempt for a in ledger.attempts(run_id, stage)):
            continue
        if any(x["kind"] in ("budget", "recipe_changed") and x["id"] > e["id"] for x in events):
            continue
        stops[stage] = e["reason"]
    return stops


def _stopped_on_node(executor, run_id: str, a: dict, artifacts: Path, found: dict) -> dict | None:
    """The open attempt's stopped.json, when its own watchdog wrote it (an older attempt's does not count)."""
    import yaml

    from reproduce.executors.base import RunContext

    bucket = (yaml.safe_load(found.get("recipe_yaml") or "{}") or {}).get("bucket")
    ctx = RunContext(run_id=run_id, recipe={}, stage=a["stage"], plan=None, artifacts=artifacts, bucket=bucket)
    try:
        stopped = executor.stopped_on_node(ctx)
    except Exception:   # noqa: BLE001 - an unreadable bucket: the attempt counts as interrupted
        return None
    return stopped if stopped and int(stopped.get("attempt", -1)) == a["attempt"] else None


def known_facts(ledger, run_id: str) -> dict:
    """What earlier stages of this run measured (a resumed run re-plans from them too)."""
    return {e["stage"]: e["numbers"] for e in ledger.events(run_id, "measured") if e["stage"]}


def _same_recipe(given: str, name: str) -> bool:
    """`--recipe` naming the run's own recipe (by name or by its file) changes nothing."""
    return Path(given).stem == name


def resumed_recipe(ledger, run_id: str, found: dict) -> dict:
    """The recipe the run started with, flags and all, with every change recorded on a resume since."""
    import yaml

    from reproduce.recipe import parse_value, set_key

    recipe = yaml.safe_load(found["recipe_yaml"])
    for e in ledger.events(run_id, "recipe_changed"):
        for item in e["numbers"].get("sets", []):
            key, _, raw = item.partition("=")
            set_key(recipe, key.strip(), parse_value(raw))
    return recipe


def change_on_resume(ledger, run_id: str, recipe: dict, sets: list[str]) -> list[str]:
    """`--resume R --set k=v`: allowed for the sections of stages not finished yet (what is done stays as it
    was done); checked like any recipe value. Changes `recipe` in place; returns the stages it affects."""
    from reproduce import recipe_schema, stagetable
    from reproduce.recipe import parse_value, set_key

    finished = ledger.finished_stages(run_id)
    open_sections = {s.section: s.name for s in stagetable.STAGES if s.name not in finished}
    touched = []
    for item in sets:
        key, sep, raw = item.partition("=")
        section = key.strip().split(".")[0]
        if not sep or section not in open_sections:
            done = [s.name for s in stagetable.STAGES if s.section == section]
            raise UserError(f"--resume {run_id} --set {item}: only the sections of stages still to run may change "
                            f"({', '.join(sorted(open_sections))})" + (f"; {done[0]} is finished" if done else ""))
        set_key(recipe, key.strip(), parse_value(raw))
        touched.append(open_sections[section])
    recipe_schema.check(recipe, origin=lambda key: "from --set on resume")
    return sorted(set(touched))


def check_inputs(ledger, run_id: str, name: str, found: dict) -> None:
    """`reproduce stage NAME --run R` only when R finished every stage NAME reads from, and their outputs
    (each stage's summary.json) are in the run's artifacts."""
    from reproduce import stagetable

    finished = ledger.finished_stages(run_id)
    for need in stagetable.stage(name).needs:
        if need not in finished:
            state = ledger.stage_state(run_id, need)
            raise UserError(f"stage {name} reads {need}'s outputs, and {need} in run {run_id} is {state}: "
                            f"run it first (reproduce stage {need} --run {run_id}) or resume the run")
        if not (Path(found["artifacts"]) / need / "summary.json").is_file() and not found.get("simulated"):
            raise UserError(f"stage {name} reads {need}'s outputs, and {Path(found['artifacts']) / need} has no "
                            f"summary.json: the artifacts of run {run_id} are incomplete")
