"""The local executor runs a task's real `setup` and `run` in bash subprocesses, with real venvs."""
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import cli
from reproduce import tasks
from reproduce.errors import UserError
from reproduce.executors import local
from reproduce.executors.base import RunContext
from reproduce.executors.local import LocalExecutor, env_hash

SECRET = "hf_LOCALSECRET_987654321"

# The shape of sky_tasks/*.yaml; setup and run write what they saw where the test can read it.
GPU_TASK = """\
name: generate
workdir: .
resources:
  use_spot: true
  any_of: [{accelerators: H100:8}, {accelerators: H200:8}]
envs: {ARTIFACTS: /artifacts, STAGE_EXTRAS: generate, RUN_ID: "", KNOB: default}
secrets: {HF_TOKEN: ""}
setup: |
  echo "setup $STAGE_EXTRAS" >> "$SETUP_LOG"
run: |
  echo "run extras=$STAGE_EXTRAS run=$RUN_ID knob=$KNOB artifacts=$ARTIFACTS cwd=$(pwd)"
  echo "venv=$VIRTUAL_ENV python=$(python -c 'import sys; print(sys.prefix)')"
  echo "token=$HF_TOKEN"
  echo "nodes=$SKYPILOT_NUM_NODES rank=$SKYPILOT_NODE_RANK ips=$SKYPILOT_NODE_IPS"
  exit ${EXIT_CODE:-0}
"""

FILTER_TASK = """\
name: filter
workdir: .
resources: {cpus: 4+}
envs: {ARTIFACTS: /artifacts, STAGE_EXTRAS: filter, RUN_ID: ""}
setup: |
  echo "setup $STAGE_EXTRAS" >> "$SETUP_LOG"
run: |
  sleep 300 &
  echo $! > "$ARTIFACTS/child.pid"
  echo started
  wait
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    folder = tmp_path / "sky_tasks"
    folder.mkdir()
    (folder / "generate.yaml").write_text(GPU_TASK)
    (folder / "filter.yaml").write_text(FILTER_TASK)
    (folder / "sft.yaml").write_text(GPU_TASK.replace("name: generate", "name: sft"))
    monkeypatch.setattr(tasks, "TASKS_DIR", folder)
    monkeypatch.setenv("SETUP_LOG", str(tmp_path / "setup.log"))
    monkeypatch.setenv("REPRODUCE_ENV_CACHE", str(tmp_path / "envs"))   # the per-user cache, here
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("REPRODUCE_STAGE_VENV", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return tmp_path


@pytest.fixture
def ready(env, monkeypatch):
    """A ready stage venv (REPRODUCE_STAGE_VENV), for tests about something other than setup: no venv build."""
    venv = env / "ready-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setenv("REPRODUCE_STAGE_VENV", str(venv))
    return venv


def ctx(tmp_path, stage, **envs):
    return RunContext(run_id="run1", recipe={}, stage=stage, plan={}, artifacts=tmp_path / "run1" / "artifacts",
                      envs=envs)


def alive(pid, wait_s=5.0):
    """A killed process may linger as a zombie under a pid 1 that does not reap: that counts as dead."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                return False
        except (FileNotFoundError, ProcessLookupError):
            return False
        time.sleep(0.05)
    return True


def finish(ex, handle, timeout=120):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        st = ex.poll(handle)
        seen.append(st.state)
        if st.done:
            return st, seen
        time.sleep(0.05)
    raise AssertionError(f"stage did not finish in {timeout}s: {seen[-5:]}")


def test_setup_runs_once_per_hash_and_env_is_reused(env):
    ex = LocalExecutor("smoke", state_dir=env / "home")
    st, seen = finish(ex, ex.launch(ctx(env, "generate", KNOB="7")))
    assert st.state == "SUCCEEDED", st.message
    assert "STARTING" in seen or "RUNNING" in seen
    assert st.cost_usd == 0 and st.price_source == "local machine"
    log = (env / "run1" / "logs" / "generate.log").read_text()
    artifacts = env / "run1" / "artifacts"
    assert f"run extras=smoke run=run1 knob=7 artifacts={artifacts} cwd={tasks.REPO_ROOT}" in log
    venv = env / "envs" / f'smoke-{env_hash(tasks.load_task("generate")["setup"], {"STAGE_EXTRAS": "smoke"})}'
    assert "nodes=1 rank=0 ips=127.0.0.1" in log
    assert f"venv={venv} python={venv}" in log          # run used the stage venv's python
    assert (venv / ".ready").exists()
    # sft has the same setup text and the same STAGE_EXTRAS: same env, no second setup
    st, seen = finish(ex, ex.launch(ctx(env, "sft")))
    assert st.state == "SUCCEEDED", st.message
    assert "STARTING" not in seen
    assert (env / "setup.log").read_text() == "setup smoke\n"


def test_env_hash_follows_setup_and_referenced_envs():
    setup = 'pip install -e ".[$STAGE_EXTRAS]"'
    assert env_hash(setup, {"STAGE_EXTRAS": "smoke"}) != env_hash(setup, {"STAGE_EXTRAS": "sft"})
    assert env_hash(setup, {"STAGE_EXTRAS": "sft", "RUN_ID": "a"}) == env_hash(setup, {"STAGE_EXTRAS": "sft"})
    assert env_hash(setup + " -q", {"STAGE_EXTRAS": "sft"}) != env_hash(setup, {"STAGE_EXTRAS": "sft"})
    assert len(env_hash(setup, {})) == 12


def test_env_hash_is_the_lock_the_real_setup_installs(tmp_path):
    setup = tasks.load_task("generate")["setup"]          # the real text: the script and the lock it installs
    for name, text in (("smoke.txt", "pyyaml==6.0.2 --hash=sha256:aa\n"), ("build.txt", "setuptools==80 \\\n")):
        (tmp_path / "sky_tasks" / "locks").mkdir(parents=True, exist_ok=True)
        (tmp_path / "sky_tasks" / "locks" / name).write_text(text)
    script = (tasks.TASKS_DIR / "setup.sh").read_text()    # it names the build constraints
    (tmp_path / "sky_tasks" / "setup.sh").write_text(script)
    before = env_hash(setup, {"STAGE_EXTRAS": "smoke"}, root=tmp_path)
    assert env_hash(setup, {"STAGE_EXTRAS": "smoke"}, root=tmp_path) == before
    assert env_hash(setup, {"STAGE_EXTRAS": "sft"}, root=tmp_path) != before
    (tmp_path / "sky_tasks" / "locks" / "smoke.txt").write_text("pyyaml==6.0.3 --hash=sha256:bb\n")   # re-locked
    relocked = env_hash(setup, {"STAGE_EXTRAS": "smoke"}, root=tmp_path)
    assert relocked != before
    (tmp_path / "sky_tasks" / "locks" / "build.txt").write_text("setuptools==81 \\\n")
    rebuilt = env_hash(setup, {"STAGE_EXTRAS": "smoke"}, root=tmp_path)
    assert rebuilt != relocked
    (tmp_path / "sky_tasks" / "setup.sh").write_text(script + "echo one more step\n")     # the script edited
    assert env_hash(setup, {"STAGE_EXTRAS": "smoke"}, root=tmp_path) != rebuilt


def test_stage_envs_are_cached_per_user_not_per_home(env, monkeypatch):
    """Two REPRODUCE_HOMEs (two trial runs, two smoke tests) share one environment: one setup."""
    for home in ("home-a", "home-b"):
        ex = LocalExecutor("smoke", state_dir=env / home)
        st, _ = finish(ex, ex.launch(ctx(env / home, "generate")))
        assert st.state == "SUCCEEDED", st.message
    assert (env / "setup.log").read_text() == "setup smoke\n"
    assert [p.parent.name.split("-")[0] for p in (env / "envs").glob("*/.ready")] == ["smoke"]
    monkeypatch.delenv("REPRODUCE_ENV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(env / "xdg"))
    assert local.env_cache() == env / "xdg" / "reproduce" / "envs"


def test_concurrent_runs_build_one_env(env):
    """Runs that start together wait for one build (flock) rather than both building or using half an env."""
    slow = GPU_TASK.replace('echo "setup $STAGE_EXTRAS" >> "$SETUP_LOG"',
                            'echo "setup $STAGE_EXTRAS" >> "$SETUP_LOG"; sleep 1; touch "$VIRTUAL_ENV/built"')
    for stage in ("generate", "sft"):
        (env / "sky_tasks" / f"{stage}.yaml").write_text(slow.replace("name: generate", f"name: {stage}"))
    a, b = LocalExecutor("smoke", state_dir=env / "a"), LocalExecutor("smoke", state_dir=env / "b")
    ha, hb = a.launch(ctx(env / "a", "generate")), b.launch(ctx(env / "b", "sft"))
    for ex, handle in ((a, ha), (b, hb)):
        st, _ = finish(ex, handle)
        assert st.state == "SUCCEEDED", st.message
    assert (env / "setup.log").read_text() == "setup smoke\n"
    assert len(list((env / "envs").glob("*/built"))) == 1


def test_failed_setup_is_retried_and_fails_the_stage(env, monkeypatch):
    monkeypatch.setenv("SETUP_LOG", str(env / "no-such-dir" / "setup.log"))
    ex = LocalExecutor("smoke", state_dir=env / "home")
    st, _ = finish(ex, ex.launch(ctx(env, "generate")))
    assert st.state == "FAILED" and "no-such-dir" in st.message
    assert "run extras" not in (env / "run1" / "logs" / "generate.log").read_text()   # run never ran
    assert not list((env / "envs").glob("*/.ready"))


def test_ready_venv_skips_setup(env, ready):
    venv = ready
    ex = LocalExecutor("smoke", state_dir=env / "home")
    st, _ = finish(ex, ex.launch(ctx(env, "generate")))
    assert st.state == "SUCCEEDED", st.message
    assert not (env / "setup.log").exists()
    assert f"venv={venv}" in (env / "run1" / "logs" / "generate.log").read_text()


def test_ready_venv_must_exist(env, monkeypatch):
    monkeypatch.setenv("REPRODUCE_STAGE_VENV", str(env / "missing"))
    with pytest.raises(UserError, match="REPRODUCE_STAGE_VENV"):
        LocalExecutor("smoke", state_dir=env / "home").launch(ctx(env, "generate"))


def test_full_scale_gpu_stage_refuses_without_gpu(env, monkeypatch):
    monkeypatch.setattr(local, "has_gpu", lambda: False)
    ex = LocalExecutor("full", state_dir=env / "home")
    with pytest.raises(UserError, match=r"stage generate at --scale full needs GPUs.*no nvidia-smi"):
        ex.launch(ctx(env, "generate"))
    assert not (env / "run1" / "logs" / "generate.log").exists()   # nothing started


def test_has_gpu_looks_for_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not local.has_gpu()
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    assert local.has_gpu()


def test_logs_never_hold_a_secret(env, ready):
    ex = LocalExecutor("smoke", state_dir=env / "home")
    st, _ = finish(ex, ex.launch(ctx(env, "generate")))
    log = (env / "run1" / "logs" / "generate.log").read_text()
    assert "token=<redacted>" in log and SECRET not in log


def test_failure_is_reported_with_the_tail(env, ready):
    ex = LocalExecutor("smoke", state_dir=env / "home")
    st, _ = finish(ex, ex.launch(ctx(env, "generate", EXIT_CODE="3")))
    assert st.state == "FAILED" and st.message.startswith("exit 3:") and "generate.log" in st.message
    assert SECRET not in st.message


def test_cancel_kills_the_process_group(env, ready):
    ex = LocalExecutor("full", state_dir=env / "home")   # filter is a CPU stage: fine at full scale
    handle = ex.launch(ctx(env, "filter"))
    pid_file = env / "run1" / "artifacts" / "child.pid"
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.time() < deadline:
        assert not ex.poll(handle).done
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert ex.poll(handle).state == "RUNNING"
    ex.cancel(handle)
    ex.cancel(handle)   # idempotent
    assert ex.poll(handle).state == "CANCELLED"
    assert not alive(child)


def test_a_resume_stops_the_stage_a_dead_controller_left_running_before_launching_it_again(env, ready):
    ex = LocalExecutor("full", state_dir=env / "home")
    run, seen = ctx(env, "filter"), []
    run.on_handle = seen.append                      # recorded at launch: a resume can find it
    handle = ex.launch(run)
    pid_file = env / "run1" / "artifacts" / "child.pid"
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert seen == [handle]
    resumed = LocalExecutor("full", state_dir=env / "home")   # the next controller: none of the old one's jobs
    assert resumed.reattach(handle, ctx(env, "filter")) is None and not alive(child)
    other = RunContext(run_id="another-run", recipe={}, stage="filter", plan={}, artifacts=env, envs={})
    assert resumed.reattach(f"local:filter:{os.getpid()}", other) is None   # never a process of another run
    assert ex.poll(handle).done


FAKE_STAGE = """\
import os, sys, urllib.request
print("base", os.environ["OPENAI_BASE_URL"], "key", os.environ["OPENAI_API_KEY"])
print(urllib.request.urlopen(os.environ["OPENAI_BASE_URL"] + "/ping").read().decode())
print("args", " ".join(sys.argv[1:]))
"""

FAKE_SERVER = """\
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"pong")
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(os.environ["SERVER_PID_FILE"], "w").write(str(os.getpid()))
print(f"http://127.0.0.1:{s.server_port}/v1", flush=True)
s.serve_forever()
"""


def test_smoke_rewrite_runs_on_the_controller_with_a_local_openai_server(env, monkeypatch):
    pkg = env / "pkg" / "fakestages"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "rewrite.py").write_text(FAKE_STAGE)
    (pkg / "server.py").write_text(FAKE_SERVER)
    monkeypatch.setenv("PYTHONPATH", str(env / "pkg"))
    monkeypatch.setenv("SERVER_PID_FILE", str(env / "server.pid"))
    # the controller's python, as the executor calls it, runs fakestages.<stage> for reproduce.stages.<stage>
    python = env / "python"
    python.write_text(f'#!/bin/bash\nif [ "$1" = -m ]; then m="${{2/reproduce.stages./fakestages.}}"; shift 2; '
                      f'exec {sys.executable} -m "$m" "$@"; fi\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    monkeypatch.setattr(local, "sys", SimpleNamespace(executable=str(python)))
    monkeypatch.setattr(local, "LOCAL_OPENAI", ["-m", "fakestages.server"])
    ex = LocalExecutor("smoke", state_dir=env / "home")
    st, _ = finish(ex, ex.launch(ctx(env, "rewrite")))
    assert st.state == "SUCCEEDED", st.message
    log = (env / "run1" / "logs" / "rewrite.log").read_text()
    artifacts = env / "run1" / "artifacts"
    assert "base http://127.0.0.1:" in log and "pong" in log
    assert f"args --recipe {artifacts}/recipe.yaml --artifacts {artifacts}" in log
    assert not alive(int((env / "server.pid").read_text()))   # it lived as long as the stage, no longer
    assert not (env / "envs").exists()   # controller stages make no venv


def test_a_full_scale_run_without_gpus_is_refused_before_it_is_recorded(home, capsys, monkeypatch):
    from reproduce.executors import local

    monkeypatch.setattr(local, "has_gpu", lambda: False)
    code, _, err = cli(capsys, "all", "--budget", "450", "--backend", "local", "-y")
    assert code == 2
    assert "needs GPUs and this machine has none" in err
    assert not (home / ".reproduce" / "ledger.db").exists() or "no runs" in _runs(capsys)


def _runs(capsys):
    return cli(capsys, "runs")[1]
