"""`reproduce audit --billed`: AWS Cost Explorer through botocore's Stubber (pages, the lag), OpenAI's costs API
through the real openai client against a local HTTP server, corrections in the ledger, calibrated plan prices,
and no credential anywhere it should not be."""
import datetime as dt
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from costmodel import billing, calibration, prices, reconcile
from costmodel.ledger import Ledger
from test_pipeline_sim import cli

FAKE_AWS_ID = "AKIA" + "PLANTEDFAKE12345"   # built at run time: a fake, but shaped like a real id
FAKE_AWS_SECRET = "PlantedSecretKey/ForTests+0123456789abcdefg"
FAKE_OPENAI = "sk-admin-PLANTEDopenaiKEY0123456789"
EC2 = "Amazon Elastic Compute Cloud - Compute"


def group(stage, usd, service=EC2):
    return {"Keys": [f"{billing.TAG_STAGE}${stage}", service],
            "Metrics": {billing.CE_METRIC: {"Amount": repr(float(usd)), "Unit": "USD"}}}


def period(day, groups, estimated=False):
    end = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    return {"TimePeriod": {"Start": day, "End": end}, "Total": {}, "Groups": groups, "Estimated": estimated}


def stubbed_ce(pages, expected=None):
    """A real boto3 Cost Explorer client answering `pages` (lists of periods) in turn, chained by tokens;
    `expected`: the request each page must get (the Stubber checks it)."""
    ce = boto3.client("ce", region_name="us-east-1", aws_access_key_id=FAKE_AWS_ID,
                      aws_secret_access_key=FAKE_AWS_SECRET)
    stub = Stubber(ce)
    for i, periods in enumerate(pages):
        resp = {"ResultsByTime": periods, "GroupDefinitions": [], "DimensionValueAttributes": []}
        if i < len(pages) - 1:
            resp["NextPageToken"] = f"page-{i + 2}"
        stub.add_response("get_cost_and_usage", resp, expected[i] if expected else None)
    stub.activate()
    return ce, stub


def serve(answer):
    """A local HTTP server in a thread: answer(path, headers, body) -> (status, content type, JSON-able body)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self):
            length = int(self.headers.get("Content-Length") or 0)
            status, ctype, obj = answer(self.path, {k.lower(): v for k, v in self.headers.items()},
                                        self.rfile.read(length) if length else b"")
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = reply

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class CostsServer:
    """OpenAI's GET /v1/organization/costs, paged: answers `pages` in turn and keeps every request."""

    def __init__(self, pages, status=200):
        self.pages, self.status, self.requests = pages, status, []
        self.server = serve(self.answer)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def answer(self, path, headers, body):
        self.requests.append((path, headers))
        if self.status != 200:   # what OpenAI says to a wrong key: it quotes the key
            return self.status, "application/json", {"error": {
                "message": f"Incorrect API key provided: {FAKE_OPENAI}. You need an admin key",
                "type": "invalid_request_error", "code": "invalid_api_key"}}
        return 200, "application/json", self.pages[1 if "page=" in path else 0]   # page 2 when asked by token

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def costs_page(day_ts, items, has_more=False, next_page=None):
    return {"object": "page", "has_more": has_more, "next_page": next_page,
            "data": [{"object": "bucket", "start_time": day_ts, "end_time": day_ts + 86400,
                      "results": [{"object": "organization.costs.result", "amount": {"value": v, "currency": "usd"},
                                   "line_item": li, "project_id": "proj_repro"} for li, v in items]}]}


# ---------------------------------------------------------------- the sources

def test_cost_explorer_pages_through_next_page_token():
    query = {"TimePeriod": {"Start": "2026-11-20", "End": "2026-11-22"}, "Granularity": "DAILY",
             "Metrics": ["UnblendedCost"],
             "Filter": {"Tags": {"Key": "reproduce-run", "Values": ["20261120-0900-ab12"], "MatchOptions": ["EQUALS"]}},
             "GroupBy": [{"Type": "TAG", "Key": "reproduce-stage"}, {"Type": "DIMENSION", "Key": "SERVICE"}]}
    # the first request asks for the run's days by its (lowercased) tag, the second adds the token
    ce, stub = stubbed_ce([[period("2026-11-20", [group("sft", 10.5), group("generate", 2.25)])],
                           [period("2026-11-21", [group("sft", 4.5), group("", 0.75, "Amazon Simple Storage Service")],
                                   estimated=True)]],
                          expected=[query, {**query, "NextPageToken": "page-2"}])
    bill = billing.aws_costs(ce, "20261120-0900-AB12", dt.date(2026, 11, 20), dt.date(2026, 11, 22))
    stub.assert_no_pending_responses()
    assert bill["requests"] == 2 and bill["request_usd"] == 0.02
    assert [(r["stage"], r["day"], r["usd"], r["estimated"]) for r in bill["rows"]] == [
        ("sft", "2026-11-20", 10.5, False), ("generate", "2026-11-20", 2.25, False),
        ("sft", "2026-11-21", 4.5, True), ("", "2026-11-21", 0.75, True)]
    assert bill["rows"][3]["service"] == "Amazon Simple Storage Service"


def test_cost_explorer_accepts_a_session():
    ce, stub = stubbed_ce([[period("2026-11-20", [group("eval", 1.0)])]])

    class Session:
        def client(self, name, region_name=None):
            assert (name, region_name) == ("ce", "us-east-1")
            return ce

    assert billing.aws_costs(Session(), "r", dt.date(2026, 11, 20), dt.date(2026, 11, 21))["rows"][0]["usd"] == 1.0


def test_cost_explorer_refusal_is_one_line_without_the_key():
    ce = boto3.client("ce", region_name="us-east-1", aws_access_key_id=FAKE_AWS_ID, aws_secret_access_key=FAKE_AWS_SECRET)
    stub = Stubber(ce)
    stub.add_client_error("get_cost_and_usage", "AccessDeniedException",
                          f"User: arn:aws:iam::123:user/x with key {FAKE_AWS_ID} is not authorized")
    stub.activate()
    with pytest.raises(billing.BillingError) as e:
        billing.aws_costs(ce, "r", dt.date(2026, 11, 20), dt.date(2026, 11, 21))
    msg = str(e.value)
    assert "AccessDeniedException" in msg and "ce:GetCostAndUsage" in msg and "\n" not in msg
    assert FAKE_AWS_ID not in msg


def test_openai_costs_through_the_real_client_every_page():
    day = int(dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc).timestamp())
    server = CostsServer([costs_page(day, [("gpt-4o-mini-2024-07-18, input", 1.25)], True, "page_2"),
                          costs_page(day + 86400, [("gpt-4o-mini-2024-07-18, output", 2.5), ("gpt-4o, input", 9.0)])])
    try:
        client = billing.openai_client(FAKE_OPENAI, server.url)
        bill = billing.openai_costs(client, dt.datetime.fromtimestamp(day, dt.timezone.utc),
                                    dt.datetime.fromtimestamp(day + 2 * 86400, dt.timezone.utc), ["proj_repro"])
    finally:
        server.close()
    assert bill["requests"] == 2
    assert [(r["day"], r["line_item"], r["usd"]) for r in bill["rows"]] == [
        ("2026-11-20", "gpt-4o-mini-2024-07-18, input", 1.25), ("2026-11-21", "gpt-4o-mini-2024-07-18, output", 2.5),
        ("2026-11-21", "gpt-4o, input", 9.0)]
    first, second = server.requests[0][0], server.requests[1][0]
    assert first.startswith("/v1/organization/costs?") and f"start_time={day}" in first
    assert "bucket_width=1d" in first and "line_item" in first and "proj_repro" in first and "page=" not in first
    assert "page=page_2" in second
    assert server.requests[0][1]["authorization"] == f"Bearer {FAKE_OPENAI}"


def test_openai_refusal_names_the_admin_key_and_hides_it():
    server = CostsServer([], status=401)
    try:
        with pytest.raises(billing.BillingError) as e:
            billing.openai_costs(billing.openai_client(FAKE_OPENAI, server.url), dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc),
                                 dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc))
    finally:
        server.close()
    assert "HTTP 401" in str(e.value) and "OPENAI_ADMIN_KEY" in str(e.value)
    assert FAKE_OPENAI not in str(e.value) and "PLANTED" not in str(e.value)


@pytest.mark.parametrize("line_item,hit", [("gpt-4o-mini-2024-07-18, input", True), ("gpt-4o-mini, output (batch)", True),
                                           ("GPT-4o-mini", True), ("gpt-4o-mini-tts", False), ("gpt-4o-2024-08-06, input", False),
                                           (None, False)])
def test_line_items_match_the_model_not_its_cousins(line_item, hit):
    assert billing.model_line_item("gpt-4o-mini", line_item) is hit


# ---------------------------------------------------------------- a simulated run, billed

@pytest.fixture
def sim_run(home, capsys):
    code, out, err = cli(capsys, "all", "--budget", "450", "--backend", "sim", "-y")
    assert code == 0, err
    run_id = json.loads(cli(capsys, "runs", "--json")[1])[-1]["run"]
    with Ledger() as led:
        audit = led.audit(run_id)
    return run_id, {s["stage"]: s["actual"] for s in audit["stages"]}


def bill_for(actual, deltas):
    """Cost Explorer pages for the GPU stages: what the ledger recorded plus a known delta, over two pages."""
    first = [group("generate", actual["generate"]["compute_usd"] + deltas["generate"]),
             group("sft", actual["sft"]["compute_usd"] * 0.5)]
    second = [group("sft", actual["sft"]["compute_usd"] * 0.5 + deltas["sft"]),
              group("eval", actual["eval"]["compute_usd"] + deltas["eval"])]
    return [[period("2026-12-01", first)], [period("2026-12-02", second)]]


@pytest.fixture
def billed(sim_run, monkeypatch, capsys):
    """audit --billed against Cost Explorer (+$3.00 generate, +$2.50 sft, $0 eval) and OpenAI (rewrite -$2.00)."""
    run_id, actual = sim_run
    deltas = {"generate": 3.0, "sft": 2.5, "eval": 0.0, "rewrite": -2.0}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_AWS_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_AWS_SECRET)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", FAKE_OPENAI)
    clients = []

    def ce_client(timeout_s=20.0):
        ce, stub = stubbed_ce(bill_for(actual, deltas))
        clients.append(stub)
        return ce

    monkeypatch.setattr(billing, "ce_client", ce_client)
    api = actual["rewrite"]["api_usd"] + deltas["rewrite"]
    day = int(time.time()) // 86400 * 86400
    server = CostsServer([costs_page(day, [("gpt-4o-mini-2024-07-18, input (batch)", api * 0.6),
                                           ("gpt-4o-2024-08-06, input", 50.0)], True, "p2"),
                          costs_page(day, [("gpt-4o-mini-2024-07-18, output (batch)", api * 0.4)])])

    def audit(*extra):
        code, out, err = cli(capsys, "audit", run_id, "--billed", "--billing-endpoint", server.url, *extra)
        assert code == 0, err
        return out, err

    yield run_id, actual, deltas, audit
    server.close()


def test_drift_per_stage_is_reported_exactly_and_flagged(billed):
    run_id, actual, deltas, audit = billed
    out, err = audit("--json")
    report = json.loads(out)
    rows = {s["stage"]: s for s in report["stages"]}
    for stage in ("generate", "sft", "eval"):
        rec = actual[stage]["compute_usd"]
        assert rows[stage]["status"] == "billed"
        assert rows[stage]["recorded_usd"] == pytest.approx(rec, abs=1e-9)
        assert rows[stage]["billed_usd"] == pytest.approx(rec + deltas[stage], abs=1e-9)
        assert rows[stage]["drift_usd"] == pytest.approx(deltas[stage], abs=1e-9)
        assert rows[stage]["drift_pct"] == pytest.approx(deltas[stage] / rec, abs=1e-12)
    assert rows["rewrite"]["drift_usd"] == pytest.approx(-2.0, abs=1e-9)
    assert rows["rewrite"]["sources"] == ["OpenAI costs API"]
    # +$3.00 on ~$24 is above 10%; +$2.50 on ~$129 and -$2.00 on ~$37 are not
    assert {s for s, r in rows.items() if r["flagged"]} == {"generate"}
    assert rows["filter"]["status"] == rows["convert"]["status"] == "local"
    assert report["totals"]["drift_usd"] == pytest.approx(3.0 + 2.5 - 2.0, abs=1e-9)
    assert not any(report["not_asked"]), report["not_asked"]


def test_threshold_option_changes_what_is_flagged_and_table_shows_it(billed):
    run_id, actual, deltas, audit = billed
    out, err = audit("--drift-threshold", "1%")
    assert "Drift above 1%:" in out and "sft: billed" in out and "generate: billed" in out
    assert "rewrite: billed" in out and "eval: billed" not in out     # -$2 of ~$37 is above 1%, $0 is not
    assert "Recorded as corrections" in out and "Next plans: primeintellect H100:8 spot x1.0" in out


def test_bill_is_recorded_as_corrections_and_never_overwrites(billed):
    run_id, actual, deltas, audit = billed
    with Ledger() as led:
        before = [dict(r) for r in led.db.execute("SELECT * FROM stage_rows ORDER BY id")]
    audit()
    with Ledger() as led:
        after = [dict(r) for r in led.db.execute("SELECT * FROM stage_rows ORDER BY id")]
        assert after[:len(before)] == before                      # every recorded row is still there, unchanged
        new = after[len(before):]
        assert sorted(r["stage"] for r in new) == ["generate", "sft"] and {r["event"] for r in new} == {"correction"}
        sft = next(r for r in new if r["stage"] == "sft")
        assert sft["compute_usd"] == pytest.approx(actual["sft"]["compute_usd"] + 2.5)
        assert sft["price_per_hour"] == pytest.approx(sft["compute_usd"] / sft["hours"])   # the effective $/h
        assert sft["price_source"].startswith("billed: AWS Cost Explorer") and sft["state"] == "SUCCEEDED"
        api = led.db.execute("SELECT * FROM api_usage WHERE kind = 'correction'").fetchall()
        assert len(api) == 1 and api[0]["usd"] == pytest.approx(-2.0) and api[0]["model"] == "gpt-4o-mini"
        audit_now = {s["stage"]: s["actual"] for s in led.audit(run_id)["stages"]}
        assert audit_now["generate"]["compute_usd"] == pytest.approx(actual["generate"]["compute_usd"] + 3.0)
        assert audit_now["rewrite"]["api_usd"] == pytest.approx(actual["rewrite"]["api_usd"] - 2.0)
        assert led.finished_stages(run_id) >= {"generate", "sft", "eval", "rewrite"}
        events = led.events(run_id, "billed")
        assert {e["stage"] for e in events} == {"generate", "sft", "eval", "rewrite"}   # eval: billed as recorded
        assert next(e for e in events if e["stage"] == "generate")["numbers"]["flagged"] is True


def test_running_it_twice_records_nothing_new(billed):
    run_id, actual, deltas, audit = billed
    first, _ = audit("--json")

    def counts():
        with Ledger() as led:
            return [led.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("stage_rows", "api_usage", "events")]

    after_first = counts()
    second, _ = audit("--json")
    assert counts() == after_first
    a, b = json.loads(first), json.loads(second)
    assert b["recorded"] == [] and a["recorded"]
    # the second audit still compares against what was recorded, not against the corrections
    assert [(s["stage"], s["recorded_usd"], s["drift_usd"]) for s in a["stages"]] == \
        [(s["stage"], s["recorded_usd"], s["drift_usd"]) for s in b["stages"]]
    out, _ = audit()
    assert "Nothing new to record" in out


def test_next_plan_is_priced_at_the_billed_rate(billed, capsys):
    run_id, actual, deltas, audit = billed
    code, out, err = cli(capsys, "plan", "--json")
    before = json.loads(out)
    assert not any("calibrated from billing" in (s["price_source"] or "") for s in before["stages"])
    audit()
    prices.clear_cache()
    code, out, err = cli(capsys, "plan", "--json")
    plan = json.loads(out)
    gpu = [s for s in ("generate", "sft", "eval")]
    recorded = sum(actual[s]["compute_usd"] for s in gpu)
    factor = (recorded + sum(deltas[s] for s in gpu)) / recorded
    hours = sum(actual[s]["hours"] for s in gpu)
    row = next(s for s in plan["stages"] if s["cloud"] == "primeintellect")
    assert "spot x" in row["price_source"] and "calibrated from billing, 1 run" in row["price_source"]
    catalog = next(s for s in before["stages"] if s["stage"] == row["stage"])["price_per_hour"]
    assert row["price_per_hour"] == pytest.approx(catalog * factor)
    assert row["price_per_hour"] == pytest.approx((recorded + 5.5) / hours)     # the effective $/h billed
    assert plan["totals"]["total_usd"] != pytest.approx(before["totals"]["total_usd"])
    code, out, err = cli(capsys, "calibration", "--json")
    assert any(r["key"] == "price/primeintellect/H100:8/spot" and r["value"] == pytest.approx(factor)
               for r in json.loads(out))


def test_with_billing_scales_one_market_and_keeps_the_catalog_price():
    offer = prices.Offer("aws", "us-east-1", "use1-az1", "p5.48xlarge", "H100", 8, 98.32, 10.24, "catalog", "2026-11-24")
    factors = {("aws", "H100:8", "spot"): {"factor": 1.1, "runs": 2}}
    (got,) = prices.with_billing([offer], factors)
    assert got.spot == pytest.approx(11.264) and got.on_demand == 98.32
    assert got.list_price(True) == 10.24 and got.list_price(False) == 98.32
    assert got.source == "catalog; spot x1.100 calibrated from billing, 2 runs"
    assert prices.with_billing([offer], {("gcp", "H100:8", "spot"): {"factor": 2, "runs": 1}}) == [offer]


# ---------------------------------------------------------------- the lag, and a real run's clock

def test_periods_run_from_the_first_attempt_to_the_last_row_whatever_the_hour(home):
    """Pinned clocks across midnight: the plan rows (no spend) do not widen the window, and it never reaches
    past tomorrow. (A `time.time()` version of this passed or failed with the hour of day.)"""
    t = lambda day, hour: dt.datetime(2026, 11, day, hour, tzinfo=dt.timezone.utc).timestamp()
    with Ledger() as led:
        led.create_run("r1", recipe="x", scale="full", backend="sky", budget=100.0)
        led.add_stage_row("r1", "sft", "planned", at=t(20, 23), kind="gpu", compute_usd=10.0)
        attempt = led.add_stage_row("r1", "sft", "started", at=t(21, 1), kind="gpu", cloud="aws",
                                    accelerator="H100:8", spot=True)
        led.finish_stage("r1", "sft", attempt, at=t(23, 22), state="SUCCEEDED", kind="gpu", cloud="aws",
                         accelerator="H100:8", spot=True, gpus=8, nodes=1, hours=69.0, price_per_hour=2.0,
                         compute_usd=138.0, started_at=t(21, 1), ended_at=t(23, 22))
        assert reconcile.periods(led, "r1", t(25, 12))["aws"] == (dt.date(2026, 11, 21), dt.date(2026, 11, 24))
        # asked the same evening it ended: the end is capped at tomorrow, still one day past the last row
        assert reconcile.periods(led, "r1", t(23, 23))["aws"] == (dt.date(2026, 11, 21), dt.date(2026, 11, 24))


def test_stage_inside_the_lag_is_pending_and_not_recorded(home):
    now = time.time()
    with Ledger() as led:
        led.create_run("r1", recipe="x", scale="full", backend="sky", budget=100.0)
        for stage, ended_h_ago in (("generate", 72), ("sft", 2)):
            led.add_stage_row("r1", stage, "planned", at=now - 80 * 3600, kind="gpu", compute_usd=10.0)
            attempt = led.add_stage_row("r1", stage, "started", at=now - (ended_h_ago + 5) * 3600, kind="gpu",
                                        cloud="aws", accelerator="H100:8", spot=True)
            led.finish_stage("r1", stage, attempt, at=now - ended_h_ago * 3600, state="SUCCEEDED", kind="gpu",
                             cloud="aws", accelerator="H100:8", spot=True, gpus=8, nodes=1, hours=5.0,
                             price_per_hour=2.0, compute_usd=10.0, started_at=now - (ended_h_ago + 5) * 3600,
                             ended_at=now - ended_h_ago * 3600)
        window = reconcile.periods(led, "r1", now)["aws"]
        # from the first attempt (generate started 77 h ago), not the plan rows: nothing is spent before it
        assert window[0] == dt.datetime.fromtimestamp(now - 77 * 3600, dt.timezone.utc).date()
        ce, stub = stubbed_ce([[period("2026-11-28", [group("generate", 12.0)]),
                                period("2026-12-01", [group("sft", 4.0)], estimated=True)]])
        bill = billing.aws_costs(ce, "r1", *window)
        report = reconcile.reconcile(led, "r1", [bill], now=now)
        rows = {s["stage"]: s for s in report["stages"]}
        assert rows["generate"]["status"] == "billed" and rows["generate"]["drift_usd"] == pytest.approx(2.0)
        assert rows["sft"]["status"] == "pending" and rows["sft"]["billed_usd"] == 4.0 and rows["sft"]["estimated"]
        assert not rows["sft"]["flagged"] and rows["sft"]["changes"] is None
        written = reconcile.record(led, report)
        assert [w["stage"] for w in written] == ["generate"]
        assert led.audit("r1")["stages"][1]["actual"]["compute_usd"] == 10.0     # sft: still what was recorded
        # a day later the lag has passed: the same bill is final for sft too
        later = reconcile.reconcile(led, "r1", [bill], now=now + 30 * 3600)
        assert {s["stage"]: s["status"] for s in later["stages"]}["sft"] == "billed"


# ---------------------------------------------------------------- bad input, and no credential leaks

@pytest.mark.parametrize("args,msg", [(["--drift-threshold", "lots"], "--drift-threshold 'lots'"),
                                      (["--drift-threshold", "0"], "expected a percentage above 0"),
                                      (["--csv"], "--csv and --plot are not available"),
                                      (["--plot", "x.png"], "--csv and --plot are not available")])
def test_bad_billed_options_are_one_line_exit_2(sim_run, capsys, args, msg):
    code, out, err = cli(capsys, "audit", "--billed", *args)
    assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_threshold_without_billed_and_no_source_are_one_line(sim_run, capsys):
    code, out, err = cli(capsys, "audit", "--drift-threshold", "5")
    assert code == 2 and "go with --billed" in err
    code, out, err = cli(capsys, "audit", "--billed")
    assert code == 2 and err.startswith("error: no billing source answered: AWS Cost Explorer: no AWS credentials")
    assert "OPENAI_ADMIN_KEY" in err and err.count("\n") == 1


def fake_cost_explorer(pages, seen):
    """Cost Explorer's JSON protocol on a local port, for a real boto3 client in another process."""
    def answer(path, headers, body):
        query = json.loads(body or b"{}")
        seen.append((headers, query))
        return 200, "application/x-amz-json-1.1", pages[1] if query.get("NextPageToken") else pages[0]

    return serve(answer)


def test_no_credential_reaches_the_ledger_or_the_output(sim_run, home, tmp_path):
    """The real CLI in a subprocess, real boto3 signing requests to a local Cost Explorer with planted keys,
    the real openai client sending a planted admin key to a local costs server that rejects it and quotes it."""
    run_id, actual = sim_run
    seen = []
    ce = fake_cost_explorer([{"ResultsByTime": [period("2026-12-01", [group("sft", actual["sft"]["compute_usd"] + 1)])],
                              "NextPageToken": "t2"},
                             {"ResultsByTime": [period("2026-12-02", [group("eval", 1.0)])]}], seen)
    openai_server = CostsServer([], status=401)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=FAKE_AWS_ID, AWS_SECRET_ACCESS_KEY=FAKE_AWS_SECRET,
               OPENAI_ADMIN_KEY=FAKE_OPENAI, AWS_ENDPOINT_URL_COST_EXPLORER=f"http://127.0.0.1:{ce.server_port}",
               AWS_EC2_METADATA_DISABLED="true")
    try:
        outputs = []
        for extra in ([], ["--json"]):
            p = subprocess.run([sys.executable, "-m", "reproduce", "audit", run_id, "--billed", "--billing-endpoint",
                                openai_server.url, *extra], env=env, capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            outputs += [p.stdout, p.stderr]
    finally:
        ce.shutdown()
        openai_server.close()
    assert len(seen) == 4 and seen[1][1]["NextPageToken"] == "t2"          # both pages, twice, really signed
    assert FAKE_AWS_ID in seen[0][0]["authorization"]
    assert "Billed: run" in outputs[0] and "HTTP 401" in outputs[0]
    assert {s["stage"]: s["drift_usd"] for s in json.loads(outputs[2])["stages"]}["sft"] == pytest.approx(1.0)
    blobs = [o.encode() for o in outputs]
    root = Path(os.environ["REPRODUCE_HOME"])
    blobs += [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    for secret in (FAKE_AWS_ID, FAKE_AWS_SECRET, FAKE_OPENAI, "PLANTED"):
        assert not any(secret.encode() in b for b in blobs), secret


def test_a_stage_billed_over_two_attempts_is_split_as_recorded(home):
    """A failed attempt and its retry: each is corrected in proportion to what it recorded, so the stage adds up to
    the bill and each attempt keeps its hours; a cost with the run tag but no stage tag is the bucket's row."""
    now = time.time()
    with Ledger() as led:
        led.create_run("r2", recipe="x", scale="full", backend="sky", budget=100.0)
        led.add_stage_row("r2", "sft", "planned", at=now - 90 * 3600, kind="gpu", compute_usd=9.0)
        for usd, state, event in ((4.0, "FAILED", "failed"), (6.0, "SUCCEEDED", "finished")):
            a = led.add_stage_row("r2", "sft", "started", at=now - 80 * 3600, kind="gpu", cloud="aws")
            fields = dict(state=state, kind="gpu", cloud="aws", accelerator="H100:8", spot=False, gpus=8, nodes=1,
                          hours=usd / 2, price_per_hour=2.0, compute_usd=usd, ended_at=now - 72 * 3600)
            if event == "failed":
                led.add_stage_row("r2", "sft", "failed", at=now - 75 * 3600, attempt=a, **fields)
            else:
                led.finish_stage("r2", "sft", a, at=now - 72 * 3600, **fields)
        ce, stub = stubbed_ce([[period("2026-11-28", [group("sft", 12.0), group("", 1.5, "Amazon Simple Storage Service")])]])
        report = reconcile.reconcile(led, "r2", [billing.aws_costs(ce, "r2", dt.date(2026, 11, 28), dt.date(2026, 11, 29))],
                                     now=now, storage_plan={"total_usd": 1.0})
        rows = {s["stage"]: s for s in report["stages"]}
        assert rows["sft"]["recorded_usd"] == 10.0 and rows["sft"]["drift_pct"] == pytest.approx(0.2)
        assert rows[reconcile.RUN_LEVEL]["billed_usd"] == 1.5 and rows[reconcile.RUN_LEVEL]["planned_usd"] == 1.0
        reconcile.record(led, report)
        attempts = led.attempts("r2", "sft")
        assert [a["compute_usd"] for a in attempts] == pytest.approx([4.8, 7.2])
        assert [a["price_per_hour"] for a in attempts] == pytest.approx([2.4, 2.4])       # effective: $12 / 5 h
        assert [a["state"] for a in attempts] == ["FAILED", "SUCCEEDED"]
        # the compute as billed, and the bucket's $1.50 bill as a storage correction (the ledger recorded none)
        assert led.spent("r2") == pytest.approx(12.0 + 1.5)
        assert led.storage("r2")[reconcile.RUN_LEVEL]["usd"] == pytest.approx(1.5)
        assert {e["stage"] for e in led.events("r2", "billed")} == {"sft", reconcile.RUN_LEVEL}
        factor = calibration.price_factors(led)[("aws", "H100:8", "on-demand")]
        assert factor["factor"] == pytest.approx(1.2) and factor["effective_per_hour"] == pytest.approx(2.4)
        assert reconcile.record(led, reconcile.reconcile(led, "r2", [billing.aws_costs(
            stubbed_ce([[period("2026-11-28", [group("sft", 12.0), group("", 1.5, "S3")])]])[0], "r2",
            dt.date(2026, 11, 28), dt.date(2026, 11, 29))], now=now, storage_plan={"total_usd": 1.0})) == []


def test_the_bucket_is_recorded_per_stage_and_its_bill_reconciled_to_date(sim_run):
    """Each stage's bucket contents are recorded when it ends (the sim: the plan's GB), and the run-tagged S3
    bill is compared with what they have cost so far: GB x the days since each was written + egress."""
    run_id, actual = sim_run
    with Ledger() as led:
        kept = led.storage(run_id)
        plan = json.loads(led.run(run_id)["plan_json"])
        planned = {s["stage"]: s["storage"] for s in plan["stages"]}
        assert set(kept) == set(planned) == {"generate", "filter", "rewrite", "convert", "sft", "eval"}
        for stage, c in kept.items():
            assert c["gb_written"] == pytest.approx(planned[stage]["gb_written"]) and "simulated" in c["measured"]
            if stage != "sft":
                assert c["usd"] == pytest.approx(planned[stage]["usd"])
        # sft's checkpoints were deleted when it succeeded: paid for the hours it ran, not the month
        assert kept["sft"]["scratch_gb"] == pytest.approx(planned["sft"]["scratch_gb"])
        assert kept["sft"]["scratch_gb"] > 900
        sft = led.attempts(run_id, "sft")[-1]
        assert kept["sft"]["scratch_hours"] == pytest.approx((sft["ended_at"] - sft["started_at"]) / 3600)
        assert [e["stage"] for e in led.events(run_id, "discarded")] == []       # the sim has no bucket to delete in
        spent = led.spent(run_id)
        audit = led.audit(run_id)["totals"]
        assert audit["storage_usd"] == pytest.approx(sum(c["usd"] for c in kept.values()))
        assert audit["actual_usd"] == pytest.approx(spent)
        now = max(c["at"] for c in kept.values()) + 10 * 86400        # ten days after the last stage wrote
        to_date = sum(c["egress_usd"] + c["storage_usd"] * min((now - c["at"]) / 86400 / 30, 1.0)
                      for c in kept.values())
        ce, _ = stubbed_ce([[period("2026-12-01", [group("", to_date + 0.75, "Amazon Simple Storage Service")])]])
        report = reconcile.reconcile(led, run_id, [billing.aws_costs(ce, run_id, dt.date(2026, 12, 1),
                                                                     dt.date(2026, 12, 2))], now=now)
        row = next(s for s in report["stages"] if s["stage"] == reconcile.RUN_LEVEL)
        assert row["recorded_usd"] == pytest.approx(to_date) and row["drift_usd"] == pytest.approx(0.75)
        assert row["planned_usd"] == pytest.approx(sum(s["usd"] for s in planned.values()))
        written = reconcile.record(led, report)
        assert [w["storage_usd_delta"] for w in written if w["stage"] == reconcile.RUN_LEVEL] == [pytest.approx(0.75)]
        assert led.spent(run_id) == pytest.approx(spent + 0.75)                  # the bill's delta is spent
        assert led.audit(run_id)["totals"]["storage_correction_usd"] == pytest.approx(0.75)
        again = reconcile.reconcile(led, run_id, [billing.aws_costs(stubbed_ce([[period("2026-12-01", [group(
            "", to_date + 0.75, "Amazon Simple Storage Service")])]])[0], run_id, dt.date(2026, 12, 1),
            dt.date(2026, 12, 2))], now=now)
        assert reconcile.record(led, again) == []                                 # the same bill: nothing new
