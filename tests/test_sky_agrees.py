"""SkyPilot agrees: its own optimizer, run in-process on each rendered GPU task over the bundled price snapshot,
picks the cloud, region, zone, instance type and hourly price our plan row priced.

The snapshot (costmodel/data/snapshot_8gpu.csv) is written as SkyPilot catalog files under a temporary HOME
(`$HOME/.sky/catalogs/v8/<cloud>/vms.csv` + `common/accelerators.csv` + `common/metadata.csv`), and the one
boundary that needs cloud credentials, `sky.check.get_cached_enabled_clouds_or_refresh`, returns the clouds to
consider. SkyPilot runs in a child process so that its catalog folder (fixed when `sky` is imported) is the
temporary HOME's, whatever this process imported before; an unreachable proxy and API-server address make
any download or server call fail loudly instead of touching the network or ~/.sky.

Three questions per GPU stage: the task as rendered (ordered, pinned, capped) lands on the plan's row; the
same accelerator and market left free over every cloud able to run the task lands there too (SkyPilot's
price ranking is ours); each kept fallback, tried alone, lands on its priced row.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_plan_is_launch import VARIANTS, dry_run, plan_rows

SNAPSHOT = Path(__file__).resolve().parents[1] / "costmodel" / "data" / "snapshot_8gpu.csv"
# vms.csv columns SkyPilot 0.14.1 reads (sky/catalog/common.py: get_instance_type_for_accelerator_impl,
# get_hourly_cost_impl, get_vcpus_mem_from_instance_type_impl, _filter_region_zone)
COLUMNS = ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Price", "SpotPrice",
           "Region", "AvailabilityZone", "GpuInfo"]
GPU_MEMORY_GB = {"H100": 80, "H100-SXM": 80, "H100-MEGA": 80, "H200": 141, "H200-SXM": 141, "A100-80GB": 80}  # NVIDIA datasheets



def host(row: dict) -> tuple[int, int]:
    """vCPUs and GiB of the snapshot row (its vcpus, memory_gib columns), else a placeholder: SkyPilot asserts one
    value per instance type and uses them only to match a task's `cpus:` / `memory:`, which no GPU task of ours
    sets, so any single value serves."""
    return (int(row["vcpus"]), int(float(row["memory_gib"]))) if row.get("vcpus") and row.get("memory_gib") else (8, 64)


def write_catalog(home: Path) -> list[str]:
    """The bundled snapshot as SkyPilot's v8 catalog under `home`; returns the clouds it has rows for."""
    root = home / ".sky" / "catalogs" / "v8"
    with SNAPSHOT.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    by_cloud: dict[str, list[dict]] = {}
    for r in rows:
        by_cloud.setdefault(r["cloud"], []).append(r)
    for cloud, cloud_rows in by_cloud.items():
        # Clouds without zones (Lambda, Mithril, Nebius...) have no AvailabilityZone column in SkyPilot's
        # catalog; Mithril's adapter refuses any zone, even an empty one (mithril_catalog.validate_region_zone).
        zoned = any(r["zone"] for r in cloud_rows)
        columns = [c for c in COLUMNS if zoned or c != "AvailabilityZone"]
        (root / cloud).mkdir(parents=True, exist_ok=True)
        with (root / cloud / "vms.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            for r in cloud_rows:
                where = {"Region": r["region"], **({"AvailabilityZone": r["zone"]} if zoned else {})}
                if cloud == "gcp":
                    # SkyPilot prices a GCP GPU VM as host VM + GPUs (gcp_catalog: the accelerator row has no
                    # InstanceType; the host row carries the VM). The snapshot holds their sum, so the GPU row
                    # carries it all and the host VM costs $0 in that zone.
                    w.writerow({"AcceleratorName": r["accelerator"], "AcceleratorCount": r["count"],
                                "Price": r["price"], "SpotPrice": r["spot_price"], **where})
                    vcpus, mem = host(r)
                    w.writerow({"InstanceType": r["instance_type"], "vCPUs": vcpus, "MemoryGiB": mem,
                                "Price": 0 if r["price"] else "", "SpotPrice": 0 if r["spot_price"] else "", **where})
                else:
                    vcpus, mem = host(r)
                    w.writerow({"InstanceType": r["instance_type"], "AcceleratorName": r["accelerator"],
                                "AcceleratorCount": r["count"], "vCPUs": vcpus, "MemoryGiB": mem, "Price": r["price"],
                                "SpotPrice": r["spot_price"], **where})
    (root / "common").mkdir(parents=True, exist_ok=True)
    names = sorted({r["accelerator"] for r in rows})
    with (root / "common" / "accelerators.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["AcceleratorName", "Clouds"])
        for name in names:
            w.writerow([name, str(sorted({r["cloud"] for r in rows if r["accelerator"] == name}))])
    with (root / "common" / "metadata.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["GPU", "MemoryGB", "Manufacturer"])
        for name in names:
            w.writerow([name, GPU_MEMORY_GB[name], "NVIDIA"])
    return sorted(by_cloud)


# Runs in the child: every job is one sky.Task optimized by SkyPilot for cost, with `clouds` enabled.
WORKER = r"""
import json, sys
import sky, sky.check
from sky import optimizer
from sky.catalog import common
from sky.utils import registry

jobs = json.load(open(sys.argv[1]))
enabled = []
sky.check.get_cached_enabled_clouds_or_refresh = lambda *a, **k: list(enabled)
# A Kubernetes cluster's API server is the one live boundary: whether a pod of that shape fits, whether nodes carry
# a spot label. Its contexts come from the kubeconfig SkyPilot reads (written under HOME, server unreachable).
from sky.provision.kubernetes import utils as kubernetes_utils
contexts = []
kubernetes_utils.check_instance_fits = lambda *a, **k: (True, None)
kubernetes_utils.get_spot_label = lambda *a, **k: (None, None)
out = {"catalog_dir": common._ABSOLUTE_VERSIONED_CATALOG_DIR, "results": {}}
for job in jobs:
    enabled[:] = [registry.CLOUD_REGISTRY.from_str(c) for c in job["clouds"]]
    contexts[:] = job.get("contexts") or []
    dag = sky.Dag()
    dag.add(sky.Task.from_yaml_config(job["task"]))
    try:
        dag = optimizer.Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True)
    except Exception as e:
        out["results"][job["id"]] = {"error": f"{type(e).__name__}: {e}"}
        continue
    task = dag.tasks[0]
    b = task.best_resources
    out["results"][job["id"]] = {"cloud": str(b.cloud).lower(), "region": b.region, "zone": b.zone,
                                 "instance_type": b.instance_type, "spot": b.use_spot,
                                 "accelerators": dict(b.accelerators or {}), "node_per_hour": b.get_cost(3600),
                                 "num_nodes": task.num_nodes}
json.dump(out, open(sys.argv[2], "w"))
"""


def sky_optimize(tmp_path: Path, jobs: list[dict], sky_config: dict | None = None, empty: tuple = ()) -> dict:
    """SkyPilot's choice for each job, from a child process whose HOME is a fresh catalog (plus header-only
    catalogs for `empty` clouds: enabled, with no 8-GPU rows in the snapshot) and `sky_config` as its
    ~/.sky/config.yaml."""
    home = tmp_path / "skyhome"
    home.mkdir()
    write_catalog(home)
    for cloud in empty:
        path = home / ".sky" / "catalogs" / "v8" / cloud / "vms.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(",".join(COLUMNS) + "\n")
    if sky_config:
        (home / ".sky" / "config.yaml").write_text(yaml.safe_dump(sky_config))
    contexts = sorted({c for job in jobs for c in job.get("contexts") or []})
    if contexts:   # a kubeconfig naming them, its server unreachable (nothing may be asked of it)
        (home / ".kube").mkdir()
        (home / ".kube" / "config").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
            "clusters": [{"name": c, "cluster": {"server": "https://127.0.0.1:9"}} for c in contexts],
            "users": [{"name": c, "user": {"token": "test"}} for c in contexts],
            "contexts": [{"name": c, "context": {"cluster": c, "user": c}} for c in contexts]}))
    before = sorted(p.relative_to(home) for p in (home / ".sky" / "catalogs").rglob("*"))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    dead = "http://127.0.0.1:9"      # nothing listens: a download or server call fails at once
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "AWS_", "GOOGLE_", "SKY_"))}
    env.update(HOME=str(home), SKYPILOT_DISABLE_USAGE_COLLECTION="1", SKYPILOT_API_SERVER_ENDPOINT=dead,
               HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead, NO_PROXY="", no_proxy="")
    p = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "jobs.json"), str(tmp_path / "out.json")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert Path(out["catalog_dir"]) == home / ".sky" / "catalogs" / "v8"      # never the user's ~/.sky
    assert not (home / ".sky" / "api_server").exists()                           # no API server was started
    catalog_files = [p for p in (home / ".sky" / "catalogs").rglob("*") if ".meta" not in p.parts]
    assert sorted(p.relative_to(home) for p in catalog_files) == [p for p in before if ".meta" not in p.parts]
    return out["results"]


def able_clouds(row: dict, snapshot_clouds: list[str]) -> list[str]:
    """The clouds the plan considered for this row (costmodel.clouds: they can run the task), that the
    snapshot has rows for (a cloud without a catalog file would make SkyPilot download one)."""
    from costmodel import clouds, prices
    from reproduce.plan import needs

    able, _ = clouds.able(prices.DEFAULT_CLOUDS, needs(row["nodes"], row["spot"]))
    return [c for c in able if c in snapshot_clouds]


def expected(entry: dict, nodes: int) -> dict:
    return {"cloud": entry["cloud"], "region": entry["region"], "zone": entry.get("zone") or None,
            "instance_type": entry["instance_type"], "spot": entry["spot"],
            "per_hour": round(entry["price_per_hour"] / nodes, 4)}     # plan rows price the whole cluster


def chosen(result: dict) -> dict:
    assert "error" not in result, result
    return {"cloud": result["cloud"], "region": result["region"], "zone": result["zone"],
            "instance_type": result["instance_type"], "spot": result["spot"],
            "per_hour": round(result["node_per_hour"], 4)}


def same(plan: dict, sky: dict) -> bool:
    """Equal placements. SkyPilot leaves the zone open for on-demand capacity on most clouds (one request per
    region, the provisioner tries its zones: sky/utils/resources_utils.py make_launchables_for_valid_region_zones,
    "the clouds charge the same prices for on-demand instances in the same region"), so a zone it leaves open
    is not a disagreement; a zone it picks must be the plan's."""
    if sky["zone"] is None and not sky["spot"]:
        plan, sky = {**plan, "zone": None}, {**sky, "zone": None}
    return plan == sky


AGREE = ("default", "optimized", "sft-a100", "sft-2-nodes", "sft-on-demand")


def test_skypilot_picks_what_the_plan_priced(home, capsys, tmp_path):
    snapshot_clouds = write_catalog(tmp_path / "probe")
    jobs, want = [], {}
    for variant in AGREE:
        args = VARIANTS[variant]
        _, rows = plan_rows(capsys, *args)
        _, docs = dry_run(capsys, *args)
        for stage, row in rows.items():
            task = yaml.safe_load(docs[stage])
            consider = able_clouds(row, snapshot_clouds)
            key = f"{variant}/{stage}"
            jobs.append({"id": f"{key}/rendered", "task": task, "clouds": consider})
            want[f"{key}/rendered"] = (expected(row, row["nodes"]), row)

            res = task["resources"]
            first = (res.get("ordered") or [res])[0]
            free = {**task, "resources": {k: v for k, v in res.items() if k not in ("ordered", "infra",
                                                                                    "max_hourly_cost")}}
            free["resources"]["accelerators"] = first["accelerators"]
            jobs.append({"id": f"{key}/free", "task": free, "clouds": consider})
            want[f"{key}/free"] = (expected(row, row["nodes"]), row)

            for i, option in enumerate((res.get("ordered") or [])[1:]):
                alone = {**task, "resources": {**{k: v for k, v in res.items() if k != "ordered"}, **option}}
                fallback = [f for f in row["fallbacks"] if not f.get("dropped")][i]
                jobs.append({"id": f"{key}/fallback {fallback['accelerator']}", "task": alone, "clouds": consider})
                want[f"{key}/fallback {fallback['accelerator']}"] = (expected(fallback, row["nodes"]), row)
    results = sky_optimize(tmp_path, jobs)

    disagree = {}
    for job_id, (plan_choice, row) in want.items():
        if "error" in results[job_id]:
            disagree[job_id] = {"plan": plan_choice, "skypilot": results[job_id]["error"][:300]}
            continue
        got = chosen(results[job_id])
        assert results[job_id]["num_nodes"] == row["nodes"], job_id
        if not same(plan_choice, got):
            disagree[job_id] = {"plan": plan_choice, "skypilot": got}
    assert not disagree, json.dumps(disagree, indent=1)
    for job_id, r in results.items():      # with -s: what SkyPilot picked
        print(f"{job_id:42} {r['cloud']}/{r['region']}/{r['zone']} {r['instance_type']} "
              f"{'spot' if r['spot'] else 'on-demand'} ${r['node_per_hour']}/h x {r['num_nodes']}")


def test_skypilots_price_ranking_is_ours_for_every_gpu_market_and_node_count(home, tmp_path):
    """Beyond the shipped plans: for each accelerator, market and node count, the cheapest offer our price
    module finds among the clouds able to run a task is the one SkyPilot's optimizer picks."""
    import itertools

    from costmodel import prices

    snapshot_clouds = write_catalog(tmp_path / "probe")
    jobs, want = [], {}
    for accelerator, nodes in itertools.product(("H100:8", "H200:8", "A100-80GB:8"), (1, 2)):
        for spot in (True, False):
            row = {"nodes": nodes, "spot": spot}
            consider = able_clouds(row, snapshot_clouds)
            offer = prices.cheapest(accelerator, spot, consider)
            if offer is None:
                continue
            job_id = f"{accelerator} {'spot' if spot else 'on-demand'} x{nodes}"
            jobs.append({"id": job_id, "clouds": consider, "task": {
                "name": "probe", "num_nodes": nodes, "run": "true",
                "resources": {"accelerators": accelerator, "use_spot": spot}}})
            want[job_id] = {"cloud": offer.cloud.lower(), "region": offer.region, "zone": offer.zone or None,
                            "instance_type": offer.instance_type, "spot": spot,
                            "per_hour": round(offer.price(spot), 4)}
    assert len(jobs) >= 10
    results = sky_optimize(tmp_path, jobs)
    got = {j: chosen(r) for j, r in results.items()}
    assert {j for j in want if not same(want[j], got[j])} == set(), json.dumps({"plan": want, "skypilot": got},
                                                                                 indent=1)


# Users with only some infra: the plan made with `--infra` set to exactly what they have enabled, rendered, and
# SkyPilot's optimizer with exactly that set enabled. Azure has no 8-GPU rows in the snapshot: enabled, it offers
# nothing, and the plan must not count on it.
ENABLED_SETS = {"aws": ["aws"], "gcp": ["gcp"], "lambda": ["lambda"], "aws+gcp+azure": ["aws", "gcp", "azure"],
                "kubernetes": ["k8s/lab"]}
LAB_RATES = {"H100": 1.10, "H200": 1.60, "A100-80GB": 0.70}     # declared $/GPU-hour of the test's lab


def test_skypilot_lands_on_the_plan_row_for_each_enabled_set(home, capsys, tmp_path, monkeypatch):
    from conftest import cli
    from costmodel import infra
    from reproduce import plan as planning

    rates = Path(os.environ["REPRODUCE_HOME"]) / "rates.yaml"
    rates.parent.mkdir(parents=True, exist_ok=True)
    rates.write_text(yaml.safe_dump({"k8s/lab": LAB_RATES}))
    monkeypatch.setattr(infra, "cluster_gpus", lambda place: {g: 8 for g in LAB_RATES})   # the cluster's API
    planning._knowledge_cache.clear()
    snapshot_clouds = write_catalog(tmp_path / "probe")
    jobs, want, refused = [], {}, {}
    for name, places in ENABLED_SETS.items():
        infra_args = [a for p in places for a in ("--infra", p)]
        sky_clouds = sorted({"kubernetes" if p.startswith("k8s/") else p.split("/")[0] for p in places})
        for variant in ("default", "optimized"):
            args = (*VARIANTS[variant], *infra_args)
            code, out, err = cli(capsys, "plan", "--json", "--backend", "sky", *args)
            if code == 3:       # refused: SkyPilot, with that set enabled, must find nowhere for that stage either
                stage = err.split("error: ", 1)[1].split(":")[0]
                accelerator = err.split(" for ", 1)[1].split()[0]
                section = json.loads(plan_json_of(capsys, *VARIANTS[variant]))[stage]
                for spot in (True, False):
                    job_id = f"{name}/{variant}/{stage} refused/{'spot' if spot else 'on-demand'}"
                    jobs.append({"id": job_id, "clouds": sky_clouds, "task": {
                        "name": "probe", "num_nodes": section["nodes"], "run": "true",
                        "file_mounts": {"/bucket": {"source": "s3://my-runs", "mode": "MOUNT"}},
                        "resources": {"accelerators": accelerator, "use_spot": spot}}})
                    refused[job_id] = err.strip()
                continue
            assert code == 0, err
            rows = {r["stage"]: r for r in json.loads(out)["stages"] if r["kind"] == "gpu"}
            _, docs = dry_run(capsys, *args)
            for stage, row in rows.items():
                job_id = f"{name}/{variant}/{stage}"
                jobs.append({"id": job_id, "task": yaml.safe_load(docs[stage]), "clouds": sky_clouds,
                             "contexts": [p.split("/", 1)[1] for p in places if p.startswith("k8s/")]})
                want[job_id] = row
    # SkyPilot prices a context from its own config (kubernetes.pricing, $ per accelerator-hour): the lab's rates
    results = sky_optimize(tmp_path, jobs, sky_config={"kubernetes": {"pricing": {"accelerators": LAB_RATES}}},
                           empty=tuple(c for c in ("azure",) if c not in snapshot_clouds))
    disagree = {job_id: {"plan": refused[job_id], "skypilot": results[job_id]}
                for job_id in refused if "error" not in results[job_id]}
    assert len(refused) < len(jobs) / 4          # most sets run most stages
    for job_id, row in want.items():
        got = results[job_id]
        if "error" in got:
            disagree[job_id] = {"plan": row["infra"] if "infra" in row else row["cloud"], "skypilot": got["error"][:300]}
            continue
        plan_choice = expected(row, row["nodes"])
        sky_choice = chosen(got)
        if row["cloud"] == "kubernetes":    # SkyPilot names a pod by its shape (e.g. 64CPU--512GB--H100:8)
            plan_choice["instance_type"] = sky_choice["instance_type"] = None
            assert got["accelerators"] == accel_count(row["accelerator"]), job_id
        if not same(plan_choice, sky_choice) or got["num_nodes"] != row["nodes"]:
            disagree[job_id] = {"plan": plan_choice, "skypilot": sky_choice}
    assert not disagree, json.dumps(disagree, indent=1)
    clouds_used = {job_id.split("/")[0]: results[job_id]["cloud"] for job_id in want}
    assert clouds_used["kubernetes"] == "kubernetes" and clouds_used["lambda"] == "lambda"
    for job_id in want:      # with -s: what SkyPilot picked
        r = results[job_id]
        print(f"{job_id:40} {r['cloud']}/{r['region']}/{r['zone']} {r['instance_type']} "
              f"{'spot' if r['spot'] else 'on-demand'} ${r['node_per_hour']}/h x {r['num_nodes']}")
    for job_id in refused:
        print(f"{job_id:40} refused by plan and by SkyPilot: {results[job_id]['error'][:100]}")


def plan_json_of(capsys, *args) -> str:
    """{stage: row} of the what-if plan (every cloud), as JSON: what a refused stage asks for."""
    from conftest import cli

    code, out, err = cli(capsys, "plan", "--json", "--backend", "sky", *args)
    assert code == 0, err
    return json.dumps({r["stage"]: r for r in json.loads(out)["stages"]})


def accel_count(spec: str) -> dict:
    name, _, count = spec.partition(":")
    return {name: int(count)}


def test_a_set_that_cannot_run_a_stage_is_refused_by_plan_before_anything_launches(home, capsys):
    from conftest import cli

    # RunPod cannot mount the run's bucket (SkyPilot's RunPod adapter: STORAGE_MOUNTING unsupported)
    code, _, err = cli(capsys, "plan", "--infra", "runpod")
    assert code == 3 and err.count("\n") == 1 and "on runpod that can run its task (bucket mounts)" in err, err
    # Lambda sells no spot: a pinned spot stage cannot run there
    code, _, err = cli(capsys, "all", "--budget", "100000", "--dry-run", "--backend", "sky", "--bucket", "s3://x",
                       "-y", "--infra", "lambda", "--set", "sft.use_spot=true")
    assert code == 3 and "sft: no spot price for H100:8 on lambda" in err, err
