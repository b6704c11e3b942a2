"""The rewrite stage against a local OpenAI-compatible server, through the real `openai` client."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest

from costmodel.api_prices import api_cost, token_price
from reproduce import recipe as recipes
from reproduce.stages import rewrite
from reproduce.stages.smoke import local_openai, smoke_data
from reproduce.stages.smoke.local_openai import LocalOpenAI

SECRET = "sk-test-DO-NOT-LEAK-4f1c9a7e"


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """No real waiting: backoff and polling sleep ~0 s; the API key is a marker we can search for."""
    monkeypatch.setattr(rewrite, "BACKOFF_S", 0.001)
    monkeypatch.setattr(rewrite, "POLL_S", 0.0)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("REPRODUCE_API_BUDGET_USD", raising=False)


@pytest.fixture
def server(monkeypatch):
    with LocalOpenAI() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        yield srv


def kept_records(n_math=3, n_code=2):
    """Records as the filter stage keeps them: smoke problems with their correct teacher responses."""
    out = []
    for name, domain, n in (("numina_math", "math", n_math), ("apps", "code", n_code)):
        for p in smoke_data.problems(name, domain, n):
            right, _ = smoke_data.reference_responses(p)
            out.append(dict(p, prompt=p["problem"], response="Let me think.\n\nHmm, check again.\n\n" + right,
                            correct=True, reason="passed"))
    return out


def artifacts(tmp_path, records, model="gpt-4o-mini", batch=True):
    recipe = recipes.load(scale="smoke", sets=[f"rewrite.model={model}", f"rewrite.batch={str(batch).lower()}"])
    recipe["filter"]["cpus"] = 1
    (tmp_path / "filter").mkdir(parents=True)
    (tmp_path / "filter" / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "recipe.yaml").write_text(recipes.dump(recipe))
    return ["--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path)]


def outputs(tmp_path):
    rows = [json.loads(x) for x in (tmp_path / "rewrite" / "rewritten.jsonl").read_text().splitlines()]
    return rows, json.loads((tmp_path / "rewrite" / "summary.json").read_text())


def test_batch_path_end_to_end_rewrites_rechecks_and_accounts(tmp_path, server):
    records = kept_records()
    assert rewrite.main(artifacts(tmp_path, records)) == 0
    rows, summary = outputs(tmp_path)
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    for row in rows:
        text = row["rewritten"]
        assert row["format_ok"] and text.startswith("<|begin_of_thought|>")
        assert row["response"].strip() in text                      # the thought is the trace, verbatim
        assert row["recheck_correct"] is True, row["recheck_reason"]  # graded again on the rewritten text
    solution = rows[-1]["rewritten"].split("<|begin_of_solution|>")[1]
    assert solution.count("```") == 2                                # code: one block in the solution
    assert server.requests["files.create"] == 1 and server.requests["batches.create"] == 1
    assert server.requests["chat"] == 0
    assert summary["batch"] is True and summary["completed"] == len(records) == summary["recheck_correct"]
    (usage,) = summary["api_usage"]
    assert usage["model"] == "gpt-4o-mini" and usage["batch"] is True
    assert usage["prompt_tokens"] == sum(u["prompt_tokens"] for u in server.usages)
    assert usage["cached_tokens"] > 0          # the system prompt repeats: the server reports it cached
    assert summary["usd"] == usage["usd"] > 0


def test_cost_is_api_cost_of_each_response_usage(tmp_path, server):
    assert rewrite.main(artifacts(tmp_path, kept_records())) == 0
    _, summary = outputs(tmp_path)
    expected = sum(api_cost("gpt-4o-mini", u["prompt_tokens"], u["completion_tokens"],
                            u["prompt_tokens_details"]["cached_tokens"], batch=True) for u in server.usages)
    assert summary["api_usage"][0]["usd"] == pytest.approx(expected, rel=1e-9)
    # and Batch is half the sync price of uncached input and output; cached input keeps its price (genai-prices:
    # OpenAI's Batch table lists no cached-input rate)
    u = summary["api_usage"][0]
    p, uncached = token_price("gpt-4o-mini"), u["prompt_tokens"] - u["cached_tokens"]
    assert u["cached_tokens"] > 0 and u["usd"] == pytest.approx(
        (uncached * p.input / 2 + u["cached_tokens"] * p.cached_input + u["completion_tokens"] * p.output / 2) / 1e6)


def test_inputs_are_split_within_the_batch_limits(tmp_path, server, monkeypatch):
    monkeypatch.setattr(rewrite, "MAX_BATCH_REQUESTS", 2)
    assert rewrite.main(artifacts(tmp_path, kept_records(3, 2))) == 0
    assert server.requests["batches.create"] == 3                   # 5 requests, <= 2 a file
    lines = [(str(i), b"x" * 40) for i in range(5)]
    assert [len(c) for c in rewrite.chunk_lines(lines, max_requests=10, max_bytes=100)] == [2, 2, 1]


def test_a_failed_batch_line_is_resubmitted(tmp_path, monkeypatch):
    records = kept_records(2, 1)
    args = artifacts(tmp_path, records)
    recipe = rewrite.load_recipe(args[1])
    failing = rewrite.cache_key(rewrite.build_request(records[1], recipe["rewrite"]))
    with LocalOpenAI(fail_batch_lines={failing: 1}) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        assert rewrite.main(args) == 0
    rows, summary = outputs(tmp_path)
    assert len(rows) == 3 and summary["failed"] == 0
    assert summary["resubmitted"] == 1 and summary["batches"] == srv.requests["batches.create"] == 2


def test_a_line_that_keeps_failing_is_given_up_after_bounded_attempts(tmp_path, monkeypatch, capsys):
    records = kept_records(2, 0)
    args = artifacts(tmp_path, records)
    failing = rewrite.cache_key(rewrite.build_request(records[0], rewrite.load_recipe(args[1])["rewrite"]))
    with LocalOpenAI(fail_batch_lines={failing: 99}) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        assert rewrite.main(args) == 1
    assert srv.requests["batches.create"] == rewrite.MAX_ATTEMPTS
    rows, summary = outputs(tmp_path)
    assert [r["id"] for r in rows] == [records[1]["id"]] and summary["failed"] == 1
    assert "run again to retry only those" in capsys.readouterr().err


def test_a_failed_batch_is_submitted_again(tmp_path, monkeypatch, capsys):
    with LocalOpenAI(fail_batches=1) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        assert rewrite.main(artifacts(tmp_path, kept_records(2, 1))) == 0
    rows, summary = outputs(tmp_path)
    assert len(rows) == 3 and summary["resubmitted"] == 3 and srv.requests["batches.create"] == 2
    assert "injected_failure" in capsys.readouterr().err


def test_sync_recovers_from_429_and_500_with_counted_retries(tmp_path, monkeypatch):
    records = kept_records(2, 1)
    with LocalOpenAI(fail_chat=[429, 500, 429, 503]) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        assert rewrite.main(artifacts(tmp_path, records, batch=False) + ["--workers", "1"]) == 0
    rows, summary = outputs(tmp_path)
    assert len(rows) == 3 and summary["retries"] == 4
    assert srv.requests["chat"] == 3 + 4 and srv.requests["batches.create"] == 0
    assert summary["batch"] is False and summary["api_usage"][0]["batch"] is False


def test_sync_gives_up_after_its_retry_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(rewrite, "SYNC_RETRIES", 3)
    with LocalOpenAI(fail_chat=[500] * 3) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        assert rewrite.main(artifacts(tmp_path, kept_records(1, 0), batch=False)) == 1
    assert srv.requests["chat"] == 3
    assert outputs(tmp_path)[1]["failed"] == 1


def test_backoff_grows_exponentially_with_jitter(monkeypatch):
    monkeypatch.setattr(rewrite, "BACKOFF_S", 1.0)
    slept = []
    with LocalOpenAI(fail_chat=[500, 500, 500]) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        _, retries = rewrite.with_retries(
            lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "1"}]),
            sleep=slept.append)
    assert retries == 3
    for n, delay in enumerate(slept):                 # equal jitter: between half and all of 2^n
        assert 2 ** n / 2 <= delay <= 2 ** n


def test_a_rerun_hits_the_cache_and_pays_nothing(tmp_path, server):
    args = artifacts(tmp_path, kept_records())
    assert rewrite.main(args) == 0
    first_rows, first = outputs(tmp_path)
    served = server.requests["total"]
    assert rewrite.main(args) == 0
    rows, summary = outputs(tmp_path)
    assert server.requests["total"] == served            # nothing sent at all
    assert summary["cached"] == 5 and summary["submitted"] == 0
    assert summary["usd_this_run"] == 0 and summary["api_usage"] == first["api_usage"]   # nothing counted twice
    assert len((tmp_path / "rewrite" / "usage.jsonl").read_text().splitlines()) == 5
    assert [r["rewritten"] for r in rows] == [r["rewritten"] for r in first_rows]
    # a record added later is the only one sent
    with open(tmp_path / "filter" / "kept.jsonl", "a") as f:
        f.write(json.dumps(dict(kept_records(4, 0)[-1])) + "\n")
    assert rewrite.main(args) == 0
    assert outputs(tmp_path)[1]["submitted"] == 1 and server.requests["batches.create"] == 2


def test_a_batch_left_in_flight_is_polled_not_resubmitted(tmp_path, server, monkeypatch):
    args = artifacts(tmp_path, kept_records(2, 0))

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rewrite, "_poll", crash)
    assert rewrite.main(args) == 130
    assert server.requests["batches.create"] == 1
    monkeypatch.undo()
    monkeypatch.setattr(rewrite, "POLL_S", 0.0)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert rewrite.main(args) == 0
    assert server.requests["batches.create"] == 1 and outputs(tmp_path)[1]["completed"] == 2


def test_the_api_key_appears_in_no_output(tmp_path, server, capsys):
    assert rewrite.main(artifacts(tmp_path, kept_records(1, 1))) == 0
    assert rewrite.main(artifacts(tmp_path / "sync", kept_records(1, 1), batch=False)) == 0
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "cache.sqlite" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def test_refuses_when_the_estimate_exceeds_the_budget(tmp_path, server, monkeypatch, capsys):
    args = artifacts(tmp_path, kept_records())
    monkeypatch.setenv("REPRODUCE_API_BUDGET_USD", "0.000001")
    assert rewrite.main(args) == 3
    assert "exceeds REPRODUCE_API_BUDGET_USD" in capsys.readouterr().err
    assert server.requests["total"] == 0
    monkeypatch.setenv("REPRODUCE_API_BUDGET_USD", "5")
    assert rewrite.main(args) == 0


def test_estimate_is_chars_over_four_and_the_output_ratio(tmp_path, capsys):
    records = kept_records(2, 1)
    recipe = recipes.load(sets=["rewrite.output_ratio=0.5"])
    short, long = {"domain": "math", "response": "x" * 400}, {"domain": "math", "response": "x" * 800}
    a, b = rewrite.estimate_tokens([short], recipe), rewrite.estimate_tokens([long], recipe)
    assert b["prompt_tokens"] - a["prompt_tokens"] == 100                  # 400 more characters, 4 a token
    assert (a["completion_tokens"], b["completion_tokens"]) == (50, 100)   # half of the traces' 100 and 200 tokens
    capped = recipes.load(sets=["rewrite.output_ratio=0.5", "rewrite.max_tokens=64"])
    assert rewrite.estimate_tokens([long], capped)["completion_tokens"] == 64
    # gpt-4o-mini: $0.15 in and $0.60 out per 1M tokens, half price in the Batch API (environment.md, "OpenAI")
    assert b["usd"] == pytest.approx((b["prompt_tokens"] * 0.15 + 100 * 0.60) / 1e6 / 2, abs=1e-6)
    # --estimate prints it and needs no key, no server
    os.environ.pop("OPENAI_API_KEY")
    assert rewrite.main(artifacts(tmp_path, records) + ["--estimate"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["requests"] == 3 and printed["usd"] > 0
    assert rewrite.main(artifacts(tmp_path / "dry", records) + ["--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["input_files"] == 1
    assert not (tmp_path / "rewrite" / "summary.json").exists()


def test_missing_key_without_base_url_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY")
    assert rewrite.main(artifacts(tmp_path, kept_records(1, 0))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OPENAI_API_KEY is not set" in err


@pytest.mark.parametrize("setup, message", [
    (lambda p: (p / "filter" / "kept.jsonl").unlink(), "run the filter stage first"),
    (lambda p: (p / "filter" / "kept.jsonl").write_text("not json\n"), "not a JSON line"),
    (lambda p: (p / "recipe.yaml").write_text("rewrite: {model: 3}\n"), "rewrite.model = 3"),
    (lambda p: (p / "recipe.yaml").write_text(
        recipes.dump(recipes.load(sets=["rewrite.model=gpt-9"]))), "no token price for model 'gpt-9'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, message):
    args = artifacts(tmp_path, kept_records(1, 0))
    setup(tmp_path)
    assert rewrite.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_smoke_model_starts_the_local_formatter_itself_and_costs_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    assert rewrite.main(artifacts(tmp_path, kept_records(1, 1), model="local-formatter")) == 0
    rows, summary = outputs(tmp_path)
    assert all(r["recheck_correct"] for r in rows)
    assert summary["api_usage"][0]["model"] == "local-formatter" and summary["usd"] == 0


def test_the_stage_runs_as_a_program_with_a_grading_pool(tmp_path):
    """The real CLI process, local formatter started in-process, re-check in 2 worker processes."""
    args = artifacts(tmp_path, kept_records(2, 2), model="local-formatter")
    recipe = rewrite.load_recipe(args[1])
    recipe["filter"]["cpus"] = 2
    (tmp_path / "recipe.yaml").write_text(recipes.dump(recipe))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    out = subprocess.run([sys.executable, "-m", "reproduce.stages.rewrite", *args, "--poll-s", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    rows, summary = outputs(tmp_path)
    assert summary["recheck_correct"] == 4 and all(r["recheck_reason"] == "passed" for r in rows)


def test_formatter_takes_the_last_answer_or_code_block():
    text = local_openai.format_trace("x is \\boxed{1}.\n\nNo: \\boxed{\\frac{1}{2}}")
    assert text.endswith("The final answer is $\\boxed{\\frac{1}{2}}$.\n\n<|end_of_solution|>")
    code = local_openai.format_trace("try\n```python\nprint(1)\n```\nbetter:\n```py\nprint(2)\n```\n")
    assert code.split("<|begin_of_solution|>")[1].strip().startswith("```python\nprint(2)\n```")
    assert rewrite.format_ok(code) and not rewrite.format_ok("<|end_of_thought|><|begin_of_thought|>")


def test_server_reports_truncation_and_rejects_unknown_files():
    with LocalOpenAI() as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        r = client.chat.completions.create(model="m", max_tokens=3,
                                           messages=[{"role": "user", "content": "a b c d e f"}])
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
        with pytest.raises(openai.NotFoundError):
            client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                                  completion_window="24h")


def test_server_runs_as_a_process_and_prints_its_url():
    proc = subprocess.Popen([sys.executable, "-m", "reproduce.stages.smoke.local_openai", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        r = client.chat.completions.create(model="local-formatter",
                                           messages=[{"role": "user", "content": "so \\boxed{7}"}])
        assert "\\boxed{7}" in r.choices[0].message.content.split("<|begin_of_solution|>")[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "reproduce.stages.rewrite", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--sync" in out.stdout


def _paid(server, batch: bool) -> float:
    return sum(api_cost("gpt-4o-mini", u["prompt_tokens"], u["completion_tokens"],
                        u["prompt_tokens_details"]["cached_tokens"], batch=batch) for u in server.usages)


@pytest.mark.parametrize("batch", [False, True])
def test_a_crash_then_resume_reports_every_dollar_paid(tmp_path, server, monkeypatch, batch):
    """The issue: killed after 800 of 2,000 results and resumed, the stage reported only what the resume paid.
    Here it dies after 3 of 8 paid results; the resume pays the other 5; the summary sums all 8."""
    args = artifacts(tmp_path, kept_records(6, 2), batch=batch)
    real, calls = rewrite.cache_result, []

    def dies_after_three(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt          # the process dies here: results paid, not all cached
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(rewrite, "cache_result", dies_after_three)
    assert rewrite.main(args) == 130
    log = tmp_path / "rewrite" / "usage.jsonl"
    assert len(log.read_text().splitlines()) >= 3            # at least what was cached was logged as paid
    monkeypatch.setattr(rewrite, "cache_result", real)
    assert rewrite.main(args) == 0
    _, summary = outputs(tmp_path)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert summary["usd"] == pytest.approx(sum(x["usd"] for x in lines), rel=1e-12)
    assert summary["usd"] > summary["usd_this_run"] > 0
    # every response the server was paid for is in the log once: sync answers that arrived but were never
    # cached were asked (and paid) again, and both payments count; a batch read again is one payment
    assert len(lines) == len(server.usages) >= 8
    assert summary["usd"] == pytest.approx(_paid(server, batch), rel=1e-9)
    if batch:
        assert len(lines) == 8


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    log = tmp_path / "usage.jsonl"
    log.write_text(json.dumps({"model": "m", "usd": 0.5}) + "\n" + '{"model": "m", "us')
    usage = rewrite.Usage(str(log))
    usage.add("m", False, 10, 0, 5, 0.25)
    usage.close()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["usd"] for x in lines] == [0.5, 0.25]
    assert rewrite.logged_usage(str(log)) == [{"model": "m", "batch": False, "prompt_tokens": 10,
                                               "cached_tokens": 0, "completion_tokens": 5, "usd": 0.75}]


def test_what_was_paid_stops_it_when_the_estimate_was_wrong(tmp_path, server, monkeypatch, capsys):
    """The estimate said $0 (wrong), the cap is a hair above $0: the first paid request reaches it, no second
    is sent, exit 3, and what was paid is logged and cached; a rerun with room finishes and pays only the rest."""
    records = kept_records(3, 0)
    args = artifacts(tmp_path, records, batch=False) + ["--workers", "1"]
    real = rewrite.estimate_tokens
    monkeypatch.setattr(rewrite, "estimate_tokens", lambda recs, recipe: dict(real(recs, recipe), usd=0.0))
    monkeypatch.setenv("REPRODUCE_API_BUDGET_USD", "0.0000001")
    assert rewrite.main(args) == 3
    err = capsys.readouterr().err
    assert "REPRODUCE_API_BUDGET_USD=$1e-07 left for it; stopped before the next request" in err, err
    assert server.requests["chat"] == 1
    paid = [json.loads(x) for x in (tmp_path / "rewrite" / "usage.jsonl").read_text().splitlines()]
    assert len(paid) == 1 and paid[0]["usd"] > 1e-7
    monkeypatch.setenv("REPRODUCE_API_BUDGET_USD", "5")
    assert rewrite.main(args) == 0
    assert server.requests["chat"] == 3                      # the cached one is not asked again
    assert len(outputs(tmp_path)[0]) == 3
