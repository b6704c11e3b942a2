"""`reproduce preflight`: a $0 check of every real-world contact the plan of `reproduce all` would make.

    reproduce preflight --bucket s3://my-runs                 # one line per check; exit 2 if any failed
    reproduce preflight --recipe sky-t1-7b --bucket s3://my-runs --json
    reproduce preflight --set rewrite.batch=false --skip-check bucket/region
"""
from __future__ import annotations

from typing import List, Optional

import typer

from reproduce.cli.plan import BUDGET_OPTION, RECIPE_OPTION, SCALE_OPTION, SET_OPTION
from reproduce.cli.run import BACKEND_OPTION, BUCKET_OPTION, SKIP_CHECK_OPTION
from reproduce.errors import UserError
from reproduce.cli.output import JSON_OPTION, print_json


def register(app: typer.Typer) -> None:
    from reproduce.cli.plan import examples

    app.command("preflight", epilog=examples(
        "reproduce preflight --bucket s3://my-runs",
        "reproduce preflight --backend sky --bucket s3://my-runs --json",
        "reproduce preflight --scale smoke"))(preflight)


def preflight(
    recipe: Optional[str] = RECIPE_OPTION,
    sets: Optional[List[str]] = SET_OPTION,
    scale: Optional[str] = SCALE_OPTION,
    backend: str = BACKEND_OPTION,
    budget: Optional[str] = BUDGET_OPTION,
    bucket: Optional[str] = BUCKET_OPTION,
    skip: Optional[List[str]] = SKIP_CHECK_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check for $0, before anything is paid, every contact the plan of `reproduce all` would make: datasets,
    models, the API key and Batch, the bucket, SkyPilot, the SFT/vLLM configs, the node and this machine."""
    from reproduce import pipeline, preflight as checks
    from reproduce import recipe as recipes
    from reproduce.plan import build_plan, check_backend, check_budget

    check_backend(backend)
    budget_usd = check_budget(budget)
    resolved = recipes.load(recipe, sets or [], scale or "full")
    if bucket:
        from reproduce.executors.bucket import check

        resolved["bucket"] = check(bucket)
    _, chosen, why = pipeline.make_executor(backend, resolved, {})
    plan = build_plan(resolved, budget_usd, chosen, suggest=False)
    ctx = checks.Context(resolved, plan, chosen, resolved.get("bucket"), run_id=f"preflight-{pipeline.new_run_id()}")
    if not as_json:
        typer.echo(f"preflight of {plan.recipe} ({plan.scale} scale), backend {chosen} ({why}): "
                   f"{', '.join(ctx.stages)}", err=True)
    results = checks.waive(checks.run(ctx), skip or [])
    if as_json:
        print_json({"recipe": plan.recipe, "scale": plan.scale, "backend": chosen, "stages": ctx.stages,
                    "ok": not checks.failures(results), "checks": [r.to_dict() for r in results]})
    else:
        for r in results:
            typer.echo(r.line())
        typer.echo(checks.summary(results), err=True)
    if checks.failures(results):
        if as_json:
            raise typer.Exit(2)
        raise UserError(checks.refusal(results).replace("nothing launched, nothing spent; ", ""))
