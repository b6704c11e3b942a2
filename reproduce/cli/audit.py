"""`reproduce audit`, `reproduce runs`, `reproduce calibration`: where every dollar went.

    reproduce audit                      # the latest run: planned vs actual per stage, totals vs budget
    reproduce audit RUN --json | --csv   # for programs and spreadsheets
    reproduce audit --plot spend.png     # spend over time against the budget line, stages shaded
"""
from __future__ import annotations

import csv
import io
import time
from typing import List, Optional

import typer

from reproduce.errors import UserError
from reproduce.cli.output import JSON_OPTION, money, print_json, table

CSV_COLUMNS = ["stage", "state", "attempts", "cloud", "region", "instance_type", "spot", "price_per_hour",
               "price_source", "planned_gpu_hours", "gpu_hours", "planned_usd", "compute_usd", "api_usd", "storage_usd",
               "prompt_tokens", "cached_tokens", "completion_tokens", "preemptions", "total_usd", "arithmetic"]


def register(app: typer.Typer) -> None:
    from reproduce.cli.plan import examples

    app.command("audit", epilog=examples("reproduce audit", "reproduce audit RUN --json",
                                         "reproduce audit RUN --plot spend.png", "reproduce audit RUN --billed"))(audit)
    app.command("runs", epilog=examples("reproduce runs --json"))(runs)
    app.command("calibration", epilog=examples("reproduce calibration --json"))(calibration)


def open_ledger():
    from costmodel.ledger import Ledger

    return Ledger()


def audit(
    run: Optional[str] = typer.Argument(None, help="Run id (default: the latest run)."),
    as_json: bool = JSON_OPTION,
    as_csv: bool = typer.Option(False, "--csv", metavar="", help="Print CSV, one row per stage and a total row."),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="FILE.png",
                                       help="Write spend over time vs the budget to FILE.png."),
    billed: bool = typer.Option(False, "--billed", metavar="", help="Compare with what AWS and OpenAI billed; store the bill "
                                                        "as corrections (only what changed)."),
    drift_threshold: Optional[str] = typer.Option(None, "--drift-threshold", metavar="PCT",
                                                  help="With --billed: flag drift above PCT% (default 10)."),
    openai_project: Optional[List[str]] = typer.Option(None, "--openai-project", metavar="ID",
                                                       help="With --billed: only these OpenAI projects' costs."),
    billing_endpoint: Optional[str] = typer.Option(None, "--billing-endpoint", hidden=True,
                                                   help="Base URL of the OpenAI API (tests: a local server)."),
) -> None:
    """Planned vs actual per stage: GPU-hours, compute $, API tokens and $, preemptions, where it ran."""
    if as_json and as_csv:
        raise UserError("--json and --csv: pick one")
    if not billed and (drift_threshold is not None or openai_project or billing_endpoint):
        raise UserError("--drift-threshold, --openai-project and --billing-endpoint go with --billed")
    if billed:
        if as_csv or plot:
            raise UserError("--billed: --csv and --plot are not available with it (use --json)")
        from reproduce.cli.billed import audit_billed

        ledger = open_ledger()
        run_id = run or ledger.latest_run_id()
        if run_id is None:
            raise UserError(f"no runs in {ledger.path} yet: start one with `reproduce all --budget USD`")
        return audit_billed(ledger, run_id, as_json, drift_threshold, billing_endpoint, openai_project)
    if plot is not None and not plot.lower().endswith(".png"):
        raise UserError(f"--plot {plot!r}: expected a file name ending in .png")
    if plot is not None:
        _check_writable(plot, "--plot")
    ledger = open_ledger()
    run_id = run or ledger.latest_run_id()
    if run_id is None:
        raise UserError(f"no runs in {ledger.path} yet: start one with `reproduce all --budget USD`")
    data = ledger.audit(run_id)
    data["fidelity"] = fidelity(data)
    if plot:
        plot_spend(ledger, data, plot)
        typer.echo(f"wrote {plot}", err=True)
    if as_json:
        print_json(data)
    elif as_csv:
        typer.echo(to_csv(data), nl=False)
    else:
        typer.echo(render_audit(data))


def render_audit(a: dict) -> str:
    r, t = a["run"], a["totals"]
    sim = ", SIMULATED" if r["simulated"] else ""
    lines = [f"Audit: run {r['run_id']} ({r['recipe']}, {r['scale']} scale, backend {r['backend']}{sim}) - {r['status']}",
             ""]
    rows, kept = [], t.get("storage_usd") or any(s["planned"].get("storage_usd") for s in a["stages"])
    for s in a["stages"]:
        p, x = s["planned"], s["actual"]
        rows.append({"stage": s["stage"], "state": x["state"], "where": _where(x if x["attempts"] else p, s["kind"]),
                     "$/h": x["price_per_hour"] or None, "plan GPU-h": p["gpu_hours"], "GPU-h": x["gpu_hours"],
                     "plan $": p["total_usd"],
                     "re-plan $": s["replans"][-1]["total_usd"] if s.get("replans") else None,
                     "compute $": x["compute_usd"], "API $": x["api_usd"],
                     "tokens in/out": (f"{x['prompt_tokens']:,}/{x['completion_tokens']:,}"
                                       if x["prompt_tokens"] or x["completion_tokens"] else None),
                     **({"bucket $": x.get("storage_usd") or 0.0} if kept else {}),
                     "preempt": x["preemptions"], "total $": x["total_usd"]})
    lines.append(table(rows))
    lines += ["", "How each number was made:"]
    width = max([len(s["stage"]) for s in a["stages"]] or [5])
    for s in a["stages"]:
        x = s["actual"]
        src = f"   [{x['price_source']}]" if x["price_source"] and x["compute_usd"] else ""
        api = f"; API ${x['api_usd']:,.2f}" if x["api_usd"] else ""
        lines.append(f"  {s['stage']:<{width}}  {x['arithmetic']}{api}{src}"
                     + (f"  ({x['attempts']} attempts)" if x["attempts"] > 1 else ""))
        if x.get("storage_arithmetic"):
            lines.append(f"  {'':<{width}}    bucket: {x['storage_arithmetic']} ({x.get('storage_measured')})")
        if x["message"] and x["state"] not in ("finished",):
            lines.append(f"  {'':<{width}}    {x['message']}")
        for r in s.get("replans") or []:   # first plan -> each re-plan -> the actual above
            lines.append(f"  {'':<{width}}    re-planned after {r['after']}: ${r['was_usd']:,.2f} -> "
                         f"${r['total_usd']:,.2f}  {r['arithmetic']}")
            for why in r.get("reasons") or []:
                lines.append(f"  {'':<{width}}      because {why}")
    bucket = f" + bucket {money(t.get('storage_usd') or 0.0)}" if kept else ""
    lines += ["", f"Total: {money(t['actual_usd'])} = compute {money(t['compute_usd'])} + API {money(t['api_usd'])}"
                  f"{bucket}  ({t['gpu_hours']:,.1f} GPU-hours, planned {money(t['planned_usd'])})"]
    if t["budget"] is not None:
        verdict = "within budget" if t["within_budget"] else "OVER BUDGET"
        lines.append(f"Budget: {money(t['budget'])}  headroom {money(t['headroom_usd'])}  -> {verdict}")
    if a["by_cloud"]:
        lines += ["", "By cloud:", table([{"cloud": c["cloud"], "region": c["region"], "hours": c["hours"],
                                           "GPU-h": c["gpu_hours"], "compute $": c["compute_usd"],
                                           "preempt": c["preemptions"]} for c in a["by_cloud"]])]
    if a["by_model"]:
        lines += ["", "By model:", table([{"model": m["model"], "batch": "yes" if m["batch"] else "no",
                                           "records": m["records"], "prompt": m["prompt_tokens"],
                                           "cached": m["cached_tokens"], "completion": m["completion_tokens"],
                                           "$": m["usd"]} for m in a["by_model"]], floatfmt=",.4f")]
    refused = [d for d in a["decisions"] if (d["ok"] == 0 and d["kind"] not in ("forecast", "stop"))
               or (d["kind"] in ("stop", "forecast") and d["ok"])]
    if refused:
        lines += ["", "Budget guard:"] + [f"  {d['stage']}: {d['kind']}: {d['reason']}" for d in refused]
    batches = [d for d in a["decisions"] if d["kind"] in ("batch", "batch_cancel")]
    if batches:   # a submitted batch bills whether or not we watch: counted whole from its submission
        lines += ["", "API batches:"] + [f"  {d['stage']}: {d['reason']}" for d in batches]
    waived = [d for d in a["decisions"] if d["kind"] == "check_waived"]
    if waived:   # reproduce.preflight: a check the user waived with --skip-check
        lines += ["", "Preflight checks waived:"] + [f"  {d['reason']}" for d in waived]
    lines += render_fidelity(a.get("fidelity") or fidelity(a))
    return "\n".join(lines)


def fidelity(a: dict) -> dict:
    """Decontamination counts (convert) and what made the eval table, from the stage facts the ledger holds
    (a stage's `summary`) or else the run's artifacts folder: convert/summary.json, eval/scores.json."""
    import json
    from pathlib import Path

    def summary(stage: str, file: str):
        for s in a["stages"]:
            facts = s.get("summary") or s["actual"].get("summary")
            if s["stage"] == stage and isinstance(facts, dict):
                return facts
        path = Path(a["run"].get("artifacts") or "") / stage / file
        try:
            return json.loads(path.read_text()) if a["run"].get("artifacts") and path.is_file() else None
        except (OSError, ValueError):
            return None
    conv, scores = summary("convert", "summary.json"), summary("eval", "scores.json")
    made = (scores or {}).get("made") or {}
    return {"decontamination": (conv or {}).get("decontamination"),
            "eval": None if not scores else {
                "model": scores.get("model"), "date": made.get("date"), "seed": made.get("seed"),
                "environment": made.get("environment"),
                "commands": sorted({(b.get("made") or {}).get("command") or scores.get("command") or ""
                                    for b in (scores.get("benchmarks") or {}).values()} - {""}),
                "beyond_2se": sorted(k for k, b in (scores.get("benchmarks") or {}).items() if b.get("beyond_2se"))}}


def render_fidelity(f: dict) -> list[str]:
    lines = []
    d = f.get("decontamination")
    if d:
        benches = ", ".join(f"{k} {v['total']}" for k, v in d["by_benchmark"].items() if v["total"])
        lines += ["", f"Decontamination (convert, {d['ngram']}-gram or same text): {d['contaminated']} of "
                      f"{d['checked']} training problems overlap a benchmark" + (f" ({benches})" if benches else "")
                  + f", {d['near_duplicates']} near-duplicates; {d['kept']} kept"]
        lines += [f"  {src}: {c['contaminated']} contaminated, {c['near_duplicates']} near-duplicates of {c['checked']}"
                  for src, c in d["by_source"].items() if c["contaminated"] or c["near_duplicates"]]
    e = f.get("eval")
    if e:
        env = e.get("environment") or {}
        versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers", "vllm") if k in env)
        lines += ["", f"Eval table: {e['model']}, {e['date']}, seed {e['seed']}" + (f", {versions}" if versions else "")
                  + (f"; beyond 2 SE of published: {', '.join(e['beyond_2se'])}" if e["beyond_2se"] else "")]
        lines += [f"  made by `{c}`" for c in e["commands"]]
    return lines


def _where(x: dict, kind: str | None) -> str:
    if x.get("cloud") and x["cloud"] != "local":
        spot = " spot" if x.get("spot") else ""
        return f"{x['cloud']} {x['region'] or ''} {x['instance_type'] or ''}{spot}".replace("  ", " ").strip()
    return {"api": "API", "none": "controller"}.get(kind or "", "local")


def to_csv(a: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for s in a["stages"]:
        p, x = s["planned"], s["actual"]
        w.writerow({"stage": s["stage"], "state": x["state"], "attempts": x["attempts"], "cloud": x["cloud"],
                    "region": x["region"], "instance_type": x["instance_type"], "spot": x["spot"],
                    "price_per_hour": x["price_per_hour"], "price_source": x["price_source"],
                    "planned_gpu_hours": p["gpu_hours"], "gpu_hours": x["gpu_hours"], "planned_usd": p["total_usd"],
                    "compute_usd": x["compute_usd"], "api_usd": x["api_usd"],
                    "storage_usd": x.get("storage_usd") or 0.0, "prompt_tokens": x["prompt_tokens"],
                    "cached_tokens": x["cached_tokens"], "completion_tokens": x["completion_tokens"],
                    "preemptions": x["preemptions"], "total_usd": x["total_usd"], "arithmetic": x["arithmetic"]})
    t = a["totals"]
    w.writerow({"stage": "TOTAL", "state": a["run"]["status"], "planned_gpu_hours": t["planned_gpu_hours"],
                "gpu_hours": t["gpu_hours"], "planned_usd": t["planned_usd"], "compute_usd": t["compute_usd"],
                "api_usd": t["api_usd"], "storage_usd": t.get("storage_usd") or 0.0, "preemptions": t["preemptions"],
                "total_usd": t["actual_usd"],
                "arithmetic": f"budget {t['budget']}"})
    return buf.getvalue()


def spend_series(ledger, run_id: str) -> tuple[list, list, list]:
    """(times, cumulative $, [(stage, start, end)]) from the stage rows, API usage and what the bucket keeps,
    times in hours."""
    rows = ledger.progress_rows(run_id)
    api = ledger.api_totals(run_id)
    kept = ledger.events(run_id, "storage")
    t0 = min([r["at"] for r in rows] + [u["last_at"] for u in api] or [0.0])
    points = ([(r["at"], "row", r) for r in rows] + [(u["last_at"], "api", u) for u in api]
              + [(e["at"], "storage", e) for e in kept])
    points.sort(key=lambda p: p[0])
    per_attempt, api_usd, stored, times, spend, spans = {}, 0.0, {}, [0.0], [0.0], {}
    for at, what, r in points:
        if what == "row":
            per_attempt[r["attempt"]] = r["compute_usd"] or 0.0
            start = spans[r["attempt"]][1] if r["attempt"] in spans else at
            spans[r["attempt"]] = (r["stage"], start, at)
        elif what == "api":
            api_usd += r["usd"] or 0.0
        else:
            stored[r["stage"]] = r["numbers"].get("usd") or 0.0   # a stage's latest measure replaces its last
        times.append((at - t0) / 3600)
        spend.append(sum(per_attempt.values()) + api_usd + sum(stored.values()))
    return times, spend, [(s, (a - t0) / 3600, (b - t0) / 3600) for s, a, b in spans.values()]


def plot_spend(ledger, data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_id = data["run"]["run_id"]
    times, spend, spans = spend_series(ledger, run_id)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    colors = plt.get_cmap("tab10")
    names = list(dict.fromkeys(s for s, _, _ in spans))
    width = max([b for _, _, b in spans] + [times[-1], 1e-9])
    for stage, a, b in spans:
        i = names.index(stage)
        ax.axvspan(a, max(b, a + 1e-3), color=colors(i % 10), alpha=0.15, lw=0)
        if b - a > 0.04 * width:   # narrow stages keep their colour; their names would overlap
            ax.text((a + b) / 2, 0.98, stage, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)
    ax.step(times, spend, where="post", color="black", lw=1.6, label="spent")
    budget = data["totals"]["budget"]
    if budget is not None:
        ax.axhline(budget, color="red", ls="--", lw=1.2, label=f"budget ${budget:,.0f}")
    ax.axhline(data["totals"]["planned_usd"], color="gray", ls=":", lw=1, label="plan")
    ax.set_xlabel("hours since start" + (" (simulated)" if data["run"]["simulated"] else ""))
    ax.set_ylabel("US dollars")
    ax.set_title(f"Spend of run {run_id}: {money(data['totals']['actual_usd'])}")
    ax.set_ylim(0, max(spend + [budget or 0, data["totals"]["planned_usd"], 1.0]) * 1.12)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as e:
        raise UserError(f"--plot {path!r}: cannot write it ({e.strerror})") from None
    finally:
        plt.close(fig)


def _check_writable(path: str, flag: str) -> None:
    """A file we may write: its folder exists and is writable, and it is not itself a folder."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a folder: expected a file name")
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {path!r}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{flag} {path!r}: the folder {folder} is not writable")


def run_rows(ledger) -> list[dict]:
    from reproduce.pipeline import alive

    out = []
    for r in ledger.runs():
        state = ledger.run_state(r["run_id"])
        status = state["reason"]
        if status in ("started", "resumed"):
            status = "running" if alive(state["numbers"]) else "interrupted"
        attempts = ledger.attempts(r["run_id"])
        out.append({"run": r["run_id"], "status": status, "recipe": r["recipe"], "scale": r["scale"],
                    "backend": r["backend"] + (" (sim)" if r["simulated"] and r["backend"] != "sim" else ""),
                    "stage": attempts[-1]["stage"] if attempts else None,
                    "spent_usd": round(ledger.spent(r["run_id"]), 2), "budget": ledger.budget(r["run_id"]),
                    "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])),
                    "pid": state["numbers"].get("pid") if status == "running" else None})
    return out


def runs(as_json: bool = JSON_OPTION) -> None:
    """Every run in the ledger, oldest first."""
    rows = run_rows(open_ledger())
    if as_json:
        print_json(rows)
    elif not rows:
        typer.echo("no runs yet: start one with `reproduce all --budget USD`")
    else:
        typer.echo(table(rows, ["run", "status", "recipe", "scale", "backend", "stage", "spent_usd", "budget",
                                "started"]))


def calibration(as_json: bool = JSON_OPTION,
                simulated: bool = typer.Option(False, "--include-simulated", metavar="", help="Also show figures from sim runs.")) -> None:
    """Throughputs measured by finished runs, which the next plan uses, and how many runs each rests on."""
    from costmodel.calibration import figures

    from costmodel.calibration import price_rows

    ledger = open_ledger()
    rows = figures(ledger, include_simulated=simulated) + price_rows(ledger)   # price rows: from audit --billed
    if as_json:
        print_json(rows)
    elif not rows:
        typer.echo("no calibration yet: figures come from finished GPU stages of real runs; plans use the "
                   "estimator's defaults")
    else:
        typer.echo(table(rows, ["key", "value", "runs", "observations", "min", "max", "last_run", "how"],
                         floatfmt=",.4g"))
