"""The run's bucket: GB each stage writes under runs/RUN, kept for some days, and what the controller pulls.

    storage.estimate(recipe)                      # S3 Standard, kept 30 days
    storage.estimate(recipe, days_kept=7, store="gs")

    storage $ = GB written x days kept x 24 / 730 h a month x $/GB-month
    egress $  = GB pulled to the controller x $/GB out to the internet

Sizes come from each stage's row (`writes`: a function beside its estimator in costmodel.estimates): text at
~4 bytes a token, SFT checkpoints at 14 bytes a parameter. Uploads are free (AWS and GCP charge no ingress); request charges ($0.005 per 1,000
S3 PUTs: a run makes thousands, cents) and the free tiers (AWS: 100 GB a month out) are left out, so the
figure errs high.
"""
from __future__ import annotations

import math

from costmodel import estimates
from costmodel.errors import BadInput
# what each stage writes lives with its estimator (a row's `writes`); the sizes' figures, for this module's callers
from costmodel.estimates import (BYTES_PER_TOKEN, CHECKPOINT_BYTES_PER_PARAM, GB, SAVE_TOTAL_LIMIT,  # noqa: F401
                                 WEIGHT_BYTES_PER_PARAM, checkpoint_bytes, checkpoints)

DAYS_KEPT = 30          # our default: a month to look at results before deleting the bucket's run folder
HOURS_PER_MONTH = 730   # the month AWS prices GB-months with (AWS Pricing Calculator)
SFT_PULLED_GB = 0.01              # the controller pulls sft's logs and trainer state, never weights (estimate)

# $/GB-month of standard storage and $/GB of internet egress, the first price tier; list prices as we know
# them, not re-checked against the pages since (dated by the page's tier table we copied).
PRICES = {
    "s3": {"storage_gb_month": 0.023, "egress_gb": 0.09,
           "source": "aws.amazon.com/s3/pricing: S3 Standard us-east-1 first 50 TB $0.023/GB-month; data "
                     "transfer out to the internet first 10 TB $0.09/GB", "date": "2024-12"},
    "gs": {"storage_gb_month": 0.020, "egress_gb": 0.12,
           "source": "cloud.google.com/storage/pricing: Standard us-east1 $0.020/GB-month; internet egress "
                     "(premium tier, first TB) $0.12/GB", "date": "2024-12"},
}

# The controller pulls what stages that ran elsewhere wrote, never weights; what it wrote itself it already has
# (reproduce/executors/bucket.py). Each stage's row (costmodel.stages) says what it writes and pulls.


def estimate(recipe: dict, days_kept: float | None = None, store: str = "s3", hours: dict | None = None) -> dict:
    """Per stage GB written and pulled, $ and arithmetic; totals. `store`: s3 | gs (or a bucket URL); `hours`:
    each stage's planned hours, for what it keeps only while it runs (sft's checkpoints, unless kept)."""
    days, store = _days(days_kept), _store(store)
    price = PRICES[store]
    scratch = scratch_gb(recipe)
    rows = [{**cost(recipe, stage, gb, store, days, scratch.get(stage, 0.0), (hours or {}).get(stage, 0.0)),
             "what": what} for stage, gb, what in written(recipe)]
    total_gb = sum(r["gb_written"] for r in rows)
    pulled = sum(r["gb_pulled"] for r in rows)
    total = sum(r["usd"] for r in rows)
    return {"store": store, "days_kept": days, "storage_gb_month": price["storage_gb_month"],
            "egress_gb": price["egress_gb"], "price_source": price["source"], "price_date": price["date"],
            "stages": rows, "gb_written": total_gb, "gb_pulled": pulled,
            "storage_usd": sum(r["storage_usd"] for r in rows), "egress_usd": sum(r["egress_usd"] for r in rows),
            "total_usd": total, "arithmetic": _arith(total_gb, days, price, pulled, total) + "".join(
                f" (incl. {r['stage']}'s {r['scratch_gb']:,.2f} GB scratch for {r['scratch_hours']:,.2f} h)"
                for r in rows if r["scratch_gb"])}


def cost(recipe: dict, stage: str, gb_written: float, store: str = "s3", days_kept: float | None = None,
         scratch: float = 0.0, hours: float = 0.0) -> dict:
    """What GB_WRITTEN of STAGE in the bucket costs: kept DAYS_KEPT days, and what the controller pulls of it;
    plus SCRATCH GB kept only for the stage's HOURS (deleted when it succeeds). The estimate prices the GB it
    expects; a run prices the GB it measured under its prefix after the scratch went."""
    days, store = _days(days_kept), _store(store)
    for what, v in (("GB written", gb_written), ("scratch GB", scratch), ("hours", hours)):
        if not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
            raise BadInput(f"{stage}: {v!r} {what}: expected a number >= 0")
    from costmodel.stages import stage as row   # the table names this module's sizing functions

    price, this = PRICES[store], row(stage)
    pulled = 0.0 if this.on_controller(recipe) else min(SFT_PULLED_GB, gb_written) if this.pulls == "logs" \
        else gb_written
    month = 24 / HOURS_PER_MONTH * price["storage_gb_month"]   # $ per GB-day
    kept_usd, scratch_usd = gb_written * days * month, scratch * hours / 24 * month
    storage_usd, egress_usd = kept_usd + scratch_usd, pulled * price["egress_gb"]
    arithmetic = _arith(gb_written, days, price, pulled, storage_usd + egress_usd, scratch, hours)
    return {"stage": stage, "gb_written": gb_written, "gb_pulled": pulled, "scratch_gb": scratch,
            "scratch_hours": hours, "storage_usd": storage_usd, "egress_usd": egress_usd,
            "usd": storage_usd + egress_usd, "store": store, "days_kept": days,
            "price_source": price["source"], "price_date": price["date"], "arithmetic": arithmetic}


def _days(days_kept) -> float:
    days = DAYS_KEPT if days_kept is None else days_kept
    if not isinstance(days, (int, float)) or days < 0 or days != days or math.isinf(days):
        raise BadInput(f"storage days kept {days_kept!r}: expected a number of days >= 0, e.g. 30")
    return days


def _store(store: str) -> str:
    store = store.partition("://")[0] if "://" in store else store
    if store not in PRICES:
        raise BadInput(f"store {store!r}: expected one of {', '.join(PRICES)} (or an s3:// or gs:// bucket)")
    return store


def written(recipe: dict) -> list[tuple[str, float, str]]:
    """(stage, GB, what) each stage writes to the bucket, from the recipe's workload."""
    from costmodel.stages import STAGES

    return [(s.name, *s.writes(recipe)) for s in STAGES]


def scratch_gb(recipe: dict) -> dict:
    """stage -> GB it keeps only while it runs: a stage with scratch (its row's, sft's checkpoints), unless the
    recipe keeps them."""
    from costmodel.stages import STAGES

    return {s.name: checkpoint_bytes(recipe) / GB for s in STAGES if s.scratch and not s.keeps_scratch(recipe)}



def _arith(gb: float, days: float, price: dict, pulled: float, usd: float, scratch: float = 0.0,
           hours: float = 0.0) -> str:
    month = f"24/{HOURS_PER_MONTH} x ${price['storage_gb_month']}/GB-month"
    extra = f" + {scratch:,.2f} GB scratch x {hours:,.2f} h/24 x {month}" if scratch and hours else ""
    return (f"{gb:,.2f} GB x {days:g} d x {month} + {pulled:,.2f} GB pulled x ${price['egress_gb']}/GB{extra} "
            f"= ${usd:,.2f}")
