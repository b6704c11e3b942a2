"""The sky executor against a fake of its one SkyPilot boundary (sky_adapter); tasks are real sky.Tasks."""
import pytest

from reproduce import tasks
from reproduce.errors import UserError
from reproduce.executors import sky as skyexec
from reproduce.executors import sky_adapter
from reproduce.executors.base import RunContext
from reproduce.executors.sky import SkyExecutor

SECRET = "hf_SKYSECRET_55555"
REAL_TASKS = tasks.TASKS_DIR

GPU_TASK = """\
name: {stage}
workdir: .
resources:
  use_spot: true
  any_of: [{{accelerators: H100:8}}, {{accelerators: H200:8}}]
  job_recovery: {{strategy: EAGER_NEXT_REGION}}
envs: {{ARTIFACTS: /artifacts, BUCKET: "", STAGE_EXTRAS: sft, RUN_ID: ""}}
secrets: {{HF_TOKEN: "", WANDB_API_KEY: ""}}
setup: pip install -e ".[$STAGE_EXTRAS]"
run: python -m reproduce.stages.{stage} --recipe $ARTIFACTS/recipe.yaml --artifacts $ARTIFACTS
"""
FILTER_TASK = """\
name: filter
workdir: .
resources: {cpus: 32+}
envs: {ARTIFACTS: /artifacts, STAGE_EXTRAS: filter, RUN_ID: ""}
setup: pip install -e ".[$STAGE_EXTRAS]"
run: python -m reproduce.stages.filter --recipe $ARTIFACTS/recipe.yaml --artifacts $ARTIFACTS
"""

PLAN = {"stage": "sft", "kind": "gpu", "gpus": 8, "max_hourly_cost": 10.76, "accelerator": "H100:8", "nodes": 1, "spot": True, "cloud": "AWS", "region": "us-east-1",
        "instance_type": "p5.48xlarge", "price_per_hour": 20.0, "price_source": "snapshot 2026-01"}


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


class FakeAdapter:
    """Same functions as sky_adapter; scripted states; records every call."""

    def __init__(self, states=(), cluster_states=()):
        self.states = list(states)            # managed_status records, one per poll (last one repeats)
        self.cluster_states = list(cluster_states)
        self.calls = []
        self.tasks = []
        self.interrupt_poll = False

    def launch_managed(self, task, name):
        self.calls.append(("launch_managed", name))
        self.tasks.append(task)
        return 42

    def launch_cluster(self, task, cluster_name, down=True, idle_minutes=5):
        self.calls.append(("launch_cluster", cluster_name, down, idle_minutes))
        self.tasks.append(task)
        return 1

    def managed_status(self, job_id):
        if self.interrupt_poll:
            raise KeyboardInterrupt
        self.calls.append(("managed_status", job_id))
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def cluster_status(self, name, job_id=None):
        self.calls.append(("cluster_status", name, job_id))
        return self.cluster_states.pop(0) if len(self.cluster_states) > 1 else self.cluster_states[0]

    def cancel_managed(self, job_id=None, name=None):
        self.calls.append(("cancel_managed", job_id, name))

    def down(self, cluster_name):
        self.calls.append(("down", cluster_name))

    def enabled_infra(self):
        return ["aws"]


@pytest.fixture(autouse=True)
def sky_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    folder = tmp_path / "sky_tasks"
    folder.mkdir()
    for stage in ("generate", "sft", "eval"):
        (folder / f"{stage}.yaml").write_text(GPU_TASK.format(stage=stage))
    (folder / "filter.yaml").write_text(FILTER_TASK)
    monkeypatch.setattr(tasks, "TASKS_DIR", folder)


@pytest.fixture(autouse=True)
def synced(monkeypatch):
    """The bucket sync (boto3; tested against moto in test_bucket.py), recorded instead of run."""
    from reproduce.executors import bucket

    calls = []
    monkeypatch.setattr(bucket, "push", lambda local, url, client=None: calls.append(("push", str(local), url)))
    monkeypatch.setattr(bucket, "pull", lambda url, local, client=None: calls.append(("pull", url, str(local))))
    return calls


def ctx(stage="sft", plan=PLAN, recipe=None):
    return RunContext(run_id="Run_1", recipe=recipe or {"filter": {"where": "cpu-node"}}, stage=stage,
                      plan=dict(plan), artifacts="/artifacts", envs={"KNOB": "x"}, bucket="s3://my-bucket")


def rec(status, start=None, end=None, recoveries=0, cloud="AWS", region="us-east-1", instance="p5.48xlarge",
        accelerators=None, failure_reason=None):
    return {"status": status, "recoveries": recoveries, "cloud": cloud, "region": region, "zone": None,
            "instance_type": instance, "nodes": 1, "accelerators": accelerators or {"H100": 8},
            "start_at": start, "end_at": end, "failure_reason": failure_reason}


def prices(cloud, region, instance, spot, accelerator):
    table = {("AWS", "us-east-1", "p5.48xlarge", True, "H100:8"): 24.0,
             ("AWS", "us-west-2", "p5.48xlarge", True, "H100:8"): 30.0}
    price = table.get((cloud, region, instance, spot, accelerator))
    return None if price is None else (price, f"fake catalog {region}")


def test_managed_job_through_preemption_to_success_priced_where_it_ran():
    t0 = 1_000_000.0
    clock = Clock(t0)
    fake = FakeAdapter([
        rec("PENDING", cloud=None, region=None, instance=None),
        rec("STARTING", start=t0 + 600),
        rec("RUNNING", start=t0 + 600),
        rec("RECOVERING", start=t0 + 600, recoveries=1),
        rec("RUNNING", start=t0 + 600, recoveries=1, region="us-west-2"),
        rec("SUCCEEDED", start=t0 + 600, end=t0 + 600 + 3 * 3600, recoveries=1, region="us-west-2"),
    ])
    ex = SkyExecutor(adapter=fake, price_lookup=prices, clock=clock)
    handle = ex.launch(ctx())
    assert fake.calls[0] == ("launch_managed", "rp-run-1-sft")
    task = fake.tasks[0]
    assert task.envs["RUN_ID"] == "Run_1" and task.envs["BUCKET"] == "s3://my-bucket/runs/Run_1" and task.envs["KNOB"] == "x"
    assert SECRET not in task.envs.values() and task.secrets["HF_TOKEN"].get_secret_value() == SECRET
    assert {r.region for r in task.resources} == {"us-east-1"}       # the plan's placement

    states = []
    for minutes in (1, 11, 60, 70, 80, 300):
        clock.t = t0 + minutes * 60
        states.append(ex.poll(handle))
    assert [s.state for s in states] == ["PENDING", "STARTING", "RUNNING", "RECOVERING", "RUNNING", "SUCCEEDED"]
    assert states[0].elapsed_s == 0 and states[0].cost_usd == 0
    assert states[2].elapsed_s == 50 * 60 and states[2].cost_usd == pytest.approx(50 / 60 * 24.0)
    assert [s.preemptions for s in states] == [0, 0, 0, 1, 1, 1]
    done = states[-1]
    assert done.elapsed_s == 3 * 3600                       # job start to job end, not to this poll
    assert done.price_per_hour == 30.0 and done.price_source == "fake catalog us-west-2"
    assert done.cost_usd == pytest.approx(3 * 30.0)
    assert (done.cloud, done.region, done.instance_type, done.spot, done.gpus) == \
        ("AWS", "us-west-2", "p5.48xlarge", True, 8)
    assert not any(c[0] in ("cancel_managed", "down") for c in fake.calls)   # the controller downs it
    n = len(fake.calls)
    assert ex.poll(handle) is done and len(fake.calls) == n                  # terminal: no more SDK calls
    ex.cancel(handle)
    assert not any(c[0] == "cancel_managed" for c in fake.calls)             # nothing left to cancel


def test_a_handle_from_an_earlier_process_is_polled_and_cancelled():
    clock = Clock(3600.0)
    fake = FakeAdapter([rec("RUNNING", start=0.0)])
    ex = SkyExecutor(adapter=fake, price_lookup=prices, clock=clock)
    st = ex.poll("managed:rp-run-1-sft:42")
    assert st.state == "RUNNING" and ("managed_status", 42) in fake.calls and st.elapsed_s == 3600
    ex.cancel("managed:rp-run-1-sft:42")
    assert ("cancel_managed", 42, None) in fake.calls
    with pytest.raises(UserError, match="not a SkyPilot stage handle"):
        ex.poll("nonsense")


def test_price_falls_back_to_the_plan_when_the_catalog_has_no_row():
    clock = Clock(0.0)
    fake = FakeAdapter([rec("RUNNING", start=0.0, cloud="Lambda", region="us-south-1", instance="gpu_8x_h100")])
    ex = SkyExecutor(adapter=fake, price_lookup=prices, clock=clock)
    handle = ex.launch(ctx())
    clock.t = 2 * 3600
    st = ex.poll(handle)
    assert st.price_per_hour == 20.0 and st.cost_usd == pytest.approx(40.0)
    assert st.price_source == "plan estimate (snapshot 2026-01)"


def test_failure_tears_down_and_says_why():
    fake = FakeAdapter([rec("RUNNING", start=0.0), rec("FAILED_SETUP", start=0.0, end=100.0,
                                                       failure_reason="pip install failed")])
    ex = SkyExecutor(adapter=fake, price_lookup=prices, clock=Clock(50.0))
    handle = ex.launch(ctx())
    assert ex.poll(handle).state == "RUNNING"
    st = ex.poll(handle)
    assert st.state == "FAILED" and "pip install failed" in st.message
    assert ("cancel_managed", 42, None) in fake.calls
    ex.cancel(handle)
    assert fake.calls.count(("cancel_managed", 42, None)) == 1                # once


def test_ctrl_c_during_poll_cancels_and_tears_down():
    fake = FakeAdapter([rec("RUNNING", start=0.0)])
    ex = SkyExecutor(adapter=fake, price_lookup=prices, clock=Clock(10.0))
    handle = ex.launch(ctx())
    ex.poll(handle)
    fake.interrupt_poll = True
    with pytest.raises(KeyboardInterrupt):
        ex.poll(handle)
    assert ("cancel_managed", 42, None) in fake.calls
    ex.cancel(handle)                                                         # the pipeline's own cancel
    assert fake.calls.count(("cancel_managed", 42, None)) == 1
    assert ex.poll(handle).state == "CANCELLED"


def test_ctrl_c_during_launch_cancels_by_name():
    class Interrupted(FakeAdapter):
        def launch_managed(self, task, name):
            raise KeyboardInterrupt

    fake = Interrupted()
    ex = SkyExecutor(adapter=fake, price_lookup=prices)
    with pytest.raises(KeyboardInterrupt):
        ex.launch(ctx())
    assert fake.calls == [("cancel_managed", None, "rp-run-1-sft")]


def test_failed_teardown_is_shown_not_swallowed():
    class Stuck(FakeAdapter):
        def cancel_managed(self, job_id=None, name=None):
            super().cancel_managed(job_id, name)
            raise RuntimeError("API server unreachable")

    fake = Stuck([rec("RUNNING", start=0.0)])
    ex = SkyExecutor(adapter=fake, price_lookup=prices, clock=Clock(10.0))
    handle = ex.launch(ctx())
    ex.cancel(handle)
    st = ex.poll(handle)
    assert st.state == "CANCELLED" and "TEARDOWN FAILED" in st.message and "sky jobs queue" in st.message
    ex.cancel(handle)                                                         # tried again
    assert fake.calls.count(("cancel_managed", 42, None)) == 2


def test_status_hiccup_keeps_state_and_time_running():
    class Flaky(FakeAdapter):
        def managed_status(self, job_id):
            if len(self.calls) >= 2:   # launch + one good poll
                raise ConnectionError("server restarting")
            return super().managed_status(job_id)

    clock = Clock(0.0)
    fake = Flaky([rec("RUNNING", start=0.0)])
    ex = SkyExecutor(adapter=fake, price_lookup=prices, clock=clock)
    handle = ex.launch(ctx())
    clock.t = 3600
    assert ex.poll(handle).cost_usd == pytest.approx(24.0)
    clock.t = 7200
    st = ex.poll(handle)
    assert st.state == "RUNNING" and "server restarting" in st.message
    assert st.cost_usd == pytest.approx(48.0)


def test_filter_on_a_cpu_node_is_a_cluster_downed_when_its_job_ends():
    plan = {"stage": "filter", "nodes": 1, "price_per_hour": 1.36, "price_source": "recipe"}
    up = {"status": "UP", "cloud": "AWS", "region": "us-east-1", "zone": "us-east-1a",
          "instance_type": "c6i.8xlarge", "spot": False, "nodes": 1, "launched_at": 100.0}
    fake = FakeAdapter(cluster_states=[{**up, "job_status": "SETTING_UP"}, {**up, "job_status": "RUNNING"},
                                       {**up, "job_status": "SUCCEEDED"}])
    clock = Clock(100.0)
    ex = SkyExecutor(adapter=fake, price_lookup=prices, clock=clock)
    handle = ex.launch(ctx("filter", plan))
    assert fake.calls[0] == ("launch_cluster", "rp-run-1-filter", True, 5)
    clock.t = 100.0 + 1800
    assert ex.poll(handle).state == "STARTING"
    assert ex.poll(handle).state == "RUNNING"
    st = ex.poll(handle)
    assert st.state == "SUCCEEDED" and st.cost_usd == pytest.approx(0.5 * 1.36)
    assert st.spot is False and st.zone == "us-east-1a"
    assert fake.calls[-1] == ("down", "rp-run-1-filter")                  # no idle minutes billed


def test_controller_stages_and_local_filter_run_here():
    class Local:
        def __init__(self):
            self.launched = []

        def launch(self, run):
            self.launched.append(run.stage)
            return f"local:{run.stage}:1"

        def poll(self, handle):
            return "polled " + handle

        def cancel(self, handle):
            self.launched.append("cancel " + handle)

    here, fake = Local(), FakeAdapter()
    ex = SkyExecutor(adapter=fake, local=here)
    for stage in ("rewrite", "convert"):
        ex.launch(ctx(stage))
    h = ex.launch(ctx("filter", recipe={"filter": {"where": "local"}}))
    assert here.launched == ["rewrite", "convert", "filter"] and fake.calls == []
    assert ex.poll(h) == "polled local:filter:1"
    ex.cancel(h)
    assert here.launched[-1] == "cancel local:filter:1"


@pytest.mark.parametrize("stage", ["generate", "sft", "eval"])
def test_shipped_tasks_launch_with_placement_and_secrets(stage, monkeypatch):
    monkeypatch.setattr(tasks, "TASKS_DIR", REAL_TASKS)
    fake = FakeAdapter([rec("PENDING")])
    SkyExecutor(adapter=fake).launch(ctx(stage, dict(PLAN, stage=stage)))
    (task,) = fake.tasks
    (res,) = task.resources   # the plan row has no fallbacks: exactly the planned placement
    assert (res.region, str(res.cloud), res.use_spot, res.accelerators, res.max_hourly_cost) == (
        "us-east-1", "AWS", True, {"H100": 8}, 10.76)
    assert task.envs["BUCKET"] == "s3://my-bucket/runs/Run_1" and SECRET not in task.envs.values()
    assert task.secrets["HF_TOKEN"].get_secret_value() == SECRET
    if stage == "sft":
        assert all(r.job_recovery for r in task.resources)


def test_no_secret_in_what_the_executor_launches_as_envs():
    fake = FakeAdapter([rec("PENDING")])
    SkyExecutor(adapter=fake, price_lookup=prices).launch(ctx("generate"))
    cfg = fake.tasks[0].to_yaml_config()
    assert SECRET not in str(cfg["envs"])


def test_a_cloud_stage_without_a_bucket_is_refused_before_launch():
    fake = FakeAdapter([rec("PENDING")])
    run = ctx("generate")
    run.bucket = None
    with pytest.raises(UserError, match="bucket"):
        SkyExecutor(adapter=fake).launch(run)
    assert fake.calls == []


def test_sky_enabled():
    assert skyexec.sky_enabled(FakeAdapter())

    class Nothing(FakeAdapter):
        def enabled_infra(self):
            return []

    assert not skyexec.sky_enabled(Nothing())


def test_cluster_names_are_valid_for_skypilot():
    assert skyexec.cluster_name("2026-01-02_run.7", "eval") == "rp-2026-01-02-run-7-eval"
    assert len(skyexec.cluster_name("x" * 80, "generate")) <= 40


def test_catalog_price_matches_cloud_region_instance(monkeypatch):
    from types import SimpleNamespace

    offers = [SimpleNamespace(cloud="AWS", region="us-east-1", zone=None, instance_type="p5.48xlarge",
                              accelerator="H100", count=8, on_demand=98.3, spot=24.1, source="snapshot",
                              date="2026-01-01"),
              SimpleNamespace(cloud="GCP", region="us-central1", zone=None, instance_type="a3-highgpu-8g",
                              accelerator="H100", count=8, on_demand=88.0, spot=22.0, source="snapshot",
                              date="2026-01-01")]
    fake_prices = SimpleNamespace(gpu_offers=lambda accelerator: offers)
    import costmodel

    monkeypatch.setattr(costmodel, "prices", fake_prices, raising=False)
    monkeypatch.setitem(__import__("sys").modules, "costmodel.prices", fake_prices)
    price, source = skyexec.catalog_price("gcp", "us-central1", "a3-highgpu-8g", True, "H100:8")
    assert price == 22.0 and "snapshot 2026-01-01" in source and "spot" in source
    assert skyexec.catalog_price("aws", "us-east-1", "p5.48xlarge", False, "H100:8")[0] == 98.3
    assert skyexec.catalog_price("aws", "eu-west-1", "p5.48xlarge", True, "H100:8") is None


# ---- the adapter's own parsing (no SkyPilot call) ---------------------------------------------------------
def test_adapter_parses_job_resources():
    assert sky_adapter._parse_resources("1x(gpus=H100:8, cpus=192, mem=2048, p5.48xlarge, disk=256)") == \
        (1, "p5.48xlarge")
    assert sky_adapter._parse_resources("2x(gpus=H200:8, a3-ultragpu-8g, ...)") == (2, "a3-ultragpu-8g")
    assert sky_adapter._parse_resources("-") == (1, None)


def test_adapter_reads_a_real_managed_job_record():
    from sky.jobs.state import ManagedJobStatus
    from sky.schemas.api.responses import ManagedJobRecord

    record = ManagedJobRecord(job_id=42, status=ManagedJobStatus.RECOVERING, cloud="AWS", region="us-west-2",
                              zone="us-west-2b", recovery_count=2, accelerators={"H100": 8}, start_at=5.0,
                              cluster_resources_full="1x(gpus=H100:8, cpus=192, mem=2048, p5.48xlarge, disk=2048)")
    got = sky_adapter.managed_record(sky_adapter._as_dict(record))
    assert got == {"status": "RECOVERING", "recoveries": 2, "cloud": "AWS", "region": "us-west-2",
                   "zone": "us-west-2b", "instance_type": "p5.48xlarge", "nodes": 1, "accelerators": {"H100": 8},
                   "start_at": 5.0, "end_at": None, "failure_reason": None}
    assert skyexec.MANAGED_STATES[got["status"]] == "RECOVERING"
    assert set(skyexec.MANAGED_STATES) >= {s.value for s in ManagedJobStatus}   # every SkyPilot state mapped


def test_enabled_infra_is_empty_without_a_running_server():
    assert sky_adapter.enabled_infra(timeout_s=20) == []


def test_cloud_stages_push_the_artifacts_first_and_pull_the_results_on_success(synced):
    adapter = FakeAdapter(states=[rec("RUNNING", start=0), rec("SUCCEEDED", start=0, end=3600)])
    ex = SkyExecutor(adapter=adapter, price_lookup=prices, clock=lambda: 7200)
    handle = ex.launch(ctx("sft"))
    assert synced == [("push", "/artifacts", "s3://my-bucket/runs/Run_1")]
    ex.poll(handle)
    assert len(synced) == 1  # nothing to pull while it runs
    assert ex.poll(handle).state == "SUCCEEDED"
    assert synced[-1] == ("pull", "s3://my-bucket/runs/Run_1", "/artifacts")


def test_a_cluster_downs_itself_when_its_job_ends_not_when_ssh_closes(monkeypatch):
    """The one SDK call of a cluster launch binds to SkyPilot's own sky.launch signature, with autostop waiting
    for jobs only: the watchdog's deadline bounds the job, so it bounds the node with no controller alive."""
    import inspect

    import sky
    from sky.skylet.autostop_lib import AutostopWaitFor

    real, seen = inspect.signature(sky.launch), {}
    monkeypatch.setattr(sky, "launch", lambda *a, **k: seen.update(real.bind(*a, **k).arguments) or "request")
    monkeypatch.setattr(sky, "get", lambda request: (7, None))
    assert sky_adapter.launch_cluster(sky.Task(run="true"), "reproduce-r-filter", idle_minutes=5) == 7
    assert seen["wait_for"] is AutostopWaitFor.JOBS and seen["down"] is True
    assert seen["idle_minutes_to_autostop"] == 5 and seen["cluster_name"] == "reproduce-r-filter"
