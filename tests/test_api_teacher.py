"""A teacher served by an API: priced at token prices with no GPU placement, run on the controller, and
(against the local OpenAI-compatible server) traces and their usage written like vLLM's."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from costmodel import api_prices
from reproduce import plan, recipe as recipes, stagetable
from reproduce.errors import UserError

API = ["generate.backend=api", "generate.model=deepseek-reasoner"]


def test_api_generate_is_one_row_priced_at_token_prices_on_the_controller():
    r = recipes.load(sets=API)
    row = stagetable.stage("generate")
    assert row.runs_on(r) == stagetable.CONTROLLER and row.on_controller(r) and row.memory(r) == {}
    assert row.runs_on(recipes.load()) == stagetable.GPU
    p = plan.build_plan(r)
    gen = p.stage("generate")
    assert [s.stage for s in p.stages] == list(stagetable.NAMES)
    assert gen.kind == "api" and gen.gpus == 0 and gen.compute_usd == 0 and gen.cloud is None
    price = api_prices.token_price("deepseek-reasoner")
    tokens = gen.api_tokens
    assert gen.api_usd == pytest.approx((tokens["prompt_tokens"] * price.input
                                         + tokens["completion_tokens"] * price.output) / 1e6, rel=1e-6)
    assert price.source == "api-docs.deepseek.com/quick_start/pricing" and not price.batch
    assert "deepseek-reasoner" in gen.arithmetic or "$2.19/M" in gen.arithmetic


@pytest.mark.parametrize("sets, needle", [
    (["generate.backend=api"], "needs generate.model"),
    (["generate.model=deepseek-reasoner", "generate.backend=vllm"], "set generate.backend=api"),
    ([*API, "generate.batch=true"], "has no Batch API"),
    (["generate.backend=api", "generate.model=nobody-llm"], "no token price for model 'nobody-llm'"),
    ([*API, "generate.num_nodes=2"], "an API teacher uses no nodes"),
    (["generate.accelerator=H100:16"], "at most 8): for more, set the section's num_nodes"),
])
def test_bad_api_or_node_settings_are_one_line(sets, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        recipes.load(sets=sets)


def test_generation_on_two_nodes_is_the_same_gpu_hours_in_half_the_time():
    one, two = plan.build_plan(recipes.load()), plan.build_plan(recipes.load(sets=["generate.num_nodes=2"]))
    a, b = one.stage("generate"), two.stage("generate")
    assert b.nodes == 2 and b.gpus == 16
    assert b.base_hours == pytest.approx(a.base_hours / 2)
    assert b.base_hours * b.gpus == pytest.approx(a.base_hours * a.gpus)
    assert b.overhead_hours > a.overhead_hours                      # one startup per node


def test_node_share_splits_problems_by_rank():
    from reproduce.stages import generate

    problems = list(range(10))
    shares = [generate.node_share(problems, {"SKYPILOT_NUM_NODES": "3", "SKYPILOT_NODE_RANK": str(k)})[0]
              for k in range(3)]
    assert sorted(x for s in shares for x in s) == problems and shares[1] == [1, 4, 7]
    assert generate.node_share(problems, {})[0] == problems


def test_api_teacher_against_the_local_openai_server(tmp_path, monkeypatch):
    """generate's API backend through the real openai client to the project's local server: one request per
    sample, traces in shards, usage appended as paid."""
    pytest.importorskip("openai")
    from reproduce.stages import generate
    from reproduce.stages.smoke.local_openai import LocalOpenAI

    r = recipes.load(scale="smoke", sets=["generate.backend=api", "generate.model=local-formatter",
                                          "generate.samples_per_problem=2"])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(r))
    with LocalOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        code = generate.main(["--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path),
                              "--limit", "2"])
        calls = server.requests["chat"]
    assert code == 0
    out = tmp_path / "generate"
    traces = [t for t in generate.read_shards(out) if not t.get("published")]   # STILL-2's: no teacher call
    sources = len([s for s in r["sources"] if s.get("traces") != "published"])
    assert len(traces) == sources * 2 * 2 and calls == len(traces)   # 2 problems x 2 samples per source
    assert all(t["response"] and t["response_tokens"] > 0 and "<|im_start|>" not in t["prompt"] for t in traces)
    usage = [json.loads(x) for x in (out / "usage.jsonl").read_text().splitlines()]
    assert len(usage) == len(traces) and all(u["model"] == "local-formatter" and u["usd"] == 0 for u in usage)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "api" and summary["records"] == len(traces)


def paid_teacher(tmp_path, monkeypatch, server, cap=None):
    """generate with a priced API teacher (gpt-4o-mini's token prices) against the local server: 3 problems of
    one source, 2 samples each, one problem a shard. -> (exit code, requests so far, usage lines, shards)"""
    from reproduce.stages import generate

    r = recipes.load(scale="smoke", sets=["generate.backend=api", "generate.model=gpt-4o-mini",
                                          "generate.samples_per_problem=2"])
    r["sources"] = r["sources"][:1]
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(r))
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    if cap is None:
        monkeypatch.delenv("REPRODUCE_API_BUDGET_USD", raising=False)
    else:
        monkeypatch.setenv("REPRODUCE_API_BUDGET_USD", repr(cap))
    code = generate.main(["--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path),
                          "--limit", "3", "--shard-size", "1"])
    log = tmp_path / "generate" / "usage.jsonl"
    usage = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return code, server.requests["chat"], usage, sorted((tmp_path / "generate").glob("shard-*.jsonl"))


def test_the_api_teacher_prices_what_it_pays_and_the_ledger_counts_it(tmp_path, monkeypatch, home):
    """Each paid response is logged at the model's token prices (it was logged with tokens only, so the ledger
    counted a paid teacher as $0), and the pipeline's reader records exactly that."""
    pytest.importorskip("openai")
    from costmodel.ledger import Ledger
    from reproduce.stages.smoke.local_openai import LocalOpenAI

    with LocalOpenAI() as server:
        code, calls, usage, shards = paid_teacher(tmp_path, monkeypatch, server)
    assert code == 0 and calls == 6 and len(usage) == 6 and len(shards) == 3
    for u in usage:
        assert u["usd"] > 0 and u["usd"] == pytest.approx(
            api_prices.api_cost("gpt-4o-mini", u["prompt_tokens"], u["completion_tokens"], u["cached_tokens"]))
    with Ledger() as led:
        led.create_run("r", recipe="x", scale="smoke", backend="local", budget=10.0)
        assert led.add_usage_lines("r", "generate", usage, at=0.0) == 6
        assert led.spent("r") == pytest.approx(sum(u["usd"] for u in usage))


def test_the_api_teacher_stops_before_a_shard_it_cannot_pay_for(tmp_path, monkeypatch, capsys):
    """REPRODUCE_API_BUDGET_USD caps what this run pays: once it is paid, or once the next shard at the $ per
    problem paid so far would pass it, no further request is sent (exit 3, shards kept); a rerun with room
    asks only for the problems left."""
    pytest.importorskip("openai")
    from reproduce.stages.smoke.local_openai import LocalOpenAI

    with LocalOpenAI() as server:
        code, calls, usage, shards = paid_teacher(tmp_path / "a", monkeypatch, server, cap=1e-7)
        assert (code, calls, len(usage), len(shards)) == (3, 2, 2, 1)      # one shard paid, then stopped
        assert "left for it; stopped before the next shard (1 problems)" in capsys.readouterr().err
        first = sum(u["usd"] for u in usage)
        # room for the paid shard and half another: the forecast, not the payment, stops it
        code, calls, usage, shards = paid_teacher(tmp_path / "b", monkeypatch, server, cap=first * 1.5)
        err = capsys.readouterr().err
        assert (code, calls - 2, len(usage), len(shards)) == (3, 2, 2, 1), err
        assert "the next shard of 1 would add" in err and "past the REPRODUCE_API_BUDGET_USD" in err
        code, calls, usage, shards = paid_teacher(tmp_path / "b", monkeypatch, server, cap=5.0)
        assert (code, calls - 4, len(usage), len(shards)) == (0, 4, 6, 3)   # the 2 problems left, not 3
