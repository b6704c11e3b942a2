"""SkyPilot: every task the plan launches, rendered from its plan row exactly as the executor renders it, passes
SkyPilot's own parser and `Task.validate()`; every planned placement is on infra the user has enabled and
within quota (the placement helper's `reproduce.plan.placement_problems(plan)` where it exists; else the
enabled infra a running SkyPilot API server reports, through the one SkyPilot boundary, sky_adapter).
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
    from reproduce import plan as planner

    problems = getattr(planner, "placement_problems", None)
    if problems is not None:
        found = [p for p in problems(ctx.plan) if p.split(":")[0] in launched]
        if found:   # each line names its stage first and its fix last (reproduce.plan.placement_problems)
            return [failed(f"{GROUP}/placement-{p.split(':')[0]}", p.split(": ", 1)[-1].rsplit(": ", 1)[0],
                           p.rsplit(": ", 1)[-1]) for p in found]
        return [passed(f"{GROUP}/placement", "every planned placement is on enabled infra, within quota")]
    return [_enabled(ctx, launched),
            skipped(f"{GROUP}/quota", "quotas are not read by this build (reproduce.plan.placement_problems, the "
                                      "placement issue, is not here): SkyPilot finds a short quota at launch")]


def _enabled(ctx, launched: list[str]):
    from reproduce.executors import sky_adapter

    enabled = {str(c).lower().split("/")[0] for c in sky_adapter.enabled_infra()}
    if not enabled:
        return skipped(f"{GROUP}/enabled", "no running SkyPilot API server to say which infra is enabled "
                                           "(`sky check` starts one and says)")
    wanted = {}
    for stage in launched:
        row = ctx.row(stage)
        clouds = [getattr(row, "cloud", None)] + [f.get("cloud") for f in (getattr(row, "fallbacks", None) or [])
                                                   if not f.get("dropped")]
        for cloud in filter(None, clouds):
            wanted.setdefault(str(cloud).lower(), []).append(stage)
    off = {c: s for c, s in wanted.items() if c not in enabled and _alias(c) not in enabled}
    first = {s: getattr(ctx.row(s), "cloud", None) for s in launched}
    dead = [s for s, c in first.items() if c and str(c).lower() in off]
    if not dead:
        extra = f"; fallbacks on {', '.join(sorted(off))} are not enabled" if off else ""
        return passed(f"{GROUP}/enabled", f"every planned placement is on enabled infra "
                                          f"({', '.join(sorted(enabled))}){extra}")
    clouds = sorted({str(first[s]).lower() for s in dead})
    return failed(f"{GROUP}/enabled", f"{', '.join(dead)} planned on {', '.join(clouds)}, which SkyPilot has not "
                                      f"enabled (enabled: {', '.join(sorted(enabled))})",
                  f"enable it (`sky check {clouds[0]}`), or plan on what is enabled")


def _alias(cloud: str) -> str:
    return {"kubernetes": "k8s", "k8s": "kubernetes"}.get(cloud, cloud)
