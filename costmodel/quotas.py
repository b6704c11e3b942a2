"""Can this account launch that node there? The cloud's quota for the instance family, per region and market.

    q = quota_for(offer, nodes=1, spot=True)   # Quota(...), q.ok is True / False / None (unknown)

AWS: Service Quotas (boto3 `service-quotas` get_service_quota, ServiceCode ec2), counted in vCPUs of running
instances per region, one quota for on-demand and one for spot per family (P, G and VT). A new account has 0 vCPUs
of P instances until it asks.
GCP: regional GPU quotas (`gcloud compute regions describe REGION --format=json`, its `quotas` list: limit and
usage per metric), spot VMs counting against the PREEMPTIBLE_ metric. gcloud rather than the google client: the
client library is not a dependency, gcloud is what a GCP user has (and what SkyPilot itself asks them to install).

Answers are kept a day in $REPRODUCE_HOME/quotas.json. A quota that cannot be read (no credentials, no permission,
offline, REPRODUCE_OFFLINE=1) is unknown: shown so, never guessed; only a known quota below the need excludes.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_S = 24 * 3600

# docs.aws.amazon.com/ec2/latest/instancetypes/ec2-instance-quotas.html (read 2026-12-07): vCPU-based quotas
AWS_QUOTAS = {  # family letter -> {spot: (quota code, name)}
    "p": {False: ("L-417A185B", "Running On-Demand P instances"), True: ("L-7212CCBC", "All P Spot Instance Requests")},
    "g": {False: ("L-DB2E81BA", "Running On-Demand G and VT instances"),
          True: ("L-3819A6DF", "All G and VT Spot Instance Requests")},
}
# cloud.google.com/compute/resource-usage#gpu_quota (read 2026-12-07): regional GPU quotas; spot VMs use PREEMPTIBLE_
GCP_METRICS = {"a3-highgpu": "NVIDIA_H100_GPUS", "a3-megagpu": "NVIDIA_H100_MEGA_GPUS", "a3-ultragpu": "NVIDIA_H200_GPUS",
               "a2-ultragpu": "NVIDIA_A100_80GB_GPUS", "a2-highgpu": "NVIDIA_A100_GPUS", "a4-highgpu": "NVIDIA_B200_GPUS"}


@dataclass
class Quota:
    cloud: str
    region: str
    name: str            # the quota as the console names it
    code: str            # AWS quota code / GCP metric
    unit: str            # "vCPUs" | "GPUs"
    needs: float
    limit: float | None  # what is free to use: AWS the quota; GCP limit - usage. None: unknown
    fix: str             # how to raise it
    why_unknown: str = ""

    @property
    def ok(self) -> bool | None:
        return None if self.limit is None else self.limit >= self.needs

    def line(self) -> str:
        where = f"{self.cloud} {self.region}"
        if self.limit is None:
            return f"{where}: quota {self.name!r} ({self.code}) unknown ({self.why_unknown}); needs {self.needs:g} {self.unit}"
        verdict = "enough" if self.ok else "too low"
        return (f"{where}: quota {self.name!r} ({self.code}) is {self.limit:g} {self.unit}, needs {self.needs:g}: "
                f"{verdict}" + ("" if self.ok else f"; raise it: {self.fix}"))

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def _cache_path() -> Path:
    home = os.environ.get("REPRODUCE_HOME") or os.path.join(os.path.expanduser("~"), ".reproduce")
    return Path(home) / "quotas.json"


def _cached(key: str) -> float | None | bool:
    try:
        hit = json.loads(_cache_path().read_text()).get(key)
    except (OSError, ValueError):
        return False
    if hit and time.time() - hit["at"] < CACHE_S:
        return hit["value"]
    return False


def _remember(key: str, value: float) -> None:
    path = _cache_path()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        data = {}
    data[key] = {"value": value, "at": time.time()}
    from costmodel.infra import write_json

    write_json(path, data)


def _live() -> bool:
    return os.environ.get("REPRODUCE_OFFLINE", "") in ("", "0")


_silent: set = set()   # sources that did not answer in this process: not asked again (a dead network costs once)


def _ask(q: Quota, key: str, source: str, blocked, ask) -> Quota:
    """`q` with its limit from the day's cache, else from `ask()`; unknown (and not remembered) when offline, when
    `blocked()` names what is missing, or when the source does not answer."""
    hit = _cached(key)
    if hit is not False:
        q.limit = hit
        return q
    if not _live():
        q.why_unknown = "not asked: REPRODUCE_OFFLINE=1"
        return q
    if source in _silent:
        q.why_unknown = f"{source} did not answer earlier in this run"
        return q
    missing = blocked()
    if missing:
        q.why_unknown = missing
        return q
    try:
        q.limit = ask()
    except Exception as e:  # noqa: BLE001 - no permission, not logged in, no network: unknown
        q.why_unknown = f"{source} did not answer: {type(e).__name__}"
        if not _is_refusal(e):
            _silent.add(source)
        return q
    _remember(key, q.limit)
    return q


def _is_refusal(e: Exception) -> bool:
    """An answer that says no (AccessDenied, NoSuchResource): the service is there, other quotas may be readable."""
    return hasattr(e, "response") and isinstance(getattr(e, "response"), dict)


# ---------------------------------------------------------------- AWS

def _service_quotas_client(region: str):
    """Service Quotas with short timeouts and no retries (tests feed it through botocore's Stubber)."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=2, read_timeout=4, retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("service-quotas", region_name=region, config=cfg)


def aws_quota(region: str, instance_type: str, vcpus: int | None, nodes: int, spot: bool) -> Quota | None:
    from costmodel.prices import aws_credentials_present

    family = instance_type[:1].lower()
    if family not in AWS_QUOTAS:
        return None
    code, name = AWS_QUOTAS[family][bool(spot)]
    fix = (f"https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{code} (region {region}), or "
           f"`aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
           f"--desired-value {(vcpus or 0) * nodes} --region {region}`")
    q = Quota("aws", region, name, code, "vCPUs", float((vcpus or 0) * nodes), None, fix)
    if not vcpus:
        q.why_unknown = f"no vCPU figure for {instance_type}"
        return q
    return _ask(q, f"aws/{region}/{code}", "Service Quotas",
                lambda: None if aws_credentials_present() else "no AWS credentials",
                lambda: float(_service_quotas_client(region).get_service_quota(
                    ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]))


# ---------------------------------------------------------------- GCP

def _gcloud_region(region: str) -> dict:
    """`gcloud compute regions describe REGION --format=json` (the adapter tests replace with a fake gcloud)."""
    p = subprocess.run(["gcloud", "compute", "regions", "describe", region, "--format=json"],
                       capture_output=True, text=True, timeout=15)
    if p.returncode != 0:
        raise RuntimeError((p.stderr or p.stdout).strip().splitlines()[-1:] or ["gcloud failed"])
    return json.loads(p.stdout)


def gcp_quota(region: str, instance_type: str, gpus: int, nodes: int, spot: bool) -> Quota | None:
    import shutil

    metric = next((m for prefix, m in GCP_METRICS.items() if instance_type.startswith(prefix)), None)
    if metric is None:
        return None
    metric = f"PREEMPTIBLE_{metric}" if spot else metric
    fix = (f"https://console.cloud.google.com/iam-admin/quotas?metric=compute.googleapis.com/{metric.lower()} "
           f"(region {region}): request {gpus * nodes}")
    q = Quota("gcp", region, metric, metric, "GPUs", float(gpus * nodes), None, fix)

    def ask() -> float:
        found = {x.get("metric"): x for x in _gcloud_region(region).get("quotas") or []}
        # Spot VMs use the PREEMPTIBLE_ quota where the project has one, else the standard one (GCP's quota docs)
        name = metric if metric in found or not spot else metric.removeprefix("PREEMPTIBLE_")
        if name not in found:
            return 0.0   # GCP lists every quota a region has: a metric not there is a GPU this project cannot use
        return float(found[name].get("limit", 0)) - float(found[name].get("usage", 0))

    return _ask(q, f"gcp/{region}/{metric}", "gcloud",
                lambda: None if shutil.which("gcloud") else "gcloud not installed", ask)


def quota_for(offer, nodes: int, spot: bool) -> Quota | None:
    """The quota that decides whether `offer` x `nodes` can launch in that market; None for clouds without one here."""
    cloud = str(offer.cloud).lower()
    if cloud == "aws":
        return aws_quota(offer.region, offer.instance_type, getattr(offer, "vcpus", None), nodes, spot)
    if cloud == "gcp":
        return gcp_quota(offer.region, offer.instance_type, offer.count, nodes, spot)
    return None
