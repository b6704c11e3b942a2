"""`reproduce all`, `reproduce stage NAME`, `reproduce status`: run the recipe within a budget.

    reproduce all --budget 450                          # plan, ask, run every stage, audit
    reproduce all --budget 450 --backend sim --sim-slowdown 3 -y     # what if everything ran 3x slower?
    reproduce all --resume 20261124-101500-ab12         # continue from the last finished stage
    reproduce stage sft --run 20261124-101500-ab12      # one stage of a run
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from reproduce.cli.plan import BUDGET_OPTION, INFRA_OPTION, RECIPE_OPTION, SCALE_OPTION, SET_OPTION
from reproduce.errors import OverBudget, UserError
from reproduce.cli.output import JSON_OPTION, money, print_json, table

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
    from reproduce.cli.plan import examples

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
    detach: bool = typer.Option(False, "--detach", metavar="",
                                help="Run the controller in the background (own session, log file); print the run id."),
) -> None:
    """Plan, confirm, run every stage within --budget (exit 3 before crossing it), then audit."""
    from reproduce.plan import infra_sets

    sim = dict(seed=sim_seed, slowdown=sim_slowdown, preemption_rate=sim_preemption_rate, pace_s=sim_pace)
    sets = (sets or []) + infra_sets(infra)
    again = None
    if detach:   # the same command, confirmed here, then run by a controller of its own
        again = ["all", "--backend", backend, "-y"] + [f"--{k}={v}" for k, v in (
            ("recipe", recipe), ("budget", budget), ("scale", scale), ("resume", resume), ("bucket", bucket),
            ("sim-slowdown", sim_slowdown), ("sim-preemption-rate", sim_preemption_rate), ("sim-seed", sim_seed),
            ("sim-pace", sim_pace)) if v is not None] + [f"--set={s}" for s in sets] + \
            [f"--skip-check={c}" for c in skip_check or []]
    execute(recipe, budget, backend, scale, sets, dry_run, resume, yes, sim, bucket=bucket, detach=again,
            skip_checks=skip_check or [])


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
            detach: list | None = None, skip_checks=()) -> None:
    """Parse, plan, check (the $0 preflight), confirm, run, audit (or, with `detach`, the command line a
    background controller runs)."""
    import os

    from reproduce import pipeline, preflight
    from reproduce.cli.audit import open_ledger

    args = _parse(recipe_name, budget, backend, scale, sets, resume, sim, bucket, dry_run)
    plan, executor, chosen = _plan(args, only, dry_run)
    run_id = os.environ.get("REPRODUCE_RUN_ID") or resume or pipeline.new_run_id()
    if not dry_run:   # $0 checks of every real-world contact: a failure launches nothing (exit 2)
        checked = preflight.guard(preflight.Context(args.recipe, plan, chosen, args.recipe.get("bucket"), run_id),
                                  skip_checks)
    if dry_run:
        typer.echo(render_tasks(plan, args.recipe, executor, chosen))
        typer.echo("dry run: nothing launched, nothing spent, nothing recorded", err=True)
        return
    if not _confirm(plan, args.budget, yes):
        return
    if detach is not None:
        _detach(detach, run_id)
        return
    ledger = args.ledger or open_ledger()
    if resume and sets:   # an explicit re-plan: recorded, and every later resume applies it too
        ledger.add_event(resume, None, "recipe_changed", ok=True, reason=f"--set {' --set '.join(sets)} on resume",
                         numbers={"sets": list(sets), "stages": args.resumed.changed_stages})
    if resume and only and only[0] in ledger.finished_stages(resume):
        typer.echo(f"stage {only[0]} already finished in run {resume}; nothing to do", err=True)
        return
    preflight.record(ledger, run_id, checked)
    result = pipeline.run(plan, args.recipe, executor, ledger, args.budget, resume_run=resume, stages=only,
                          bucket=args.recipe.get("bucket"), run_id=run_id)
    _audit(ledger, result)


def _detach(argv: list, run_id: str) -> None:
    """The controller in its own session (no terminal: a closed one sends it nothing), writing to
    runs/RUN/controller.log; prints the run id and how to follow and stop it."""
    import os
    import subprocess

    from reproduce.pipeline import artifacts_dir

    log = artifacts_dir(run_id).parent / "controller.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reproduce.cli", *argv],
                                env={**os.environ, "REPRODUCE_RUN_ID": run_id}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    typer.echo(run_id)
    typer.echo(f"run {run_id}: controller pid {proc.pid} in the background, log {log}\n"
               f"  follow: reproduce logs {run_id} --follow\n  stop:   reproduce cancel {run_id}", err=True)


class _Args:
    """What the flags resolve to: the recipe, budget and backend (a resumed run's own unless given)."""

    def __init__(self, recipe, budget, backend, sim, ledger=None, resumed=None):
        self.recipe, self.budget, self.backend, self.sim = recipe, budget, backend, sim
        self.ledger, self.resumed = ledger, resumed


def _parse(recipe_name, budget, backend, scale, sets, resume, sim, bucket, dry_run) -> _Args:
    """Every flag checked (exit 2 naming the bad value), the recipe resolved, or a resumed run's read back."""
    import math

    from reproduce import recipe as recipes
    from reproduce import resume as resumes
    from reproduce.cli.audit import open_ledger
    from reproduce.plan import check_backend, check_budget

    budget_usd = check_budget(budget)
    check_backend(backend)
    if not (math.isfinite(sim["slowdown"]) and 0 < sim["slowdown"] <= 1000):
        raise UserError(f"--sim-slowdown {sim['slowdown']!r}: expected a finite factor > 0 and <= 1000, e.g. 3")
    if not (math.isfinite(sim["preemption_rate"]) and 0 <= sim["preemption_rate"] <= 10):
        raise UserError(f"--sim-preemption-rate {sim['preemption_rate']!r}: expected preemptions per hour "
                        "from 0 to 10")
    if not (math.isfinite(sim["pace_s"]) and 0 <= sim["pace_s"] <= 60):
        raise UserError(f"--sim-pace {sim['pace_s']!r}: expected real seconds per poll from 0 to 60")
    if resume:
        ledger = open_ledger()
        r = resumes.open_run(ledger, resume, recipe_name, scale, sets, budget_usd, backend, sim)
        args = _Args(r.recipe, r.budget, r.backend, r.sim, ledger, r)
    else:
        if budget_usd is None:
            raise UserError("--budget is required: a positive number of US dollars, e.g. --budget 450")
        args = _Args(recipes.load(recipe_name, sets, scale or "full"), budget_usd, backend, sim)
    if bucket:  # kept with the run's recipe so --resume finds the same bucket
        from reproduce.executors.bucket import check

        args.recipe["bucket"] = check(bucket, strict=not dry_run)
    return args


def _plan(args: _Args, only, dry_run: bool):
    """(plan, executor, backend): the plan of what is to run (a resumed run: the stages not finished, re-priced
    from what it measured), shown; refused over the budget (exit 3) or without what the backend needs."""
    from reproduce import pipeline
    from reproduce import resume as resumes
    from reproduce.plan import build_plan

    executor, chosen, why = pipeline.make_executor(args.backend, args.recipe, args.sim)
    plan = build_plan(args.recipe, args.budget, chosen)
    spent = 0.0
    if args.resumed:
        plan, skipped = resumes.rest_of_plan(args.ledger, args.resumed, plan, chosen, only)
        for name in skipped:
            typer.echo(f"[{name}] already finished in this run: skipped", err=True)
        spent = args.resumed.spent
    if only:
        plan = plan.only(only)
    _show_plan(plan)
    typer.echo(f"backend: {chosen} ({why})", err=True)
    if not plan.fits:
        raise OverBudget(f"plan costs {money(plan.total_usd)}" + (f" after {money(spent)} spent" if spent else "")
                         + f", over the {money(plan.budget)} budget by {money(-plan.headroom)}: not started "
                         "(try `reproduce plan --optimize`)")
    if chosen == "sky" and not args.recipe.get("bucket") and not dry_run:
        raise UserError("--bucket is required with SkyPilot: s3://NAME or gs://NAME holds the run's artifacts "
                        "(or set REPRODUCE_BUCKET)")
    if chosen == "sky" and not dry_run:
        from reproduce.plan import refuse_whatif

        refuse_whatif(plan)
    if not dry_run:
        executor.preflight([s.stage for s in plan.stages])
    return plan, executor, chosen


def _confirm(plan, budget_usd, yes: bool) -> bool:
    """-y, or a yes on the terminal; without a terminal to ask on: not started (exit 1)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        typer.echo("not started: no terminal to confirm on; pass -y to run", err=True)
        raise typer.Exit(1)
    if not typer.confirm(f"Run {len(plan.stages)} stage(s), est. {money(plan.total_usd)} of "
                         f"{money(budget_usd)}?", default=False):
        typer.echo("not started", err=True)
        raise typer.Exit(1)
    return True


def _audit(ledger, result) -> None:
    """Where the money went, the scores when it finished, and the exit code of how it ended."""
    from reproduce.cli.audit import render_audit

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


def _show_plan(plan) -> None:
    from reproduce.cli.plan import render_plan

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
    from reproduce.cli.audit import open_ledger, run_rows

    ledger = open_ledger()
    rows = [r for r in run_rows(ledger) if r["status"] in ("running", "interrupted")]
    if not rows and not as_json:
        typer.echo("no runs in progress")
        return
    from reproduce.cli.control import liveness

    from reproduce import stagetable
    from reproduce.stages.lib import batch_log

    for r in rows:   # is its controller alive, and since when is it not (its last heartbeat)
        live = liveness(ledger, r["run"])
        r["controller"] = "alive" if live["alive"] else (
            "dead since " + time.strftime("%Y-%m-%d %H:%M", time.localtime(live["since"])) if live["since"] else "dead")
        # API batches submitted and not yet collected bill without us: what they commit, beside what was paid
        artifacts = Path((ledger.run(r["run"]) or {}).get("artifacts") or ".")
        r["committed_usd"] = round(sum(batch_log.committed_usd(artifacts / s)[0] for s in stagetable.NAMES), 6)
    if as_json:
        print_json(rows)
        return
    columns = ["run", "status", "controller", "backend", "stage", "spent_usd"]
    columns += ["committed_usd"] if any(r["committed_usd"] for r in rows) else []
    typer.echo(table(rows, columns + ["budget", "started", "pid"]))
    for r in rows:
        if r["status"] == "interrupted":
            typer.echo(f"resume {r['run']}: reproduce all --resume {r['run']}")
