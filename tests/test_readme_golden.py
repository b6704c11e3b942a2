"""Golden test of README.md's cost figures at the bundled price snapshot: the "Ours vs published" table and the
abridged `reproduce plan` block must say what `reproduce plan --budget 450 --json` (as given) and
`reproduce plan --optimize --json` (optimized) say today. When the plan changes, this fails and names the
figure to update in the README.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import cli as run_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SNAPSHOT = ROOT / "costmodel" / "data" / "snapshot_8gpu.csv"


def cli(capsys, *argv) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    return out


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def cost_table() -> dict:
    """The first table under "## Ours vs published": {stage: {column: cell}}."""
    text = section("Ours vs published")
    first = text.index("\n|") + 1
    lines = text[first:text.find("\n\n", first)].splitlines()       # up to the blank line after it
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        assert len(cells) == len(header), line
        table[cells[0].strip("*").split()[0]] = dict(zip(header, cells))
    return table


def plan_block() -> list[str]:
    """The abridged `reproduce plan` output after "Every dollar shows its arithmetic"."""
    start = README.index("Every dollar shows its arithmetic")
    block = README[README.index("```", start) + 3:]
    return [line for line in block[:block.index("```")].splitlines()[1:] if line.strip()]


def decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def check_cell(cell: str, row: dict, where: str) -> list[str]:
    """Every figure a cell states, against the plan row: accelerator, market, hours (work, overhead or
    total), and the stage's dollars (the last $ figure)."""
    wrong = []
    for name, count in re.findall(r"\b(H100|H200|A100-80GB):(\d+)", cell):
        if f"{name}:{count}" != row["accelerator"]:
            wrong.append(f"{where}: {name}:{count} but the plan runs {row['accelerator']}")
    if re.search(r"\bspot\b", cell) and not row["spot"]:
        wrong.append(f"{where}: says spot, the plan is on-demand")
    if re.search(r"\bon-demand\b", cell) and row["spot"]:
        wrong.append(f"{where}: says on-demand, the plan is spot")
    for value, kind in re.findall(r"(\d+(?:\.\d+)?) h( work| overhead)?\b", cell):
        key = {" work": "base_hours", " overhead": "overhead_hours"}.get(kind, "hours")
        actual = round(row[key], decimals(value))
        if float(value) != actual:
            wrong.append(f"{where}: {value} h{kind} but the plan says {actual:.{decimals(value)}f} h{kind}")
    dollars = re.findall(r"\$([\d,]+(?:\.\d+)?)", cell)
    if dollars:
        value = dollars[-1]
        actual = round(row["total_usd"], decimals(value))
        if float(value.replace(",", "")) != actual:
            wrong.append(f"{where}: ${value} but the plan says ${actual:,.{decimals(value)}f}")
    return wrong


@pytest.fixture
def plans(home, capsys):
    given = json.loads(cli(capsys, "plan", "--budget", "450", "--json"))
    optimized = json.loads(cli(capsys, "plan", "--optimize", "--json"))
    return given, optimized


def test_the_cost_table_is_todays_plan(plans):
    given, optimized = plans
    rows = {"ours, recipe as given": {s["stage"]: s for s in given["stages"]},
            "ours, optimized": {s["stage"]: s for s in optimized["optimized"]["stages"]}}
    totals = {"ours, recipe as given": given["totals"], "ours, optimized": optimized["optimized"]["totals"]}
    table = cost_table()
    assert set(table) == {"generate", "filter", "rewrite", "sft", "eval", "total"}, table.keys()
    wrong = []
    for column, by_stage in rows.items():
        for stage, cells in table.items():
            cell = cells[column]
            if stage == "total":
                shown = re.findall(r"\$([\d,]+\.\d\d)", cell)
                if shown != [f"{totals[column]['total_usd']:,.2f}"]:
                    wrong.append(f"{column} total: {cell} but the plan says ${totals[column]['total_usd']:,.2f}")
                continue
            wrong += check_cell(cell, by_stage[stage], f"{column} {stage}")
        if "local CPU" in table["filter"][column]:
            assert by_stage["filter"]["price_source"].startswith("local machine")
        if "Batch API" in table["rewrite"][column]:
            assert by_stage["rewrite"]["api_tokens"]["batch"] is True
    assert not wrong, "README.md 'Ours vs published' is stale:\n" + "\n".join(wrong)


def test_the_optimized_column_names_the_optimizers_changes(plans):
    _, optimized = plans
    sets = set(optimized["overrides"])
    cell = cost_table()["sft"]["ours, optimized"]
    for words, override in (("no offload", "sft.cpu_offload=false"), ("packing", "sft.packing=true"),
                            ("Liger", "sft.liger_kernel=true")):
        assert (words in cell) == (override in sets), (words, sets)
    assert "as NovaSky" in cost_table()["sft"]["ours, recipe as given"]
    assert optimized["variant_recipe"] == "sky-t1-32b-preview-optimized"    # the README's "the cheap way"
    assert "--recipe sky-t1-32b-preview-optimized" in README


def test_the_published_column_is_the_recipes_published_figures():
    from reproduce import recipe as recipes

    sft = recipes.load()["sft"]
    cell = cost_table()["sft"]["published (NovaSky)"]
    assert f"{sft['published_hours']} h on 8xH100" in cell and f"~${sft['published_usd']}" in cell


def test_the_snapshot_date_is_the_bundled_ones():
    built = SNAPSHOT.read_text().splitlines()[0]
    date = re.search(r"built (\d{4}-\d\d-\d\d)", built)[1]
    assert f"SkyPilot catalog v8, built {date}" in section("Ours vs published")


def test_the_abridged_plan_is_todays_plan_output(plans, capsys):
    given, _ = plans
    text = cli(capsys, "plan", "--budget", "450")
    real = [line.rstrip() for line in text.splitlines()]
    block = plan_block()
    assert len(block) >= 5
    stale = []
    for line in block:
        if "..." in line:      # abridged: what is shown must begin a real line
            shown = line.split("...")[0].rstrip()
            if not any(r.startswith(shown) for r in real):
                stale.append(line)
        elif line.rstrip() not in real:
            stale.append(line)
    assert not stale, "README.md's plan block is not what `reproduce plan --budget 450` prints:\n" + "\n".join(stale)

    # and its figures, against the JSON
    totals, rows = given["totals"], {s["stage"]: s for s in given["stages"]}
    joined = "\n".join(block)
    assert (f"Total: ${totals['total_usd']:,.2f} = compute ${totals['compute_usd']:,.2f} + API "
            f"${totals['api_usd']:,.2f} + bucket ${totals['storage_usd']:,.2f}  ({totals['gpu_hours']:,.1f} GPU-hours)"
            ) in joined
    assert f"On-demand instead of spot: ${totals['on_demand_total_usd']:,.2f}" in joined
    assert f"Budget: ${given['budget']:,.2f}  headroom ${totals['headroom_usd']:,.2f}" in joined
    for line in block:
        stage = line.split()[0]
        if stage in rows and line.startswith("  " + stage):
            row = rows[stage]
            assert row["arithmetic"] in line and f"[{row['price_source']}, {row['price_date']}]" in line, line
