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
