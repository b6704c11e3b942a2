"""Run a stage on this machine: the task YAML's `setup` and `run`, as on a cloud node, but here.

    ex = LocalExecutor("smoke")
    handle = ex.launch(run)            # returns at once; setup (if needed) and run go on in the background
    ex.poll(handle)                    # STARTING (setup) -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, $0

Stage environments: each task's `setup:` installs its lock (sky_tasks/locks/) with uv into a venv in the
per-user cache, `~/.cache/reproduce/envs/<extras>-<hash>/` (env_cache()), the hash of the setup text, the env
values it references and the lock's content (env_hash); setup runs once per hash (a `.ready` marker on
success), and every later stage, run and REPRODUCE_HOME with the same lock reuses it.
`REPRODUCE_STAGE_VENV=/path/to/venv` points every stage at a ready venv instead and skips setup.
Controller stages (rewrite, convert) have no task YAML: they run in the controller's own python.
Logs: `<artifacts>/../logs/<stage>.log`, with any secret value in the output replaced by <redacted>.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from reproduce import tasks
from reproduce.errors import UserError
from reproduce import stagetable
from reproduce.executors import stage_env
from reproduce.executors.base import BaseExecutor, RunContext, StageStatus

PHASE_SETUP, PHASE_RUN = "::reproduce setup", "::reproduce run"   # lines the wrapper prints between phases
CONTROLLER_MODULE = "reproduce.stages.{stage}"   # a controller stage's program (the stage table's `program`)
LOCAL_OPENAI = ["-m", "reproduce.stages.smoke.local_openai", "--port", "0"]   # prints its base URL first




def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


@dataclass
class _Job:
    stage: str
    proc: subprocess.Popen
    log: Path
    started: float
    phase: str = "STARTING"
    ended: float | None = None
    cancelled: bool = False
    tail: list = field(default_factory=list)
    pump: threading.Thread | None = None
    aux: subprocess.Popen | None = None        # the local OpenAI-compatible server of a smoke rewrite
    artifacts: Path | None = None              # where the stage writes progress.json
    rate: float = 0.0                          # $/h the user declared for this machine (costs.local_usd_per_hour)


class LocalExecutor(BaseExecutor):
    name = "local"
    poll_s = 2.0
    progress_every_s = 30.0

    def __init__(self, scale: str = "smoke", state_dir: Path | str | None = None):
        self.scale = scale
        from costmodel.ledger import home

        self.state_dir = Path(state_dir) if state_dir else home()
        self.jobs: dict[str, _Job] = {}

    # ---- the interface ------------------------------------------------------------------------------
    def launch(self, run: RunContext) -> str:
        stage = run.stage
        artifacts = Path(run.artifacts).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        extra = {"ARTIFACTS": str(artifacts), "RUN_ID": run.run_id}
        aux = None
        row = stagetable.stage(stage)
        if row.task is None:   # a controller stage: this python, no task, no stage environment
            cfg = {"envs": {}}
            script = (f"{shlex.quote(sys.executable)} -m {CONTROLLER_MODULE.format(stage=row.program)} "
                      f'--recipe "$ARTIFACTS/recipe.yaml" --artifacts "$ARTIFACTS"')
            prepare = ""
        else:
            cfg = tasks.load_task(row.task)
            self._check_hardware(stage, cfg)
            if self.scale == "smoke":
                extra["STAGE_EXTRAS"] = "smoke"
        envs = {k: "" if v is None else str(v) for k, v in (cfg.get("envs") or {}).items()}
        envs.update({k: str(v) for k, v in run.envs.items()})
        envs.update(extra)
        env = stage_env.scrub(env, stage_env.declared(stage, cfg))   # only the secrets the stage declares
        env.update(envs)
        # what SkyPilot sets on a node, for programs that read it (sft's torchrun); one node, this one
        gpus = _gpu_count()
        env.setdefault("SKYPILOT_NUM_NODES", "1")
        env.setdefault("SKYPILOT_NODE_RANK", "0")
        env.setdefault("SKYPILOT_NODE_IPS", "127.0.0.1")
        if gpus:
            env.setdefault("SKYPILOT_NUM_GPUS_PER_NODE", str(gpus))
        if row.task is not None:
            prepare, script = self._stage_env(cfg, envs, env), cfg.get("run") or ""
        log = artifacts.parent / "logs" / f"{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        secrets = list(tasks.secret_values(cfg, env).values())
        # a controller stage that calls the OpenAI API gets the smoke formatter's server at smoke scale
        if row.task is None and row.uses_api(run.recipe or {}) and self.scale == "smoke" \
                and not env.get("OPENAI_BASE_URL"):
            aux, base_url = _start_local_openai(log)
            env.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="local")
        # setup and run each in their own bash, as SkyPilot runs them; a failed setup never runs `run`
        wrapper = f"set -e\n{prepare}echo {shlex.quote(PHASE_RUN)}\nexec bash -c {shlex.quote(script)}\n"
        with log.open("a") as f:
            f.write(f"==> {stage} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        offset = log.stat().st_size
        # the stage writes into a pipe whose reader (reproduce.executors.redact) is not this process: a stage
        # outlives a controller that dies, and its output must too
        read_end, write_end = os.pipe()
        try:
            writer = subprocess.Popen([sys.executable, "-m", "reproduce.executors.redact", str(log)], stdin=read_end,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tasks.workdir(),
                                      env={**_plain(os.environ), "REPRODUCE_REDACT": json.dumps(secrets)},
                                      start_new_session=True)
            try:
                proc = subprocess.Popen(["bash", "-c", wrapper], cwd=tasks.workdir(), env=env,
                                        stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except BaseException:
                _kill_group(writer)
                raise
        except BaseException:
            _stop(aux)
            raise
        finally:
            os.close(read_end)
            os.close(write_end)
        handle = f"local:{stage}:{proc.pid}"
        if run.on_handle:   # it outlives a controller that dies (its own session): a resume must find it
            run.on_handle(handle)
        job = _Job(stage, proc, log, time.time(), phase="STARTING" if prepare else "RUNNING", aux=aux,
                   artifacts=artifacts, rate=float(getattr(run.plan, "price_per_hour", 0.0) or 0.0))
        job.pump = threading.Thread(target=self._pump, args=(job, writer, offset), daemon=True)
        job.pump.start()
        self.jobs[handle] = job
        return handle

    def poll(self, handle: str) -> StageStatus:
        job = self._job(handle)
        rc = job.proc.poll()
        if rc is not None and job.pump is not None:
            job.pump.join(timeout=5)          # the last lines and the end time
        if job.cancelled:
            state = "CANCELLED"
        elif rc is None:
            state = job.phase
        else:
            state = "SUCCEEDED" if rc == 0 else "FAILED"
        end = job.ended if (rc is not None and job.ended) else time.time()
        message = {"FAILED": f"exit {rc}: " + " | ".join(job.tail[-3:]) + f" (log: {job.log})",
                   "STARTING": f"building the stage environment, once per setup (log: {job.log})"}.get(state, "")
        from reproduce.stages.lib.common import read_progress
        from reproduce.watchdog import STOPPED_EXIT, read_stopped

        stopped = read_stopped(job.artifacts, job.stage) if rc == STOPPED_EXIT and not job.cancelled else None
        return StageStatus(state=state, elapsed_s=end - job.started, cost_usd=(end - job.started) / 3600 * job.rate,
                           price_per_hour=job.rate,
                           price_source=f"local machine at ${job.rate:,.2f}/h (declared)" if job.rate else "local machine", cloud="local", spot=False, gpus=_gpu_count(),
                           message=message, progress=read_progress(job.artifacts / job.stage), stopped=stopped)

    def cancel(self, handle: str) -> None:
        job = self.jobs.get(handle)
        if job is None:
            return
        if job.proc.poll() is None:
            job.cancelled = True
            _kill_group(job.proc)
        _stop(job.aux)

    def reattach(self, handle: str, run: RunContext) -> str | None:
        """A stage a dead controller launched here runs on in its own session (its watchdog with it), but its
        output pipe died with that controller: it cannot be watched again. Stopped (SIGTERM, its grace, then
        SIGKILL of its group) before the stage is launched again, so two never run at once. -> None."""
        kind, _, rest = handle.partition(":")
        pid = rest.rpartition(":")[2]
        if kind != "local" or not pid.isdigit() or not _ours(int(pid), run.run_id):
            return None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(int(pid), sig)
            except (ProcessLookupError, PermissionError):
                return None
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and _ours(int(pid), run.run_id):
                time.sleep(0.1)
            if not _ours(int(pid), run.run_id):
                break
        return None

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> float:
        return time.time()

    # ---- helpers ------------------------------------------------------------------------------------
    def _job(self, handle: str) -> _Job:
        try:
            return self.jobs[handle]
        except KeyError:
            raise UserError(f"no local stage {handle!r} in this process") from None

    def preflight(self, stages: list[str]) -> None:
        """Refuse before a run is recorded, not at its first GPU stage."""
        for stage in stages:
            task = stagetable.stage(stage).task
            if task is not None:
                self._check_hardware(stage, tasks.load_task(task))

    def _check_hardware(self, stage: str, cfg: dict) -> None:
        if self.scale == "full" and tasks.is_gpu_task(cfg) and not has_gpu():
            raise UserError(f"stage {stage} at --scale full needs GPUs and this machine has none (no nvidia-smi): "
                            "use --backend sky, or --scale smoke to run it on this CPU")

    def _stage_env(self, cfg: dict, envs: dict, env: dict) -> str:
        """Shell lines that make (once per lock) and activate the stage's venv; `env` gets PATH/VIRTUAL_ENV.
        Environments live in the per-user cache (env_cache()), shared by every run and every REPRODUCE_HOME;
        a flock makes concurrent runs wait for one build instead of racing it."""
        ready = os.environ.get("REPRODUCE_STAGE_VENV")
        setup = cfg.get("setup") or ""
        name = f"{envs.get('STAGE_EXTRAS') or 'stage'}-{env_hash(setup, envs)}"
        venv = Path(ready) if ready else env_cache() / name
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
        # uv installs no bytecode (pip compiles all of it at install): let the first import of each module
        # compile it once into the cached env, not every stage process again (transformers + torch: ~13 s)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if ready:
            if not (venv / "bin" / "python").exists():
                raise UserError(f"REPRODUCE_STAGE_VENV={ready}: no bin/python there; expected a ready venv")
            return ""
        marker = venv / ".ready"
        if marker.exists():
            return ""
        q = shlex.quote
        uv = _uv()
        if uv:                        # the controller's pinned uv: setup need not fetch one
            env["REPRODUCE_UV"] = uv
        make = (f"{q(uv)} venv -q --seed --python {q(sys.executable)} {q(str(venv))}" if uv
                else f"{q(sys.executable)} -m venv {q(str(venv))}")
        return (f"echo {q(PHASE_SETUP)}\nmkdir -p {q(str(venv.parent))}\n"
                f"exec 9>{q(str(venv) + '.lock')}\n! command -v flock >/dev/null || flock 9\n"
                f"if [ ! -e {q(str(marker))} ]; then\n  rm -rf {q(str(venv))}\n  {make}\n"
                f"  bash -c {q('set -e' + chr(10) + setup)}\n  touch {q(str(marker))}\nfi\nexec 9>&-\n")

    def _pump(self, job: _Job, writer: subprocess.Popen, offset: int) -> None:
        """Follow the stage's log (redacted as it was written) from `offset`: note the phase and the last lines;
        at the end (the stage gone, its log writer done) its exit code; then stop its helpers."""
        try:
            with job.log.open("rb") as f:
                f.seek(offset)
                rest = b""
                while True:
                    chunk = f.read()
                    if not chunk:
                        if writer.poll() is not None:
                            break
                        time.sleep(0.1)
                        continue
                    *lines, rest = (rest + chunk).split(b"\n")
                    for raw in lines:
                        line = raw.decode(errors="replace")
                        if line.startswith(PHASE_RUN):
                            job.phase = "RUNNING"
                        elif line.startswith(PHASE_SETUP):
                            job.phase = "STARTING"
                        else:
                            job.tail = (job.tail + [line.rstrip()])[-20:]
            rc = job.proc.wait()
            with job.log.open("a") as out:
                out.write(("\n" if rest else "") + f"==> {job.stage} exit {rc}\n")
        finally:
            job.ended = time.time()
            _stop(job.aux)


def env_hash(setup: str, envs: dict, root: Path | None = None) -> str:
    """The cache key of a stage environment, 12 hex digits: sha256 of the setup text, the values of the envs
    it references, and the contents of the repo files it names: the setup script, the lock
    (sky_tasks/locks/$STAGE_EXTRAS.txt), and what the script names (the build constraints). A re-locked
    environment is a new one; the same lock is the same one."""
    names = sorted(set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", setup)))
    text = setup + "\n" + "\n".join(f"{n}={envs.get(n, '')}" for n in names)
    root = Path(root or tasks.workdir())
    expanded = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: str(envs.get(m.group(1), "")), setup)
    named = {t for t in re.findall(r"[\w./-]+", expanded) if "/" in t}
    for script in [n for n in named if n.endswith(".sh") and (root / n).is_file()]:   # sky_tasks/setup.sh
        named |= {t for t in re.findall(r"[\w./-]+", (root / script).read_text()) if "/" in t}  # names build.txt
    for name in sorted(named):
        path = root / name
        if path.is_file():
            text += f"\n{name}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def env_cache() -> Path:
    """Where stage environments are cached: per user, not per REPRODUCE_HOME (each is GBs; uv hard-links a
    second one from its own cache in seconds). REPRODUCE_ENV_CACHE overrides."""
    if os.environ.get("REPRODUCE_ENV_CACHE"):
        return Path(os.environ["REPRODUCE_ENV_CACHE"])
    from reproduce.paths import user_cache

    return user_cache() / "envs"


def _uv() -> str | None:
    """The pinned uv the tasks' setup wants (pyproject and the Makefile pin it), if it is here."""
    from reproduce.locks import uv_bin

    return uv_bin()


def _gpu_count() -> int:
    if not has_gpu():
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _plain(env) -> dict:
    """The environment of a helper that needs no secrets: PATH, locale and the like."""
    return {k: v for k, v in env.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR")}


def _ours(pid: int, run_id: str) -> bool:
    """A live (not zombie) process of this run's stage wrapper: its environment names the run (pids are reused)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
            return False
        return f"RUN_ID={run_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        _kill_group(proc)


def _start_local_openai(log: Path, timeout_s: float = 60.0):
    """Start reproduce.stages.smoke.local_openai; its first stdout line is its base URL."""
    proc = subprocess.Popen([sys.executable, *LOCAL_OPENAI],
                            cwd=tasks.workdir(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=(log.parent / "local_openai.log").open("a"), text=True, start_new_session=True)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    url = (got[0] if got else "").strip()
    if not url.startswith("http"):
        _stop(proc)
        raise UserError(f"the local OpenAI-compatible server did not start (no base URL in {timeout_s:.0f} s; "
                        f"see {log.parent / 'local_openai.log'}); or set OPENAI_BASE_URL to a server of your own")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # never let its pipe fill
    return proc, url
