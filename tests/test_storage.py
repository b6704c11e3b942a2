"""costmodel.storage: the run's bucket, GB written per stage x days kept x $/GB-month + pulls x $/GB egress."""
import pytest

from costmodel import storage
from costmodel.errors import BadInput
from reproduce import recipe as recipes


@pytest.fixture(scope="module")
def full():
    return recipes.load("sky-t1-32b-preview", [], "full")


def test_golden_numbers_for_the_published_recipe(full):
    e = storage.estimate(full)
    rows = {r["stage"]: r for r in e["stages"]}
    assert list(rows) == ["generate", "filter", "rewrite", "convert", "sft", "eval"]
    # 16,401 x 3 epochs / (1 x 12 x 8) = 513 steps -> checkpoints at 100..500, two kept (save_total_limit)
    assert storage.checkpoints(full) == 2
    # the model stays; the two checkpoints (2 x 32.8B x 14 B = 918.4 GB) are deleted when sft succeeds
    assert rows["sft"]["gb_written"] == pytest.approx(32.8e9 * 2 / 1e9)                        # 65.6 GB
    assert rows["sft"]["scratch_gb"] == pytest.approx(2 * 32.8e9 * 14 / 1e9)
    assert rows["sft"]["storage_usd"] == pytest.approx(65.6 * 30 * 24 / 730 * 0.023)          # $1.49, no hours given
    kept = storage.estimate({**full, "sft": {**full["sft"], "keep_checkpoints": True}})
    assert {r["stage"]: r for r in kept["stages"]}["sft"]["gb_written"] == pytest.approx(984.0)
    assert {r["stage"]: r for r in kept["stages"]}["sft"]["storage_usd"] == pytest.approx(984.0 * 30 * 24 / 730 * 0.023)
    timed = {r["stage"]: r for r in storage.estimate(full, hours={"sft": 21.28})["stages"]}["sft"]
    assert timed["storage_usd"] == pytest.approx((65.6 * 30 + 918.4 * 21.28 / 24) * 24 / 730 * 0.023)  # $2.10
    # 21,914 traces x (350 + 4,500) tokens x 4 B
    assert rows["generate"]["gb_written"] == pytest.approx(21914 * 4850 * 4 / 1e9)
    assert rows["generate"]["gb_pulled"] == rows["generate"]["gb_written"]     # the local filter reads them
    assert rows["rewrite"]["gb_pulled"] == rows["convert"]["gb_pulled"] == 0   # written on the controller
    assert rows["sft"]["gb_pulled"] == storage.SFT_PULLED_GB                   # weights are never pulled
    assert e["total_usd"] == pytest.approx(1.58, abs=0.005)
    assert e["total_usd"] == pytest.approx(sum(r["usd"] for r in e["stages"]))
    assert e["egress_usd"] == pytest.approx(e["gb_pulled"] * 0.09)
    assert rows["sft"]["arithmetic"] == "65.60 GB x 30 d x 24/730 x $0.023/GB-month + 0.01 GB pulled x $0.09/GB = $1.49"
    assert timed["arithmetic"] == ("65.60 GB x 30 d x 24/730 x $0.023/GB-month + 0.01 GB pulled x $0.09/GB + 918.40 GB "
                                   "scratch x 21.28 h/24 x 24/730 x $0.023/GB-month = $2.10")
    assert "aws.amazon.com/s3/pricing" in e["price_source"] and e["price_date"]


def test_days_kept_scale_storage_not_egress(full):
    month, week = storage.estimate(full), storage.estimate(full, days_kept=7)
    assert week["storage_usd"] == pytest.approx(month["storage_usd"] * 7 / 30)
    assert week["egress_usd"] == pytest.approx(month["egress_usd"])
    assert storage.estimate(full, days_kept=0)["storage_usd"] == 0


def test_gcs_bucket_prices_and_remote_filter(full):
    gs = storage.estimate(full, store="gs://my-bucket")
    assert gs["store"] == "gs" and gs["storage_gb_month"] == 0.020 and gs["egress_gb"] == 0.12
    remote = dict(full, filter=dict(full["filter"], where="cpu-node"))
    rows = {r["stage"]: r for r in storage.estimate(remote)["stages"]}
    assert rows["filter"]["gb_pulled"] == rows["filter"]["gb_written"] > 0


def test_checkpoints_follow_steps_and_the_limit(full):
    sft = full["sft"]
    assert storage.checkpoints(dict(full, sft=dict(sft, save_steps=1000))) == 0     # 513 steps, none saved
    assert storage.checkpoints(dict(full, sft=dict(sft, save_total_limit=5))) == 5
    assert storage.checkpoints(dict(full, sft=dict(sft, num_train_epochs=1.0, save_total_limit=9))) == 1


def test_smoke_recipe_is_cents(full):
    smoke = storage.estimate(recipes.load("sky-t1-32b-preview", [], "smoke"))
    assert 0 <= smoke["total_usd"] < 0.01


@pytest.mark.parametrize("kwargs,msg", [({"days_kept": -1}, "days kept -1"), ({"days_kept": float("nan")}, "days kept"),
                                        ({"store": "azure"}, "store 'azure'")])
def test_bad_input_names_the_value(full, kwargs, msg):
    with pytest.raises(BadInput, match=msg):
        storage.estimate(full, **kwargs)


def test_an_api_teacher_on_the_controller_pulls_nothing():
    """bespoke-stratos-32b's teacher is an API called from the controller: its traces are written here, so the
    bucket charges no egress for them (the old per-stage REMOTE table charged 0.56 GB of it)."""
    bespoke = recipes.load("bespoke-stratos-32b", [], "full")
    rows = {r["stage"]: r for r in storage.estimate(bespoke)["stages"]}
    assert rows["generate"]["gb_written"] > 0.5
    assert rows["generate"]["gb_pulled"] == 0 and rows["generate"]["egress_usd"] == 0
    assert rows["eval"]["gb_pulled"] == rows["eval"]["gb_written"] > 0          # eval still runs on a GPU node
    vllm = dict(bespoke, generate={k: v for k, v in bespoke["generate"].items() if k not in ("backend", "model")})
    assert {r["stage"]: r for r in storage.estimate(vllm)["stages"]}["generate"]["gb_pulled"] > 0.5


def test_the_stage_table_is_costmodels_own_and_every_row_is_whole(full):
    """costmodel reads the table without importing reproduce; each row's facts resolve for the recipe."""
    import subprocess
    import sys

    probe = "import sys, costmodel.stages; print(sorted(m for m in sys.modules if m.startswith('reproduce')))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    from costmodel import search, stages

    for row in stages.STAGES:
        gb, what = row.writes(full)
        assert gb > 0 and what
        assert row.options is None or row.options in search.OPTIONS
        assert row.pulls in ("output", "logs") and set(row.needs) <= set(stages.NAMES)
        assert (row.model is not None) == (row.where == stages.GPU)
