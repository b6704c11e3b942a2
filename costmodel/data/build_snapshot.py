"""Build snapshot_8gpu.csv, the bundled price snapshot, from rows of SkyPilot's v8 catalog.

    python costmodel/data/build_snapshot.py /work/shared/reference/catalog_8gpu_prices.csv 2026-11-24

Input columns: cloud,instance_type,accelerator,count,region,zone,price_per_hour,spot_price_per_hour,
catalog_commit,catalog_date (GCP rows already include the host VM). What this script changes, and why:
- rows with neither an on-demand nor a spot price are dropped (nothing to quote);
- a price <= 0 is no price: Vast's SpotPrice column is the host's minimum bid (`min_bid` in SkyPilot's
  catalog/data_fetchers/fetch_vast.py), 0.00 for both Vast rows, so Vast keeps its on-demand price only;
- accelerator names stay as the catalog spells them (H100-SXM, H100-MEGA); costmodel.prices canonicalises;
- each row gains the node's own figures, vcpus, memory_gib (host RAM) and local_disk_gb (instance NVMe/local SSD),
  from HOST_FIGURES below (the providers' published specs) or from the figures the instance name carries (Prime
  Intellect `__176__1480`, Nebius `-128vcpu-1600gb`, Vast `-32-65536` MB); empty where neither says (unknown).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import re

COLUMNS = ["cloud", "instance_type", "accelerator", "count", "region", "zone", "price", "spot_price", "catalog_commit",
           "vcpus", "memory_gib", "local_disk_gb"]

# (vCPUs, host RAM GiB, local NVMe/SSD GB) of the 8-GPU instances the catalog names, read 2026-12-07:
AWS_SPECS = "https://aws.amazon.com/ec2/instance-types/p5/ and /p4/ (accelerated computing table)"
GCP_SPECS = "https://cloud.google.com/compute/docs/accelerator-optimized-machines (A3, A2 tables; GB as GiB)"
LAMBDA_SPECS = "https://lambda.ai/service/gpu-cloud (8x H100 SXM: 208 vCPUs, 1800 GiB; 8x A100 80GB: 240, 1800)"
HOST_FIGURES = {
    "p5.48xlarge": (192, 2048, 8 * 3840, AWS_SPECS), "p5e.48xlarge": (192, 2048, 8 * 3840, AWS_SPECS),
    "p5en.48xlarge": (192, 2048, 8 * 3840, AWS_SPECS), "p4de.24xlarge": (96, 1152, 8 * 1000, AWS_SPECS),
    "a3-highgpu-8g": (208, 1872, 16 * 375, GCP_SPECS), "a3-megagpu-8g": (208, 1872, 16 * 375, GCP_SPECS),
    "a3-ultragpu-8g": (224, 2952, 12000, GCP_SPECS), "a2-ultragpu-8g": (96, 1360, 8 * 375, GCP_SPECS),
    "h100-80gb.sxm.8x": (168, 1814, None, "SkyPilot catalog v8 mithril/vms.csv vCPUs, MemoryGiB"),
    "ccs-h200.sxm.8x": (168, 1600, None, "SkyPilot catalog v8 mithril/vms.csv vCPUs, MemoryGiB"),
    "gpu_8x_h100_sxm5": (208, 1800, None, LAMBDA_SPECS), "gpu_8x_a100_80gb_sxm4": (240, 1800, None, LAMBDA_SPECS),
}


def host_figures(instance_type: str) -> tuple:
    """(vcpus, memory_gib, local_disk_gb) as strings, "" where unknown."""
    if instance_type in HOST_FIGURES:
        v, m, d, _ = HOST_FIGURES[instance_type]
        return str(v), str(m), "" if d is None else str(d)
    m = (re.search(r"__(\d+)__(\d+)(?:__|$)", instance_type)          # Prime Intellect: __vCPUs__GB
         or re.search(r"(\d+)vcpu-(\d+)gb", instance_type))           # Nebius: -128vcpu-1600gb
    if m:
        return m[1], m[2], ""
    m = re.search(r"-(\d+)-(\d+)$", instance_type)                    # Vast: -vCPUs-MB
    if m:
        return m[1], str(round(int(m[2]) / 1024)), ""
    return "", "", ""


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
                         price, spot, r["catalog_commit"], *host_figures(r["instance_type"])])
    with open(dst, "w", newline="") as f:
        f.write(f"# built {built} from SkyPilot catalog v8 rows (see SNAPSHOT.md)\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(kept)
    return len(kept)


if __name__ == "__main__":
    n = build(Path(sys.argv[1]), Path(__file__).with_name("snapshot_8gpu.csv"), sys.argv[2])
    print(f"{n} rows")
