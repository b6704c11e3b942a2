"""The checks a recipe's values pass (reproduce.recipe_schema applies them): data, so each stage's row
(costmodel.stages) can say its own section's knobs. A check is a test and the words for what it accepts:

    whole(1, 64)("3") -> False; whole(1, 64).accepted == "a whole number from 1 to 64"
"""
from __future__ import annotations

import math

from costmodel import estimates
from costmodel.errors import BadInput
from costmodel.estimates import GPU_NAMES

DOMAINS = ("math", "code", "mcq")   # the domains a grader checks (reproduce/stages/filter.py)


class Check:
    def __init__(self, test, accepted: str):
        self.test, self.accepted = test, accepted

    def __call__(self, value) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def whole(lo: int = 1, hi: int | None = None) -> Check:
    rng = f">= {lo}" if hi is None else f"from {lo} to {hi}"
    return Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi),
                 f"a whole number {rng}")


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    def test(v):
        return (_num(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return Check(test, "a finite number" + (" " + " and ".join(parts) if parts else ""))


def one_of(*values) -> Check:
    return Check(lambda v: v in values and type(v) in {type(x) for x in values},
                 "one of " + ", ".join(str(x).lower() if isinstance(x, bool) else str(x) for x in values))


GPUS_PER_NODE = 8   # the largest node any catalog row offers (costmodel/data/snapshot_8gpu.csv)


def _accel(v) -> bool:
    try:
        return isinstance(v, str) and estimates.accelerator(v)[1] <= GPUS_PER_NODE
    except BadInput:
        return False


TEXT = Check(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
ANY_TEXT = Check(lambda v: isinstance(v, str), "a string")
BOOL = Check(lambda v: isinstance(v, bool), "true or false")
POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
SHARE = number(0, 1, lo_open=True)                       # (0, 1]
OPTIONAL_POSITIVE = Check(lambda v: v is None or POSITIVE(v), "a finite number > 0, or null (nothing published)")
ACCEL = Check(_accel, f"NAME:COUNT with NAME one of {', '.join(GPU_NAMES)}, e.g. H100:8, and COUNT the GPUs of "
                      f"one node (at most {GPUS_PER_NODE}): for more, set the section's num_nodes")
ACCELS = Check(lambda v: isinstance(v, list) and all(_accel(x) for x in v),
               f"a list of NAME:COUNT with NAME one of {', '.join(GPU_NAMES)}, e.g. [H200:8]")
MARKET = Check(lambda v: v in (True, False, "auto"), "true (spot), false (on-demand) or auto (the cheaper)")
DOMAIN_LIST = Check(lambda v: isinstance(v, list) and all(x in DOMAINS for x in v),
                    f"a list of domains from {', '.join(DOMAINS)}")
MAPPING = Check(lambda v: isinstance(v, dict), "a mapping")
INFRA_LIST = Check(lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)),
                   "a list of infra names, e.g. [aws, gcp/us-central1, k8s/lab]")

SFT_METHODS = ("sft", "dpo", "simpo")
PREF_LOSSES = {"dpo": ("sigmoid", "hinge", "ipo"), "simpo": ("simpo",)}   # LLaMA-Factory's pref_loss per method
# Where a source's or benchmark's rows are on the hub (reproduce/stages/lib/hub.py): never a loading script.
LAYOUT = {"revision": TEXT, "gated": BOOL, "format": one_of("json", "parquet", "arrow", "csv"),
          "files": Check(lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v),
                         "a non-empty list of paths or globs in the dataset's repository, e.g. [data/train-*.parquet]")}

