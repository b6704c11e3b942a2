"""Build snapshot_8gpu.csv, the bundled price snapshot, from rows of SkyPilot's v8 catalog.

    python costmodel/data/build_snapshot.py /work/shared/reference/catalog_8gpu_prices.csv 2026-11-24

Input columns: cloud,instance_type,accelerator,count,region,zone,price_per_hour,spot_price_per_hour,
catalog_commit,catalog_date (GCP rows already include the host VM). What this script changes, and why:
- rows with neither an on-demand nor a spot price are dropped (nothing to quote);
- a price <= 0 is no price: Vast's SpotPrice column is the host's minimum bid (`min_bid` in SkyPilot's
  catalog/data_fetchers/fetch_vast.py), 0.00 for both Vast rows, so Vast keeps its on-demand price only;
- accelerator names stay as the catalog spells them (H100-SXM, H100-MEGA); costmodel.prices canonicalises.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

COLUMNS = ["cloud", "instance_type", "accelerator", "count", "region", "zone", "price", "spot_price", "catalog_commit"]


def _price(s: str) -> str:
    try:
        return s if float(s) > 0 else ""
    except ValueError:
        return ""


def build(src: Path, dst: Path, built: str) -> int:
    kept = []
    with open(src, newline="") as f:
        for r in csv.DictReader(f):
            price, spot = _price(r["price_per_hour"]), _price(r["spot_price_per_hour"])
            if not price and not spot:
                continue
            kept.append([r["cloud"], r["instance_type"], r["accelerator"], r["count"], r["region"], r["zone"],
                         price, spot, r["catalog_commit"]])
    with open(dst, "w", newline="") as f:
        f.write(f"# built {built} from SkyPilot catalog v8 rows (see SNAPSHOT.md)\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(kept)
    return len(kept)


if __name__ == "__main__":
    n = build(Path(sys.argv[1]), Path(__file__).with_name("snapshot_8gpu.csv"), sys.argv[2])
    print(f"{n} rows")
