"""SkyPilot: every task the plan launches, rendered from its plan row exactly as the executor renders it, passes
SkyPilot's own parser and `Task.validate()`; every planned placement is on infra the user has enabled and
within quota (reproduce.plan.placement_problems, from SkyPilot's own state and the clouds' quota APIs).
"""
from __future__ import annotations

from pathlib import Path

from reproduce.errors import UserError
from reproduce.preflight import failed, passed, skipped

GROUP = "skypilot"


def checks(ctx) -> list:
    launched = [s for s in ctx.stages if ctx.on_cloud(s)]
    if not launched:
        why = (f"--backend {ctx.backend}: nothing is launched through SkyPilot" if ctx.backend != "sky"
               else "every stage of this plan runs on this machine")
        return [skipped(GROUP, why)]
    return [validate(ctx, s) for s in launched] + placements(ctx, launched)


def validate(ctx, stage: str):
    from reproduce import stagetable, tasks
    from reproduce.executors.bucket import run_url

    name = f"{GROUP}/task-{stage}"
    envs = {"RUN_ID": ctx.run_id}
    if ctx.bucket:
        envs["BUCKET"] = run_url(ctx.bucket, ctx.run_id)
    note = ""
    try:
        task = tasks.render(stagetable.stage(stage).task, envs, ctx.row(stage), ctx.scale, ctx.environ)
        if _catalog_cached():   # file mounts name the bucket: its access is bucket/access's check
            task.validate(skip_file_mounts=True)
        else:
            note = "; Resources.validate not run: SkyPilot's catalog is not cached here (it would fetch it)"
    except UserError as e:
        return failed(name, str(e), f"fix sky_tasks/{stagetable.stage(stage).task}.yaml (or the recipe value it "
                                    "renders from) as SkyPilot's message says")
    except Exception as e:   # noqa: BLE001 - SkyPilot's validation errors have no common base class
        return failed(name, f"SkyPilot rejects the rendered task: {type(e).__name__}: {str(e)[:240]}",
                      f"fix sky_tasks/{stagetable.stage(stage).task}.yaml as SkyPilot's message says")
    where = ", ".join(sorted({str(r.cloud or "any") + (f"/{r.region}" if r.region else "") for r in task.resources}))
    return passed(name, f"SkyPilot parses and validates the rendered task ({where}){note}")


def _catalog_cached() -> bool:
    """SkyPilot's resource validation reads its catalog, fetching it (with no timeout) when it is not cached:
    run it only where it is (`sky check` and any price lookup cache it)."""
    try:
        from sky.catalog import common

        return (Path(common._ABSOLUTE_VERSIONED_CATALOG_DIR).expanduser() / "common" / "accelerators.csv").is_file()
    except Exception:   # noqa: BLE001 - another SkyPilot layout: do not guess
        return False


def placements(ctx, launched: list[str]) -> list:
    """The placement issue's verdict on each planned placement (reproduce.plan.placement_problems: "STAGE: what:
    fix" lines): not enabled or over quota fails; a quota that could not be read is unknown, not failed (SkyPilot
    finds a short quota at launch, before anything runs)."""
    from reproduce.plan import placement_problems

    out = []
    for line in placement_problems(ctx.plan):
        stage, _, rest = line.partition(": ")
        if stage not in launched:
            continue
        what, _, fix = rest.rpartition(": ")
        name = f"{GROUP}/placement-{stage}"
        out.append(skipped(name, f"{what} (quota not confirmed)") if "quota" in what and " unknown (" in what
                   else failed(name, what, fix))
    return out or [passed(f"{GROUP}/placement", "every planned placement is on enabled infra, within the quotas read")]
