"""The preflight (reproduce/preflight/): one planted defect per test, each against the real client and a local
stand-in (the local OpenAI-compatible server, moto's S3, SkyPilot's own parser, LLaMA-Factory's own parser in the
stage environment). Each makes `reproduce preflight` fail with one line naming the fix, and `reproduce all
--backend sky` exit 2 with nothing launched (the SkyPilot boundary, sky_adapter, records every launch).

The check under test runs alone (`only`), so a test waits on one contact, not on all of them; the sound setup
of every check together is tests/test_preflight_sound.py.
"""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import cli
from reproduce import preflight

ALL = ("all", "--backend", "sky", "--budget", "100000", "-y", "--bucket", "s3://runs-bucket")


@pytest.fixture
def launches(home, monkeypatch):
    """The one SkyPilot boundary, faked: every launch is recorded (and refused, so a run that got that far ends)."""
    from reproduce.executors import sky_adapter

    calls = []

    def launch(task, name, *args, **kwargs):
        calls.append(name)
        raise RuntimeError("fake SkyPilot: tests launch nothing")

    monkeypatch.setattr(sky_adapter, "launch_managed", launch)
    monkeypatch.setattr(sky_adapter, "launch_cluster", launch)
    monkeypatch.setattr(sky_adapter, "cancel_managed", lambda job_id=None, name=None: None)
    monkeypatch.setattr(sky_adapter, "down", lambda cluster_name: None)
    monkeypatch.setattr(sky_adapter, "enabled_infra", lambda timeout_s=20.0: ["primeintellect", "aws"])
    enable(monkeypatch, "primeintellect", "aws")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return calls


def enable(monkeypatch, *clouds):
    """What `sky check` left enabled, as costmodel.infra reads it from SkyPilot's own state (tested against that state
    in tests/test_infra.py; here its answer, so each test does not start a SkyPilot child process)."""
    from costmodel import infra
    from reproduce import plan

    known = infra.Knowledge(True, clouds=tuple(clouds), source="test: sky check")
    monkeypatch.setattr(infra, "enabled", lambda refresh=False: known)
    plan._knowledge_cache.clear()
    monkeypatch.setattr(plan, "_knowledge_cache", [])


def only(monkeypatch, *names):
    """Run only the check modules `names` (reproduce.preflight.<name>)."""
    import importlib

    mods = tuple(importlib.import_module(f"reproduce.preflight.{n}") for n in names)
    monkeypatch.setattr(preflight, "_modules", lambda: mods)


def refused(capsys, launches, *args, last="nothing launched") -> tuple[str, str]:
    """`reproduce preflight ARGS` and `reproduce all --backend sky ARGS` both exit 2; nothing is launched."""
    code, out, err = cli(capsys, "preflight", "--backend", "sky", *args)
    assert code == 2, (out, err)
    code2, out2, err2 = cli(capsys, *ALL, *args)
    assert code2 == 2, (out2, err2)
    assert launches == []
    assert last is None or last in err2.splitlines()[-1]
    return out, err2 + err


def failed_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("FAILED")]


# ---- API: the local OpenAI-compatible server -------------------------------------------------------------------

@pytest.fixture
def openai_server(monkeypatch):
    from reproduce.stages.smoke.local_openai import LocalOpenAI

    servers = []

    def start(**kwargs):
        srv = LocalOpenAI(api_key="sk-right", models=["gpt-4o-mini"], **kwargs).start()
        servers.append(srv)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-right")
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.mark.parametrize("defect, setup, fix", [
    ("bad key", lambda mp: mp.setenv("OPENAI_API_KEY", "sk-wrong"), "export a valid OPENAI_API_KEY"),
    ("unknown model", lambda mp: None, "--set rewrite.model="),
    ("batch refused", lambda mp: None, "--set rewrite.batch=false"),
])
def test_api_defects_fail_with_the_fix_and_launch_nothing(defect, setup, fix, launches, openai_server, monkeypatch,
                                                         capsys):
    only(monkeypatch, "api")
    srv = openai_server(batch_allowed=defect != "batch refused")
    setup(monkeypatch)
    args = ("--set", "rewrite.model=gpt-4o") if defect == "unknown model" else ()
    out, err = refused(capsys, launches, *args)
    (line,) = failed_lines(out)
    assert fix in line and "sk-wrong" not in out + err and "sk-right" not in out + err
    assert srv.requests["chat"] == 0 and srv.requests["batches.create"] == 0 and srv.requests["files.create"] == 0


def test_a_sound_api_passes_with_read_only_calls(launches, openai_server, monkeypatch, capsys):
    only(monkeypatch, "api")
    srv = openai_server()
    code, out, err = cli(capsys, "preflight", "--backend", "sky", "--json")
    assert code == 0, err
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert {checks[n]["status"] for n in ("api/rewrite", "api/rewrite-batch", "api/rewrite-price")} == {"passed"}
    assert set(srv.requests) == {"models.retrieve", "batches.list", "total"}   # nothing submitted, nothing paid


def test_smoke_scale_skips_what_does_not_apply(launches, capsys):
    code, out, err = cli(capsys, "preflight", "--scale", "smoke")
    assert code == 0, out + err
    lines = {line.split()[1].rstrip(":"): line.split()[0] for line in out.splitlines()}
    assert lines["datasets"] == lines["models"] == lines["api/rewrite"] == lines["skypilot"] == "skipped"
    assert lines["controller/sandbox"] == "passed"


# ---- the bucket: moto's S3 -------------------------------------------------------------------------------------

@pytest.fixture
def s3(monkeypatch):
    moto = pytest.importorskip("moto")
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    from reproduce.executors import bucket

    monkeypatch.setattr(bucket, "_S3", [])   # the executor's client of this process: made in here, with these keys
    with moto.mock_aws():
        import boto3

        yield boto3.client("s3")


def _node_user(monkeypatch, actions: list[str]) -> None:
    """The controller's (and so the nodes') AWS credentials: an IAM user allowed only `actions`."""
    import boto3

    iam = boto3.client("iam")
    iam.create_user(UserName="node")
    iam.put_user_policy(UserName="node", PolicyName="p", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    key = iam.create_access_key(UserName="node")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])


def test_an_unwritable_bucket_fails_naming_the_permission(launches, s3, monkeypatch, capsys):
    from moto.core import set_initial_no_auth_action_count

    only(monkeypatch, "bucket")
    s3.create_bucket(Bucket="runs-bucket")

    @set_initial_no_auth_action_count(3)     # the setup's own calls (user, policy, key) are not checked
    def check():
        _node_user(monkeypatch, ["s3:GetBucketLocation", "s3:ListBucket"])
        return refused(capsys, launches, "--bucket", "s3://runs-bucket")

    out, _ = check()
    (line,) = failed_lines(out)
    assert "bucket/access" in line and "AccessDenied" in line and "s3:PutObject" in line


def test_a_missing_bucket_fails_naming_how_to_create_it(launches, s3, monkeypatch, capsys):
    only(monkeypatch, "bucket")
    out, _ = refused(capsys, launches, "--bucket", "s3://no-such-bucket")
    (line,) = failed_lines(out)
    assert "does not exist" in line and "aws s3 mb s3://no-such-bucket" in line


def test_a_bucket_in_another_region_fails_when_its_traffic_does_not_fit(launches, s3, monkeypatch, capsys):
    """The nodes read what earlier stages wrote (eval reads sft's model) across clouds/regions: priced, and held
    against the budget's headroom, which the plan's total does not include."""
    only(monkeypatch, "bucket")
    s3.create_bucket(Bucket="far-bucket", CreateBucketConfiguration={"LocationConstraint": "ap-south-1"})
    code, out, _ = cli(capsys, "plan", "--backend", "sky", "--json")
    total = json.loads(out)["totals"]["total_usd"]
    out, _ = refused(capsys, launches, "--bucket", "s3://far-bucket", "--budget", f"{total + 1:.2f}")
    (line,) = failed_lines(out)
    assert "bucket/region" in line and "ap-south-1" in line and "headroom" in line and "--budget" in line
    code, out, err = cli(capsys, "preflight", "--backend", "sky", "--bucket", "s3://far-bucket")
    assert code == 0, out + err
    assert "passed  bucket/access" in out and "reads" in out   # priced, with no budget to hold it against


# ---- SkyPilot's own parser on the rendered tasks ----------------------------------------------------------------

def test_an_invalid_task_fails_with_skypilots_message(launches, s3, monkeypatch, tmp_path, capsys):
    from reproduce import tasks

    only(monkeypatch, "skypilot")
    s3.create_bucket(Bucket="runs-bucket")
    folder = tmp_path / "sky_tasks"
    shutil.copytree(tasks.TASKS_DIR, folder)
    text = (folder / "eval.yaml").read_text()
    (folder / "eval.yaml").write_text(text.replace("disk_size:", "disk_sizes:", 1))
    monkeypatch.setattr(tasks, "TASKS_DIR", folder)
    out, _ = refused(capsys, launches, "--bucket", "s3://runs-bucket")
    (line,) = failed_lines(out)
    assert line.startswith("FAILED  skypilot/task-eval") and "disk_size" in line and "eval.yaml" in line


def test_a_plan_on_a_cloud_that_is_not_enabled_launches_nothing(launches, s3, monkeypatch, capsys):
    """Only GCP enabled, the recipe pinned to AWS: refused (exit 2) before any launch, by the plan itself."""
    only(monkeypatch, "skypilot")
    s3.create_bucket(Bucket="runs-bucket")
    enable(monkeypatch, "gcp")
    out, err = refused(capsys, launches, "--bucket", "s3://runs-bucket", "--set", "placement.infra=[aws]", last=None)
    assert "aws is not enabled" in err and "gcp" in err


def test_placement_problems_fail_one_line_per_stage(launches, s3, monkeypatch, capsys):
    """What the placement issue's `reproduce.plan.placement_problems(plan)` says (its contract: "STAGE: what: fix")
    becomes one failed check per stage, the fix split off."""
    from reproduce import plan as planner

    only(monkeypatch, "skypilot")
    s3.create_bucket(Bucket="runs-bucket")
    monkeypatch.setattr(planner, "placement_problems", lambda plan: [
        "sft: aws us-east-1 quota 'Running On-Demand P instances' (L-417A185B) is 0 vCPUs, needs 192: raise it: "
        "https://console.aws.amazon.com/servicequotas"], raising=False)
    out, _ = refused(capsys, launches, "--bucket", "s3://runs-bucket")
    (line,) = failed_lines(out)
    assert line.startswith("FAILED  skypilot/placement-sft: aws us-east-1 quota") and "fix: https://console" in line


# ---- LLaMA-Factory's own parser on the full-scale config --------------------------------------------------------

def _has_llamafactory() -> bool:
    from reproduce.preflight import configs

    return configs.sft_python()[0] is not None


NEEDS_LF = pytest.mark.skipif(not _has_llamafactory(), reason="no environment with LLaMA-Factory "
                                                               "(make .venv-stage/.installed)")


@NEEDS_LF
def test_a_config_llamafactorys_parser_rejects_fails_with_its_message(launches, monkeypatch, tmp_path, capsys):
    """A key of sky_tasks/llamafactory/sft.yaml LLaMA-Factory 0.9.5 does not have: its HfArgumentParser refuses
    it (after the CPU-only bf16 and FORCE_TORCHRUN errors are set aside)."""
    from reproduce.stages import sft

    only(monkeypatch, "configs")
    template = tmp_path / "sft.yaml"
    template.write_text(sft.TEMPLATE.read_text() + "\nflash_attention: fa2\n")   # the 0.9.5 key is flash_attn
    monkeypatch.setattr(sft, "TEMPLATE", template)
    out, _ = refused(capsys, launches)
    (line,) = failed_lines(out)
    assert "configs/sft" in line and "Some keys are not used" in line and "flash_attention" in line and "fix:" in line


@NEEDS_LF
def test_a_template_llamafactory_does_not_have_fails_before_the_gpus_are_up(launches, monkeypatch, capsys):
    only(monkeypatch, "configs")
    code, out, err = cli(capsys, "preflight", "--backend", "sky", "--set", "sft.template=qwen25")
    assert code == 2, out + err
    (line,) = failed_lines(out)
    assert "Template qwen25 does not exist" in line


# ---- waiving a check: --skip-check, in the ledger and the audit -------------------------------------------------

def test_a_waived_check_is_recorded_and_audited(launches, openai_server, s3, monkeypatch, capsys):
    only(monkeypatch, "api")
    s3.create_bucket(Bucket="runs-bucket")
    openai_server(batch_allowed=False)
    code, out, err = cli(capsys, *ALL, "--skip-check", "api/rewrite-batch", "--bucket", "s3://runs-bucket")
    assert "waived  api/rewrite-batch" in err
    assert code == 1 and launches, err   # the preflight let it through: the (fake) launch was tried
    run_id = err.split("run ", 1)[1].split(":", 1)[0] if "run " in err else None
    from costmodel.ledger import Ledger

    with Ledger() as led:
        run_id = run_id or led.latest_run_id()
        kinds = [e["kind"] for e in led.events(run_id)]
    assert "preflight" in kinds and "check_waived" in kinds
    code, out, err = cli(capsys, "audit", run_id)
    assert "Preflight checks waived:" in out and "api/rewrite-batch" in out
    tried = len(launches)
    code, out, err = cli(capsys, "all", "--resume", run_id, "-y")   # the waiver was for that launch, not for ever
    assert code == 2 and "api/rewrite-batch" in err.splitlines()[-1] and len(launches) == tried, err


FAKE_GCLOUD = r"""#!/usr/bin/env python3
# `gcloud storage cp|cat|ls|rm` over a folder ($FAKE_GCS/BUCKET/KEY); a bucket folder holding DENY refuses writes
# as gcloud does (AccessDeniedException: 403 ..., exit 1).
import os, pathlib, sys
verb, *args = sys.argv[2:]
root = pathlib.Path(os.environ["FAKE_GCS"])
def where(url):
    return root / url[len("gs://"):]
target = where(args[-1])
bucket = root / args[-1][len("gs://"):].split("/")[0]
if not bucket.is_dir():
    sys.exit(f"ERROR: (gcloud.storage.{verb}) gs://{bucket.name} not found: 404.")
if verb == "cp":
    if (bucket / "DENY").exists():
        sys.exit("ERROR: (gcloud.storage.cp) [node@proj.iam] does not have permission to access b instance "
                 f"[{bucket.name}] (or it may not exist): AccessDeniedException: 403")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(sys.stdin.buffer.read())
elif verb == "cat":
    sys.stdout.write(target.read_text())
elif verb == "ls":
    print("\n".join(f"gs://{p.relative_to(root)}" for p in target.rglob("*") if p.is_file()))
elif verb == "rm":
    target.unlink()
"""


@pytest.mark.parametrize("deny", [False, True])
def test_a_gs_bucket_is_probed_through_gcloud(deny, launches, monkeypatch, tmp_path, capsys):
    """gs://: the gcloud CLI is the boundary (faked on PATH, as in test_bucket.py): the probe object is written, read,
    listed and deleted; a refused write fails naming the role to grant."""
    only(monkeypatch, "bucket")
    gcs, bin_dir = tmp_path / "gcs", tmp_path / "bin"
    (gcs / "runs-gs").mkdir(parents=True)
    if deny:
        (gcs / "runs-gs" / "DENY").write_text("")
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_GCS", str(gcs))
    code, out, err = cli(capsys, "preflight", "--backend", "sky", "--bucket", "gs://runs-gs")
    if deny:
        assert code == 2 and "AccessDeniedException" in out and "roles/storage.objectAdmin" in out, out + err
    else:
        assert code == 0 and "passed  bucket/access: wrote, read, listed and deleted" in out, out + err
        assert not [p for p in gcs.rglob("preflight-*") if p.is_file()]    # the probe is gone


def test_an_unknown_skip_check_is_a_user_error(launches, monkeypatch, capsys):
    only(monkeypatch, "api")
    code, out, err = cli(capsys, *ALL, "--skip-check", "no-such-check")
    assert code == 2 and "--skip-check 'no-such-check'" in err and "api" in err and launches == []
