"""`reproduce plan`: what the recipe will cost, stage by stage, with the arithmetic and every price's source."""
from __future__ import annotations

from typing import List, Optional

import typer

from reproduce.cli.output import JSON_OPTION, money, print_json, table

RECIPE_OPTION = typer.Option(None, "--recipe", "-r", show_default="sky-t1-32b-preview", metavar="NAME|FILE",
                             help="Recipe name or path to a recipe YAML.")
SET_OPTION = typer.Option(None, "--set", metavar="KEY=VALUE",
                          help="Override a recipe field: dotted.key=value (repeatable).")
SCALE_OPTION = typer.Option(None, "--scale", show_default="full", metavar="full|smoke",
                            help="full: the real recipe; smoke: every stage on a CPU in minutes.")
BUDGET_OPTION = typer.Option(None, "--budget", metavar="USD", help="Budget in US dollars.")
INFRA_OPTION = typer.Option(None, "--infra", metavar="INFRA",
                            help="Only here (repeatable): CLOUD, CLOUD/REGION, k8s/CONTEXT or ssh/POOL; default: what "
                                 "SkyPilot has enabled (`sky check`). Sets the recipe's placement.infra.")


def with_infra(resolved: dict, infra) -> dict:
    """`--infra` into the recipe (placement.infra), so every plan made from it (suggestions, --optimize) sees it."""
    if infra:
        resolved.setdefault("placement", {})["infra"] = [x for item in infra for x in str(item).split(",") if x.strip()]
    return resolved


def examples(*lines: str) -> str:
    """An --help epilog of commands to copy (one per line)."""
    return "Examples:\n\n" + "\n\n".join(f"  {x}" for x in lines)


def register(app: typer.Typer) -> None:
    app.command("plan", epilog=examples(
        "reproduce plan --budget 450",
        "reproduce plan --optimize --budget 100",
        "reproduce plan --infra aws --infra k8s/lab",
        "reproduce plan --recipe sky-t1-32b-flash --set sft.num_nodes=2 --json"))(plan)


def plan(
    recipe: Optional[str] = RECIPE_OPTION,
    budget: Optional[str] = BUDGET_OPTION,
    scale: Optional[str] = SCALE_OPTION,
    sets: Optional[List[str]] = SET_OPTION,
    backend: str = typer.Option("auto", "--backend", metavar="auto|sky|local|sim",
                                help="Where it would run: local prices GPUs at $0."),
    optimize: bool = typer.Option(False, "--optimize", metavar="", help="Also search for the cheapest feasible configuration."),
    infra: Optional[List[str]] = INFRA_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Price every stage of a recipe at the cheapest placement; exit 3 if it does not fit the budget."""
    from reproduce import recipe as recipes
    from reproduce.errors import OverBudget
    from reproduce.plan import build_plan

    resolved = with_infra(recipes.load(recipe, sets or [], scale or "full"), infra)
    p = build_plan(resolved, budget, backend)
    if optimize:
        from reproduce.cli import optimize as cli_optimize

        result = cli_optimize.optimize(resolved, p, as_json)
        p = result or p
    elif as_json:
        print_json(p.to_dict())
    else:
        typer.echo(render_plan(p))
    if not p.fits:
        raise OverBudget(f"plan costs {money(p.total_usd)}, over the {money(p.budget)} budget by "
                         f"{money(-p.headroom)}" + _hint(p))


def _hint(p) -> str:
    fitting = [s for s in p.suggestions if s["fits"]]
    if fitting:
        return f"; {flag(fitting[0])} would fit ({money(fitting[0]['total_usd'])})"
    if p.suggestions:
        return "; no single knob or shipped variant fits, see the suggestions above"
    return ""


def flag(suggestion: dict) -> str:
    return f"--recipe {suggestion['recipe']}" if "recipe" in suggestion else f"--set {suggestion['set']}"


def where(s) -> str:
    if s.cloud in ("kubernetes", "ssh"):   # an own cluster: its infra name, k8s/CONTEXT or ssh/POOL
        return s.infra
    if s.cloud:
        return f"{s.cloud} {s.region}" + (f" ({s.zone})" if s.zone else "")
    return {"none": "controller", "api": "API"}.get(s.kind, "local")


def render_plan(p) -> str:
    rows = []
    for s in p.stages:
        mem = s.memory or {}
        rows.append({
            "stage": s.stage, "where": where(s), "instance": s.instance_type or "-",
            "market": ("spot" if s.spot else "on-demand") if s.cloud else "-",
            "GPUs": (f"{s.accelerator}" + (f" x{s.nodes}" if s.nodes > 1 else "")) if s.gpus else "-",
            "mem GiB/GPU": f"{mem['per_gpu_gib']:.0f}/{mem['usable_gib']:.0f}" if mem else "-",
            "hours": round(s.hours, 2), "GPU-h": round(s.gpu_hours, 1),
            "$/h": round(s.price_per_hour, 2) if s.price_per_hour else "-",
            "compute $": s.compute_usd, "API $": s.api_usd,
            **({"bucket $": s.storage_usd} if p.storage else {}), "stage $": s.total_usd,
            "on-demand $": s.on_demand_usd,
        })
    lines = ([p.infra["first_line"]] if p.infra.get("first_line") else []) + [
        f"Plan: {p.recipe} ({p.scale} scale, backend {p.backend})", ""]
    if not p.stages:
        lines.append("Nothing left to run: every stage is finished.")
    else:
        lines += [table(rows), "", "How each number was made:"]
    width = max([len(s.stage) for s in p.stages] or [0])
    pad = f"  {'':<{width}}    "
    for s in p.stages:
        src = f"   [{s.price_source}{', ' + s.price_date if s.price_date else ''}]" if s.price_source else ""
        lines.append(f"  {s.stage:<{width}}  {s.arithmetic}{src}")
        for a in s.assumptions:
            lines.append(pad + a)
        if s.storage:
            lines.append(pad + f"bucket: {s.storage['what']}: {s.storage['arithmetic']}")
        if s.details.get("market"):
            lines.append(pad + f"market: {s.details['market']}")
        for why in s.details.get("excluded") or []:
            lines.append(pad + f"excluded {why}")
        if (s.details.get("quota") or {}).get("ok") is None and s.details.get("quota"):
            q = s.details["quota"]
            lines.append(pad + f"quota {q['name']!r} ({q['code']}) in {q['region']}: unknown ({q['why_unknown']})")
        if s.max_hourly_cost:
            lines.append(pad + f"launch capped at ${s.max_hourly_cost:,.2f}/h per node (max_hourly_cost: plan "
                               f"${s.price_per_hour / max(s.nodes, 1):,.2f}/h + 5%)")
        if s.memory:
            lines.append(pad + f"memory: {s.memory['per_gpu_gib']:.1f} GiB per GPU needed, "
                               f"{s.memory['usable_gib']:.1f} usable on {s.memory['accelerator'].partition(':')[0]} "
                               f"-> {'fits' if s.memory['fits'] else 'DOES NOT FIT'}")
        for f in s.fallbacks:
            if f.get("dropped"):
                lines.append(pad + f"fallback {f['accelerator']}: dropped ({f['dropped']})")
            else:
                lines.append(pad + f"fallback {f['accelerator']}: {f['cloud']} {f['region']} "
                                   f"{'spot' if f['spot'] else 'on-demand'} ${f['price_per_hour']:,.2f}/h x "
                                   f"{f['hours']:,.2f} h = {money(f['usd'])} if the planned placement has no capacity")
    for how in dict.fromkeys(s.details["env_build"] for s in p.stages if s.details.get("env_build")):
        lines.append(f"  environment builds (the startup lines above): {how}")
    bucket = f" + bucket {money(p.storage_usd)}" if p.storage else ""
    lines += ["", f"Total: {money(p.total_usd)} = compute {money(p.compute_usd)} + API {money(p.api_usd)}{bucket}"
                  f"  ({p.gpu_hours:,.1f} GPU-hours)"]
    if p.storage:
        st, left = p.storage, [s.storage for s in p.stages if s.storage]
        how = st["arithmetic"] if len(left) == len(st["stages"]) else (   # a resume: only the stages left
            " + ".join(f"{r['stage']} ${r['usd']:,.2f}" for r in left) + f" = {money(p.storage_usd)} (the stages left)")
        lines.append(f"Bucket ({st['store']}, kept {st['days_kept']:g} days): {how}   "
                     f"[{st['price_source']}, {st['price_date']}]")
    if p.spent_usd:
        lines.append(f"Already spent by this run: {money(p.spent_usd)}; spent + plan = {money(p.spent_usd + p.total_usd)}")
    if any(s.on_demand_usd is not None for s in p.stages):
        lines.append(f"On-demand instead of spot: {money(p.on_demand_usd)} (no preemptions, cheapest on-demand offers)")
    if p.budget is not None:
        verdict = "fits" if p.fits else "DOES NOT FIT"
        lines.append(f"Budget: {money(p.budget)}  headroom {money(p.headroom)}  -> {verdict}")
    if p.suggestions:
        lines += ["", "What would lower the cost (one at a time; each fits in memory):"]
        lines.append(table([{"change": flag(s), "saves $": s["saves_usd"], "total $": s["total_usd"],
                             "fits budget": "yes" if s["fits"] else "no", "why": s["why"]} for s in p.suggestions]))
    return "\n".join(lines)
