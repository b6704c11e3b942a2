"""GPU node prices, per cloud, from the freshest source that answers (DESIGN.md "Money").

Sources, freshest first, chosen per cloud:
  1. SkyPilot's hosted catalog, fetched live (`<url>/v8/<cloud>/vms.csv`) when no cached copy is younger
     than SkyPilot's own refresh interval (7 h). Stored under $REPRODUCE_HOME/catalogs/v8/, never in ~/.sky.
  2. A cached catalog file: SkyPilot's own (`$SKY_RUNTIME_DIR or ~/.sky/catalogs/v8/<cloud>/vms.csv`) or
     ours, the newer of the two.
  3. The bundled snapshot, costmodel/data/snapshot_8gpu.csv (8-GPU H100/H200/A100-80GB, see SNAPSHOT.md).
Then, where AWS credentials exist, live spot prices from `describe_spot_price_history` replace the spot
column of AWS rows, zone by zone.

Live calls share one deadline (`timeout_s`); a source that fails or runs out of time falls back silently
to the next (debug log only). REPRODUCE_OFFLINE=1 turns live calls off. Results are cached in the process.

We read SkyPilot's CSVs ourselves, with its column conventions, instead of calling `sky.catalog`:
`import sky` takes ~2 s, and its catalog code downloads into ~/.sky (requests.get without a timeout) when
a file is missing.
"""
from __future__ import annotations

import csv
import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from costmodel.errors import BadInput

log = logging.getLogger(__name__)

# Canonical accelerator names we price, and the catalog spellings that mean the same GPU.
ACCELERATORS = ("H100", "H200", "A100-80GB", "A100", "B200", "L40S", "L4", "A10G")
ALIASES = {"H100-SXM": "H100", "H100-MEGA": "H100", "H200-SXM": "H200"}

# Clouds with a SkyPilot `<cloud>/vms.csv` catalog (sky/catalog/*_catalog.py). DEFAULT_CLOUDS are the ones
# searched when none are named: those in the bundled snapshot, plus Azure.
KNOWN_CLOUDS = ("aws", "azure", "cudo", "do", "fluidstack", "gcp", "hyperbolic", "ibm", "lambda", "mithril",
                "nebius", "oci", "paperspace", "primeintellect", "runpod", "scp", "seeweb", "shadeform",
                "vast", "verda", "yotta")
DEFAULT_CLOUDS = ("aws", "azure", "cudo", "gcp", "lambda", "mithril", "nebius", "primeintellect", "runpod",
                  "seeweb", "shadeform", "vast")

# sky/skylet/constants.py (skypilot 0.14.1): HOSTED_CATALOG_DIR_URL, CATALOG_SCHEMA_VERSION.
CATALOG_URL = "https://raw.githubusercontent.com/skypilot-org/skypilot-catalog/master/catalogs"
SCHEMA = "v8"
PULL_HOURS = 7  # _PULL_FREQUENCY_HOURS in sky/catalog/aws_catalog.py, gcp_catalog.py, lambda_catalog.py
OFFLINE_BACKOFF_S = 600  # after a live fetch fails to connect, do not retry for 10 min (saves each CLI call the wait)

# GCP lists a GPU and its host VM as separate rows; the host of each GPU type (8 per node) comes from
# _ACC_INSTANCE_TYPE_DICTS in sky/catalog/gcp_catalog.py, and SkyPilot adds the two prices (list_accelerators).
GCP_HOSTS = {("H100", 8): "a3-highgpu-8g", ("H100-MEGA", 8): "a3-megagpu-8g", ("H200", 8): "a3-ultragpu-8g",
             ("A100-80GB", 8): "a2-ultragpu-8g", ("A100", 8): "a2-highgpu-8g", ("B200", 8): "a4-highgpu-8g",
             ("A100-80GB", 4): "a2-ultragpu-4g", ("A100", 4): "a2-highgpu-4g", ("H100", 4): "a3-highgpu-4g",
             ("A100-80GB", 2): "a2-ultragpu-2g", ("A100", 2): "a2-highgpu-2g", ("H100", 2): "a3-highgpu-2g",
             ("A100-80GB", 1): "a2-ultragpu-1g", ("A100", 1): "a2-highgpu-1g", ("H100", 1): "a3-highgpu-1g"}

SNAPSHOT = Path(__file__).with_name("data") / "snapshot_8gpu.csv"


@dataclass(frozen=True)
class Offer:
    cloud: str
    region: str
    zone: str | None
    instance_type: str
    accelerator: str          # canonical name (ALIASES applied)
    count: int                # GPUs per node
    on_demand: float | None   # $/h for the whole node
    spot: float | None        # $/h for the whole node
    source: str               # where the price came from, e.g. "skypilot catalog (cached, ~/.sky/catalogs/v8/aws/vms.csv)"
    date: str                 # ISO date (or timestamp) of the price
    # Before billing calibration (with_billing), the catalog's own prices: SkyPilot filters launches by these,
    # so a `max_hourly_cost` cap must come from them, not from a price calibrated below the catalog's.
    list_on_demand: float | None = None
    list_spot: float | None = None
    # The node's own figures, from the catalog row (vCPUs, MemoryGiB) or the snapshot's columns; None: unknown.
    vcpus: int | None = None
    host_ram_gib: float | None = None
    local_disk_gb: float | None = None

    def price(self, spot: bool) -> float | None:
        return self.spot if spot else self.on_demand

    def list_price(self, spot: bool) -> float | None:
        listed = self.list_spot if spot else self.list_on_demand
        return self.price(spot) if listed is None else listed

    def sort_key(self) -> float:
        p = self.spot if self.spot is not None else self.on_demand
        return float("inf") if p is None else p


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def parse_accelerator(s: str) -> tuple[str, int]:
    """Parse NAME[:COUNT]: "H100:8" -> ("H100", 8); a bare name means one GPU, as in SkyPilot (`H100` -> ("H100", 1))."""
    name, _, count = str(s).strip().partition(":")
    by_upper = {a.upper(): a for a in ACCELERATORS} | {a.upper(): canonical(a) for a in ALIASES}
    if name.upper() not in by_upper:
        raise BadInput(f"unknown accelerator {name!r} in {s!r}: use NAME[:COUNT] with NAME one of "
                       f"{', '.join(ACCELERATORS)} (e.g. H100:8)")
    try:
        n = int(count) if count else 1
    except ValueError:
        n = 0
    if n < 1:
        raise BadInput(f"bad GPU count {count!r} in {s!r}: use a whole number >= 1 (e.g. H100:8)")
    return by_upper[name.upper()], n


def check_clouds(clouds: list[str] | None) -> tuple[str, ...]:
    if not clouds:
        return DEFAULT_CLOUDS
    out = []
    for c in clouds:
        if c.lower() not in KNOWN_CLOUDS:
            raise BadInput(f"unknown cloud {c!r}: use one of {', '.join(KNOWN_CLOUDS)}")
        if c.lower() not in out:
            out.append(c.lower())
    return tuple(out)


# ---------------------------------------------------------------- where things live

def sky_catalog_dir() -> Path:
    # sky/skylet/runtime_utils.get_runtime_dir_path + sky/catalog/common._ABSOLUTE_VERSIONED_CATALOG_DIR
    return Path(os.path.expanduser(os.environ.get("SKY_RUNTIME_DIR", "~"))) / ".sky" / "catalogs" / SCHEMA


def own_catalog_dir() -> Path:
    home = os.environ.get("REPRODUCE_HOME") or os.path.join(os.path.expanduser("~"), ".reproduce")
    return Path(home) / "catalogs" / SCHEMA


def _show(path: Path) -> str:
    home = os.path.expanduser("~")
    s = str(path)
    return "~" + s[len(home):] if home not in ("", "/") and s.startswith(home + os.sep) else s


def _live_allowed() -> bool:
    return os.environ.get("REPRODUCE_OFFLINE", "") in ("", "0")


def _mtime_date(path: Path) -> str:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat()


# ---------------------------------------------------------------- reading catalogs

def _num(s) -> float | None:
    try:
        x = float(s)
    except (TypeError, ValueError):
        return None
    return x if x > 0 and x == x else None  # a price <= 0 (or NaN) is no price


_rows_cache: dict[tuple, list[dict]] = {}


def read_catalog(path: Path, cloud: str) -> list[dict]:
    """GPU rows of one SkyPilot vms.csv: dicts with cloud, region, zone, instance_type, accelerator (as the
    catalog spells it), count, on_demand, spot. Columns are read by name (order differs per cloud)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, cloud)
    if key in _rows_cache:
        return _rows_cache[key]
    gpus, hosts = [], {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)  # plain rows, columns found by name: DictReader is ~3x slower on a 60k-row file
        header = next(reader, [])
        missing = {"InstanceType", "AcceleratorName", "AcceleratorCount", "Region", "Price"} - set(header)
        if missing:
            raise ValueError(f"{path}: not a SkyPilot vms.csv (no {', '.join(sorted(missing))})")
        col = {name: i for i, name in enumerate(header)}
        i_type, i_acc, i_count = col["InstanceType"], col["AcceleratorName"], col["AcceleratorCount"]
        i_region, i_zone, i_price = col["Region"], col.get("AvailabilityZone"), col["Price"]
        i_vcpus, i_mem = col.get("vCPUs"), col.get("MemoryGiB")
        i_spot = None if cloud == "vast" else col.get("SpotPrice")  # Vast's SpotPrice is a minimum bid (fetch_vast.py)
        width = len(header)
        for r in reader:
            if len(r) < width:
                continue
            itype, acc = r[i_type].strip(), r[i_acc].strip()
            if not acc and not (cloud == "gcp" and itype):
                continue  # CPU-only VM
            zone = (r[i_zone].strip() or None) if i_zone is not None else None
            on_demand = _num(r[i_price])
            spot = _num(r[i_spot]) if i_spot is not None else None
            vcpus = _num(r[i_vcpus]) if i_vcpus is not None else None
            mem = _num(r[i_mem]) if i_mem is not None else None
            if not acc:  # a GCP host VM: its price is added to the GPUs it carries
                hosts[(itype, r[i_region].strip(), zone)] = (on_demand, spot, vcpus, mem)
                continue
            try:
                count = int(float(r[i_count]))
            except ValueError:
                continue
            gpus.append({"cloud": cloud, "region": r[i_region].strip(), "zone": zone, "instance_type": itype,
                         "accelerator": acc, "count": count, "on_demand": on_demand, "spot": spot,
                         "vcpus": vcpus, "host_ram_gib": mem})
    if cloud == "gcp":
        gpus = [_gcp_with_host(g, hosts) for g in gpus]
        gpus = [g for g in gpus if g is not None]
    _rows_cache[key] = gpus
    return gpus


def _gcp_with_host(g: dict, hosts: dict) -> dict | None:
    if g["instance_type"]:  # a row that already names its VM (TPU VMs and the like)
        return g
    host = GCP_HOSTS.get((g["accelerator"], g["count"]))
    if host is None or (host, g["region"], g["zone"]) not in hosts:
        return None  # no host VM known for this GPU here: SkyPilot drops these too
    h_od, h_spot, h_vcpus, h_mem = hosts[(host, g["region"], g["zone"])]
    return g | {"instance_type": host, "vcpus": h_vcpus, "host_ram_gib": h_mem,
                "on_demand": g["on_demand"] + h_od if g["on_demand"] and h_od else None,
                "spot": g["spot"] + h_spot if g["spot"] and h_spot else None}


def _snapshot_rows() -> tuple[str, list[dict]]:
    key = ("snapshot", str(SNAPSHOT))
    if key not in _rows_cache:
        with open(SNAPSHOT, newline="", encoding="utf-8") as f:
            first = f.readline()  # "# built 2026-11-24 from ..."
            built = first.split()[2] if first.startswith("# built") else "unknown"
            rows = [{"cloud": r["cloud"], "region": r["region"], "zone": r["zone"] or None,
                     "instance_type": r["instance_type"], "accelerator": r["accelerator"], "count": int(r["count"]),
                     "on_demand": _num(r["price"]), "spot": _num(r["spot_price"]),
                     "commit": r["catalog_commit"], "vcpus": _num(r.get("vcpus")),
                     "host_ram_gib": _num(r.get("memory_gib")), "local_disk_gb": _num(r.get("local_disk_gb"))}
                    for r in csv.DictReader(f)]
        _rows_cache[key] = [built, rows]
    built, rows = _rows_cache[key]
    return built, rows


def _offers(rows: list[dict], accel: str, count: int, source, date: str) -> list[Offer]:
    out = []
    for r in rows:
        if canonical(r["accelerator"]) != accel or r["count"] != count:
            continue
        if r["on_demand"] is None and r["spot"] is None:
            continue
        vcpus = r.get("vcpus")
        out.append(Offer(r["cloud"], r["region"], r["zone"], r["instance_type"], accel, count, r["on_demand"],
                         r["spot"], source(r) if callable(source) else source, date,
                         vcpus=int(vcpus) if vcpus else None, host_ram_gib=r.get("host_ram_gib"),
                         local_disk_gb=r.get("local_disk_gb")))
    return out


# ---------------------------------------------------------------- live: SkyPilot's hosted catalog

def _offline_marker() -> Path:
    return own_catalog_dir() / ".offline"


def _in_backoff() -> bool:
    try:
        return time.time() - _offline_marker().stat().st_mtime < OFFLINE_BACKOFF_S
    except OSError:
        return False


def _fetch_catalogs(clouds: list[str], deadline: float) -> dict[str, Path]:
    """Download `<cloud>/vms.csv` for each cloud in parallel into our own cache; return those that arrived
    before the deadline. A cloud that fails (offline, 404, timeout) is simply absent."""
    import urllib.error
    import urllib.request

    base = os.environ.get("REPRODUCE_CATALOG_URL", CATALOG_URL).rstrip("/")
    got: dict[str, Path] = {}
    unreachable: list[str] = []
    expired = threading.Event()

    def fetch(cloud: str) -> None:
        url = f"{base}/{SCHEMA}/{cloud}/vms.csv"
        try:
            left = max(0.1, deadline - time.monotonic())
            req = urllib.request.Request(url, headers={"User-Agent": "reproduce (SkyPilot catalog reader)"})
            with urllib.request.urlopen(req, timeout=left) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            log.debug("live catalog %s: HTTP %s", url, e.code)
            return
        except Exception as e:  # URLError, timeouts, resets: the network is not there
            log.debug("live catalog %s: %s", url, e)
            unreachable.append(cloud)
            return
        if expired.is_set() or b"AcceleratorName" not in body.split(b"\n", 1)[0]:
            return  # too late, or not a catalog (a captive portal's page, say)
        dest = own_catalog_dir() / cloud / "vms.csv"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".vms.csv.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(body)
        os.replace(tmp, dest)  # atomic: a reader never sees half a file
        got[cloud] = dest

    threads = [threading.Thread(target=fetch, args=(c,), daemon=True) for c in clouds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    expired.set()
    if clouds and not got and (unreachable or any(t.is_alive() for t in threads)):
        try:
            _offline_marker().parent.mkdir(parents=True, exist_ok=True)
            _offline_marker().touch()
        except OSError:
            pass
    return dict(got)


# ---------------------------------------------------------------- live: AWS spot price history

def aws_credentials_present() -> bool:
    """Whether boto3 would find AWS credentials, asked without touching the network (the instance-metadata
    and container providers, which make HTTP calls, are left out)."""
    env_hints = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE")
    aws_dir = Path(os.path.expanduser("~")) / ".aws"
    if not any(os.environ.get(v) for v in env_hints) and not aws_dir.is_dir():
        return False  # the cheap answer, without importing botocore
    try:
        import botocore.credentials
        import botocore.session

        resolver = botocore.credentials.create_credential_resolver(botocore.session.get_session())
        for method in ("iam-role", "container-role"):
            try:
                resolver.remove(method)
            except Exception:
                pass
        return resolver.load_credentials() is not None
    except Exception as e:
        log.debug("aws credentials check: %s", e)
        return False


def _ec2_client(region: str, timeout_s: float):
    """An EC2 client with short timeouts and no retries (tests replace this with a Stubber-fed client)."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=min(2.0, timeout_s), read_timeout=timeout_s,
                 retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("ec2", region_name=region, config=cfg)


def aws_spot_prices(region: str, instance_types: list[str], timeout_s: float) -> dict[tuple[str, str], tuple[float, str]]:
    """{(instance_type, zone): (spot $/h, ISO timestamp)} for one region, keyed by both zone name
    (us-east-1a) and zone id (use1-az1): SkyPilot's AWS catalog lists zone ids."""
    ec2 = _ec2_client(region, timeout_s)
    names_to_ids = {z["ZoneName"]: z["ZoneId"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    resp = ec2.describe_spot_price_history(InstanceTypes=sorted(set(instance_types)),
                                           ProductDescriptions=["Linux/UNIX"],
                                           StartTime=dt.datetime.now(dt.timezone.utc))
    latest: dict[tuple[str, str], tuple[float, str]] = {}
    for h in resp.get("SpotPriceHistory", []):
        price, ts = _num(h.get("SpotPrice")), h.get("Timestamp")
        if price is None:
            continue
        stamp = ts.astimezone(dt.timezone.utc).isoformat(timespec="seconds") if isinstance(ts, dt.datetime) else str(ts)
        for zone in (h["AvailabilityZone"], names_to_ids.get(h["AvailabilityZone"])):
            if zone and ((h["InstanceType"], zone) not in latest or stamp > latest[(h["InstanceType"], zone)][1]):
                latest[(h["InstanceType"], zone)] = (price, stamp)
    return latest


def _with_live_spot(offers: list[Offer], deadline: float) -> list[Offer]:
    aws = [o for o in offers if o.cloud == "aws"]
    if not aws or not aws_credentials_present():
        return offers
    regions = sorted({o.region for o in aws})
    results: dict[str, dict] = {}

    def ask(region: str) -> None:
        try:
            results[region] = aws_spot_prices(region, [o.instance_type for o in aws if o.region == region],
                                              max(0.5, deadline - time.monotonic()))
        except Exception as e:  # no permission, no network, throttled: keep the catalog's spot price
            log.debug("aws spot history %s: %s", region, e)

    # daemon threads, not a pool: a pool's workers are joined at exit, so a dead network would still be waited on
    threads = [threading.Thread(target=ask, args=(r,), daemon=True) for r in regions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    live: dict[tuple[str, str, str], tuple[float, str]] = {}
    for region in regions:
        if region not in results:
            log.debug("aws spot history %s: no answer in time", region)
        for (itype, zone), v in dict(results.get(region, {})).items():
            live[(region, itype, zone)] = v
    out = []
    for o in offers:
        hit = live.get((o.region, o.instance_type, o.zone or "")) if o.cloud == "aws" else None
        if hit:
            o = replace(o, spot=hit[0], source="aws spot history (live)", date=hit[1])
        out.append(o)
    return out


# ---------------------------------------------------------------- the API

_offers_cache: dict[tuple, tuple[float, list[Offer]]] = {}
CACHE_S = 600  # within one process, prices are reused for 10 minutes


def clear_cache() -> None:
    _offers_cache.clear()
    _rows_cache.clear()
    _billing_cache.clear()


def _cached_file(cloud: str) -> Path | None:
    found = [p for p in (sky_catalog_dir() / cloud / "vms.csv", own_catalog_dir() / cloud / "vms.csv") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def gpu_offers(accelerator: str = "H100:8", clouds: list[str] | None = None, timeout_s: float = 3.0) -> list[Offer]:
    """Every offer of `accelerator` on `clouds` (default DEFAULT_CLOUDS), each cloud priced from its freshest
    source that answers, sorted cheapest first (by spot where there is one, else on-demand)."""
    accel, count = parse_accelerator(accelerator)
    wanted = check_clouds(clouds)
    live = _live_allowed()
    key = (accel, count, wanted, live, str(sky_catalog_dir()), str(own_catalog_dir()),
           os.environ.get("REPRODUCE_CATALOG_URL"))
    hit = _offers_cache.get(key)
    if hit and time.monotonic() - hit[0] < CACHE_S:
        return with_billing(hit[1])

    deadline = time.monotonic() + timeout_s
    cached = {c: _cached_file(c) for c in wanted}
    fetched: dict[str, Path] = {}
    if live and not _in_backoff():
        stale = [c for c, p in cached.items() if p is None or time.time() - p.stat().st_mtime > PULL_HOURS * 3600]
        if stale:
            fetched = _fetch_catalogs(stale, deadline)

    built, snap = _snapshot_rows()
    offers: list[Offer] = []
    for cloud in wanted:
        tried = []
        if cloud in fetched:
            tried.append((fetched[cloud], "skypilot catalog (live)", dt.datetime.now(dt.timezone.utc).date().isoformat()))
        if cached[cloud] is not None:
            p = cached[cloud]
            tried.append((p, f"skypilot catalog (cached, {_show(p)})", None))
        for path, source, date in tried:
            try:
                rows = read_catalog(path, cloud)
                offers += _offers(rows, accel, count, source, date or _mtime_date(path))
                break
            except Exception as e:  # unreadable or foreign file: next source
                log.debug("catalog %s: %s", path, e)
        else:
            rows = [r for r in snap if r["cloud"] == cloud]
            offers += _offers(rows, accel, count,
                              lambda r: f"bundled snapshot (SkyPilot catalog {SCHEMA} @ {r['commit'][:7]})", built)

    if live:
        offers = _with_live_spot(offers, deadline)
    offers.sort(key=_order)
    _offers_cache[key] = (time.monotonic(), offers)
    return with_billing(offers)


def _order(o: Offer):
    return (o.sort_key(), o.on_demand or float("inf"), o.cloud, o.region, o.zone or "")


# ---------------------------------------------------------------- what billing said (audit --billed)

_billing_cache: dict = {}


def with_billing(offers: list[Offer], factors: dict | None = None) -> list[Offer]:
    """Offers scaled by what clouds really billed against what the ledger recorded, per cloud, accelerator
    and market (costmodel.calibration.price_factors), the source saying so. Outside the offers cache: a new
    bill counts at once. Never fails a price lookup (no ledger, a locked or odd one: offers unchanged)."""
    factors = _billing_factors() if factors is None else factors
    if not factors:
        return list(offers)
    out = []
    for o in offers:
        accel = f"{o.accelerator}:{o.count}"
        fs, fo = factors.get((o.cloud, accel, "spot")), factors.get((o.cloud, accel, "on-demand"))
        if not (fs and o.spot) and not (fo and o.on_demand):
            out.append(o)
            continue
        notes = [f"{market} x{f['factor']:.3f} calibrated from billing, {f['runs']} run{'s' if f['runs'] > 1 else ''}"
                 for market, f, price in (("spot", fs, o.spot), ("on-demand", fo, o.on_demand)) if f and price]
        out.append(replace(o, on_demand=o.on_demand * fo["factor"] if fo and o.on_demand else o.on_demand,
                           spot=o.spot * fs["factor"] if fs and o.spot else o.spot,
                           source=f"{o.source}; {'; '.join(notes)}", list_on_demand=o.on_demand, list_spot=o.spot))
    return sorted(out, key=_order)


def _billing_factors() -> dict:
    from costmodel.ledger import default_path

    path = default_path()
    try:
        stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
                      for p in (path, path.with_name(path.name + "-wal")))
    except OSError:
        return {}
    if stamp[0] is None:
        return {}   # a plan never creates a ledger
    key = (str(path), stamp)
    if key not in _billing_cache:
        try:
            from costmodel import calibration

            _billing_cache.clear()
            _billing_cache[key] = calibration.price_factors()
        except Exception as e:
            log.debug("billing calibration: %s", e)
            return {}
    return _billing_cache[key]


def regions(cloud: str) -> set[str]:
    """The regions a cloud's catalog lists (any GPU), from the same sources prices come from; empty when none."""
    cloud = cloud.lower()
    path = _cached_file(cloud)
    if path is not None:
        try:
            return {r["region"] for r in read_catalog(path, cloud)}
        except Exception as e:  # noqa: BLE001 - unreadable: the snapshot's
            log.debug("catalog %s: %s", path, e)
    return {r["region"] for r in _snapshot_rows()[1] if r["cloud"] == cloud}


def node_resources(offer) -> dict:
    """What the priced node has, for the preflight and the memory model: instance, vCPUs, host RAM, local disk."""
    return {"instance": offer.instance_type, "vcpus": offer.vcpus, "host_ram_gib": offer.host_ram_gib,
            "local_disk_gb": offer.local_disk_gb}


def cheapest(accelerator: str, spot: bool, clouds: list[str] | None = None) -> Offer | None:
    """The cheapest offer with a price in that market (spot or on-demand), or None."""
    priced = [o for o in gpu_offers(accelerator, clouds) if o.price(spot) is not None]
    return min(priced, key=lambda o: (o.price(spot), o.cloud, o.region, o.zone or ""), default=None)
