"""The run's bucket: GB each stage writes under runs/RUN, kept for some days, and what the controller pulls.

    storage.estimate(recipe)                      # S3 Standard, kept 30 days
    storage.estimate(recipe, days_kept=7, store="gs")

    storage $ = GB written x days kept x 24 / 730 h a month x $/GB-month
    egress $  = GB pulled to the controller x $/GB out to the internet

Sizes come from the recipe's workload (costmodel.estimates.workload): text at ~4 bytes a token, SFT checkpoints
at 14 bytes a parameter. Uploads are free (AWS and GCP charge no ingress); request charges ($0.005 per 1,000
S3 PUTs: a run makes thousands, cents) and the free tiers (AWS: 100 GB a month out) are left out, so the
figure errs high.
"""
from __future__ import annotations

import math

from costmodel import estimates
from costmodel.errors import BadInput
from costmodel.prices import parse_accelerator

DAYS_KEPT = 30          # our default: a month to look at results before deleting the bucket's run folder
HOURS_PER_MONTH = 730   # the month AWS prices GB-months with (AWS Pricing Calculator)
BYTES_PER_TOKEN = 4.0   # Sky-T1_data_17k: 268,380,746 B / 16,401 rows / ~4.1k tokens (recipe sft.mean_sample_tokens)
CHECKPOINT_BYTES_PER_PARAM = 14   # bf16 weights 2 + fp32 master and Adam m, v 12 (sky_tasks/sft.yaml disk_size)
WEIGHT_BYTES_PER_PARAM = 2        # the saved bf16 model
SFT_PULLED_GB = 0.01              # the controller pulls sft's logs and trainer state, never weights (estimate)
SAVE_TOTAL_LIMIT = 2              # sky_tasks/llamafactory/sft.yaml keeps the last two checkpoints
GB = 1e9

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


def _trace_bytes(recipe: dict) -> float:
    gen = recipe["generate"]
    return (gen["mean_prompt_tokens"] + gen["mean_response_tokens"]) * BYTES_PER_TOKEN


def traces_written(recipe: dict) -> tuple[float, str]:
    samples, trace = estimates.workload(recipe)["samples"], _trace_bytes(recipe)
    return samples * trace / GB, f"{samples:,.0f} traces x {trace / 1e3:,.1f} KB"


def graded_written(recipe: dict) -> tuple[float, str]:
    samples, trace = estimates.workload(recipe)["samples"], _trace_bytes(recipe)
    return samples * trace / GB, f"{samples:,.0f} graded traces (kept + rejected) x {trace / 1e3:,.1f} KB"


def rewritten_written(recipe: dict) -> tuple[float, str]:
    rows = estimates.workload(recipe)["rewritten"]
    rewritten = _trace_bytes(recipe) + (recipe["generate"]["mean_response_tokens"] * recipe["rewrite"]["output_ratio"]
                                        * BYTES_PER_TOKEN)
    return rows * rewritten / GB, f"{rows:,.0f} traces + rewrites x {rewritten / 1e3:,.1f} KB"


def records_written(recipe: dict) -> tuple[float, str]:
    sft = recipe["sft"]
    record = sft["mean_sample_tokens"] * BYTES_PER_TOKEN
    return sft["samples"] * record / GB, f"{sft['samples']:,} SFT records x {record / 1e3:,.1f} KB"


def model_written(recipe: dict) -> tuple[float, str]:
    keep = recipe["sft"]["keep_checkpoints"]
    student = recipe["models"]["student"]["params_b"] * 1e9
    kept, weights = checkpoints(recipe), student * WEIGHT_BYTES_PER_PARAM
    return ((weights + (checkpoint_bytes(recipe) if keep else 0.0)) / GB,
            f"{kept} checkpoint{'s' if kept != 1 else ''} x {student / 1e9:g}B params x {CHECKPOINT_BYTES_PER_PARAM} B"
            + (" (kept)" if keep else " while it trains (deleted when it succeeds)")
            + f" + model {student / 1e9:g}B x {WEIGHT_BYTES_PER_PARAM} B")


def answers_written(recipe: dict) -> tuple[float, str]:
    answers = estimates.workload(recipe)["eval_samples"]
    answer = (recipe["generate"]["mean_prompt_tokens"] + recipe["eval"]["mean_response_tokens"]) * BYTES_PER_TOKEN
    return answers * answer / GB, f"{answers:,.0f} answers x {answer / 1e3:,.1f} KB"


def scratch_gb(recipe: dict) -> dict:
    """stage -> GB it keeps only while it runs: sft's checkpoints, unless the recipe keeps them."""
    return {} if recipe["sft"]["keep_checkpoints"] else {"sft": checkpoint_bytes(recipe) / GB}


def checkpoint_bytes(recipe: dict) -> float:
    return checkpoints(recipe) * recipe["models"]["student"]["params_b"] * 1e9 * CHECKPOINT_BYTES_PER_PARAM


def checkpoints(recipe: dict) -> int:
    """Checkpoints left in the bucket: every save_steps optimizer steps, at most save_total_limit kept."""
    sft = recipe["sft"]
    gpus = parse_accelerator(sft["accelerator"])[1] * sft["num_nodes"]
    batch = sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * gpus
    steps = math.ceil(sft["samples"] * sft["num_train_epochs"] / batch)
    return min(steps // max(1, int(sft["save_steps"])), int(sft.get("save_total_limit", SAVE_TOTAL_LIMIT)))


def _arith(gb: float, days: float, price: dict, pulled: float, usd: float, scratch: float = 0.0,
           hours: float = 0.0) -> str:
    month = f"24/{HOURS_PER_MONTH} x ${price['storage_gb_month']}/GB-month"
    extra = f" + {scratch:,.2f} GB scratch x {hours:,.2f} h/24 x {month}" if scratch and hours else ""
    return (f"{gb:,.2f} GB x {days:g} d x {month} + {pulled:,.2f} GB pulled x ${price['egress_gb']}/GB{extra} "
            f"= ${usd:,.2f}")
