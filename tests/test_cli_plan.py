"""`reproduce plan` and the CLI's manners, through the real entry point (issue 2's checks)."""
import json
import subprocess
import sys

import pytest

from conftest import cli


def test_plan_json_has_six_stages_whose_numbers_add_up(home, capsys):
    code, out, _ = cli(capsys, "plan", "--budget", "450", "--json")
    assert code == 0
    plan = json.loads(out)
    stages = plan["stages"]
    assert [s["stage"] for s in stages] == ["generate", "filter", "rewrite", "convert", "sft", "eval"]
    for s in stages:
        assert s["total_usd"] == pytest.approx(s["compute_usd"] + s["api_usd"] + s["storage_usd"])
        assert s["storage_usd"] == pytest.approx(s["storage"]["usd"]) and s["storage"]["gb_written"] > 0
        if s["kind"] == "gpu":
            assert s["compute_usd"] == pytest.approx(s["price_per_hour"] * s["hours"])
            assert s["gpu_hours"] == pytest.approx(s["gpus"] * s["hours"])
            assert s["price_source"].startswith("bundled snapshot") and s["price_date"]
            assert s["on_demand_usd"] >= s["compute_usd"]  # spot beside on-demand
    totals = plan["totals"]
    assert totals["total_usd"] == pytest.approx(sum(s["total_usd"] for s in stages))
    assert totals["headroom_usd"] == pytest.approx(450 - totals["total_usd"]) and totals["fits"]
    assert totals["storage_usd"] == pytest.approx(plan["storage"]["total_usd"])   # the bucket is paid for
    assert totals["storage_usd"] > 1


def test_the_bucket_counts_against_the_budget(home, capsys):
    """A budget between the compute + API and the whole plan with its bucket does not fit."""
    plan = json.loads(cli(capsys, "plan", "--json")[1])["totals"]
    without = plan["compute_usd"] + plan["api_usd"]
    budget = f"{(without + plan['total_usd']) / 2:.2f}"
    code, out, err = cli(capsys, "plan", "--budget", budget)
    assert code == 3 and "DOES NOT FIT" in out and f"+ bucket ${plan['storage_usd']:,.2f}" in out, out[-800:]


def test_plan_table_shows_the_arithmetic_and_sources(home, capsys):
    code, out, _ = cli(capsys, "plan", "--budget", "450")
    assert code == 0
    assert "8 x $0.85/h x " in out and "[bundled snapshot (SkyPilot catalog v8 @" in out
    assert "Budget: $450.00" in out and "fits" in out


def test_an_over_budget_plan_exits_3_and_names_a_knob_that_fits(home, capsys):
    code, out, err = cli(capsys, "plan", "--budget", "150")
    assert code == 3
    assert "DOES NOT FIT" in out and "What would lower the cost" in out
    assert err.count("\n") == 1 and "over the $150.00 budget" in err
    # the advice is runnable and fits: a shipped variant or a knob that the memory model accepts
    advice = err.split("; ")[-1].split(" would fit")[0].split()
    assert advice[0] in ("--recipe", "--set")
    assert cli(capsys, "plan", "--budget", "150", *advice)[0] == 0


@pytest.mark.parametrize("argv, needle", [
    (["plan", "--budget", "-5"], "--budget '-5'"),
    (["plan", "--budget", "abc"], "--budget 'abc'"),
    (["prices", "X100:8"], "X100"),
    (["plan", "--set", "sft.num_train_epoch=6"], "did you mean 'sft.num_train_epochs'"),
    (["plan", "--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["plan", "--scale", "huge"], "unknown scale 'huge'"),
    (["all", "--budget", "450", "--bucket", "ftp://x"], "--bucket 'ftp://x'"),
])
def test_bad_input_is_one_line_and_exit_2(home, capsys, argv, needle):
    code, out, err = cli(capsys, *argv)
    assert code == 2
    assert needle in err and err.strip().count("\n") == 0 and "Traceback" not in err


def test_help_imports_no_heavy_library():
    probe = ("import sys; from reproduce.cli import app; "
             "print(sorted(m for m in ('sky', 'torch', 'boto3', 'openai', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_on_demand_total_prices_gpu_stages_on_demand_and_keeps_the_rest(home, capsys):
    plan = json.loads(cli(capsys, "plan", "--json")[1])
    expected = sum(s["on_demand_usd"] + s["api_usd"] + s["storage_usd"] if s["on_demand_usd"] is not None
                   else s["total_usd"] for s in plan["stages"])
    assert plan["totals"]["on_demand_total_usd"] == pytest.approx(expected)
    assert plan["totals"]["on_demand_total_usd"] > plan["totals"]["total_usd"]


def test_the_plan_prices_the_runs_bucket_beside_the_stages(home, capsys):
    code, out, _ = cli(capsys, "plan", "--budget", "450", "--json")
    p = json.loads(out)
    st = p["storage"]
    assert code == 0 and st["total_usd"] == pytest.approx(p["totals"]["storage_usd"]) and st["total_usd"] > 0
    assert {r["stage"] for r in st["stages"]} >= {"generate", "sft"}
    assert st["total_usd"] == sum(r["usd"] for r in st["stages"])
    text = cli(capsys, "plan", "--budget", "450")[1]
    assert "Bucket (s3, kept 30 days): " in text and "/GB-month" in text
    assert f"+ bucket ${st['total_usd']:,.2f}" in text and "bucket: 2 checkpoints x 32.8B params x 14 B" in text


def test_the_startup_assumption_names_the_measured_environment_build(home, capsys):
    from costmodel import setup_time

    p = json.loads(cli(capsys, "plan", "--budget", "450", "--json")[1])
    sft = next(s for s in p["stages"] if s["stage"] == "sft")
    seconds, _ = setup_time.setup_seconds("sft")
    assert any(f"sft environment's measured {seconds:.0f} s build" in a for a in sft["assumptions"])
    assert sft["details"]["env_build"] == setup_time.method() and "benchmarks/env_build.py" in setup_time.method()
    text = cli(capsys, "plan", "--budget", "450")[1]      # how it was measured: once, not under every GPU stage
    assert text.count(setup_time.method()) == 1 and text.count("s build (uv cold cache, measured 20") == 3
