"""`reproduce audit` (table, --json, --csv, --plot), `reproduce runs` and `reproduce calibration`."""
import csv
import io
import json

import pytest

from costmodel import calibration
from costmodel.ledger import Ledger
from reproduce import pipeline
from reproduce import recipe as recipes
from reproduce.executors.base import BaseExecutor, StageStatus
from reproduce.plan import build_plan
from test_pipeline_sim import cli


@pytest.fixture
def stopped_run(home, capsys):
    # 2.5x: every stage may fit until sft's own forecast shows it cannot finish
    code, out, err = cli(capsys, "all", "--budget", "450", "--backend", "sim", "--sim-slowdown", "2.5",
                         "--sim-preemption-rate", "0.1", "-y")
    assert code == 3
    return json.loads(cli(capsys, "runs", "--json")[1])[-1]["run"]


def test_table_shows_arithmetic_sources_and_budget(stopped_run, capsys):
    code, out, err = cli(capsys, "audit")
    assert code == 0
    assert f"Audit: run {stopped_run}" in out and "SIMULATED" in out
    assert "8 x $0.85/h x " in out and "[simulated at bundled snapshot" in out
    assert "Budget: $450.00" in out and "within budget" in out
    assert "By cloud:" in out and "By model:" in out and "gpt-4o-mini" in out
    assert "sft: forecast: at the observed rate sft ends at $" in out


def test_csv_parses_and_the_total_row_adds_up(stopped_run, capsys):
    code, out, err = cli(capsys, "audit", stopped_run, "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["stage"] for r in rows] == ["generate", "filter", "rewrite", "convert", "sft", "eval", "TOTAL"]
    total = rows[-1]
    assert float(total["total_usd"]) == pytest.approx(sum(float(r["total_usd"]) for r in rows[:-1]))
    assert float(total["total_usd"]) <= 450
    assert float(rows[0]["price_per_hour"]) > 0 and rows[0]["cloud"]


def test_plot_writes_a_png(stopped_run, capsys, tmp_path):
    import matplotlib.image

    path = tmp_path / "spend.png"
    code, out, err = cli(capsys, "audit", "--plot", str(path))
    assert code == 0 and f"wrote {path}" in err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image.std() > 0.05                      # not a blank canvas


def test_spend_series_ends_at_the_audit_total(stopped_run):
    from reproduce.cli.audit import spend_series

    with Ledger() as led:
        times, spend, spans = spend_series(led, stopped_run)
        total = led.audit(stopped_run)["totals"]["actual_usd"]
    assert spend[-1] == pytest.approx(total)
    assert all(b >= a for a, b in zip(spend, spend[1:]))        # money only goes up
    assert [s for s, _, _ in spans] == ["generate", "filter", "rewrite", "convert", "sft"]


def test_bad_arguments(home, capsys):
    assert "no runs" in cli(capsys, "audit")[2]
    code, out, err = cli(capsys, "audit", "nope")
    assert code == 2 and "no run 'nope'" in err
    assert cli(capsys, "audit", "--plot", "spend.jpg")[0] == 2
    assert cli(capsys, "audit", "--json", "--csv")[0] == 2


def test_runs_lists_interrupted_runs_in_status(home, capsys):
    with Ledger() as led:
        led.create_run("r-dead", recipe="x", scale="full", backend="sim", budget=10.0, simulated=True)
        led.add_event("r-dead", None, "run", ok=True, reason="started", numbers={"pid": 2 ** 22 + 7, "host": "h"})
    rows = json.loads(cli(capsys, "runs", "--json")[1])
    assert rows[0]["run"] == "r-dead" and rows[0]["status"] == "interrupted"
    code, out, err = cli(capsys, "status")
    assert "r-dead" in out and "reproduce all --resume r-dead" in out


class _MeasuredExecutor(BaseExecutor):
    """A real (not simulated) run of one GPU stage whose program reports its throughput."""
    name = "fake"

    def __init__(self, tok_s_per_gpu):
        self.tok_s, self.t = tok_s_per_gpu, 0.0

    def launch(self, run):
        out = run.artifacts / run.stage
        out.mkdir(parents=True, exist_ok=True)
        self.wall = run.plan.details["output_tokens"] / (self.tok_s * run.plan.gpus)
        (out / "summary.json").write_text(json.dumps({"output_tokens": run.plan.details["output_tokens"],
                                                      "prompt_tokens": 0, "wall_s": self.wall, "gpus": 8}))
        self.plan = run.plan
        return "h"

    def poll(self, handle):
        return StageStatus(state="SUCCEEDED", elapsed_s=self.wall, cost_usd=self.wall / 3600 * 16.0,
                           price_per_hour=16.0, cloud="aws", region="us-east-1", gpus=8, spot=True)

    def cancel(self, handle):
        pass

    def wait(self, s):
        self.t += s

    def now(self):
        return 1e9 + self.t


def test_finished_real_stages_calibrate_the_next_plan(home, capsys):
    recipe = recipes.load("sky-t1-32b-preview")
    before = build_plan(recipe, 450, "sky")
    quiet = pipeline.Progress(io.StringIO(), tty=False)
    with Ledger() as led:
        for tok_s in (2000.0, 2600.0):
            pipeline.run(before, recipe, _MeasuredExecutor(tok_s), led, 450.0, stages=["generate"], progress=quiet)
    key = "decode_tok_s_per_gpu/32.8B/H100/tp2"
    assert calibration.load()[key] == pytest.approx(2300.0)
    rows = json.loads(cli(capsys, "calibration", "--json")[1])
    assert rows == [pytest.approx({**rows[0], "key": key, "value": 2300.0, "runs": 2, "observations": 2})]
    after = build_plan(recipe, 450, "sky")
    assert after.stage("generate").base_hours == pytest.approx(before.stage("generate").base_hours * 1300 / 2300)
    assert "calibrated from finished runs" in after.stage("generate").assumptions[0]


def test_simulated_runs_never_calibrate(home, capsys):
    assert cli(capsys, "all", "--budget", "450", "--backend", "sim", "-y")[0] == 0
    assert calibration.load() == {}
    assert "no calibration yet" in cli(capsys, "calibration")[1]
