"""`reproduce prices`: what a GPU node costs where, cheapest first, each price with its source and date."""
from __future__ import annotations

from typing import List, Optional

import typer

from reproduce.cli.output import JSON_OPTION, print_json, table

# The most GPUs one node holds on any cloud SkyPilot prices: GCP's a2-megagpu-16g, 16 x A100 40GB
# (cloud.google.com/compute/docs/gpus#a100-gpus, A100 machine types, 2024-12); the others stop at 8.
MAX_GPUS_PER_NODE = 16
COLUMNS = ["cloud", "region", "zone", "instance", "GPUs", "on-demand $/h", "spot $/h", "$/GPU-h", "source", "date"]


def register(app: typer.Typer) -> None:
    from reproduce.cli.plan import examples

    app.command("prices", epilog=examples("reproduce prices H100:8 --spot", "reproduce prices H200:8 --cloud aws --json",
                                          "reproduce prices A100-80GB:8 --on-demand --top 5"))(prices)


def prices(
    accelerator: str = typer.Argument("H100:8", help="GPU type and count per node, e.g. H100:8, H200:8, A100-80GB:8."),
    spot: bool = typer.Option(False, "--spot", metavar="", help="Spot prices only, cheapest spot first."),
    on_demand: bool = typer.Option(False, "--on-demand", metavar="", help="On-demand prices only, cheapest on-demand first."),
    clouds: Optional[List[str]] = typer.Option(None, "--cloud", metavar="CLOUD", help="Only this cloud (repeatable)."),
    top: int = typer.Option(20, "--top", metavar="N", help="Show the N cheapest rows."),
    enabled: bool = typer.Option(False, "--enabled", metavar="",
                                 help="Only the clouds SkyPilot has enabled (`sky check`), and own clusters at their "
                                      "declared rates."),
    as_json: bool = JSON_OPTION,
) -> None:
    """GPU node prices across clouds, cheapest first: one row per cloud/region/zone."""
    from costmodel import prices as price_sources
    from reproduce.errors import UserError

    if spot and on_demand:
        raise UserError("--spot and --on-demand exclude each other: give one, or neither for both markets")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    accel, count = price_sources.parse_accelerator(accelerator)
    if count > MAX_GPUS_PER_NODE:
        raise UserError(f"{accelerator}: no node holds {count} GPUs; use a count from 1 to {MAX_GPUS_PER_NODE} "
                        "per node (e.g. H100:8; more nodes are a recipe's num_nodes)")
    where = _enabled_scope(clouds) if enabled else None
    if where is not None:
        from costmodel import infra

        clouds = list(where.clouds)
        typer.echo(where.first_line(), err=True)
        own, _ = infra.own_offers(f"{accel}:{count}", where)
        offers = (price_sources.gpu_offers(f"{accel}:{count}", clouds) if clouds else []) + own
    else:
        offers = price_sources.gpu_offers(f"{accel}:{count}", clouds)
    market = True if spot else False if on_demand else None
    rows = _one_per_place(offers, market)
    shown = rows[:top]
    if as_json:
        print_json([_json(o, market) for o in shown])
        return
    if not rows:
        where = f" on {', '.join(clouds)}" if clouds else ""
        which = "spot " if spot else "on-demand " if on_demand else ""
        typer.echo(f"no {which}prices for {accel}:{count}{where} in any source"
                   + ("" if count == 8 else " (the bundled snapshot holds 8-GPU nodes only)"))
        return
    typer.echo(table([_row(o, market) for o in shown], COLUMNS, floatfmt=",.2f"))
    if len(rows) > top:
        typer.echo(f"... {len(rows) - top} more (--top {len(rows)} shows all)")


def _enabled_scope(clouds):
    """What SkyPilot has enabled, narrowed by --cloud; exit 2 when SkyPilot's answer is not known."""
    from costmodel import infra
    from reproduce.errors import UserError

    known = infra.enabled()
    if not known.known:
        raise UserError(f"--enabled: {known.why_unknown}; without it, prices of every cloud are shown (drop --enabled)")
    return infra.scope(known, clouds or None)


def _price(o, market: bool | None) -> float | None:
    """The price a row is ranked by: the market asked for, else spot where there is one, else on-demand."""
    if market is None:
        return o.spot if o.spot is not None else o.on_demand
    return o.price(market)


def _one_per_place(offers, market: bool | None) -> list:
    priced = [o for o in offers if _price(o, market) is not None]
    priced.sort(key=lambda o: (_price(o, market), o.cloud, o.region, o.zone or "", o.instance_type))
    seen, out = set(), []
    for o in priced:  # the cheapest instance type in each cloud/region/zone
        if (o.cloud, o.region, o.zone) not in seen:
            seen.add((o.cloud, o.region, o.zone))
            out.append(o)
    return out


def _row(o, market: bool | None) -> dict:
    return {"cloud": o.cloud, "region": o.region, "zone": o.zone, "instance": o.instance_type,
            "GPUs": f"{o.accelerator}:{o.count}", "on-demand $/h": _r2(o.on_demand), "spot $/h": _r2(o.spot),
            "$/GPU-h": round(_price(o, market) / o.count, 2), "source": o.source, "date": o.date}


def _r2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _json(o, market: bool | None) -> dict:
    from dataclasses import asdict

    return asdict(o) | {"per_gpu_hour": round(_price(o, market) / o.count, 4),
                        "market": "spot" if (market is None and o.spot is not None) or market else "on-demand"}
