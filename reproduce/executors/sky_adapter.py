"""The one place that calls SkyPilot's SDK (0.14: every call returns a request id, `sky.get` waits for it).

Tests replace this module with a fake object of the same functions; nothing else imports sky for launching.
Records come back as plain dicts so the executor never touches SkyPilot types.
"""
from __future__ import annotations

import re


def _sky():
    import sky   # ~2 s, and starts a local API server on first SDK call

    return sky


def launch_cluster(task, cluster_name: str, down: bool = True, idle_minutes: int = 5) -> int | None:
    """Provision, set up and submit the task; the cluster downs itself `idle_minutes` after its job ends.

    Idle means no job pending or running (`wait_for=jobs`): an SSH session left open does not keep it up. The
    job's own end is bounded by the watchdog's deadline (reproduce.watchdog), so the cluster's is too, with no
    controller alive. SkyPilot's unconditional limit (`wait_for=none`) would also down a hung node, but it
    counts from the submission whatever the job does, so a job that ends early with no controller would leave
    its node idle, and billed, until then."""
    sky = _sky()
    from sky.skylet.autostop_lib import AutostopWaitFor

    job_id, _ = sky.get(sky.launch(task, cluster_name=cluster_name, idle_minutes_to_autostop=idle_minutes,
                                   wait_for=AutostopWaitFor.JOBS, down=down, retry_until_up=True))
    return job_id


def launch_managed(task, name: str) -> int:
    sky = _sky()
    job_ids, _ = sky.get(sky.jobs.launch(task, name=name))
    return job_ids[0]


def cluster_status(name: str, job_id: int | None = None) -> dict | None:
    """{status, job_status, cloud, region, zone, instance_type, spot, nodes, launched_at}; None once gone."""
    sky = _sky()
    records = sky.get(sky.status([name]))
    if not records:
        return None
    r = _as_dict(records[0])
    res = getattr(r.get("handle"), "launched_resources", None)
    jobs = sky.get(sky.job_status(name, [job_id])) if job_id is not None else {}
    job = (jobs or {}).get(job_id) or (jobs or {}).get(str(job_id))
    return {"status": _name(r.get("status")), "job_status": _name(job), "cloud": r.get("cloud"),
            "region": r.get("region"), "zone": getattr(res, "zone", None),
            "instance_type": getattr(res, "instance_type", None), "spot": getattr(res, "use_spot", None),
            "nodes": r.get("nodes") or 1, "launched_at": r.get("launched_at")}


def managed_status(job_id: int) -> dict | None:
    """{status, recoveries, cloud, region, zone, instance_type, nodes, accelerators, start_at, end_at,
    failure_reason} of a managed job, from the jobs controller's record."""
    sky = _sky()
    records = sky.get(sky.jobs.queue(refresh=False, job_ids=[job_id]))
    if isinstance(records, tuple):   # queue(version=2) shape
        records = records[0]
    found = (_as_dict(x) for x in records or [])
    r = next((x for x in found if x.get("job_id") == job_id), None)
    return None if r is None else managed_record(r)


def managed_record(r: dict) -> dict:
    nodes, instance = _parse_resources(r.get("cluster_resources_full") or r.get("cluster_resources") or "")
    return {"status": _name(r.get("status")), "recoveries": r.get("recovery_count") or 0,
            "cloud": r.get("cloud"), "region": r.get("region"), "zone": r.get("zone"), "instance_type": instance,
            "nodes": nodes, "accelerators": r.get("accelerators"), "start_at": r.get("start_at"),
            "end_at": r.get("end_at"), "failure_reason": r.get("failure_reason")}


def cancel_managed(job_id: int | None = None, name: str | None = None) -> None:
    sky = _sky()
    if job_id is not None:
        sky.get(sky.jobs.cancel(job_ids=[job_id]))
    elif name:
        sky.get(sky.jobs.cancel(name=name))


def down(cluster_name: str) -> None:
    sky = _sky()
    sky.get(sky.down(cluster_name))


def enabled_infra(timeout_s: float = 20.0) -> list[str]:
    """Enabled clouds / k8s contexts / SSH pools per a *running* API server; [] with none, no server, or
    past `timeout_s`. It never starts a server (6-8 s, ~1.3 GB) just to learn there is nothing to use;
    any `sky` command (`sky check`) leaves one running."""
    import concurrent.futures

    def ask():
        _sky()
        from sky.client import sdk
        from sky.server import common

        if common.get_api_server_status().status != common.ApiServerStatus.HEALTHY:
            return []
        return list(sdk.get(sdk.enabled_clouds(expand=True)) or [])

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(ask).result(timeout=timeout_s)
    except Exception:   # no server, no credentials, timeout: no infra to use
        return []
    finally:
        pool.shutdown(wait=False)


def _as_dict(record) -> dict:
    if isinstance(record, dict):
        return record
    if hasattr(record, "model_dump"):
        return record.model_dump()
    return dict(vars(record))


def _name(status) -> str | None:
    return None if status is None else str(getattr(status, "value", status))


def _parse_resources(text: str) -> tuple[int, str | None]:
    """'1x(gpus=H100:8, cpus=192, mem=2048, p5.48xlarge, disk=256)' -> (1, 'p5.48xlarge')."""
    m = re.match(r"\s*(\d+)x\(?([^)]*)", text or "")
    if not m:
        return 1, None
    plain = [p.strip() for p in m.group(2).split(",") if p.strip() and "=" not in p and p.strip() != "..."]
    return int(m.group(1)), (plain[0] if plain else None)
