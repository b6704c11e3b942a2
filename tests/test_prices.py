"""Price sources (costmodel.prices) and `reproduce prices`: snapshot, SkyPilot catalog caches, live AWS spot
history (botocore Stubber), a live catalog fetch from a local server, bad input, and nothing hanging offline."""
from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import cli
from costmodel import prices
from costmodel.errors import BadInput

H100 = "{'Gpus': [{'Name': 'H100', 'Manufacturer': 'NVIDIA', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 81920}}]}"
# SkyPilot's v8 AWS column order; a CPU-only row that must be ignored; zone ids, as SkyPilot lists them.
AWS_CSV = f"""InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch
p5.48xlarge,H100,8.0,192.0,2048.0,"{H100}",55.04,9.50,us-east-1,use1-az1,x86_64
p5.48xlarge,H100,8.0,192.0,2048.0,"{H100}",55.04,12.25,us-east-1,use1-az2,x86_64
p5.48xlarge,H100,8.0,192.0,2048.0,"{H100}",63.30,,eu-west-2,euw2-az1,x86_64
m6i.large,,,2.0,8.0,,0.096,0.03,us-east-1,use1-az1,x86_64
"""
# GCP lists the GPUs and the host VM as separate rows (a different column order, too).
GCP_CSV = """InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
,H100,8,,,H100,80.0,20.0,us-central1,us-central1-a
a3-highgpu-8g,,,208,1872,,8.5,2.5,us-central1,us-central1-a
,H100,8,,,H100,82.0,21.0,europe-west4,europe-west4-b
a3-highgpu-8g,,,208,1872,,9.0,3.0,europe-west4,europe-west4-b
"""


def plant(root: Path, cloud: str, text: str) -> Path:
    path = root / ".sky" / "catalogs" / "v8" / cloud / "vms.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- bundled snapshot

def test_snapshot_rows_from_several_clouds_cheapest_first(home, capsys):
    code, out, _ = cli(capsys, "prices", "--json", "--top", "500")
    assert code == 0
    rows = json.loads(out)
    assert {"aws", "gcp", "lambda", "runpod", "nebius", "primeintellect"} <= {r["cloud"] for r in rows}
    ranked = [r["spot"] if r["spot"] is not None else r["on_demand"] for r in rows]
    assert ranked == sorted(ranked)
    assert all(r["date"] == "2026-11-24" for r in rows)
    aws = [r for r in rows if r["cloud"] == "aws"]
    assert aws and all(r["source"] == "bundled snapshot (SkyPilot catalog v8 @ 00148f2)" for r in aws)
    assert {f.name for f in fields(prices.Offer)} <= set(rows[0])  # --json carries every field
    # one row per cloud/region/zone
    assert len({(r["cloud"], r["region"], r["zone"]) for r in rows}) == len(rows)
    # golden numbers from the snapshot (catalog_8gpu_prices.csv)
    assert (rows[0]["cloud"], rows[0]["spot"], rows[0]["per_gpu_hour"]) == ("primeintellect", 6.84, 0.855)


def test_cheapest_per_market_and_fast(home):
    spot = prices.cheapest("H100:8", spot=True)
    assert (spot.cloud, spot.spot) == ("primeintellect", 6.84)
    od = prices.cheapest("H100:8", spot=False)
    assert (od.cloud, od.on_demand) == ("mithril", 8.0)
    assert prices.cheapest("H100:8", spot=True, clouds=["lambda"]) is None  # Lambda has no spot market
    assert prices.cheapest("H100:8", spot=False, clouds=["lambda"]).on_demand == 31.92
    t = time.perf_counter()
    for _ in range(50):
        prices.cheapest("H100:8", spot=True)
    assert time.perf_counter() - t < 0.3  # cached within the process


def test_snapshot_gpu_names_canonical_and_vast_has_no_spot(home):
    offers = prices.gpu_offers("H200:8", clouds=["runpod", "vast"])
    assert {o.accelerator for o in offers} == {"H200"}  # runpod's H200-SXM
    vast = [o for o in offers if o.cloud == "vast"]
    assert [(o.on_demand, o.spot, o.region) for o in vast] == [(17.88, None, "France, FR, EU")]
    assert prices.parse_accelerator("h100-mega:8") == ("H100", 8)
    assert prices.parse_accelerator("A100-80GB") == ("A100-80GB", 1)


def test_table_lines_up(home, capsys):
    code, out, _ = cli(capsys, "prices", "H100:8", "--top", "5")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["cloud", "region"]
    col = lines[0].index("source")
    assert all(line[col:].startswith("bundled snapshot") for line in lines[2:7])
    assert lines[7].startswith("... ") and "--top" in lines[7]


# ---------------------------------------------------------------- SkyPilot catalog caches

def test_cached_skypilot_catalog_replaces_snapshot(home, capsys):
    path = plant(home, "aws", AWS_CSV)
    offers = prices.gpu_offers("H100:8", clouds=["aws", "lambda"])
    aws = [o for o in offers if o.cloud == "aws"]
    assert [(o.zone, o.on_demand, o.spot) for o in aws] == [
        ("use1-az1", 55.04, 9.5), ("use1-az2", 55.04, 12.25), ("euw2-az1", 63.3, None)]
    mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat()
    assert {(o.source, o.date) for o in aws} == {("skypilot catalog (cached, ~/.sky/catalogs/v8/aws/vms.csv)", mtime)}
    assert {o.source for o in offers if o.cloud == "lambda"} == {"bundled snapshot (SkyPilot catalog v8 @ 0f40703)"}

    code, out, _ = cli(capsys, "prices", "--cloud", "aws", "--on-demand")
    assert code == 0 and "cached, ~/.sky/catalogs/v8/aws/vms.csv" in out and "63.3" in out


def test_gcp_cache_adds_host_vm_price(home):
    plant(home, "gcp", GCP_CSV)
    offers = prices.gpu_offers("H100:8", clouds=["gcp"])
    assert [(o.region, o.instance_type, o.on_demand, o.spot) for o in offers] == [
        ("us-central1", "a3-highgpu-8g", 88.5, 22.5), ("europe-west4", "a3-highgpu-8g", 91.0, 24.0)]


def test_cache_reading_agrees_with_skypilot(home):
    """SkyPilot's own catalog code, on the same planted files, gives the same prices and the same path."""
    plant(home, "aws", AWS_CSV)
    plant(home, "gcp", GCP_CSV)
    script = """
import json, sky.catalog as c
from sky.catalog import common
r = c.list_accelerators(gpus_only=True, name_filter='H100', quantity_filter=8, clouds='gcp', all_regions=True)
print(json.dumps({
  "path": common.get_catalog_path('aws/vms.csv'),
  "aws_spot_use1": c.get_hourly_cost('p5.48xlarge', use_spot=True, region='us-east-1', zone=None, clouds='aws'),
  "aws_od_euw2": c.get_hourly_cost('p5.48xlarge', use_spot=False, region='eu-west-2', zone=None, clouds='aws'),
  "gcp": sorted([i.region, i.price, i.spot_price] for v in r.values() for i in v)}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=os.environ)
    assert res.returncode == 0, res.stderr[-2000:]
    sky = json.loads(res.stdout.strip().splitlines()[-1])
    assert sky["path"] == str(prices.sky_catalog_dir() / "aws" / "vms.csv")
    aws = prices.gpu_offers("H100:8", clouds=["aws"])
    assert sky["aws_spot_use1"] == min(o.spot for o in aws if o.region == "us-east-1")
    assert sky["aws_od_euw2"] == next(o.on_demand for o in aws if o.region == "eu-west-2")
    gcp = prices.gpu_offers("H100:8", clouds=["gcp"])
    assert sky["gcp"] == sorted([o.region, o.on_demand, o.spot] for o in gcp)
    assert not (home / ".sky" / "catalogs" / "v8" / ".meta").exists()  # nobody refreshed our planted files


def test_foreign_cache_file_falls_back_to_snapshot(home):
    plant(home, "aws", "not,a,catalog\n1,2,3\n")
    offers = prices.gpu_offers("H100:8", clouds=["aws"])
    assert offers and all(o.source.startswith("bundled snapshot") for o in offers)


def test_vast_cache_min_bid_is_not_a_spot_price(home):
    plant(home, "vast", "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,HostingType\n"
                        "8x-H100_SXM-32-65536,H100,8,32,64,H100,16.00,0.35,\"Vietnam, VN, AS\",1\n")
    [o] = prices.gpu_offers("H100:8", clouds=["vast"])
    assert (o.on_demand, o.spot, o.region, o.zone) == (16.0, None, "Vietnam, VN, AS", None)


# ---------------------------------------------------------------- live AWS spot history (Stubber)

def test_live_spot_history_overrides_aws_spot_per_zone(home, monkeypatch):
    import boto3
    from botocore.stub import ANY, Stubber

    plant(home, "aws", AWS_CSV)  # fresh cache: no catalog fetch is attempted
    monkeypatch.delenv("REPRODUCE_OFFLINE")
    monkeypatch.setenv("REPRODUCE_CATALOG_URL", "http://127.0.0.1:9/unused")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    assert prices.aws_credentials_present()
    stamp = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
    stubbers = []

    def client(region, timeout_s):
        ec2 = boto3.client("ec2", region_name=region)
        stub = Stubber(ec2)
        if region == "us-east-1":
            stub.add_response("describe_availability_zones", {"AvailabilityZones": [
                {"ZoneName": "us-east-1a", "ZoneId": "use1-az2"}, {"ZoneName": "us-east-1b", "ZoneId": "use1-az1"}]}, {})
            stub.add_response("describe_spot_price_history", {"SpotPriceHistory": [
                {"AvailabilityZone": "us-east-1a", "InstanceType": "p5.48xlarge", "ProductDescription": "Linux/UNIX",
                 "SpotPrice": "7.123400", "Timestamp": stamp},
                {"AvailabilityZone": "us-east-1a", "InstanceType": "p5.48xlarge", "ProductDescription": "Linux/UNIX",
                 "SpotPrice": "30.000000", "Timestamp": stamp - dt.timedelta(hours=3)}]},
                {"InstanceTypes": ["p5.48xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": ANY})
        else:  # a region where the account may not ask: the catalog's price stands
            stub.add_client_error("describe_availability_zones", "UnauthorizedOperation")
        stub.activate()
        stubbers.append(stub)
        return ec2

    monkeypatch.setattr(prices, "_ec2_client", client)
    offers = {o.zone: o for o in prices.gpu_offers("H100:8", clouds=["aws"])}
    live = offers["use1-az2"]
    assert (live.spot, live.on_demand, live.source, live.date) == (
        7.1234, 55.04, "aws spot history (live)", "2026-11-24T12:00:00+00:00")
    assert offers["use1-az1"].spot == 9.5 and offers["use1-az1"].source.startswith("skypilot catalog (cached")
    assert offers["euw2-az1"].spot is None
    assert prices.cheapest("H100:8", spot=True, clouds=["aws"]).zone == "use1-az2"
    for stub in stubbers:
        stub.assert_no_pending_responses()


def test_no_aws_credentials_means_no_spot_call(home, monkeypatch):
    monkeypatch.delenv("REPRODUCE_OFFLINE")
    monkeypatch.setenv("REPRODUCE_CATALOG_URL", "http://127.0.0.1:9/unused")
    plant(home, "aws", AWS_CSV)
    assert not prices.aws_credentials_present()
    monkeypatch.setattr(prices, "_ec2_client", lambda *a: pytest.fail("EC2 called without credentials"))
    assert prices.gpu_offers("H100:8", clouds=["aws"])


# ---------------------------------------------------------------- live catalog fetch, and offline

class _Catalog(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/catalogs/v8/aws/vms.csv":
            body = AWS_CSV.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_live_catalog_fetch_goes_to_our_cache_not_sky(home, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Catalog)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("REPRODUCE_OFFLINE")
        monkeypatch.setenv("REPRODUCE_CATALOG_URL", f"http://127.0.0.1:{server.server_port}/catalogs")
        offers = prices.gpu_offers("H100:8", clouds=["aws", "lambda"])
        assert {o.source for o in offers if o.cloud == "aws"} == {"skypilot catalog (live)"}
        assert {o.source for o in offers if o.cloud == "lambda"} == {"bundled snapshot (SkyPilot catalog v8 @ 0f40703)"}
        assert (home / ".reproduce" / "catalogs" / "v8" / "aws" / "vms.csv").read_text() == AWS_CSV
        assert not (home / ".sky").exists()
        prices.clear_cache()  # a later process: the fetched copy is fresh, so it is read, not fetched again
        server.shutdown()
        again = prices.gpu_offers("H100:8", clouds=["aws"])
        assert {o.source for o in again} == {"skypilot catalog (cached, ~/.reproduce/catalogs/v8/aws/vms.csv)"}
    finally:
        server.server_close()


def test_offline_nothing_hangs(home, monkeypatch):
    """A server that accepts connections and never answers, for the catalog and for EC2: the deadline holds,
    the snapshot answers, and the next call does not wait again."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    port = silent.getsockname()[1]
    try:
        monkeypatch.delenv("REPRODUCE_OFFLINE")
        monkeypatch.setenv("REPRODUCE_CATALOG_URL", f"http://127.0.0.1:{port}/catalogs")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{port}")
        t = time.monotonic()
        offers = prices.gpu_offers("H100:8", timeout_s=1.0)
        assert time.monotonic() - t < 2.5
        assert offers and all(o.source.startswith("bundled snapshot") for o in offers)
        assert (home / ".reproduce" / "catalogs" / "v8" / ".offline").exists()
        prices.clear_cache()
        t = time.monotonic()
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        assert prices.cheapest("H100:8", spot=True).spot == 6.84
        assert time.monotonic() - t < 2.0  # backed off: no second 3 s wait for the catalog (slack for a busy box)
    finally:
        silent.close()


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, named", [
    (["X100:8"], "'X100'"), (["H100:0"], "'0'"), (["H100:two"], "'two'"),
    (["--cloud", "azurr"], "'azurr'"), (["--top", "0"], "got 0"), (["--spot", "--on-demand"], "--spot"),
    (["H100:99999999999999999999"], "no node holds 99999999999999999999 GPUs; use a count from 1 to 16"),
])
def test_bad_input_one_line_exit_2(home, capsys, args, named):
    code, out, err = cli(capsys, "prices", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and named in err


def test_bad_input_from_the_api(home):
    with pytest.raises(BadInput, match="H100, H200, A100-80GB"):
        prices.gpu_offers("X100:8")
    with pytest.raises(BadInput, match="aws, azure"):
        prices.cheapest("H100:8", spot=True, clouds=["nope"])


def test_silent_ec2_endpoint_the_cli_still_exits_in_time(home, monkeypatch):
    """AWS credentials but EC2 never answers: `reproduce prices` keeps the catalog's spot prices and the
    process exits soon after the 3 s deadline (no thread left to wait on at exit)."""
    plant(home, "aws", AWS_CSV)  # fresh: only the spot history is asked for
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="example-secret",
                   AWS_ENDPOINT_URL_EC2=f"http://127.0.0.1:{silent.getsockname()[1]}")
        env.pop("REPRODUCE_OFFLINE")
        t = time.monotonic()
        res = subprocess.run([sys.executable, "-c", "from reproduce.cli import main; main(['prices', '--cloud', 'aws', '--json'])"],
                             capture_output=True, text=True, timeout=30, env=env)
        took = time.monotonic() - t
    finally:
        silent.close()
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["spot"] for r in rows] == [9.5, 12.25, None] and took < 6.5
