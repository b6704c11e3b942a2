"""The plan is the launch, across the seam and through the CLI: `reproduce plan --json --backend sky` and
`reproduce all --dry-run --backend sky` for the shipped recipes and several `--set` variants; every GPU task of
the dry run, parsed by SkyPilot's own parser, asks first for exactly the plan row's accelerator, node count,
market, cloud, region and max_hourly_cost, then the plan's priced fallbacks in order. Configurations that do
not fit in memory, out-of-range numbers of every recipe section and malformed recipe files exit 2 with one
line; `--resume` and `stage --run` are honest about what the run already holds.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import cli

ALL = ("all", "--budget", "100000", "--dry-run", "--backend", "sky", "--bucket", "s3://x", "-y")
PLAN = ("plan", "--json", "--backend", "sky")
HEADER = re.compile(r"^# stage (?P<stage>\S+) \((?P<scale>\w+) scale\): (?P<where>.+)$")

VARIANTS = {
    "default": (),
    "optimized": ("--recipe", "sky-t1-32b-preview-optimized"),
    "sft-a100": ("--set", "sft.accelerator=A100-80GB:8"),
    "generate-eval-a100": ("--set", "generate.accelerator=A100-80GB:8", "--set", "eval.accelerator=A100-80GB:8"),
    "sft-2-nodes": ("--set", "sft.num_nodes=2"),
    "sft-on-demand": ("--set", "sft.use_spot=false"),
    "sft-h200-2-nodes-spot": ("--set", "sft.accelerator=H200:8", "--set", "sft.num_nodes=2",
                              "--set", "sft.use_spot=true"),
}


def plan_rows(capsys, *args) -> dict:
    """The GPU stage rows of `reproduce plan --json --backend sky ARGS`, by stage."""
    code, out, err = cli(capsys, *PLAN, *args)
    assert code == 0, err
    plan = json.loads(out)
    return plan, {s["stage"]: s for s in plan["stages"] if s["kind"] == "gpu"}


def split_tasks(stdout: str) -> dict:
    """The dry run's task documents by stage: each starts with a `# stage NAME ...` comment line (before
    them, the plan table)."""
    docs, name = {}, None
    for line in stdout.splitlines(keepends=True):
        if line.startswith("# stage "):
            name = line.split()[2].rstrip(":")
            docs[name] = ""
        if name is not None:
            docs[name] += line
    return docs


def dry_run(capsys, *args) -> tuple[str, dict]:
    code, out, err = cli(capsys, *ALL, *args)
    assert code == 0, err
    assert "cannot render" not in out
    return out, split_tasks(out)


def sky_task(text: str):
    """The task as SkyPilot itself reads it."""
    import sky

    return sky.Task.from_yaml_config(yaml.safe_load(text))


def accel(name_count: str) -> dict:
    name, _, count = name_count.partition(":")
    return {name: int(count)}


def placement(r) -> tuple:
    """(accelerators, cloud, region, spot, max_hourly_cost) of a sky.Resources."""
    return dict(r.accelerators), str(r.cloud).lower(), r.region, r.use_spot, r.max_hourly_cost


def planned(row: dict) -> list[tuple]:
    """What the plan row says the task must ask for, in order: the placement, then each kept fallback."""
    first = (accel(row["accelerator"]), row["cloud"], row["region"], row["spot"], row["max_hourly_cost"])
    rest = [(accel(f["accelerator"]), f["cloud"], f["region"], row["spot"], f["max_hourly_cost"])
            for f in row["fallbacks"] if not f.get("dropped")]
    return [first, *rest]


@pytest.mark.parametrize("args", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_gpu_task_asks_for_exactly_what_was_priced(home, capsys, args):
    plan, rows = plan_rows(capsys, *args)
    out, docs = dry_run(capsys, *args)
    assert set(rows) == {"generate", "sft", "eval"}
    assert f"Total: ${plan['totals']['total_usd']:,.2f}" in out      # the dry run shows the same plan
    for stage, row in rows.items():
        text = docs[stage]
        header = HEADER.match(text.splitlines()[0])
        assert header and header["scale"] == "full" and header["where"] == f"{row['cloud']}/{row['region']}"
        task = sky_task(text)
        resources = list(task.resources)      # `ordered`: a list, in the order SkyPilot tries them
        assert [placement(r) for r in resources] == planned(row), stage
        assert task.num_nodes == row["nodes"]
        # the cap is a little above the priced $/h of one node, never below it
        per_node = row["price_per_hour"] / row["nodes"]
        assert per_node < row["max_hourly_cost"] <= per_node * 1.10
        for f in row["fallbacks"]:
            if not f.get("dropped"):
                assert f["price_per_hour"] / row["nodes"] < f["max_hourly_cost"] <= f["price_per_hour"] / row["nodes"] * 1.1
        dropped = {f["accelerator"] for f in row["fallbacks"] if f.get("dropped")}
        assert not dropped & {f"{n}:{c}" for r in resources for n, c in r.accelerators.items()}
        cfg = yaml.safe_load(text)
        # pinned region -> recover in place, then the next priced candidate; a managed job has no autostop
        assert cfg["resources"]["job_recovery"]["strategy"] == "FAILOVER"
        assert "autostop" not in cfg["resources"]
        assert row["memory"]["fits"] and row["memory"]["per_gpu_gib"] <= row["memory"]["usable_gib"]


def test_the_optimized_recipe_renders_h200_first_and_never_the_gpus_it_does_not_fit(home, capsys):
    _, rows = plan_rows(capsys, *VARIANTS["optimized"])
    _, docs = dry_run(capsys, *VARIANTS["optimized"])
    for stage in ("generate", "sft", "eval"):
        first = list(sky_task(docs[stage]).resources)[0]
        assert dict(first.accelerators) == {"H200": 8}
    # ZeRO-3 without offload needs ~82 GiB per GPU: no 80 GB GPU in sft's list, priced or not
    sft_gpus = [dict(r.accelerators) for r in sky_task(docs["sft"]).resources]
    assert {"H100": 8} not in sft_gpus and {"A100-80GB": 8} not in sft_gpus
    assert [f["accelerator"] for f in rows["sft"]["fallbacks"] if f.get("dropped")] == ["A100-80GB:8"]


def test_two_nodes_render_num_nodes_2_on_a_cloud_that_runs_several(home, capsys):
    _, rows = plan_rows(capsys, *VARIANTS["sft-2-nodes"])
    _, docs = dry_run(capsys, *VARIANTS["sft-2-nodes"])
    assert rows["sft"]["nodes"] == 2 and rows["sft"]["gpus"] == 16
    assert re.search(r"^num_nodes: 2$", docs["sft"], re.M)
    assert re.search(r"^num_nodes: 1$", docs["generate"], re.M) and re.search(r"^num_nodes: 1$", docs["eval"], re.M)
    from costmodel import clouds

    for cloud in [rows["sft"]["cloud"]] + [f["cloud"] for f in rows["sft"]["fallbacks"] if not f.get("dropped")]:
        assert clouds.supports(cloud, clouds.MULTI_NODE), cloud      # Prime Intellect cannot: never picked
    one = plan_rows(capsys, "--set", "sft.use_spot=false")[1]["sft"]       # the same node, alone
    assert (rows["sft"]["cloud"], rows["sft"]["instance_type"]) == (one["cloud"], one["instance_type"])
    assert rows["sft"]["price_per_hour"] == pytest.approx(2 * one["price_per_hour"])   # two of them
    assert rows["sft"]["max_hourly_cost"] == one["max_hourly_cost"]                    # the cap is per node


def test_a_pinned_market_renders_that_market(home, capsys):
    _, rows = plan_rows(capsys, "--set", "sft.use_spot=false", "--set", "generate.use_spot=true")
    _, docs = dry_run(capsys, "--set", "sft.use_spot=false", "--set", "generate.use_spot=true")
    assert rows["sft"]["spot"] is False and rows["generate"]["spot"] is True
    assert {r.use_spot for r in sky_task(docs["sft"]).resources} == {False}
    assert {r.use_spot for r in sky_task(docs["generate"]).resources} == {True}


# ---- refused: one line, exit 2 --------------------------------------------------------------------------
BAD_SETS = {
    # does not fit in memory (plan and all refuse it, naming the knob that would fit)
    "sft no offload on H100": (["sft.cpu_offload=false"], "stage sft does not fit in memory: needs 86.2 GiB"),
    "sft no offload on A100": (["sft.cpu_offload=false", "sft.accelerator=A100-80GB:8"], "A100-80GB:8 has 76.0 GiB"),
    "generate TP=1": (["generate.tensor_parallel=1", "generate.data_parallel=8"], "stage generate does not fit"),
    "eval TP=1": (["eval.tensor_parallel=1", "eval.data_parallel=8"], "stage eval does not fit"),
    "generate TP x DP != GPUs": (["generate.tensor_parallel=1"], "generate.data_parallel=4 (in sky-t1-32b-preview"),
    "generate TP not a divisor": (["generate.tensor_parallel=3"], "expected a divisor of the 8 GPUs"),
    # out of range, one per section
    "models": (["models.student={id: Qwen/Qwen2.5-32B-Instruct, params_b: 0}"],
               "models.student.params_b=0 (from --set): expected a finite number > 0"),
    "sources": (["sources.apps.keep_rate=2"], "sources.apps.keep_rate=2 (from --set): expected a finite number > 0"),
    "a key no code reads": (["extra_data.still2.records=0"], "unknown key 'extra_data.still2.records' (--set)"),
    "generate": (["generate.temperature=3"], "generate.temperature=3 (from --set): expected a finite number >= 0"),
    "generate accelerator": (["generate.accelerator=A100-40GB:8"], "expected NAME:COUNT with NAME one of"),
    "filter": (["filter.where=moon"], "filter.where='moon' (from --set): expected one of local, cpu-node"),
    "rewrite": (["rewrite.output_ratio=-1"], "rewrite.output_ratio=-1 (from --set): expected a finite number > 0"),
    "convert": (["convert.dedupe=maybe"], "convert.dedupe='maybe' (from --set): expected true or false"),
    "sft nodes 0": (["sft.num_nodes=0"], "sft.num_nodes=0 (from --set): expected a whole number from 1 to 64"),
    "sft nodes 1.5": (["sft.num_nodes=1.5"], "sft.num_nodes=1.5 (from --set): expected a whole number"),
    "sft epochs": (["sft.num_train_epochs=-1"], "sft.num_train_epochs=-1 (from --set): expected a finite number > 0"),
    "sft market": (["sft.use_spot=maybe"], "expected true (spot), false (on-demand) or auto"),
    "eval": (["eval.benchmarks.aime24.n=0"], "eval.benchmarks.aime24.n=0 (from --set): expected a whole number >= 1"),
    "costs": (["costs.startup_hours=-5"], "costs.startup_hours=-5 (from --set): expected a finite number >= 0"),
}


def one_line_exit_2(code, err, needle):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


@pytest.mark.parametrize("command", ["plan", "all"])
@pytest.mark.parametrize("sets, needle", BAD_SETS.values(), ids=BAD_SETS.keys())
def test_infeasible_or_out_of_range_is_one_line_and_exit_2(home, capsys, command, sets, needle):
    argv = [*(PLAN if command == "plan" else ALL)] + [a for s in sets for a in ("--set", s)]
    code, out, err = cli(capsys, *argv)
    one_line_exit_2(code, err, needle)
    assert "# stage" not in out          # nothing rendered


def _recipe_text(**changes) -> str:
    from reproduce import recipe as recipes

    data = yaml.safe_load((recipes.RECIPES_DIR / "sky-t1-32b-preview.yaml").read_text())
    data.update(changes)
    return yaml.safe_dump(data)


BAD_FILES = {
    "scalar sft": (lambda: _recipe_text(sft=5), "sft=5 (in bad.yaml): expected a mapping of keys"),
    "scalar sft in a variant": (lambda: "base: sky-t1-32b-preview\nname: bad\nsft: 5\n", "sft=5"),
    "binary bytes": (lambda: b"\x00\xff\xfe\x89PNG\r\n\x1a\n\x00\x00", "not a text file"),
    "set: wrong type": (lambda: "base: sky-t1-32b-preview\nname: bad\nset:\n  sft.num_nodes: two\n",
                        "sft.num_nodes='two' (from set: of bad.yaml): expected a whole number"),
    "set: not a mapping": (lambda: "base: sky-t1-32b-preview\nset: [1, 2]\n", "`set:` must be a mapping"),
    "set: unknown key": (lambda: "base: sky-t1-32b-preview\nset:\n  sft.epochs: 2\n", "unknown key 'sft.epochs'"),
    "not YAML": (lambda: "sft: [\n", "is not valid YAML"),
    "a list": (lambda: "- 1\n- 2\n", "expected a mapping of sections, got list"),
    "missing section": (lambda: "name: x\n", "section 'models' is missing"),
}


@pytest.mark.parametrize("make, needle", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_malformed_recipe_files_are_one_line_and_exit_2(home, capsys, tmp_path, make, needle):
    path = tmp_path / "bad.yaml"
    content = make()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in (PLAN, ALL):
        code, _, err = cli(capsys, *command, "--recipe", str(path))
        one_line_exit_2(code, err, needle)


def test_the_installed_command_says_it_in_one_line_too(home, tmp_path):
    """Through the console script, a fresh process: no traceback reaches the terminal."""
    exe = Path(sys.executable).with_name("reproduce")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x00\xff\xfe")
    for argv, needle in ((["--set", "sft.num_nodes=0"], "sft.num_nodes=0"),
                         (["--set", "sft.cpu_offload=false"], "does not fit in memory"),
                         (["--recipe", str(binary)], "not a text file")):
        p = subprocess.run([str(exe), *ALL, *argv], capture_output=True, text=True, timeout=120)
        one_line_exit_2(p.returncode, p.stderr, needle)


# ---- resume and stage are honest ------------------------------------------------------------------------
@pytest.fixture
def half_run(home, capsys):
    """A simulated run whose generate finished and nothing else started."""
    code, _, err = cli(capsys, "stage", "generate", "--backend", "sim", "--budget", "450", "-y")
    assert code == 0, err
    code, out, _ = cli(capsys, "runs", "--json")
    (run,) = json.loads(out)
    assert run["stage"] == "generate"
    return run["run"]


def test_resume_refuses_a_new_recipe_or_scale(capsys, half_run):
    for flag in (["--recipe", "sky-t1-32b-preview-optimized"], ["--scale", "smoke"]):
        code, _, err = cli(capsys, "all", "--resume", half_run, "--budget", "450", "-y", *flag)
        one_line_exit_2(code, err, f"--resume {half_run} continues the run's own recipe; {flag[0]}")


def test_resume_refuses_to_change_a_finished_stage_and_renders_a_replan_of_the_rest(capsys, half_run):
    code, _, err = cli(capsys, "all", "--resume", half_run, "--budget", "450", "-y",
                       "--set", "generate.accelerator=H200:8")
    one_line_exit_2(code, err, "generate is finished")
    # an unfinished stage may change (an explicit re-plan); the dry run renders it and records nothing
    out, docs = dry_run(capsys, "--resume", half_run, "--set", "sft.num_nodes=2")
    assert "generate" not in docs and re.search(r"^num_nodes: 2$", docs["sft"], re.M)
    assert sky_task(docs["sft"]).num_nodes == 2
    code, out, _ = cli(capsys, "runs", "--json")
    assert json.loads(out)[0]["stage"] == "generate"


def test_stage_eval_refuses_a_run_whose_sft_never_finished(capsys, half_run):
    code, out, err = cli(capsys, "stage", "eval", "--run", half_run, "-y")
    # before it, a notice that generate is skipped (finished); the refusal itself is one line
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n")
    one_line_exit_2(code, errors[0] + "\n", "stage eval reads sft's outputs, and sft in run")
    assert "Traceback" not in err and "# stage" not in out
    code, out, _ = cli(capsys, "runs", "--json")
    run = json.loads(out)[0]
    assert run["status"] != "finished" and run["stage"] == "generate"
