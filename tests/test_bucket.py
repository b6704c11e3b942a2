"""Artifacts between the controller and the bucket: boto3 against moto's S3."""
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
