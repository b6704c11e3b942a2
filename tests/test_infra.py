"""Plan where you can launch: what SkyPilot says is enabled (its own state, written here by its own functions),
narrowed by --infra / placement.*, quotas (AWS Service Quotas through botocore's Stubber, GCP through a fake
gcloud on PATH), own clusters at a declared rate, and the refusals: a named infra that does not exist (exit 2), an
enabled set that cannot run a stage (exit 3), an unpinned what-if that `all --backend sky` will not launch (exit 2).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import cli

# SkyPilot's own writers of what `sky check` found (sky/global_user_state.py, SkyPilot 0.14.1), in a child process:
# SkyPilot binds its state database to the HOME of the first call in a process.
WRITER = r"""
import json, sys
from sky import global_user_state as g
from sky.clouds import cloud as c
clouds, results = json.loads(sys.argv[1])
g.set_enabled_clouds(clouds, c.CloudCapability.COMPUTE, "default")
g.set_check_results(results, "default", is_full_workspace_run=True)
"""


def sky_check(home: Path, clouds: list[str], contexts: dict | None = None) -> None:
    """What `sky check` would leave in HOME/.sky/state.db with `clouds` enabled (SkyPilot's reprs: AWS, GCP,
    Kubernetes...) and, per cloud, contexts {ctx: enabled}."""
    results = {cloud: {ctx: {"enabled": ok, "reason": "enabled." if ok else "disabled."} for ctx, ok in ctxs.items()}
               for cloud, ctxs in (contexts or {}).items()}
    env = {**os.environ, "HOME": str(home), "SKY_RUNTIME_DIR": str(home), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    p = subprocess.run([sys.executable, "-c", WRITER, json.dumps([clouds, results])], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    from reproduce import plan

    plan._knowledge_cache.clear()


@pytest.fixture(autouse=True)
def fresh_knowledge():
    from costmodel import infra
    from reproduce import plan

    plan._knowledge_cache.clear()
    infra._gpus_cache.clear()
    yield
    plan._knowledge_cache.clear()
    infra._gpus_cache.clear()


def plan_json(capsys, *args) -> dict:
    code, out, err = cli(capsys, "plan", "--json", "--backend", "sky", *args)
    assert code == 0, err
    return json.loads(out)


def gpu_rows(plan: dict) -> dict:
    return {s["stage"]: s for s in plan["stages"] if s["kind"] == "gpu"}


# ---- what is known ---------------------------------------------------------------------------------------------

def test_without_skypilot_state_the_plan_says_what_if_on_its_first_line(home, capsys):
    code, out, _ = cli(capsys, "plan")
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith("What-if: no SkyPilot state") and "every cloud" in first and "sky check" in first
    p = plan_json(capsys)
    assert p["infra"]["whatif"] and not p["infra"]["known"] and not p["infra"]["pinned"]
    from costmodel import prices

    assert p["infra"]["places"] == list(prices.DEFAULT_CLOUDS)


def test_all_backend_sky_refuses_an_unpinned_what_if_but_not_a_pinned_one(home, capsys):
    code, _, err = cli(capsys, "all", "--budget", "100000", "--backend", "sky", "--bucket", "s3://my-runs", "-y")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "what-if" in errors[0] and "--infra" in errors[0], err
    assert "Traceback" not in err
    from reproduce.plan import build_plan, refuse_whatif
    from reproduce import recipe as recipes

    pinned = build_plan(recipes.load(sets=["placement.infra=[aws]"]), 100000, "sky")
    refuse_whatif(pinned)                                      # named: launchable as priced
    from reproduce.plan import placement_problems

    problems = placement_problems(pinned)                      # ... but the preflight says what is not confirmed
    assert len(problems) == 3 and all("is not known to be enabled" in x and "sky check aws" in x for x in problems)
    assert {s.cloud for s in pinned.stages if s.kind == "gpu"} == {"aws"}
    # the dry run of a what-if still renders (it launches nothing)
    code, out, err = cli(capsys, "all", "--budget", "100000", "--backend", "sky", "--bucket", "s3://x", "-y",
                         "--dry-run")
    assert code == 0, err


def test_enabled_infra_is_read_from_skypilots_state_and_cached(home, capsys, monkeypatch):
    sky_check(home, ["AWS", "GCP", "Kubernetes"], {"Kubernetes": {"lab": True, "old": False}})
    from costmodel import infra

    known = infra.enabled()
    assert known.known and known.clouds == ("aws", "gcp") and known.contexts == {"kubernetes": ("lab",)}
    p = plan_json(capsys)
    assert p["infra"]["known"] and not p["infra"]["whatif"] and p["infra"]["enabled"] == ["aws", "gcp", "k8s/lab"]
    assert {s["cloud"] for s in gpu_rows(p).values()} <= {"aws", "gcp"}
    code, out, _ = cli(capsys, "plan")
    assert out.splitlines()[0].startswith("Infra: aws, gcp, k8s/lab (enabled per SkyPilot's `sky check`")
    # the answer is kept: a second read does not ask SkyPilot again ...
    monkeypatch.setattr(infra, "READER", "raise SystemExit(1)")
    assert infra.enabled().clouds == ("aws", "gcp")
    # ... until SkyPilot writes its state again; a state it cannot read is unknown, not a crash
    db = infra.sky_state_db()
    os.utime(db, ns=(db.stat().st_atime_ns, db.stat().st_mtime_ns + 10**9))
    again = infra.enabled()
    assert not again.known and "could not be read" in again.why_unknown


def test_infra_narrows_what_is_enabled_and_a_name_that_does_not_exist_is_exit_2(home, capsys):
    sky_check(home, ["AWS", "GCP", "Kubernetes"], {"Kubernetes": {"lab": True}})
    p = plan_json(capsys, "--infra", "gcp")
    assert {s["cloud"] for s in gpu_rows(p).values()} == {"gcp"}
    p = plan_json(capsys, "--set", "placement.infra=[aws]", "--set", "placement.exclude=[aws/us-east-1]")
    assert {(s["cloud"], s["region"] != "us-east-1") for s in gpu_rows(p).values()} == {("aws", True)}
    for args, needle in ((("--infra", "azure"), "azure is not enabled in SkyPilot (enabled: aws, gcp, k8s/lab)"),
                         (("--infra", "k8s/nolab"), "no enabled kubernetes context 'nolab' (SkyPilot has: k8s/lab)"),
                         (("--infra", "gcp/us-moon1"), "gcp has no region 'us-moon1'"),
                         (("--infra", "clowd"), "infra 'clowd': use CLOUD or CLOUD/REGION")):
        code, _, err = cli(capsys, "plan", *args)
        assert code == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err


def test_an_enabled_set_that_cannot_run_a_stage_is_exit_3_with_the_reason(home, capsys):
    sky_check(home, ["Lambda", "RunPod"])
    # Lambda sells no spot; RunPod cannot mount the run's bucket (costmodel.clouds, from SkyPilot's adapters)
    code, _, err = cli(capsys, "plan", "--set", "sft.use_spot=true")
    assert code == 3 and err.count("\n") == 1, err
    assert "sft: no spot price for H100:8 on lambda, runpod that can run its task (bucket mounts)" in err
    # on-demand, Lambda can: the plan lands there
    p = plan_json(capsys)
    assert {(s["cloud"], s["spot"]) for s in gpu_rows(p).values()} == {("lambda", False)}


def test_prices_enabled_lists_only_what_skypilot_enabled(home, capsys):
    code, _, err = cli(capsys, "prices", "H100:8", "--enabled")
    assert code == 2 and "no SkyPilot state" in err
    sky_check(home, ["GCP"])
    code, out, err = cli(capsys, "prices", "H100:8", "--enabled", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert rows and {r["cloud"] for r in rows} == {"gcp"}


# ---- quotas ----------------------------------------------------------------------------------------------------

class StubbedServiceQuotas:
    """A real boto3 `service-quotas` client per call, answered through botocore's Stubber with this account's
    figure for the quota asked (None: the API refuses, AccessDenied)."""

    def __init__(self, region: str, limits: dict, asked: list):
        self.region, self.limits, self.asked = region, limits, asked

    def get_service_quota(self, ServiceCode, QuotaCode):
        import boto3
        from botocore.stub import Stubber

        client = boto3.client("service-quotas", region_name=self.region, aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        self.asked.append((self.region, QuotaCode))
        with Stubber(client) as stub:
            value = self.limits.get((self.region, QuotaCode), 1000.0)
            if value is None:
                stub.add_client_error("get_service_quota", "AccessDeniedException", "no servicequotas:GetServiceQuota")
            else:
                stub.add_response("get_service_quota",
                                  {"Quota": {"ServiceCode": ServiceCode, "QuotaCode": QuotaCode, "Value": value,
                                             "Unit": "None", "QuotaName": "P instances"}},
                                  {"ServiceCode": ServiceCode, "QuotaCode": QuotaCode})
            return client.get_service_quota(ServiceCode=ServiceCode, QuotaCode=QuotaCode)


def stub_aws(monkeypatch, limits: dict) -> list:
    from costmodel import prices, quotas

    asked: list = []
    monkeypatch.setattr(quotas, "_live", lambda: True)      # prices stay offline (REPRODUCE_OFFLINE=1)
    monkeypatch.setattr(prices, "aws_credentials_present", lambda: True)
    monkeypatch.setattr(quotas, "_service_quotas_client", lambda region: StubbedServiceQuotas(region, limits, asked))
    return asked


def test_a_placement_below_its_aws_quota_is_excluded_and_the_plan_names_quota_region_and_fix(home, capsys, monkeypatch):
    sky_check(home, ["AWS"])
    free = plan_json(capsys)        # quotas not asked (offline): unknown, shown as unknown
    row = gpu_rows(free)["sft"]
    assert row["region"] == "us-east-1" and row["details"]["quota"]["ok"] is None
    from reproduce.plan import build_plan, placement_problems
    from reproduce import recipe as recipes

    unknown = placement_problems(build_plan(recipes.load(), None, "sky"))
    assert any("sft: aws us-east-1 quota 'All P Spot Instance Requests' (L-7212CCBC) unknown" in x for x in unknown)

    # a new account: 0 vCPUs of spot P instances in us-east-1
    asked = stub_aws(monkeypatch, {("us-east-1", "L-7212CCBC"): 0.0})
    p = plan_json(capsys)
    sft = gpu_rows(p)["sft"]
    assert sft["cloud"] == "aws" and not (sft["region"] == "us-east-1" and sft["spot"])
    line = next(x for x in sft["details"]["excluded"] if "us-east-1" in x)
    assert ("aws us-east-1: quota 'All P Spot Instance Requests' (L-7212CCBC) is 0 vCPUs, needs 192: too low; "
            "raise it: https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-7212CCBC") in line
    assert sft["details"]["quota"]["ok"] is True
    code, out, _ = cli(capsys, "plan")
    assert "excluded aws us-east-1: quota 'All P Spot Instance Requests' (L-7212CCBC) is 0 vCPUs" in out
    # answers are kept a day: the second plan asked nothing new
    n = len(asked)
    plan_json(capsys)
    assert len(asked) == n and ("us-east-1", "L-7212CCBC") in asked
    assert build_plan(recipes.load(), None, "sky") and placement_problems(build_plan(recipes.load(), None, "sky")) == []


def test_an_unreadable_aws_quota_is_unknown_never_guessed(home, monkeypatch):
    from costmodel import quotas
    from costmodel.prices import Offer

    stub_aws(monkeypatch, {("us-west-2", "L-417A185B"): None})
    offer = Offer("aws", "us-west-2", None, "p5.48xlarge", "H100", 8, 98.32, 30.0, "test", "2026-12-07", vcpus=192)
    q = quotas.quota_for(offer, nodes=2, spot=False)
    assert q.ok is None and q.limit is None and "AccessDeniedException" in q.why_unknown and q.needs == 384
    assert "unknown" in q.line()
    assert not (Path(os.environ["REPRODUCE_HOME"]) / "quotas.json").exists()     # an unknown is not remembered


def test_gcp_quota_through_gcloud_counts_preemptible_gpus_for_spot(home, tmp_path, monkeypatch):
    """The adapter is gcloud (`compute regions describe --format=json`); here a fake one on PATH answers."""
    from costmodel import quotas
    from costmodel.prices import Offer

    answer = {"name": "us-central1", "quotas": [
        {"metric": "NVIDIA_H100_GPUS", "limit": 16.0, "usage": 0.0},
        {"metric": "PREEMPTIBLE_NVIDIA_H100_GPUS", "limit": 8.0, "usage": 8.0}]}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f"#!/bin/sh\n[ \"$1 $2 $3 $4\" = \"compute regions describe us-central1\" ] || exit 1\n"
                                    f"echo '{json.dumps(answer)}'\n")
    (bin_dir / "gcloud").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(quotas, "_live", lambda: True)
    offer = Offer("gcp", "us-central1", "us-central1-a", "a3-highgpu-8g", "H100", 8, 88.0, 30.0, "test", "2026-12-07")
    spot = quotas.quota_for(offer, nodes=1, spot=True)
    assert spot.code == "PREEMPTIBLE_NVIDIA_H100_GPUS" and spot.limit == 0 and spot.ok is False
    assert "console.cloud.google.com/iam-admin/quotas" in spot.line()
    on_demand = quotas.quota_for(offer, nodes=2, spot=False)
    assert on_demand.limit == 16 and on_demand.needs == 16 and on_demand.ok is True
    # a project without a preemptible quota: spot VMs count against the standard one
    answer["quotas"] = answer["quotas"][:1]
    (bin_dir / "gcloud").write_text(f"#!/bin/sh\necho '{json.dumps(answer)}'\n")
    east = Offer("gcp", "us-east4", "us-east4-b", "a3-highgpu-8g", "H100", 8, 88.0, 30.0, "test", "2026-12-07")
    assert quotas.quota_for(east, nodes=1, spot=True).limit == 16


def test_a_quota_source_that_does_not_answer_is_asked_once(home, monkeypatch):
    from costmodel import quotas
    from costmodel.prices import Offer

    calls = []

    def dead(region):
        calls.append(region)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(quotas, "_live", lambda: True)
    monkeypatch.setattr(quotas, "_gcloud_region", dead)
    monkeypatch.setattr("shutil.which", lambda name: "/bin/gcloud")
    monkeypatch.setattr(quotas, "_silent", set())
    for region in ("us-central1", "us-east4", "europe-west4"):
        q = quotas.quota_for(Offer("gcp", region, None, "a3-highgpu-8g", "H100", 8, 88.0, 30.0, "t", "d"), 1, True)
        assert q.ok is None
    assert calls == ["us-central1"] and "did not answer earlier" in q.why_unknown


# ---- own clusters ----------------------------------------------------------------------------------------------

def test_a_lab_cluster_at_a_declared_rate_mixes_with_cloud_spot_and_the_task_pins_k8s(home, capsys, monkeypatch):
    from costmodel import infra

    sky_check(home, ["AWS", "Kubernetes"], {"Kubernetes": {"lab": True}})
    rates = Path(os.environ["REPRODUCE_HOME"]) / "rates.yaml"
    rates.parent.mkdir(parents=True, exist_ok=True)
    rates.write_text("k8s/lab: {H200: 0.50}\n")
    monkeypatch.setattr(infra, "cluster_gpus", lambda place: {"H200": 8} if place.region == "lab" else None)
    args = ("--set", "generate.accelerator=H200:8", "--set", "eval.accelerator=H200:8")
    p = plan_json(capsys, *args)
    rows = gpu_rows(p)
    assert (rows["generate"]["cloud"], rows["generate"]["region"], rows["generate"]["spot"]) == ("kubernetes", "lab",
                                                                                                  False)
    assert rows["generate"]["price_per_hour"] == pytest.approx(8 * 0.50)
    assert rows["generate"]["price_source"].startswith("declared, ")
    assert rows["sft"]["cloud"] == "aws" and rows["sft"]["spot"]          # H100 SFT: cloud spot
    code, out, err = cli(capsys, "all", "--budget", "100000", "--dry-run", "--backend", "sky", "--bucket", "s3://x",
                         "-y", *args)
    assert code == 0, err
    docs = {}
    for doc in out.split("# stage ")[1:]:
        docs[doc.split()[0]] = yaml.safe_load("\n".join(doc.splitlines()[1:]))
    res = docs["generate"]["resources"]
    first = (res.get("ordered") or [res])[0]
    assert first["infra"] == "k8s/lab" and "max_hourly_cost" not in first and res["use_spot"] is False
    # a lab with too few GPUs on a node is not offered
    infra._gpus_cache.clear()
    monkeypatch.setattr(infra, "cluster_gpus", lambda place: {"H200": 4})
    assert gpu_rows(plan_json(capsys, *args))["generate"]["cloud"] == "aws"
    infra._gpus_cache.clear()
    code, _, err = cli(capsys, "plan", "--infra", "k8s/lab", *args)
    assert code == 3 and "k8s/lab: at most 4 H200 on one node, the stage needs 8" in err, err


def test_declared_rates_are_checked(home, capsys):
    rates = Path(os.environ["REPRODUCE_HOME"]) / "rates.yaml"
    rates.parent.mkdir(parents=True, exist_ok=True)
    rates.write_text("k8s/lab: {H100: cheap}\n")
    code, _, err = cli(capsys, "plan", "--infra", "k8s/lab")
    assert code == 2 and "'cheap' is not a price" in err, err
    rates.write_text("aws: {H100: 1}\n")
    code, _, err = cli(capsys, "plan", "--infra", "k8s/lab")
    assert code == 2 and "is a cloud, priced by its catalog" in err, err


def test_node_figures_come_from_the_priced_instance(home, capsys):
    p = plan_json(capsys, "--infra", "aws")
    sft = gpu_rows(p)["sft"]
    assert sft["instance_type"] == "p5.48xlarge"
    assert sft["details"]["node"] == {"instance": "p5.48xlarge", "vcpus": 192, "host_ram_gib": 2048.0,
                                      "local_disk_gb": 30720.0, "disk_gib": 2048}    # sky_tasks/sft.yaml disk_size
    # ZeRO-3 offload checked against that node's own RAM (DeepSpeed's 1.5 x 18 B x 32.8B = 825 GiB <= 2,048)
    assert sft["memory"]["host_ram_gib"] == 2048 and sft["memory"]["fits_host"]
    assert "GiB on the priced instance" in sft["memory"]["arithmetic"]


def test_a_state_without_sky_check_is_unknown_and_a_check_that_found_nothing_refuses(home, capsys):
    from costmodel import infra

    env = {**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    subprocess.run([sys.executable, "-c", "from sky import global_user_state as g; g.get_cluster_names_start_with('x')"],
                   env=env, check=True, capture_output=True, timeout=120)      # SkyPilot made its state, no check
    assert infra.sky_state_db().is_file()
    known = infra.enabled()
    assert not known.known and "no `sky check` result" in known.why_unknown
    sky_check(home, [], {"AWS": {"": False}})      # `sky check` ran and found nothing enabled
    code, _, err = cli(capsys, "plan")
    assert code == 3 and "SkyPilot has no infra enabled" in err and err.count("\n") == 1, err


def test_infra_names_round_trip_as_skypilot_spells_them():
    from costmodel import infra
    from costmodel.errors import BadInput

    for text, place in (("aws", infra.Place("aws")), ("gcp/us-central1", infra.Place("gcp", "us-central1")),
                        ("k8s/lab", infra.Place("kubernetes", "lab")), ("kubernetes/lab", infra.Place("kubernetes", "lab")),
                        ("ssh/pool", infra.Place("ssh", "pool"))):
        assert infra.parse(text) == place
    assert str(infra.parse("kubernetes/lab")) == "k8s/lab" and infra.infra_string("ssh", "pool") == "ssh/pool"
    for bad in ("k8s", "aws/", "gcp/a/b", "", "moon"):
        with pytest.raises(BadInput):
            infra.parse(bad)
    # SkyPilot names an SSH node pool's context ssh-<pool> (sky/clouds/ssh.py); disabled contexts are not offered
    got = infra._contexts(["ssh", "kubernetes"], {"SSH": {"ssh-rack1": {"enabled": True}, "ssh-rack2": {"enabled": False}},
                                                   "Kubernetes": {"lab": {"enabled": True}}})
    assert got == {"ssh": ("rack1",), "kubernetes": ("lab",)}
