"""`reproduce audit RUN --billed`: planned vs recorded vs what AWS and OpenAI billed, per stage.

    reproduce audit --billed                          # the latest run; drift above 10% is flagged
    reproduce audit RUN --billed --drift-threshold 5 --json

Asks AWS Cost Explorer (where AWS credentials are configured: costs tagged reproduce-run=RUN) and OpenAI's
organization costs API (with OPENAI_ADMIN_KEY), stores each billed figure in the ledger as a correction
(costmodel.reconcile: only what changed, so running it twice adds nothing), and the next plan prices that
cloud, accelerator and market at what was billed (costmodel.calibration.price_factors).
"""
from __future__ import annotations

import os

import typer

from reproduce.errors import UserError
from reproduce.cli.output import money, print_json, table

ADMIN_KEY_ENV = "OPENAI_ADMIN_KEY"
LOCAL_MODELS = ("local-formatter",)   # smoke scale's rewriter (reproduce.stages.smoke.local_openai): never billed


def parse_threshold(value: str | float | None) -> float:
    """'10', '10%' or 12.5 -> 0.10 / 0.125: a share of the recorded figure."""
    from costmodel.reconcile import DRIFT_THRESHOLD

    if value is None:
        return DRIFT_THRESHOLD
    text = str(value).strip().rstrip("%").strip()
    try:
        pct = float(text)
    except ValueError:
        pct = -1.0
    if not 0 < pct < 1000 or pct != pct:
        raise UserError(f"--drift-threshold {value!r}: expected a percentage above 0, e.g. 10 or 10%")
    return pct / 100


def audit_billed(ledger, run_id: str, as_json: bool, threshold, endpoint: str | None,
                 projects: list[str] | None) -> None:
    from costmodel import reconcile

    share = parse_threshold(threshold)
    run = ledger.run(run_id)
    if run is None:
        raise UserError(f"no run {run_id!r} in {ledger.path}: see `reproduce runs`")
    bills, skipped = fetch(ledger, run_id, endpoint, projects)
    if not bills:
        raise UserError("no billing source answered: " + "; ".join(skipped))
    report = reconcile.reconcile(ledger, run_id, bills, share, storage_plan=storage_plan(run))
    report["recorded"] = reconcile.record(ledger, report)
    report["not_asked"] = skipped
    report["calibration"] = next_prices(ledger, report)
    for s in report["stages"]:
        ch = s.pop("changes", None)
        s["corrections_written"] = bool(ch and (ch["corrections"] or ch["api_rows"]))
    if as_json:
        print_json(report)
    else:
        typer.echo(render(report))


def fetch(ledger, run_id: str, endpoint: str | None, projects: list[str] | None) -> tuple[list, list]:
    """The bills that answered, and one line per source not asked or failed (never holding a credential)."""
    from costmodel import billing, prices, reconcile

    window = reconcile.periods(ledger, run_id)
    bills, skipped = [], []
    if prices.aws_credentials_present() or os.environ.get("AWS_ENDPOINT_URL_COST_EXPLORER"):
        start, end = window["aws"]
        try:
            bills.append(billing.aws_costs(billing.ce_client(), run_id, start, end))
        except billing.BillingError as e:
            skipped.append(str(e))
    else:
        skipped.append("AWS Cost Explorer: no AWS credentials (AWS_PROFILE, ~/.aws): cloud compute not reconciled")
    models = {u["model"] for u in ledger.api_totals(run_id)} - set(LOCAL_MODELS)
    key = os.environ.get(ADMIN_KEY_ENV)
    if not models:
        skipped.append("OpenAI costs API: the run made no paid API calls")
    elif not key:
        skipped.append(f"OpenAI costs API: no {ADMIN_KEY_ENV} (an admin key; project keys cannot read costs): "
                       "API stages not reconciled")
    else:
        start, end = window["openai"]
        try:
            bills.append(billing.openai_costs(billing.openai_client(key, endpoint), start, end, projects))
        except billing.BillingError as e:
            skipped.append(str(e))
    return bills, skipped


def storage_plan(run: dict) -> dict | None:
    """The bucket's planned storage and egress for the run's recipe (None if it cannot be read back)."""
    import yaml

    from costmodel import storage

    try:
        recipe = yaml.safe_load(run.get("recipe_yaml") or "")
        return storage.estimate(recipe) if isinstance(recipe, dict) else None
    except Exception:   # an old run's recipe the estimator no longer reads: no planned storage shown
        return None


def next_prices(ledger, report: dict) -> list[dict]:
    """The price factors of the placements this run billed, as the next plan applies them."""
    from costmodel.calibration import price_factors
    from costmodel.prices import parse_accelerator

    touched = set()
    for s in report["stages"]:
        if s["status"] == "billed" and s["parts"].get("compute") and s["cloud"] and s["accelerator"]:
            name, count = parse_accelerator(s["accelerator"])
            touched.add((s["cloud"].lower(), f"{name}:{count}", "spot" if s["spot"] else "on-demand"))
    factors = price_factors(ledger)
    return [{"cloud": k[0], "accelerator": k[1], "market": k[2], **factors[k]} for k in sorted(touched & set(factors))]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def render(r: dict) -> str:
    run, t = r["run"], r["totals"]
    sim = ", SIMULATED" if run["simulated"] else ""
    share = f"{r['threshold']:.0%}" if r["threshold"] * 100 == round(r["threshold"] * 100) else f"{r['threshold']:.1%}"
    lines = [f"Billed: run {run['run_id']} ({run['recipe']}, {run['scale']} scale, backend {run['backend']}{sim})", ""]
    rows = [{"stage": s["stage"], "status": s["status"] + (" (estimated)" if s["estimated"] else ""),
             "billed by": " + ".join(s["sources"]) or "-", "planned $": s["planned_usd"],
             "recorded $": s["recorded_usd"], "billed $": s["billed_usd"], "drift $": s["drift_usd"],
             "drift %": None if s["drift_pct"] is None else f"{s['drift_pct']:+.1%}",
             f"> {share}": "DRIFT" if s["flagged"] else ""} for s in r["stages"]]
    lines.append(table(rows))
    lines += ["", "Sources:"]
    for b in r["sources"]:
        cost = f" (${b['request_usd']:,.2f} of Cost Explorer API)" if "request_usd" in b else ""
        lines.append(f"  {b['name']}: {b['filter']}, {b['period'][0]}..{b['period'][1]}, {_n(b['rows'], 'row')}, "
                     f"{_n(b['requests'], 'request')}{cost}")
    for line in r["not_asked"]:
        lines.append(f"  not asked: {line}")
    flagged = [s for s in r["stages"] if s["flagged"]]
    if flagged:
        lines += ["", f"Drift above {share}:"] + [
            f"  {s['stage']}: billed {money(s['billed_usd'])} vs recorded "
            f"{money(s['billed_usd'] - s['drift_usd'])}: {money(s['drift_usd'])}"
            + ("" if s["drift_pct"] is None else f" ({s['drift_pct']:+.1%})") for s in flagged]
    pending = [s for s in r["stages"] if s["status"] == "pending"]
    if pending:
        lines += ["", "Pending (billing lags up to a day; shown, not recorded): "
                  + ", ".join(f"{s['stage']} billed so far {money(s['billed_usd'] or 0)}" for s in pending)]
    notes = [s for s in r["stages"] if s["note"] and (s["status"] in ("billed", "pending") or s["planned_usd"])]
    if notes:
        lines += ["", "Notes:"] + [f"  {s['stage']}: {s['note']}" for s in notes]
    lines.append("")
    if r["recorded"]:
        done = [f"{d['stage']} (" + ", ".join(
            ([_n(d["corrections"], "correction row")] if d["corrections"] else [])
            + ([f"API {money(d['api_usd_delta'])}"] if abs(d["api_usd_delta"]) >= 0.005 else [])) + ")"
            for d in r["recorded"] if d["corrections"] or abs(d["api_usd_delta"]) >= 0.005]
        kept = [d["stage"] for d in r["recorded"] if not d["corrections"] and abs(d["api_usd_delta"]) < 0.005]
        if done:
            lines.append("Recorded as corrections (append-only; what was recorded stays): " + ", ".join(done))
        if kept:
            lines.append("Billed figures kept as events (the ledger already agreed): " + ", ".join(kept))
    else:
        lines.append("Nothing new to record: the ledger already holds these billed figures.")
    for c in r["calibration"]:
        lines.append(f"Next plans: {c['cloud']} {c['accelerator']} {c['market']} x{c['factor']:.3f} calibrated from "
                     f"billing, {c['runs']} run{'s' if c['runs'] != 1 else ''} (${c['recorded_per_hour']:,.2f}/h "
                     f"recorded -> ${c['effective_per_hour']:,.2f}/h billed)")
    pct = "" if t["drift_pct"] is None else f" ({t['drift_pct']:+.1%})"
    lines.append(f"Total billed {money(t['billed_usd'])} vs recorded {money(t['recorded_of_billed_usd'])} for the same "
                 f"stages: drift {money(t['drift_usd'])}{pct}; planned {money(t['planned_usd'])}")
    return "\n".join(lines)
