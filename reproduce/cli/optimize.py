"""`reproduce plan --optimize`: the recipe as given (NovaSky's configuration) beside the cheapest feasible
one, stage by stage, with what changed, why, and the `--set` overrides that run it.

The search itself is costmodel.search (pure); this module prices the winner with the same `build_plan`
that `reproduce plan --set ...` uses, so the printed total is the one `reproduce all --set ...` is held to.
"""
from __future__ import annotations

import math

import typer

from reproduce.cli.output import money, print_json, table

VARIANT_SUFFIX = "-optimized"
# Recipe fields that name a recipe rather than say how it runs: a variant file may differ in these.
IDENTITY_KEYS = ("name", "description", "source_file", "scale")


def optimize(recipe: dict, anchor_plan, as_json: bool = False):
    """Search, print both plans side by side (or JSON), return the optimized Plan."""
    from costmodel import search
    from reproduce.plan import build_plan, calibration_figures, priced_remotely

    if recipe["scale"] == "smoke":  # every stage runs on this machine's CPU: no placement to choose
        if as_json:
            print_json({"anchor": anchor_plan.to_dict(), "optimized": anchor_plan.to_dict(), "diff": [],
                        "overrides": [], "variant_recipe": None, "saves_usd": 0.0})
        else:
            typer.echo("Smoke scale runs every stage on this machine's CPU: nothing to optimize.")
        return anchor_plan
    from reproduce import stagetable
    from reproduce.plan import place_gpu_stage

    price_fn, place_fn = None, None
    calibration = calibration_figures()
    if priced_remotely(recipe, anchor_plan.backend):
        from costmodel import prices

        price_fn = prices.cheapest
        # a GPU candidate is placed exactly as `reproduce plan` would place it (clouds able to run it, market)
        place_fn = lambda stage, variant: place_gpu_stage(stagetable.stage(stage), variant, calibration, True)  # noqa: E731
    result = search.search(recipe, price_fn, calibration, place_fn=place_fn)
    changes = search.overrides(result)
    variant = search.apply(recipe, changes)
    best = build_plan(variant, anchor_plan.budget, anchor_plan.backend, calibration)
    sets = [f"{k}={format_value(v)}" for k, v in changes.items()]
    variant_name = matching_variant(recipe, variant)
    diff = [stage_diff(recipe, name, result[name], anchor_plan.stage(name), best.stage(name)) for name in result]
    if as_json:
        print_json({"anchor": anchor_plan.to_dict(), "optimized": best.to_dict(), "diff": diff,
                    "overrides": sets, "variant_recipe": variant_name,
                    "saves_usd": anchor_plan.total_usd - best.total_usd})
    else:
        typer.echo(render(recipe, anchor_plan, best, diff, sets, variant_name))
    return best


def format_value(v) -> str:
    """As `--set` parses it back (reproduce.recipe.parse_value): true/false, numbers, bare strings."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def matching_variant(recipe: dict, variant: dict) -> str | None:
    """Name of the shipped variant recipe that equals `variant` in everything but its name, if any."""
    from reproduce import recipe as recipes

    name = f"{recipe['name']}{VARIANT_SUFFIX}"
    if name not in recipes.available():
        return None
    try:
        shipped = recipes.load(name, scale=recipe["scale"])
    except Exception:
        return None
    strip = lambda r: {k: v for k, v in r.items() if k not in IDENTITY_KEYS}  # noqa: E731
    return name if strip(shipped) == strip(variant) else None


def placement(s) -> str:
    if s.kind == "api":
        return "API" + (" (batch)" if s.api_tokens.get("batch") else " (sync)")
    if s.kind == "none":
        return "controller"
    if s.kind == "cpu" and not s.gpus:
        return "local" if s.price_per_hour == 0 else "cpu node"
    accel = s.accelerator + (f" x{s.nodes} nodes" if s.nodes > 1 else "")
    if not s.cloud:
        return f"{accel} local"
    return f"{accel} {'spot' if s.spot else 'on-demand'} {s.cloud} {s.region}"


def stage_diff(recipe: dict, name: str, found: dict, anchor, best) -> dict:
    """What changed in one stage and why: the keys, the estimator's assumptions, memory, rejected options."""
    winner = found["best"]
    rejected = []
    seen = set()
    for c in found["candidates"]:
        if c.feasible or not c.rejected or c.rejected in seen:
            continue
        seen.add(c.rejected)
        rejected.append({"changes": c.changes, "why": c.rejected})
    return {
        "stage": name,
        "changes": [{"key": k, "from": _get(recipe, k), "to": v} for k, v in winner.changes.items()],
        "anchor_usd": anchor.total_usd, "optimized_usd": best.total_usd, "saves_usd": anchor.total_usd - best.total_usd,
        "anchor_hours": anchor.hours, "optimized_hours": best.hours,
        "why": list(best.assumptions) + winner.notes,
        "price": {"from": _price_note(anchor), "to": _price_note(best)},
        "memory": winner.memory, "anchor_memory": found["anchor"].memory,
        "rejected": rejected[:4],
    }


def _get(recipe: dict, key: str):
    section, _, leaf = key.partition(".")
    return recipe[section][leaf]


def _price_note(s) -> str:
    if not s.price_per_hour:
        return s.price_source or "$0"
    return f"${s.price_per_hour:,.2f}/h {placement(s)} [{s.price_source}{', ' + s.price_date if s.price_date else ''}]"


def render(recipe: dict, anchor, best, diff: list, sets: list, variant_name: str | None) -> str:
    from reproduce import stagetable

    rows = []
    for a, b in zip(anchor.stages, best.stages):
        rows.append({"stage": a.stage, "given": placement(a), "h": round(a.hours, 2),
                     "$/h": round(a.price_per_hour, 2) if a.price_per_hour else None, "$": a.total_usd,
                     "optimized": placement(b), "h ": round(b.hours, 2),
                     "$/h ": round(b.price_per_hour, 2) if b.price_per_hour else None, "$ ": b.total_usd,
                     "saves $": a.total_usd - b.total_usd})
    lines = [f"Optimize: {anchor.recipe} ({anchor.scale} scale, backend {anchor.backend}): the recipe as given "
             f"(NovaSky's configuration) vs the cheapest feasible one", "", table(rows), ""]
    for d in diff:
        if not d["changes"]:
            continue
        lines.append(f"{d['stage']}: {money(d['anchor_usd'])} -> {money(d['optimized_usd'])}  "
                     f"({d['anchor_hours']:,.2f} h -> {d['optimized_hours']:,.2f} h)")
        for c in d["changes"]:
            lines.append(f"  {c['key']}: {format_value(c['from'])} -> {format_value(c['to'])}")
        if d["price"]["from"] != d["price"]["to"]:
            lines.append(f"  price: {d['price']['from']}")
            lines.append(f"      -> {d['price']['to']}")
        for why in d["why"]:
            lines.append(f"  why: {why}")
        training = stagetable.stage(d["stage"]).work == "training"   # its memory is what the options trade
        if training and d["memory"]:
            lines.append("  memory (optimized):")
            lines += ["    " + x for x in d["memory"].splitlines()]
            lines.append("  memory (given):")
            lines += ["    " + x for x in d["anchor_memory"].splitlines()]
        for r in d["rejected"][:3 if training else 1]:
            what = ", ".join(f"{k}={format_value(v)}" for k, v in r["changes"].items()) or "as given"
            lines.append(f"  rejected ({what}): {r['why']}")
        lines.append("")
    lines.append(f"Total: {money(anchor.total_usd)} given -> {money(best.total_usd)} optimized  "
                 f"(saves {money(anchor.total_usd - best.total_usd)}; {anchor.gpu_hours:,.1f} -> "
                 f"{best.gpu_hours:,.1f} GPU-hours)")
    if best.budget is not None:
        lines.append(f"Budget: {money(best.budget)}  headroom {money(best.headroom)}  -> "
                     f"{'fits' if best.fits else 'DOES NOT FIT'}")
    if sets:
        # `all` requires --budget: the user's, else the optimized total rounded up to the next $10
        budget = best.budget if best.budget is not None else math.ceil(best.total_usd / 10) * 10
        flag = f"--budget {budget:g}"
        lines += ["", "Run it:", f"  reproduce all {flag} " + _recipe_flag(recipe) + " ".join(f"--set {s}" for s in sets)]
        if variant_name:
            scale = "" if recipe["scale"] == "full" else f" --scale {recipe['scale']}"
            lines.append(f"  reproduce all {flag} --recipe {variant_name}{scale}     (the same, saved as a recipe file)")
    else:
        lines += ["", "The recipe as given is already the cheapest feasible configuration."]
    return "\n".join(lines)


def _recipe_flag(recipe: dict) -> str:
    flags = "" if recipe["name"] == "sky-t1-32b-preview" else f"--recipe {recipe['source_file']} "
    return flags + ("" if recipe["scale"] == "full" else f"--scale {recipe['scale']} ")
