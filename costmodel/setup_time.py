"""Measured stage-environment setup time, for the startup part of a plan's estimate.

    setup_seconds("sft")   # -> (29.4, "uv cold cache, measured 2026-12-02: benchmarks/env_build.py --record: ...") or None
    measured("sft")        # -> (29.4, "uv cold cache, measured 2026-12-02"); method() is the rest, the same for all

Every GPU launch and every spot recovery lands on a fresh node: uv's cache is empty there, so the figure is
the "uv cold cache" build of the stage's lock, measured by benchmarks/env_build.py --record on this project's
machine (its network to PyPI; a cloud node's is usually faster) and kept in data/env_setup.json. Provisioning
and the model download are not in it. None for a lock never measured: keep the recipe's assumption.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "env_setup.json"


@lru_cache(maxsize=1)
def _load() -> dict:
    return json.loads(DATA.read_text()) if DATA.is_file() else {"envs": {}}


def measured(env_name: str) -> tuple[float, str] | None:
    """(seconds, "uv cold cache, measured DATE"): the figure and its date; how it was measured is method()."""
    row = _load()["envs"].get(env_name)
    if row is None:
        return None
    return float(row["uv_cold_s"]), f"uv cold cache, measured {row['measured']}"


def method() -> str:
    """How every figure here was measured (script, uv version, machine): the same for each, so a plan says it once."""
    return _load().get("source", "")


def setup_seconds(env_name: str) -> tuple[float, str] | None:
    got = measured(env_name)
    return None if got is None else (got[0], f"{got[1]}: {method()}")


def setup_hours(env_name: str) -> tuple[float, str] | None:
    got = setup_seconds(env_name)
    return None if got is None else (got[0] / 3600, got[1])
