"""What the providers charged: AWS Cost Explorer and OpenAI's organization costs API, as plain rows.

    ce = billing.ce_client()                                          # boto3 "ce" client (us-east-1)
    aws = billing.aws_costs(ce, run_id, date(2026, 12, 1), date(2026, 12, 4))
    oa = billing.openai_costs(billing.openai_client(admin_key), start, end)

Everything a run launches carries the SkyPilot labels {TAG_RUN: RUN, TAG_STAGE: STAGE} (reproduce.tasks), which
AWS turns into instance tags; once the user activates them as cost allocation tags (Billing console; they count
only from activation on), Cost Explorer groups the bill by them. OpenAI's bill has no tags: a stage's cost is the
line items of its model on the days it ran (best with a project of its own: `project_ids`).

This module only fetches; costmodel.reconcile compares with the ledger. Credentials stay inside the clients:
nothing here returns, logs or raises text that holds one (error text is passed through `redact`).
"""
from __future__ import annotations

import datetime as dt
import re

from costmodel.billing_tags import TAG_RUN, TAG_STAGE, tag_value
from costmodel.errors import BadInput

__all__ = ["TAG_RUN", "TAG_STAGE", "aws_costs", "openai_costs", "ce_client", "openai_client", "tag_value"]

# Cost Explorer "refreshes your cost data at least once every 24 hours" (docs.aws.amazon.com/cost-management/
# latest/userguide/ce-what-is.html), so the last day of a run may be missing or partial. OpenAI publishes no
# lag for its costs API: we assume the same day.
LAG_HOURS = {"aws": 24.0, "openai": 24.0}
CE_REQUEST_USD = 0.01     # each Cost Explorer API request is billed $0.01 (aws.amazon.com/aws-cost-management/pricing)
CE_METRIC = "UnblendedCost"   # what was charged, before credits and without amortising commitments
MAX_PAGES = 200           # a run is days long; more pages than this is a loop, not a bill
NO_STAGE = ""             # the stage of a cost that carries the run tag but no stage tag (a bucket, say)
OPENAI_PAGE_DAYS = 180    # the costs endpoint takes limit 1..180 daily buckets per page


class BillingError(BadInput):
    """A billing source refused or failed; the message names the source and never holds a credential."""


_SECRET = re.compile(r"(sk-[A-Za-z0-9_*.-]{4,}|AKIA[0-9A-Z]{8,}|ASIA[0-9A-Z]{8,}|[A-Za-z0-9/+]{40})")


def redact(text: str) -> str:
    """Error text from a provider can quote the key it was sent (OpenAI masks only the middle of it)."""
    return _SECRET.sub("[redacted]", str(text))


# ---------------------------------------------------------------- AWS Cost Explorer

def ce_client(timeout_s: float = 20.0):
    """A Cost Explorer client: its only endpoint is us-east-1. AWS_ENDPOINT_URL_COST_EXPLORER redirects it
    (botocore reads it), which is how a local stand-in is reached."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=min(5.0, timeout_s), read_timeout=timeout_s,
                 retries={"total_max_attempts": 3, "mode": "standard"})
    return boto3.client("ce", region_name="us-east-1", config=cfg)


def aws_costs(session_or_client, run_id: str, start: dt.date, end: dt.date) -> dict:
    """Daily cost of everything tagged `reproduce-run=RUN` from `start` to `end` (exclusive), grouped by stage
    tag and service, every page (NextPageToken). Rows: {stage, service, day, usd, estimated}; `stage` is the
    tag's value, NO_STAGE when absent. Periods Cost Explorer marks Estimated are not final yet."""
    from botocore.exceptions import BotoCoreError, ClientError

    ce = session_or_client
    if not hasattr(ce, "get_cost_and_usage"):   # a boto3.Session
        ce = session_or_client.client("ce", region_name="us-east-1")
    if end <= start:
        raise BadInput(f"billing period {start}..{end}: the end must be after the start")
    query = {"TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()}, "Granularity": "DAILY",
             "Metrics": [CE_METRIC],
             "Filter": {"Tags": {"Key": TAG_RUN, "Values": [tag_value(run_id)], "MatchOptions": ["EQUALS"]}},
             "GroupBy": [{"Type": "TAG", "Key": TAG_STAGE}, {"Type": "DIMENSION", "Key": "SERVICE"}]}
    rows, token, pages = [], None, 0
    while True:
        try:
            resp = ce.get_cost_and_usage(**query, **({"NextPageToken": token} if token else {}))
        except ClientError as e:
            err = e.response.get("Error", {})
            raise BillingError(f"AWS Cost Explorer: {err.get('Code', 'error')}: {redact(err.get('Message', ''))}"
                               + _ce_hint(err.get("Code", ""))) from None
        except BotoCoreError as e:   # no credentials, no network
            raise BillingError(f"AWS Cost Explorer: {redact(e)}") from None
        pages += 1
        for period in resp.get("ResultsByTime", []):
            day, estimated = period["TimePeriod"]["Start"], bool(period.get("Estimated"))
            for group in period.get("Groups", []):
                stage, service = _group_keys(group.get("Keys", []))
                metric = group.get("Metrics", {}).get(CE_METRIC, {})
                if metric.get("Unit", "USD") != "USD":
                    raise BillingError(f"AWS Cost Explorer: cost in {metric.get('Unit')!r}, expected USD")
                rows.append({"stage": stage, "service": service, "day": day,
                             "usd": float(metric.get("Amount") or 0.0), "estimated": estimated})
        token = resp.get("NextPageToken")
        if not token:
            break
        if pages >= MAX_PAGES:
            raise BillingError(f"AWS Cost Explorer: more than {MAX_PAGES} pages for one run; stopped")
    return {"source": "aws", "name": "AWS Cost Explorer", "period": [start.isoformat(), end.isoformat()],
            "filter": f"tag {TAG_RUN}={tag_value(run_id)}", "metric": CE_METRIC, "rows": rows, "requests": pages,
            "request_usd": round(pages * CE_REQUEST_USD, 2)}


def _group_keys(keys: list[str]) -> tuple[str, str]:
    """Cost Explorer spells a tag group `reproduce-stage$sft` (`reproduce-stage$` when untagged)."""
    stage, service = NO_STAGE, ""
    for k in keys:
        if k.startswith(TAG_STAGE + "$"):
            stage = k[len(TAG_STAGE) + 1:]
        else:
            service = k
    return stage, service


def _ce_hint(code: str) -> str:
    if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
        return " (the caller needs ce:GetCostAndUsage)"
    if code == "DataUnavailableException":
        return " (no data yet: Cost Explorer must be enabled, and tags activated as cost allocation tags)"
    return ""


# ---------------------------------------------------------------- OpenAI organization costs

def openai_client(api_key: str, base_url: str | None = None, timeout_s: float = 30.0):
    """The real openai client with an admin key (the costs endpoint refuses project keys). `base_url` None
    means OPENAI_BASE_URL or api.openai.com, as the client decides."""
    import openai

    return openai.OpenAI(api_key=api_key, base_url=base_url or None, timeout=timeout_s, max_retries=2)


def openai_costs(client, start: dt.datetime, end: dt.datetime, project_ids: list[str] | None = None) -> dict:
    """Daily costs from GET /v1/organization/costs, grouped by line item and project, every page.
    Rows: {day, start_time, end_time, line_item, project_id, usd}. Goes through the client's low-level `get`
    (present since openai 1.x), not a typed resource that only newer versions have."""
    import openai

    params: dict = {"start_time": int(start.timestamp()), "end_time": int(end.timestamp()), "bucket_width": "1d",
                    "group_by": ["line_item", "project_id"], "limit": OPENAI_PAGE_DAYS}
    if project_ids:
        params["project_ids"] = list(project_ids)
    rows, page, pages = [], None, 0
    while True:
        try:
            resp = client.get("/organization/costs", cast_to=object,
                              options={"params": {**params, **({"page": page} if page else {})}})
        except openai.APIStatusError as e:
            hint = " (the costs API needs an admin key: OPENAI_ADMIN_KEY)" if e.status_code in (401, 403) else ""
            raise BillingError(f"OpenAI costs API: HTTP {e.status_code}{hint}: {redact(_error_message(e))}") from None
        except openai.APIError as e:   # connection errors, timeouts, a body that is not JSON
            raise BillingError(f"OpenAI costs API: {type(e).__name__}: {redact(e)}") from None
        pages += 1
        if not isinstance(resp, dict) or not isinstance(resp.get("data"), list):
            raise BillingError("OpenAI costs API: the answer is not a page of buckets")
        for bucket in resp["data"]:
            t0 = int(bucket.get("start_time") or 0)
            for r in bucket.get("results") or []:
                amount = r.get("amount") or {}
                if str(amount.get("currency", "usd")).lower() != "usd":
                    raise BillingError(f"OpenAI costs API: cost in {amount.get('currency')!r}, expected usd")
                rows.append({"day": dt.datetime.fromtimestamp(t0, dt.timezone.utc).date().isoformat(),
                             "start_time": t0, "end_time": int(bucket.get("end_time") or t0 + 86400),
                             "line_item": r.get("line_item"), "project_id": r.get("project_id"),
                             "usd": float(amount.get("value") or 0.0)})
        page = resp.get("next_page")
        if not resp.get("has_more") or not page:
            break
        if pages >= MAX_PAGES:
            raise BillingError(f"OpenAI costs API: more than {MAX_PAGES} pages; stopped")
    return {"source": "openai", "name": "OpenAI costs API",
            "period": [start.date().isoformat(), end.date().isoformat()],
            "filter": f"projects {', '.join(project_ids)}" if project_ids else "whole organization",
            "rows": rows, "requests": pages}


def _error_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return type(e).__name__


def model_line_item(model: str, line_item: str | None) -> bool:
    """Whether an OpenAI line item ("gpt-4o-mini-2024-07-18, input") bills `model`: the name, then an optional
    dated snapshot, then nothing or a separator, so gpt-4o does not take gpt-4o-mini's lines."""
    if not line_item:
        return False
    pattern = re.escape(model.lower()) + r"(-\d{4}-\d{2}-\d{2})?(?![a-z0-9.-])"
    return re.match(pattern, line_item.strip().lower()) is not None
