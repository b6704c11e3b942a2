"""Artifacts between the controller and the bucket: boto3 against moto's S3; gs:// through a fake `gcloud` on PATH."""
import pytest

moto = pytest.importorskip("moto")

from reproduce.errors import UserError
from reproduce.executors import bucket


@pytest.fixture
def s3(monkeypatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    with moto.mock_aws():
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="runs-bucket")
        yield client


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_push_then_pull_round_trips_without_weights_or_logs(tmp_path, s3):
    here, there = tmp_path / "here", tmp_path / "there"
    for rel in ("recipe.yaml", "generate/shard-00000.jsonl", "sft/model/model.safetensors",
                "sft/summary.json", "logs/generate.log"):
        write(here, rel, rel)
    url = bucket.run_url("s3://runs-bucket", "RUN1")
    assert url == "s3://runs-bucket/runs/RUN1"
    assert bucket.push(here, url, s3) == 4  # not the log
    assert bucket.push(here, url, s3) == 0  # nothing changed: nothing sent twice
    assert bucket.pull(url, there, s3) == 3  # not the weights
    assert sorted(p.relative_to(there).as_posix() for p in there.rglob("*") if p.is_file()) == [
        "generate/shard-00000.jsonl", "recipe.yaml", "sft/summary.json"]
    write(here, "generate/shard-00000.jsonl", "grown after a resume")
    assert bucket.push(here, url, s3) == 1


@pytest.mark.parametrize("bad", ["foo", "s3://", "http://x/y", ""])
def test_a_bucket_must_be_s3_or_gs(bad):
    with pytest.raises(UserError, match="expected s3://NAME or gs://NAME"):
        bucket.check(bad)


def test_what_a_stage_left_in_the_bucket_is_measured_there(tmp_path, s3, monkeypatch):
    """Storage bills bytes: a cloud stage's are listed under its folder in the run's prefix; a controller
    stage's are its local folder, which the next cloud launch pushes."""
    from reproduce.executors.base import RunContext
    from reproduce.executors.sky import SkyExecutor

    monkeypatch.setattr(bucket, "_S3", [s3])
    url = bucket.run_url("s3://runs-bucket", "RUN2")
    s3.put_object(Bucket="runs-bucket", Key="runs/RUN2/sft/checkpoint-1/weights.bin", Body=b"w" * 3000)
    s3.put_object(Bucket="runs-bucket", Key="runs/RUN2/sft/summary.json", Body=b"{}")
    s3.put_object(Bucket="runs-bucket", Key="runs/RUN2/sft-old/x", Body=b"x" * 500)   # another folder's
    s3.put_object(Bucket="runs-bucket", Key="runs/RUN22/sft/x", Body=b"x" * 700)      # another run's
    assert bucket.stored_bytes(url, "sft", s3) == 3002
    write(tmp_path / "artifacts", "convert/train.json", "y" * 1234)
    ex = SkyExecutor(adapter=object())

    def ctx(stage):
        return RunContext(run_id="RUN2", recipe={"filter": {"where": "cpu-node"}}, stage=stage, plan=None,
                          artifacts=tmp_path / "artifacts", envs={}, bucket="s3://runs-bucket")

    gb, how = ex.written_gb(ctx("sft"))
    assert gb == pytest.approx(3002 / 1e9) and how == f"measured: {url}/sft/"
    gb, how = ex.written_gb(ctx("convert"))
    assert gb == pytest.approx(1234 / 1e9) and "pushed to" in how
    assert ex.written_gb(RunContext(run_id="RUN2", recipe={}, stage="sft", plan=None, artifacts=tmp_path,
                                    envs={}, bucket=None)) is None


def test_a_stage_that_succeeded_deletes_its_checkpoints_and_nothing_else(tmp_path, s3, monkeypatch):
    from reproduce.executors.base import RunContext
    from reproduce.executors.sky import SkyExecutor
    from reproduce.stagetable import stage

    monkeypatch.setattr(bucket, "_S3", [s3])
    keys = ["runs/R3/sft/checkpoints/checkpoint-100/global_step100/optim.pt",
            "runs/R3/sft/checkpoints/checkpoint-200/trainer_state.json",
            "runs/R3/sft/checkpoints/trainer_log.jsonl", "runs/R3/sft/model/model.safetensors",
            "runs/R3/sft/summary.json", "runs/R3/eval/checkpoints/checkpoint-1/x",   # another stage's
            "runs/R33/sft/checkpoints/checkpoint-100/x"]                              # another run's
    for k in keys:
        s3.put_object(Bucket="runs-bucket", Key=k, Body=b"x")
    ex = SkyExecutor(adapter=object())
    run = RunContext(run_id="R3", recipe={"filter": {"where": "local"}}, stage="sft", plan=None,
                     artifacts=tmp_path, envs={}, bucket="s3://runs-bucket")
    assert ex.discard(run, stage("sft").scratch) == 2
    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="runs-bucket")["Contents"])
    assert left == sorted(keys[2:])
    assert ex.discard(run, stage("sft").scratch) == 0


# ---------------------------------------------------------------- gs://: the gcloud CLI, faked at its boundary

FAKE_GCLOUD = r'''#!/usr/bin/env python3
"""`gcloud storage du --summarize` and `rm --recursive` over a folder ($FAKE_GCS/BUCKET/KEY), answering and
failing as gcloud does (cloud.google.com/sdk/gcloud/reference/storage/du); every call is logged."""
import os, pathlib, sys
root = pathlib.Path(os.environ["FAKE_GCS"])
with open(root / "calls", "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
group, verb, *rest = sys.argv[1:]
url = rest[-1]
bucket, _, key = url[len("gs://"):].partition("/")
objects = {str(p.relative_to(root / bucket)): p for p in (root / bucket).rglob("*") if p.is_file()}
match = {k: p for k, p in objects.items() if k.startswith(key.rstrip("*"))}
if not match:
    sys.exit(f"ERROR: (gcloud.storage.{verb}) The following URLs matched no objects or files:\n-{url}")
if verb == "du":
    print(f"{sum(p.stat().st_size for p in match.values())}  {url}")
else:
    for p in match.values():
        p.unlink()
'''


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """A gs:// bucket as a folder, behind a fake `gcloud` on PATH: the CLI is the boundary we cannot run here."""
    import os

    root, bin_dir = tmp_path / "gcs", tmp_path / "bin"
    (root / "runs-bucket").mkdir(parents=True)
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    monkeypatch.setenv("FAKE_GCS", str(root))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return root


def test_a_gs_bucket_is_measured_and_its_checkpoints_deleted_through_gcloud(tmp_path, gcs):
    from reproduce.executors.base import RunContext
    from reproduce.executors.sky import SkyExecutor
    from reproduce.stagetable import stage

    files = {"runs/R4/sft/checkpoints/checkpoint-100/optim.pt": 3000, "runs/R4/sft/summary.json": 2,
             "runs/R4/sft-old/x": 500, "runs/R44/sft/x": 700}           # another folder's, another run's
    for rel, size in files.items():
        write(gcs / "runs-bucket", rel, "x" * size)
    url = bucket.run_url("gs://runs-bucket", "R4")
    assert bucket.stored_bytes(url, "sft") == 3002
    run = RunContext(run_id="R4", recipe={"filter": {"where": "local"}}, stage="sft", plan=None,
                     artifacts=tmp_path, envs={}, bucket="gs://runs-bucket")
    gb, how = SkyExecutor(adapter=object()).written_gb(run)
    assert gb == pytest.approx(3002 / 1e9) and how == f"measured: {url}/sft/"
    ex = SkyExecutor(adapter=object())
    assert ex.discard(run, stage("sft").scratch) == -1                  # gcloud does not say how many
    assert not (gcs / "runs-bucket/runs/R4/sft/checkpoints/checkpoint-100/optim.pt").exists()
    assert (gcs / "runs-bucket/runs/R4/sft/summary.json").exists() and (gcs / "runs-bucket/runs/R44/sft/x").exists()
    assert ex.discard(run, stage("sft").scratch) == -1                  # nothing left to match: not an error
    assert bucket.stored_bytes(url, "sft") == 2
    calls = (gcs / "calls").read_text().splitlines()
    assert calls[0] == f"storage du --summarize {url}/sft/"
    assert calls[2] == f"storage rm --recursive {url}/sft/checkpoints/checkpoint-*"


def test_a_gs_listing_that_fails_is_unmeasured_not_an_error(gcs, monkeypatch):
    assert bucket.stored_bytes(bucket.run_url("gs://runs-bucket", "NONE"), "sft") is None   # matched nothing
    monkeypatch.setenv("PATH", "/nonexistent")
    assert bucket.stored_bytes("gs://runs-bucket/runs/R4", "sft") is None                    # no gcloud
