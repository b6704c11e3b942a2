"""Task rendering: env overrides, placement, secrets as SkyPilot secrets and never in rendered text.

Fixture YAMLs of the shape sky_tasks/ uses (workdir ., envs, secrets declared empty), parsed by SkyPilot's
real parser; plan rows (StageEstimate) decide the placement.
"""

import pytest
import yaml

from reproduce import tasks
from reproduce.errors import UserError

SECRET = "hf_TOPSECRET_0123456789"
REAL_TASKS = tasks.TASKS_DIR   # the shipped sky_tasks/, before the fixture points at the test's own

GENERATE = """\
# fixture: generate on H100:8 spot
name: generate
workdir: .
resources:
  use_spot: true
  any_of:
    - accelerators: H100:8
    - accelerators: H200:8
    - accelerators: A100-80GB:8
envs:
  ARTIFACTS: /artifacts
  BUCKET: ""
  STAGE_EXTRAS: generate
  RUN_ID: ""
secrets:
  HF_TOKEN: ""
  WANDB_API_KEY: ""
setup: pip install -e ".[$STAGE_EXTRAS]"
run: python -m reproduce.stages.generate --recipe $ARTIFACTS/recipe.yaml --artifacts $ARTIFACTS
"""

SFT = """\
name: sft
workdir: .
resources:
  accelerators: H100:8
  use_spot: true
  job_recovery: {strategy: EAGER_NEXT_REGION, max_restarts_on_errors: 2}
envs: {ARTIFACTS: /artifacts, STAGE_EXTRAS: sft, RUN_ID: ""}
secrets: {HF_TOKEN: null, WANDB_API_KEY: ""}
setup: pip install -e ".[$STAGE_EXTRAS]"
run: python -m reproduce.stages.sft --recipe $ARTIFACTS/recipe.yaml --artifacts $ARTIFACTS
"""

FILTER = """\
name: filter
workdir: .
resources: {cpus: 32+}
envs: {ARTIFACTS: /artifacts, STAGE_EXTRAS: filter, RUN_ID: ""}
setup: pip install -e ".[$STAGE_EXTRAS]"
run: python -m reproduce.stages.filter --recipe $ARTIFACTS/recipe.yaml --artifacts $ARTIFACTS
"""


def write_tasks(folder, **texts):
    folder.mkdir(parents=True, exist_ok=True)
    for stage, text in texts.items():
        (folder / f"{stage}.yaml").write_text(text)
    return folder


@pytest.fixture(autouse=True)
def sky_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    monkeypatch.setattr(tasks, "TASKS_DIR", write_tasks(tmp_path / "sky_tasks", generate=GENERATE, sft=SFT,
                                                        filter=FILTER))


def row(stage="generate", accelerator="H100:8", nodes=1, spot=True, cloud="aws", region="us-east-1", fallbacks=()):
    """A plan row as reproduce.plan makes it: the placement the renderer must ask for."""
    from costmodel.estimates import StageEstimate

    per_node = int(accelerator.partition(":")[2])
    return StageEstimate(stage, "gpu", accelerator, nodes, per_node * nodes, spot=spot, cloud=cloud, region=region,
                         instance_type="p5.48xlarge", price_per_hour=10.24 * nodes, max_hourly_cost=10.76,
                         fallbacks=list(fallbacks))


H200_FALLBACK = {"accelerator": "H200:8", "fits": True, "cloud": "aws", "region": "eu-south-2", "spot": True,
                 "max_hourly_cost": 7.18, "price_per_hour": 6.84, "usd": 14.6}
A100_DROPPED = {"accelerator": "A100-80GB:8", "fits": False, "dropped": "does not fit: 95.4 > 76.0 GiB per GPU"}
PLACEMENT = row(fallbacks=[H200_FALLBACK, A100_DROPPED])


def test_render_asks_first_for_the_planned_placement_then_priced_fallbacks():
    task = tasks.render("generate", {"RUN_ID": "r7", "BUCKET": "s3://b"}, PLACEMENT, "full",
                        environ={"HF_TOKEN": SECRET})
    assert task.envs["RUN_ID"] == "r7" and task.envs["BUCKET"] == "s3://b"
    assert task.envs["STAGE_EXTRAS"] == "generate"
    assert SECRET not in task.envs.values()
    assert task.secrets["HF_TOKEN"].get_secret_value() == SECRET
    first, second = task.resources      # `ordered`: a list; the dropped A100 fallback is not there
    assert (first.accelerators, str(first.cloud), first.region, first.use_spot, first.max_hourly_cost) == (
        {"H100": 8}, "AWS", "us-east-1", True, 10.76)
    assert (second.accelerators, second.region, second.max_hourly_cost) == ({"H200": 8}, "eu-south-2", 7.18)
    assert task.workdir == str(tasks.REPO_ROOT)


def test_a_plain_install_uploads_a_copy_of_its_packages_never_the_folder_it_was_started_in(tmp_path, monkeypatch):
    """site-packages has no pyproject.toml: the workdir is a content-keyed copy of the three packages in the
    user cache (what a task's setup and run read: the locks, the stage programs), not `.` = wherever the user is."""
    import shutil

    site = tmp_path / "site-packages"
    for name in tasks.PACKAGES:
        shutil.copytree(REAL_TASKS.parent / name, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    (site / "unrelated_package").mkdir()
    (site / "unrelated_package" / "big.bin").write_bytes(b"x" * 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tasks, "REPO_ROOT", site)
    monkeypatch.setattr(tasks, "TASKS_DIR", site / "sky_tasks")
    monkeypatch.chdir(tmp_path)
    tasks.workdir.cache_clear()
    try:
        task = tasks.render("generate", {"RUN_ID": "r7"}, None, "full", environ={})
        first = tasks.workdir()
        assert task.workdir == str(first) and first.parent == tmp_path / "cache" / "reproduce" / "workdir"
        assert (first / "sky_tasks" / "locks" / "generate.txt").is_file()
        assert (first / "reproduce" / "stages" / "generate.py").is_file()
        assert not (first / "unrelated_package").exists() and not list(first.rglob("__pycache__"))
        tasks.workdir.cache_clear()
        assert tasks.workdir() == first                       # the same content: the same copy, not another
        (site / "reproduce" / "stages" / "generate.py").write_text("# changed\n")
        tasks.workdir.cache_clear()
        changed = tasks.workdir()
        assert changed != first and (changed / "reproduce" / "stages" / "generate.py").read_text() == "# changed\n"
        assert sorted(p.name for p in changed.parent.iterdir()) == sorted([first.name, changed.name])  # no staging left
    finally:
        tasks.workdir.cache_clear()


def test_on_demand_row_renders_on_demand_and_its_node_count():
    task = tasks.render("sft", {}, row("sft", nodes=2, spot=False, cloud="gcp", region="us-central1"))
    (res,) = task.resources
    assert not res.use_spot and str(res.cloud) == "GCP" and res.region == "us-central1"
    assert task.num_nodes == 2


def test_a_pinned_region_recovers_in_place_and_managed_jobs_drop_autostop():
    cfg = tasks.config("sft", {}, row("sft"))
    assert cfg["resources"]["job_recovery"] == {"strategy": "FAILOVER", "max_restarts_on_errors": 2}
    assert "autostop" not in cfg["resources"]


def test_labels_name_the_run_and_stage():
    from costmodel.billing_tags import TAG_RUN, TAG_STAGE

    task = tasks.render("filter", {"RUN_ID": "20261201-ab12"}, None)
    (res,) = task.resources
    assert res.labels == {TAG_RUN: "20261201-ab12", TAG_STAGE: "filter"}


def test_no_placement_leaves_cloud_open_and_keeps_job_recovery():
    task = tasks.render("sft", {"RUN_ID": "r"}, None, "full", environ={})
    (res,) = task.resources
    assert res.cloud is None and res.use_spot and res.accelerators == {"H100": 8}
    assert res.job_recovery["strategy"] == "EAGER_NEXT_REGION"
    assert "HF_TOKEN" not in task.secrets       # declared null and unset: dropped, never a null env


def test_smoke_scale_sets_stage_extras():
    assert tasks.render("sft", {}, None, "smoke", environ={}).envs["STAGE_EXTRAS"] == "smoke"


def test_render_yaml_redacts_secrets_and_shows_placement():
    text = tasks.render_yaml("generate", {"RUN_ID": "r7"}, PLACEMENT, "full",
                             environ={"HF_TOKEN": SECRET, "WANDB_API_KEY": "wandb_ALSO_SECRET"})
    assert SECRET not in text and "wandb_ALSO_SECRET" not in text
    cfg = yaml.safe_load(text)
    assert cfg["secrets"] == {"HF_TOKEN": "<redacted>", "WANDB_API_KEY": "<redacted>"}
    assert cfg["resources"]["ordered"][0]["infra"] == "aws/us-east-1"
    assert text.startswith("# stage generate (full scale): aws/us-east-1")
    # what we print is itself a valid SkyPilot task
    import sky
    sky.Task.from_yaml_config(cfg)


def test_render_yaml_says_when_a_secret_is_unset():
    cfg = yaml.safe_load(tasks.render_yaml("generate", {}, None, "full", environ={}))
    assert cfg["secrets"]["HF_TOKEN"] == "<not set>"
    assert "infra" not in cfg["resources"]


def test_secret_passed_as_env_is_refused():
    with pytest.raises(UserError, match="HF_TOKEN"):
        tasks.render("generate", {"HF_TOKEN": SECRET})


def test_unknown_stage_and_bad_yaml_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no task YAML for stage 'nope'.*generate"):
        tasks.load_task("nope")
    write_tasks(tasks.TASKS_DIR, broken=GENERATE.replace("use_spot", "use_spott"))
    with pytest.raises(UserError, match="use_spott"):
        tasks.render("broken")


def test_is_gpu_task():
    assert tasks.is_gpu_task(tasks.load_task("generate")) and tasks.is_gpu_task(tasks.load_task("sft"))
    assert not tasks.is_gpu_task(tasks.load_task("filter"))


def test_redact():
    assert tasks.redact(f"token={SECRET}!", [SECRET, "", None]) == "token=<redacted>!"


@pytest.mark.parametrize("stage", ["generate", "filter", "sft", "eval"])
def test_shipped_tasks_render_without_secret_values(stage, monkeypatch):
    monkeypatch.setattr(tasks, "TASKS_DIR", REAL_TASKS)
    env = {"HF_TOKEN": SECRET, "WANDB_API_KEY": "wandb_SECRET_x", "OPENAI_API_KEY": "sk-SECRET-y"}
    text = tasks.render_yaml(stage, {"RUN_ID": "r1"}, row(stage) if stage != "filter" else None, "full", environ=env)
    for value in env.values():
        assert value not in text
