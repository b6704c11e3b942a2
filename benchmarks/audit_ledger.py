"""How long `reproduce audit` takes on a ledger with 1,000,000 API-usage rows (target: under 2 s).

    python benchmarks/audit_ledger.py [--rows 1000000] [--keep DIR]

Builds a throwaway ledger: one run of six stages (a few hundred stage rows) and N api_usage rows spread
over the rewrite stage, three models and batch/non-batch; then times Ledger() + audit() + the table, as
`reproduce audit` does them. The audit sums in SQL over the (run_id, stage, model, batch) index.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodel.ledger import Ledger  # noqa: E402

STAGES = ("generate", "filter", "rewrite", "convert", "sft", "eval")
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")


def build(path: Path, rows: int) -> str:
    rng = random.Random(0)
    led = Ledger(path)
    run_id = "bench"
    led.create_run(run_id, recipe="sky-t1-32b-preview", scale="full", backend="sky", budget=450.0)
    t = 1.7e9
    for stage in STAGES:
        led.add_stage_row(run_id, stage, "planned", at=t, kind="gpu", gpus=8, hours=2.0, gpu_hours=16.0,
                          compute_usd=33.6, api_usd=0.0)
        attempt = led.add_stage_row(run_id, stage, "started", at=t, state="PENDING")
        for i in range(60):
            t += 300
            led.add_stage_row(run_id, stage, "progress", at=t, attempt=attempt, state="RUNNING",
                              compute_usd=i * 1.4, gpus=8, price_per_hour=16.8, cloud="aws", region="us-east-1")
        led.finish_stage(run_id, stage, attempt, at=t, state="SUCCEEDED", compute_usd=84.0, gpus=8, hours=5.0,
                         gpu_hours=40.0, price_per_hour=16.8, cloud="aws", region="us-east-1")
    batch = 50_000
    with led.write() as db:   # one transaction: building is not what is measured
        for start in range(0, rows, batch):
            db.executemany(
                "INSERT INTO api_usage (run_id, stage, attempt, at, model, batch, prompt_tokens, cached_tokens, "
                "completion_tokens, usd) VALUES (?, 'rewrite', NULL, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, t + i, MODELS[i % 3], i % 2, 6000 + rng.randrange(500), rng.randrange(100),
                  4000 + rng.randrange(500), 0.003) for i in range(start, min(start + batch, rows))])
    led.close()
    return run_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="build the ledger in DIR and keep it")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="audit-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ledger.db"
    if path.exists():
        path.unlink()
    t0 = time.perf_counter()
    run_id = build(path, args.rows)
    print(f"built {args.rows:,} api_usage rows in {time.perf_counter() - t0:,.1f} s ({path}, "
          f"{path.stat().st_size / 1e6:,.0f} MB)")
    from reproduce.cli.audit import render_audit

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with Ledger(path) as led:
            data = led.audit(run_id)
            render_audit(data)
        times.append(time.perf_counter() - t0)
    records = sum(m["records"] for m in data["by_model"])
    assert records == args.rows, records
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"audit of {records:,} API records: {min(times):.3f} s best, {max(times):.3f} s worst of 3 "
          f"(target < 2 s); API total ${data['totals']['api_usd']:,.2f}")


if __name__ == "__main__":
    main()
