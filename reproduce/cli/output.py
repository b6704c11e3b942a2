"""One way to print listings: a tabulate table for people, `--json` for programs (DESIGN.md)."""
from __future__ import annotations

import json
import sys

import typer

JSON_OPTION = typer.Option(False, "--json", metavar="", help="Print JSON instead of a table.")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(rows: list[dict], columns: list[str] | None = None, headers: dict | None = None,
          floatfmt: str = ",.2f") -> str:
    """Rows of dicts -> aligned table. Numbers right-aligned; None shows as '-'."""
    from tabulate import tabulate

    columns = columns or (list(rows[0]) if rows else [])
    headers = headers or {}
    body = [[r.get(c) for c in columns] for r in rows]  # None -> missingval keeps number columns numeric
    return tabulate(body, headers=[headers.get(c, c) for c in columns], floatfmt=floatfmt,
                    disable_numparse=False, missingval="-")


def money(x: float) -> str:
    return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"
