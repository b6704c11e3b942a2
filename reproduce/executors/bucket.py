"""Keep a run's local artifacts folder and its bucket in step, for stages that run on the controller
(rewrite, convert, a local filter) between stages that run on clouds with the bucket mounted.

    push(local_dir, "s3://bucket/runs/RUN")   # upload what the bucket lacks (or has at another size)
    pull("s3://bucket/runs/RUN", local_dir)   # download what the folder lacks

S3 through boto3 (the controller has it); GCS through the `gcloud storage` CLI, which SkyPilot's GCP setup
installs. Sync by key and size: artifacts are written once and never edited in place, except caches.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from reproduce.errors import UserError

SKIP = ("logs/",)  # local logs stay local; they may quote a stage's stderr
# Weights stay in the bucket (a ZeRO-3 checkpoint of a 32B model is ~460 GB); the controller needs none.
NO_PULL = ("sft/checkpoints/", "sft/model/", "models/")


def run_url(bucket: str, run_id: str) -> str:
    return f"{check(bucket, strict=False)}/runs/{run_id}"


def check(bucket: str, strict: bool = True) -> str:
    """s3://NAME[/prefix] or gs://NAME[/prefix] with NAME by the provider's bucket naming rules: 3-63 of
    lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, not an IP address
    (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html; cloud.google.com/storage/docs/
    buckets#naming also allows '_'). `strict=False` (a dry run) only requires the scheme and a name without
    spaces: nothing is written there."""
    import re

    scheme, sep, rest = str(bucket).partition("://")
    name, _, prefix = rest.partition("/")
    allowed = r"[a-z0-9._-]" if scheme == "gs" else r"[a-z0-9.-]"
    if not strict:
        ok = scheme in ("s3", "gs") and sep and name and not re.search(r"\s", rest)
    else:
        ok = (scheme in ("s3", "gs") and sep and 3 <= len(name) <= 63
              and re.fullmatch(rf"[a-z0-9]{allowed}*[a-z0-9]", name) is not None
              and ".." not in name and not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name)
              and not re.search(r"\s", prefix) and "//" not in prefix)
    if not ok:
        raise UserError(f"--bucket {bucket!r}: expected s3://NAME or gs://NAME[/prefix], NAME 3-63 lowercase "
                        "letters, digits, '-' or '.' (the provider's bucket naming rules)")
    return bucket.rstrip("/")


def push(local_dir: Path, url: str, client=None) -> int:
    if url.startswith("gs://"):
        return _gcloud("rsync", "--recursive", str(local_dir), url)
    bucket, prefix = _split(url)
    s3 = client or _s3()
    remote = _s3_sizes(s3, bucket, prefix)
    sent = 0
    for path in sorted(Path(local_dir).rglob("*")):
        rel = path.relative_to(local_dir).as_posix()
        if path.is_file() and not rel.startswith(SKIP) and remote.get(rel) != path.stat().st_size:
            s3.upload_file(str(path), bucket, f"{prefix}/{rel}")
            sent += 1
    return sent


def pull(url: str, local_dir: Path, client=None) -> int:
    if url.startswith("gs://"):
        return _gcloud("rsync", "--recursive", "--exclude", "^(sft/checkpoints|sft/model|models)/", url,
                       str(local_dir))
    bucket, prefix = _split(url)
    s3 = client or _s3()
    got = 0
    for rel, size in _s3_sizes(s3, bucket, prefix).items():
        if rel.startswith(NO_PULL):
            continue
        dest = Path(local_dir) / rel
        if not dest.is_file() or dest.stat().st_size != size:
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, f"{prefix}/{rel}", str(dest))
            got += 1
    return got


def read_json(url: str, rel: str, client=None) -> dict | None:
    """One small JSON object of the run's folder (a stage's progress.json), or None when it is not there."""
    import json

    try:
        if url.startswith("gs://"):
            out = subprocess.run(["gcloud", "storage", "cat", f"{url.rstrip('/')}/{rel}"], capture_output=True,
                                 text=True, timeout=30)
            return json.loads(out.stdout) if out.returncode == 0 else None
        bucket, prefix = _split(url)
        body = (client or _s3()).get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read()
        return json.loads(body)
    except Exception:   # noqa: BLE001 - not written yet, or unreadable: no progress this poll
        return None


def stored_bytes(url: str, sub: str, client=None) -> int | None:
    """Bytes under URL/SUB/ in the bucket: what a stage left there, which is what storage bills. None when
    the listing fails (the caller then keeps the plan's figure and says so)."""
    if url.startswith("gs://"):
        return _gcs_bytes(f"{url.rstrip('/')}/{sub.strip('/')}/")
    bucket, prefix = _split(url)
    try:
        return sum(_s3_sizes(client or _s3(), bucket, f"{prefix}/{sub.strip('/')}").values())
    except Exception:   # noqa: BLE001 - no listing: the plan's figure stands, and the caller says so
        return None


def delete_prefixes(url: str, sub: str, prefixes: tuple, client=None) -> int:
    """Delete the objects under URL/SUB/ whose key (relative to it) starts with one of PREFIXES; how many."""
    sub = sub.strip("/")
    if url.startswith("gs://"):
        for p in prefixes:
            _gcloud("rm", "--recursive", f"{url.rstrip('/')}/{sub}/{p}*", none_is_fine=True)
        return -1
    bucket, prefix = _split(url)
    s3 = client or _s3()
    keys = [f"{prefix}/{sub}/{rel}" for rel in _s3_sizes(s3, bucket, f"{prefix}/{sub}") if rel.startswith(prefixes)]
    for i in range(0, len(keys), 1000):     # delete_objects takes at most 1,000 keys a request
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
    return len(keys)


def _split(url: str) -> tuple[str, str]:
    bucket, _, prefix = check(url, strict=False)[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


_S3 = []


def _s3():
    """One client per process: making one costs ~0.3 s, and the executor reads progress at every poll."""
    if not _S3:
        import boto3

        _S3.append(boto3.client("s3"))
    return _S3[0]


def _s3_sizes(s3, bucket: str, prefix: str) -> dict[str, int]:
    sizes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            sizes[obj["Key"][len(prefix) + 1:]] = obj["Size"]
    return sizes


def _gcloud(*args: str, none_is_fine: bool = False) -> int:
    """`gcloud storage ARGS`; with `none_is_fine`, a wildcard that matched nothing (gcloud exits 1 and says
    "matched no objects") is not an error: an sft that saved no checkpoint has none to delete."""
    if shutil.which("gcloud") is None:
        raise UserError("a gs:// bucket needs the gcloud CLI on this machine (or use an s3:// bucket)")
    done = subprocess.run(["gcloud", "storage", *args], capture_output=True, text=True)
    if done.returncode and not (none_is_fine and "matched no objects" in done.stderr):
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return -1  # gcloud does not say how many


def _gcs_bytes(prefix: str) -> int | None:
    """`gcloud storage du --summarize gs://B/P/` prints "<bytes>  gs://B/P/"; None without gcloud or a total."""
    if shutil.which("gcloud") is None:
        return None
    try:
        done = subprocess.run(["gcloud", "storage", "du", "--summarize", prefix], capture_output=True, text=True,
                              timeout=600, check=True)
        return int(done.stdout.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
