"""`reproduce all`, `reproduce stage NAME`, `reproduce status`: run the recipe within a budget.

    reproduce all --budget 450                          # plan, ask, run every stage, audit
    reproduce all --budget 450 --backend sim --sim-slowdown 3 -y     # what if everything ran 3x slower?
    reproduce all --resume 20261124-101500-ab12         # continue from the last finished stage
    reproduce stage sft --run 20261124-101500-ab12      # one stage of a run
"""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from reproduce.cli_plan import BUDGET_OPTION, INFRA_OPTION, RECIPE_OPTION, SCALE_OPTION, SET_OPTION
from reproduce.errors import OverBudget, UserError
from reproduce.output import JSON_OPTION, money, print_json, table

BACKEND_OPTION = typer.Option("auto", "--backend", metavar="auto|sky|local|sim",
                              help="auto: SkyPilot if an infra is enabled, else this machine; sim: a simulation.")
DRY_RUN_OPTION = typer.Option(False, "--dry-run", metavar="", help="Render every task with its placement and print the plan; spend nothing.")
YES_OPTION = typer.Option(False, "--yes", "-y", metavar="", help="Do not ask for confirmation.")
SLOWDOWN_OPTION = typer.Option(1.0, "--sim-slowdown", metavar="X", help="sim: every stage takes this many times its estimate.")
PREEMPT_OPTION = typer.Option(0.0, "--sim-preemption-rate", metavar="PER_HOUR", help="sim: spot preemptions per hour of running.")
SEED_OPTION = typer.Option(0, "--sim-seed", metavar="N", help="sim: random seed (noise, preemptions).")
BUCKET_OPTION = typer.Option(None, "--bucket", envvar="REPRODUCE_BUCKET", metavar="s3://NAME|gs://NAME",
                             help="s3://NAME or gs://NAME for artifacts on clouds (each run under runs/RUN).")
SKIP_CHECK_OPTION = typer.Option(None, "--skip-check", metavar="NAME",   # reproduce.preflight
                                 help="Waive the failed preflight check NAME (or a group, e.g. bucket); "
                                      "recorded in the ledger.")
PACE_OPTION = typer.Option(0.0, "--sim-pace", metavar="SECONDS",
                           help="sim: real seconds to sleep per poll, to watch (or interrupt) a simulated run.")


def register(app: typer.Typer) -> None:
    from reproduce.cli_plan import examples

    app.command("all", epilog=examples(
        "reproduce all --budget 450 --bucket s3://my-runs",
        "reproduce all --budget 100000 --dry-run --backend sky --bucket s3://my-runs -y",
        "reproduce all --budget 450 --backend sim --sim-slowdown 3 -y",
        "reproduce all --resume RUN --budget 600"))(all_stages)
    app.command("stage", epilog=examples(
        "reproduce stage generate --budget 450 --backend sim -y",
        "reproduce stage eval --run RUN"))(stage)
    app.command("status", epilog=examples("reproduce status --json"))(status)


def all_stages(
    recipe: Optional[str] = RECIPE_OPTION,
    budget: Optional[str] = BUDGET_OPTION,
    backend: str = BACKEND_OPTION,
    scale: Optional[str] = SCALE_OPTION,
    sets: Optional[List[str]] = SET_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN",
                                         help="Continue run RUN from what it finished and saved."),
    yes: bool = YES_OPTION,
    sim_slowdown: float = SLOWDOWN_OPTION,
    sim_preemption_rate: float = PREEMPT_OPTION,
    sim_seed: int = SEED_OPTION,
    sim_pace: float = PACE_OPTION,
    bucket: Optional[str] = BUCKET_OPTION,
    infra: Optional[List[str]] = INFRA_OPTION,
    skip_check: Optional[List[str]] = SKIP_CHECK_OPTION,
) -> None:
    """Plan, confirm, run every stage within --budget (exit 3 before crossing it), then audit."""
    from reproduce.plan import infra_sets

    execute(recipe, budget, backend, scale, (sets or []) + infra_sets(infra), dry_run, resume, yes,
            dict(seed=sim_seed, slowdown=sim_slowdown, preemption_rate=sim_preemption_rate, pace_s=sim_pace),
            bucket=bucket, skip_checks=skip_check or [])


def stage(
    name: str = typer.Argument(..., help="generate | filter | rewrite | convert | sft | eval"),
    run_id: Optional[str] = typer.Option(None, "--run", metavar="RUN",
                                         help="Run the stage as part of run RUN (default: a new run)."),
    recipe: Optional[str] = RECIPE_OPTION,
    budget: Optional[str] = BUDGET_OPTION,
    backend: str = BACKEND_OPTION,
    scale: Optional[str] = SCALE_OPTION,
    sets: Optional[List[str]] = SET_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    yes: bool = YES_OPTION,
    sim_slowdown: float = SLOWDOWN_OPTION,
    sim_preemption_rate: float = PREEMPT_OPTION,
    sim_seed: int = SEED_OPTION,
    sim_pace: float = PACE_OPTION,
    bucket: Optional[str] = BUCKET_OPTION,
    infra: Optional[List[str]] = INFRA_OPTION,
) -> None:
    """Run one stage (of a new run, or of run --run RUN), admitted by the budget guard."""
    from reproduce import stagetable
    from reproduce.plan import infra_sets

    name = stagetable.by_program(name)   # `stage evaluate` is the eval stage; exit 2 on an unknown name
    execute(recipe, budget, backend, scale, (sets or []) + infra_sets(infra), dry_run, run_id, yes,
            dict(seed=sim_seed, slowdown=sim_slowdown, preemption_rate=sim_preemption_rate, pace_s=sim_pace),
            only=[name], bucket=bucket)


def execute(recipe_name, budget, backend, scale, sets, dry_run, resume, yes, sim, only=None, bucket=None,
            skip_checks=()) -> None:
    import math

    import yaml

    from reproduce import pipeline
    from reproduce import recipe as recipes
    from reproduce.cli_audit import open_ledger, render_audit
    from reproduce.plan import build_plan, check_backend, check_budget

    budget_usd = check_budget(budget)
    check_backend(backend)
    if not (math.isfinite(sim["slowdown"]) and 0 < sim["slowdown"] <= 1000):
        raise UserError(f"--sim-slowdown {sim['slowdown']!r}: expected a finite factor > 0 and <= 1000, e.g. 3")
    if not (math.isfinite(sim["preemption_rate"]) and 0 <= sim["preemption_rate"] <= 10):
        raise UserError(f"--sim-preemption-rate {sim['preemption_rate']!r}: expected preemptions per hour "
                        "from 0 to 10")
    if not (math.isfinite(sim["pace_s"]) and 0 <= sim["pace_s"] <= 60):
        raise UserError(f"--sim-pace {sim['pace_s']!r}: expected real seconds per poll from 0 to 60")
    ledger, found, spent = None, None, 0.0
    if resume:
        ledger = open_ledger()
        found = ledger.run(resume)
        if found is None:
            raise UserError(f"--resume {resume!r}: no such run in {ledger.path}; see `reproduce runs`")
        changed = [flag for flag, given, was in (("--recipe", recipe_name, found["recipe"]),
                                                  ("--scale", scale, found["scale"]))
                   if given and given != was and not (flag == "--recipe" and _same_recipe(given, was))]
        if changed:   # the run's recipe is what its plan, ledger rows and artifacts were made from
            raise UserError(f"--resume {resume} continues the run's own recipe; {', '.join(changed)} would change "
                            f"it mid-run: start a new run instead (reproduce all {' '.join(changed)} ...)")
        resolved = resumed_recipe(ledger, resume, found)
        recipe_change = change_on_resume(ledger, resume, resolved, sets) if sets else None
        if budget_usd is None:
            budget_usd = ledger.budget(resume)
        if backend == "auto":
            backend = found["backend"]
        if backend == "sim":   # the virtual clock goes on from where the run's records end
            sim = {**sim, "start": max([r["at"] for r in ledger.progress_rows(resume)] + [found["created_at"]])}
        spent = ledger.spent(resume)
    else:
        if budget_usd is None:
            raise UserError("--budget is required: a positive number of US dollars, e.g. --budget 450")
        resolved = recipes.load(recipe_name, sets, scale or "full")
    if bucket:  # kept with the run's recipe so --resume finds the same bucket
        from reproduce.executors.bucket import check

        resolved["bucket"] = check(bucket, strict=not dry_run)
    bucket = resolved.get("bucket")
    executor, chosen, why = pipeline.make_executor(backend, resolved, sim)
    plan = build_plan(resolved, budget_usd, chosen)
    if resume and only:
        _check_inputs(ledger, resume, only[0], found)
    if resume:   # the plan from here: the stages not finished yet, after what was spent
        finished = ledger.finished_stages(resume)
        for name in [s.stage for s in plan.stages if s.stage in finished and (not only or s.stage in only)]:
            typer.echo(f"[{name}] already finished in this run: skipped", err=True)
        plan = plan.only([s.stage for s in plan.stages if s.stage not in finished])
        plan.spent_usd = spent
        known = pipeline.known_facts(ledger, resume)
        if known and plan.stages:   # what the run measured before it stopped, not the recipe's assumptions
            from reproduce import replan

            rows, _, _ = replan.replan(resolved, known, [s.stage for s in plan.stages], budget_usd, chosen, None)
            plan.stages = [rows[s.stage] for s in plan.stages]
    if only:
        plan = plan.only(only)
    _show_plan(plan)
    typer.echo(f"backend: {chosen} ({why})", err=True)
    if not plan.fits:
        raise OverBudget(f"plan costs {money(plan.total_usd)}" + (f" after {money(spent)} spent" if spent else "")
                         + f", over the {money(plan.budget)} budget by {money(-plan.headroom)}: not started "
                         "(try `reproduce plan --optimize`)")
    if chosen == "sky" and not bucket and not dry_run:
        raise UserError("--bucket is required with SkyPilot: s3://NAME or gs://NAME holds the run's artifacts "
                        "(or set REPRODUCE_BUCKET)")
    if chosen == "sky" and not dry_run:
        from reproduce.plan import refuse_whatif

        refuse_whatif(plan)
    if not dry_run:
        executor.preflight([s.stage for s in plan.stages])
        from reproduce import preflight   # $0 checks of every real-world contact: a failure launches nothing

        run_id = resume or pipeline.new_run_id()
        checked = preflight.guard(preflight.Context(resolved, plan, chosen, bucket, run_id), skip_checks)
    if dry_run:
        typer.echo(render_tasks(plan, resolved, executor, chosen))
        typer.echo("dry run: nothing launched, nothing spent, nothing recorded", err=True)
        return
    if not yes:
        if not sys.stdin.isatty():
            typer.echo("not started: no terminal to confirm on; pass -y to run", err=True)
            raise typer.Exit(1)
        if not typer.confirm(f"Run {len(plan.stages)} stage(s), est. {money(plan.total_usd)} of "
                             f"{money(budget_usd)}?", default=False):
            typer.echo("not started", err=True)
            raise typer.Exit(1)
    ledger = ledger or open_ledger()
    if resume and sets:   # an explicit re-plan: recorded, and every later resume applies it too
        ledger.add_event(resume, None, "recipe_changed", ok=True, reason=f"--set {' --set '.join(sets)} on resume",
                         numbers={"sets": list(sets), "stages": recipe_change})
    if resume and only and only[0] in ledger.finished_stages(resume):
        typer.echo(f"stage {only[0]} already finished in run {resume}; nothing to do", err=True)
        return
    preflight.record(ledger, run_id, checked)
    result = pipeline.run(plan, resolved, executor, ledger, budget_usd, resume_run=resume, stages=only,
                          bucket=bucket, run_id=run_id)
    typer.echo(f"run {result.run_id}: artifacts in {result.artifacts}; ledger {ledger.path}", err=True)
    typer.echo(render_audit(ledger.audit(result.run_id)))
    scores = result.artifacts / "eval" / "table.md"
    if result.exit_code == 0 and scores.is_file():   # the question after "where did the money go?"
        typer.echo("\n" + scores.read_text().strip())
    if result.exit_code == 3:
        hint = "" if "--resume" in result.reason else f" (resume with `reproduce all --resume {result.run_id} --budget USD`)"
        raise OverBudget(result.reason + hint)
    if result.exit_code:
        typer.echo(f"error: {result.reason} (resume with `reproduce all --resume {result.run_id}`)", err=True)
        raise typer.Exit(result.exit_code)


def _same_recipe(given: str, name: str) -> bool:
    """`--recipe` naming the run's own recipe (by name or by its file) changes nothing."""
    from pathlib import Path

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


def _check_inputs(ledger, run_id: str, name: str, found: dict) -> None:
    """`reproduce stage NAME --run R` only when R finished every stage NAME reads from, and their outputs
    (each stage's summary.json) are in the run's artifacts."""
    from pathlib import Path

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


def _show_plan(plan) -> None:
    from reproduce.cli_plan import render_plan

    typer.echo(render_plan(plan))


def render_tasks(plan, recipe: dict, executor, backend: str) -> str:
    """What each stage would run, with its placement: the executor's render, or the task YAML rendered from
    the stage's plan row (the same row `reproduce all` launches)."""
    from reproduce import stagetable
    from reproduce.executors.base import RunContext
    from reproduce.pipeline import artifacts_dir

    out = []
    for s in plan.stages:
        row = stagetable.stage(s.stage)
        ctx = RunContext(run_id="dry-run", recipe=recipe, stage=s.stage, plan=s, artifacts=artifacts_dir("dry-run"),
                         envs={})
        try:
            text = executor.render(ctx)
            if text is None and row.on_controller(recipe):
                text = f"# stage {s.stage}: runs on this machine (python -m reproduce.stages.{row.program})"
            elif text is None:
                from reproduce import tasks

                envs = {"RUN_ID": "dry-run"}
                if recipe.get("bucket"):
                    from reproduce.executors.bucket import run_url

                    envs["BUCKET"] = run_url(recipe["bucket"], "RUN")
                text = tasks.render_yaml(row.task, envs, s if backend == "sky" else None, recipe["scale"])
                if backend == "local":
                    text = f"# local: this task's setup and run as subprocesses on this machine\n{text}"
        except UserError as e:
            text = f"# stage {s.stage}: cannot render: {e}"
        out.append(text.rstrip())
    return "\n\n".join(out)


def status(as_json: bool = JSON_OPTION) -> None:
    """Runs in progress (and interrupted ones you can --resume)."""
    from reproduce.cli_audit import open_ledger, run_rows

    ledger = open_ledger()
    rows = [r for r in run_rows(ledger) if r["status"] in ("running", "interrupted")]
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no runs in progress")
        return
    typer.echo(table(rows, ["run", "status", "backend", "stage", "spent_usd", "budget", "started", "pid"]))
    for r in rows:
        if r["status"] == "interrupted":
            typer.echo(f"resume {r['run']}: reproduce all --resume {r['run']}")
