"""Bucket: write, read, list and delete a probe object under runs/RUN/ with the credentials the nodes get (the
controller's: SkyPilot mounts the bucket with the cloud credentials it uploads from here), and the bucket's
region against the planned placements, what the nodes read from it across regions or clouds priced.
"""
from __future__ import annotations

import secrets
import shutil
import subprocess

from reproduce.preflight import failed, passed, skipped

GROUP = "bucket"
# $/GB a node in another region of the same provider pays to read the bucket: AWS inter-region data transfer
# (aws.amazon.com/ec2/pricing/on-demand, "Data Transfer OUT ... to another AWS Region", US regions) and GCP
# inter-region egress within a continent (cloud.google.com/storage/pricing "Data transfer within Google Cloud");
# list prices as known 2026-12-07, not re-fetched. A node on another cloud reads over the internet: egress at
# costmodel.storage's price.
CROSS_REGION_GB = {"s3": 0.02, "gs": 0.02}
PROVIDER = {"s3": "aws", "gs": "gcp"}


def checks(ctx) -> list:
    needed = [s for s in ctx.stages if ctx.on_cloud(s)]
    if not ctx.bucket:
        if needed:
            return [failed(GROUP, f"no --bucket for the stages that run on clouds ({', '.join(needed)})",
                           "--bucket s3://NAME or gs://NAME (or REPRODUCE_BUCKET)")]
        return [skipped(GROUP, "no bucket: every stage of this plan keeps its artifacts on this machine")]
    from reproduce.executors.bucket import check, run_url

    check(ctx.bucket)
    url = run_url(ctx.bucket, ctx.run_id)
    if url.startswith("gs://"):
        return [_gcs_probe(url)]
    import boto3

    s3 = boto3.session.Session().client("s3")   # a new session: the credentials as they are now
    access = _s3_probe(s3, url)
    return [access] + ([_s3_region(ctx, s3, url)] if access.status == "passed" else [])


def _s3_probe(s3, url: str):
    from botocore.exceptions import ClientError, NoCredentialsError

    bucket, _, prefix = url[len("s3://"):].partition("/")
    key = f"{prefix}/preflight-{secrets.token_hex(4)}"
    steps = (("write", "s3:PutObject", lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"preflight")),
             ("read", "s3:GetObject", lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read()),
             ("list", "s3:ListBucket", lambda: s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=5)),
             ("delete", "s3:DeleteObject", lambda: s3.delete_object(Bucket=bucket, Key=key)))
    for step, action, call in steps:
        try:
            out = call()
            if step == "read" and out != b"preflight":
                return failed(f"{GROUP}/access", f"s3://{bucket}/{key} read back other bytes than were written",
                              "check the bucket's object lock or replication rules")
            if step == "list" and not any(o["Key"] == key for o in out.get("Contents", [])):
                return failed(f"{GROUP}/access", f"s3://{bucket}: the probe was written but not listed",
                              "check the bucket's listing permissions (s3:ListBucket)")
        except NoCredentialsError:
            return failed(f"{GROUP}/access", "no AWS credentials on this machine (the nodes get the same)",
                          "aws configure (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), then `sky check aws`")
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404"):
                return failed(f"{GROUP}/access", f"s3://{bucket} does not exist",
                              f"create it in the plan's region (aws s3 mb s3://{bucket} --region REGION) or fix "
                              "--bucket")
            if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return failed(f"{GROUP}/access", f"{step} under s3://{bucket}/{prefix}/ refused ({code})",
                              f"grant {action} on arn:aws:s3:::{bucket}/* (s3:PutObject, s3:GetObject, "
                              "s3:ListBucket, s3:DeleteObject) to this machine's AWS credentials, which the nodes get")
            return failed(f"{GROUP}/access", f"{step} under s3://{bucket}/{prefix}/ failed ({code}: "
                                             f"{e.response.get('Error', {}).get('Message', '')[:120]})",
                          "check the bucket and its permissions")
    return passed(f"{GROUP}/access", f"wrote, read, listed and deleted a probe under {url}/")


def _s3_region(ctx, s3, url: str):
    from botocore.exceptions import ClientError

    bucket = url[len("s3://"):].partition("/")[0]
    try:
        region = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
    except ClientError as e:
        return skipped(f"{GROUP}/region", f"s3://{bucket}'s region is not readable with these credentials "
                                          f"({e.response.get('Error', {}).get('Code')}): cross-region reads unpriced")
    return _priced_reads(ctx, "s3", bucket, region)


def _priced_reads(ctx, store: str, bucket: str, region: str):
    """What the cloud stages read from the bucket (what the stages they need wrote there), priced at where they
    run: $0 in the bucket's region, CROSS_REGION_GB in another region of its provider, internet egress from
    another cloud. Fails when that does not fit the plan's headroom, which does not include it."""
    from costmodel import storage
    from reproduce import stagetable

    written = {r["stage"]: r.get("gb_written") or 0.0 for r in (ctx.plan.storage or {}).get("stages") or []}
    egress = storage.PRICES[store]["egress_gb"]
    total, parts, away = 0.0, [], []
    for name in [s for s in ctx.stages if ctx.on_cloud(s)]:
        row = ctx.row(name)
        cloud, where = str(getattr(row, "cloud", "") or "").lower(), getattr(row, "region", None)
        gb = sum(written.get(n, 0.0) for n in stagetable.stage(name).needs)
        if cloud == PROVIDER[store] and where == region:
            continue
        rate = CROSS_REGION_GB[store] if cloud == PROVIDER[store] else egress
        away.append(f"{name} on {cloud or '?'} {where or ''}".strip())
        if gb:
            parts.append(f"{name} reads {gb:,.1f} GB x ${rate}/GB")
            total += gb * rate
    here = f"{store}://{bucket} is in {region}"
    if not away:
        return passed(f"{GROUP}/region", f"{here}, with every cloud stage of the plan")
    priced = f"{'; '.join(parts)} = ${total:,.2f}" if parts else "nothing read back from it"
    headroom = ctx.plan.headroom
    line = f"{here}; {', '.join(away)}: {priced}, not in the plan's total"
    if headroom is not None and total > headroom:
        return failed(f"{GROUP}/region", f"{line}, over the ${headroom:,.2f} headroom",
                      f"a bucket in the stages' region, --budget {ctx.plan.budget + total - headroom:,.0f} or "
                      f"more, or --skip-check {GROUP}/region")
    return passed(f"{GROUP}/region", line + (f", within the ${headroom:,.2f} headroom" if headroom is not None
                                             else " (no --budget to hold it against)"))


def _gcs_probe(url: str):
    if shutil.which("gcloud") is None:
        return failed(f"{GROUP}/access", f"{url}: a gs:// bucket needs the gcloud CLI here",
                      "install the Google Cloud CLI (`sky check gcp` says how), or use an s3:// bucket")
    probe = f"{url}/preflight-{secrets.token_hex(4)}"
    steps = (("write", ["cp", "-", probe]), ("read", ["cat", probe]), ("list", ["ls", f"{url}/"]),
             ("delete", ["rm", probe]))
    for step, args in steps:
        done = subprocess.run(["gcloud", "storage", *args], input="preflight" if step == "write" else None,
                              capture_output=True, text=True, timeout=60)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1][:160]
            return failed(f"{GROUP}/access", f"{step} under {url}/ failed: {last}",
                          "grant roles/storage.objectAdmin on the bucket to the gcloud account the nodes get, or "
                          "create it (gcloud storage buckets create gs://NAME --location REGION)")
    return passed(f"{GROUP}/access", f"wrote, read, listed and deleted a probe under {url}/")
