"""A submitted OpenAI Batch bills whether or not anyone watches it: it is admitted whole when it is submitted,
its commitment is logged for the controller, `cancel` cancels it, and what it finished before it stopped is
paid once. The real `openai` client against the local OpenAI-compatible server, the stage as a real process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from costmodel.ledger import Ledger
from reproduce import recipe as recipes
from reproduce import stage_loop
from reproduce.stages import rewrite
from reproduce.stages.lib import batch_log
from reproduce.stages.smoke.local_openai import LocalOpenAI
from test_rewrite import SECRET, artifacts, kept_records


def _env(srv, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPRODUCE_", "OPENAI_"))}
    return {**env, "OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": SECRET, **extra}


def _stage(args, env, *more, wait=True):
    cmd = [sys.executable, "-m", "reproduce.stages.rewrite", *args, "--poll-s", "0.05", *more]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(check, timeout_s=60.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


def _usage(tmp_path):
    return batch_log.lines(tmp_path / "rewrite" / "usage.jsonl")


def _running(srv) -> bool:
    return any(e["batch"]["status"] == "in_progress" for e in srv.batches.values())


def cli_out(argv) -> str:
    out = subprocess.run([sys.executable, "-m", "reproduce.cli", *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _billed(srv) -> int:
    """Lines the server billed: every line a batch finished (a cancelled batch's finished half included)."""
    return sum(e["batch"]["request_counts"]["completed"] for e in srv.batches.values())


def test_a_resubmission_is_admitted_with_what_was_paid_plus_its_own_whole_estimate(tmp_path, monkeypatch):
    # The estimate is low (output_ratio 0.05: the formatter copies the whole trace), so the first batch pays more
    # than it committed. One line fails; resending it must fit paid + its estimate, not merely paid < cap.
    records = kept_records(n_math=3, n_code=0)
    for r in records:   # long traces: the completion (the copy) is most of the cost, and 20x its estimate
        r["response"] = "Let me check again. " * 800 + r["response"]
    ref = tmp_path / "ref"
    args = artifacts(ref, records)
    recipe = recipes.load(scale="smoke", sets=["rewrite.model=gpt-4o-mini", "rewrite.output_ratio=0.05"])
    (ref / "recipe.yaml").write_text(recipes.dump(recipe))
    with LocalOpenAI() as srv:   # what each request really costs, uncapped
        assert _stage(args, _env(srv)).returncode == 0
    per_key = {u["key"]: u["usd"] for u in _usage(ref)}
    cfg = rewrite.rewrite_config(recipe)
    keys = [rewrite.cache_key(rewrite.build_request(r, cfg)) for r in records]
    bad = keys[0]
    paid_first = sum(per_key[k] for k in keys[1:])
    resend = rewrite.tokens_usd(dict(cfg, batch=True), *rewrite.request_tokens(
        rewrite.build_request(records[0], cfg), records[0], cfg))
    cap = paid_first + resend / 2          # more than was paid, less than paid + the resend's whole estimate
    run = tmp_path / "run"
    args = artifacts(run, records)
    (run / "recipe.yaml").write_text(recipes.dump(recipe))
    with LocalOpenAI(fail_batch_lines={bad: 1}) as srv:
        out = _stage(args, _env(srv, REPRODUCE_API_BUDGET_USD=f"{cap:.8f}"))
        assert out.returncode == 3, out.stderr
        assert "not submitted" in out.stderr and "committed" in out.stderr
        assert srv.requests["batches.create"] == 1          # the resend was never sent
    events = batch_log.lines(run / "rewrite" / batch_log.FILE)
    assert [e["event"] for e in events] == ["submitted", "ended"]
    assert events[0]["requests"] == 3 and batch_log.committed_usd(run / "rewrite") == (0.0, 0)
    assert sorted(u["key"] for u in _usage(run)) == sorted(keys[1:])   # what the first batch finished is kept


def test_a_batch_in_flight_is_committed_cancelled_and_paid_once(tmp_path):
    records = kept_records(n_math=4, n_code=0)
    args = artifacts(tmp_path, records)
    stage_dir = tmp_path / "rewrite"
    with LocalOpenAI(hold_polls=10**6) as srv:
        env = _env(srv)
        estimate = json.loads(_stage(args, env, "--estimate").stdout)
        proc = _stage(args, env, wait=False)
        try:
            assert _wait_for(lambda: batch_log.open_batches(stage_dir) and _running(srv)), proc.stderr
        finally:
            proc.send_signal(signal.SIGKILL)   # the stage (and whoever watched it) gone, the batch still billing
            proc.wait(timeout=30)
        # committed at submission: the whole batch, at the stage's own estimate (the controller's figure)
        committed, n = batch_log.committed_usd(stage_dir)
        assert n == 1 and committed == pytest.approx(estimate["usd"], rel=1e-6) and committed > 0
        assert _usage(tmp_path) == []        # nothing paid yet, and the ledger's poll would say $0 without this
        with Ledger(tmp_path / "ledger.sqlite") as led:
            led.create_run("r1", recipe="smoke", scale="smoke", backend="local", budget=5.0,
                           artifacts=str(tmp_path))
            saved = os.environ.copy()
            os.environ.update(OPENAI_BASE_URL=srv.base_url, OPENAI_API_KEY=SECRET)
            try:
                said = stage_loop.cancel_batches(led, "r1", tmp_path, "rewrite", 1, False, time.time())
            finally:
                os.environ.clear()
                os.environ.update(saved)
            assert srv.requests["batches.cancel"] == 1
            assert any("cancelled OpenAI batch" in line for line in said), said
            assert any("2 results it finished are billed" in line for line in said), said
            paid = _usage(tmp_path)
            assert len(paid) == 2 == _billed(srv)                    # what it finished, paid and recorded
            assert led.attempt_api_usd("r1", "rewrite", 1) == (pytest.approx(sum(u["usd"] for u in paid)), 2)
            assert [e["kind"] for e in led.events("r1", "batch_cancel")] == ["batch_cancel"]
        assert batch_log.committed_usd(stage_dir) == (0.0, 0)
        # the rerun sends only what the cancelled batch did not finish
        srv.hold_polls = 0
        again = _stage(args, env)
        assert again.returncode == 0, again.stderr
        lines = _usage(tmp_path)
        assert len(lines) == 4 == len({u["key"] for u in lines}) == _billed(srv)   # each request paid once
        assert srv.requests["batches.create"] == 2
        rows = [json.loads(x) for x in (stage_dir / "rewritten.jsonl").read_text().splitlines()]
        assert len(rows) == 4


def test_cancel_of_a_run_cancels_its_open_batches_and_says_what_was_paid(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REPRODUCE_HOME", str(tmp_path / "home"))
    records = kept_records(n_math=2, n_code=0)
    art = tmp_path / "run" / "artifacts"
    args = artifacts(art, records)
    with LocalOpenAI(hold_polls=10**6) as srv:
        proc = _stage(args, _env(srv), wait=False)
        try:
            assert _wait_for(lambda: batch_log.open_batches(art / "rewrite") and _running(srv)), proc.stderr
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        with Ledger() as led:
            led.create_run("r2", recipe="sky-t1-32b-preview", scale="smoke", backend="local", budget=5.0,
                           artifacts=str(art), recipe_yaml=(art / "recipe.yaml").read_text())
            led.add_event("r2", None, "run", ok=True, reason="started", numbers={"pid": 2**22 + 1, "host": "gone"},
                          at=time.time())   # its controller died
        rows = {r["run"]: r for r in json.loads(cli_out(["status", "--json"]))}   # nobody watches it: it bills
        assert rows["r2"]["committed_usd"] == pytest.approx(batch_log.committed_usd(art / "rewrite")[0], abs=1e-4)
        assert rows["r2"]["committed_usd"] > 0
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        from reproduce import cli

        with pytest.raises(SystemExit) as done:
            cli.main(["cancel", "r2"])
        assert done.value.code == 0
        assert srv.requests["batches.cancel"] == 1
    out = capsys.readouterr()
    assert "[rewrite] cancelled OpenAI batch" in out.err and SECRET not in out.err + out.out
    paid = sum(u["usd"] for u in _usage(art))
    assert paid > 0 and f"${paid:,.2f} paid" in out.out
    audit = cli_out(["audit", "r2"])
    assert "API batches:" in audit and "committed" in audit and "cancelled OpenAI batch" in audit


def test_the_controller_counts_a_batch_from_its_submission_and_a_stop_cancels_it(tmp_path, monkeypatch):
    """The controller's own loop (local executor, the stage as a real process): each poll counts the submitted
    batch whole, and a stop (here Ctrl-C) cancels the batch, so nothing is left billing."""
    import io

    from reproduce import pipeline
    from reproduce.executors.local import LocalExecutor
    from reproduce.plan import build_plan

    monkeypatch.setenv("REPRODUCE_HOME", str(tmp_path / "home"))
    recipe = recipes.load(scale="smoke", sets=["rewrite.model=gpt-4o-mini"])
    art = pipeline.artifacts_dir("r3")
    (art / "filter").mkdir(parents=True)
    (art / "filter" / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept_records(3, 0)))
    plan = build_plan(recipe, 5.0, "local").only(["rewrite"])
    seen = []

    class CtrlC(LocalExecutor):
        def wait(self, seconds):   # Ctrl-C once a poll has counted the batch
            with Ledger() as view:
                seen[:] = view.events("r3", "batch")
            if seen and _running(srv):
                raise KeyboardInterrupt
            if time.monotonic() > give_up:
                raise AssertionError("no batch was counted: " + stream.getvalue()[-500:])
            time.sleep(0.05)

    stream, give_up = io.StringIO(), time.monotonic() + 60
    with LocalOpenAI(hold_polls=10**6) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        with Ledger() as led:
            with pytest.raises(KeyboardInterrupt):   # told once it is torn down and recorded
                pipeline.run(plan, recipe, CtrlC("smoke"), led, 5.0, stages=["rewrite"], run_id="r3",
                             progress=pipeline.Progress(stream, tty=False), poll_s=0.05)
            batches = led.events("r3", "batch")
            assert len(batches) == 1 and batches[0]["numbers"]["usd"] > 0
            assert led.events("r3", "batch_cancel")
            assert not led.open_attempts("r3")
            assert led.spent("r3") > 0           # the half the cancelled batch finished is billed, and counted
        assert srv.requests["batches.cancel"] == 1
        assert all(e["batch"]["status"] == "cancelled" for e in srv.batches.values())
    assert seen[0]["numbers"]["requests"] == 3
