"""Run stages on clouds through SkyPilot, and price what ran at the hourly price of where it ran.

    ex = SkyExecutor()                     # adapter=sky_adapter: the only module that calls SkyPilot
    handle = ex.launch(run)                # renders sky_tasks/<stage>.yaml with the plan's placement
    ex.poll(handle)                        # state, where, recoveries (= preemptions), hours x $/h
    ex.cancel(handle)                      # cancel + tear down; idempotent

Managed jobs (`sky.jobs.launch`) run every GPU stage, not only sft: a spot preemption of a multi-hour
generate or eval is then recovered instead of failing the stage (stage programs resume where they left
off), the job's final state outlives its cluster (with `sky.launch ... down=True` the job queue goes away
with the cluster), and the jobs controller tears the cluster down when the job ends, whatever the ending.
A filter on a CPU node (on-demand, short) uses `sky.launch` with autostop + down instead.
Controller stages (rewrite, convert) and `filter.where: local` run here, through the local executor.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from reproduce import tasks
from reproduce.errors import UserError
from costmodel.estimates import StageEstimate
from reproduce import stagetable
from reproduce.executors.base import BaseExecutor, RunContext, StageStatus, TERMINAL

# SkyPilot managed-job states (sky.jobs.state.ManagedJobStatus) -> ours.
MANAGED_STATES = {
    "PENDING": "PENDING", "SUBMITTED": "PENDING", "STARTING": "STARTING", "RUNNING": "RUNNING",
    "RECOVERING": "RECOVERING", "CANCELLING": "RUNNING", "WINDING_DOWN": "RUNNING",
    "SUCCEEDED": "SUCCEEDED", "CANCELLED": "CANCELLED",
    "FAILED": "FAILED", "FAILED_SETUP": "FAILED", "FAILED_PRECHECKS": "FAILED", "FAILED_NO_RESOURCE": "FAILED",
    "FAILED_CONTROLLER": "FAILED",
}
# Jobs on a cluster (sky.skylet.job_lib.JobStatus) -> ours.
CLUSTER_JOB_STATES = {
    "INIT": "STARTING", "PENDING": "STARTING", "SETTING_UP": "STARTING", "RUNNING": "RUNNING",
    "SUCCEEDED": "SUCCEEDED", "CANCELLED": "CANCELLED",
    "FAILED": "FAILED", "FAILED_SETUP": "FAILED", "FAILED_DRIVER": "FAILED",
}
BILLED = {"STARTING", "RUNNING", "RECOVERING"} | TERMINAL


def sky_enabled(adapter=None) -> bool:
    """For --backend auto: is any cloud, Kubernetes context or SSH pool enabled in SkyPilot?"""
    if adapter is None:
        from reproduce.executors import sky_adapter as adapter
    return bool(adapter.enabled_infra())


@dataclass
class _Launched:
    stage: str
    mode: str                    # managed | cluster
    name: str
    job_id: int | None
    plan: StageEstimate
    spot: bool | None            # None: re-attached from a handle alone; priced on-demand (the higher price)
    launched_at: float
    start_at: float | None = None       # billing starts: the job's start, else when we first saw it up
    first_seen_running: float | None = None
    last: StageStatus | None = None
    torn_down: bool = False
    bucket_url: str | None = None       # the run's folder in the bucket, pulled when the stage succeeds
    artifacts: object = None            # the local artifacts folder it is pulled into
    attempt: int | None = None          # the ledger attempt it runs (its watchdog's stopped.json names it)


class SkyExecutor(BaseExecutor):
    name = "sky"
    poll_s = 30.0
    progress_every_s = 300.0
    # Billed time between deciding to stop and the last node going away: a cancel + `sky down` takes a few
    # minutes on clouds (our observation of SkyPilot teardowns; assumption).
    teardown_s = 300.0
    detached = True               # managed jobs and clusters outlive the controller

    def __init__(self, adapter=None, scale: str = "full", local=None, price_lookup=None, modes=None,
                 idle_minutes: int = 5, clock=time.time):
        if adapter is None:
            from reproduce.executors import sky_adapter as adapter
        self.adapter = adapter
        self.scale = scale
        self._local = local
        self.price_lookup = price_lookup or catalog_price
        self.modes = {**{s.name: s.mode for s in stagetable.STAGES if s.mode}, **(modes or {})}
        self.idle_minutes = idle_minutes
        self.clock = clock
        self.runs: dict[str, _Launched] = {}

    @property
    def local(self):
        if self._local is None:
            from reproduce.executors.local import LocalExecutor

            self._local = LocalExecutor(self.scale)
        return self._local

    # ---- the interface ------------------------------------------------------------------------------
    def launch(self, run: RunContext) -> str:
        from reproduce.executors import bucket

        url = bucket.run_url(run.bucket, run.run_id) if run.bucket else None
        if self._runs_here(run):
            if url:  # the previous stage ran on a cloud: its outputs are in the bucket
                bucket.pull(url, run.artifacts)
            return self.local.launch(run)
        envs = {**run.envs, "RUN_ID": run.run_id}
        if url:
            bucket.push(run.artifacts, url)  # recipe.yaml and what controller stages wrote
            envs["BUCKET"] = url
        elif "BUCKET" in (tasks.load_task(run.stage).get("envs") or {}) and not envs.get("BUCKET"):
            raise UserError(f"stage {run.stage} on SkyPilot keeps its artifacts in a bucket and this run has none: "
                            "give one as s3://NAME or gs://NAME")
        task = tasks.render(run.stage, envs, run.plan, self.scale)
        mode = self.modes.get(run.stage, "managed")
        name = cluster_name(run.run_id, run.stage)
        spot = all(bool(r.use_spot) for r in task.resources)
        if run.on_handle:   # recorded before the launch returns: a controller killed here leaves the name
            run.on_handle(f"{mode}:{name}:")
        try:
            if mode == "managed":
                job_id = self.adapter.launch_managed(task, name)
            else:
                job_id = self.adapter.launch_cluster(task, name, down=True, idle_minutes=self.idle_minutes)
        except BaseException as e:   # Ctrl-C or an error mid-launch: whatever came up goes down
            problem = self._teardown(_Launched(run.stage, mode, name, None, run.plan, spot, self.clock()))
            if problem and hasattr(e, "add_note"):
                e.add_note(problem)
            raise
        handle = f"{mode}:{name}:{job_id}"
        self.runs[handle] = _Launched(run.stage, mode, name, job_id, run.plan, spot, self.clock(),
                                      bucket_url=url, artifacts=run.artifacts,
                                      attempt=int(envs.get("REPRODUCE_ATTEMPT") or -1))
        if run.on_handle:
            run.on_handle(handle)
        return handle

    def reattach(self, handle: str, run: RunContext) -> str | None:
        """A stage launched by a controller that died: the handle to keep watching when its job is still
        alive (or finished well), else None after tearing down whatever is left of it (an orphan we will not
        use must not bill)."""
        if not handle.startswith(("managed:", "cluster:")):
            return None
        r = self._run(handle)
        r.plan, r.spot = run.plan, bool(run.plan.spot)
        r.bucket_url = bucket_url(run)
        r.artifacts = run.artifacts
        if r.job_id is None:    # killed mid-launch: no job id to watch
            self._teardown(r)
            return None
        st = self.poll(handle)
        if st.state in ("FAILED", "CANCELLED"):
            self._teardown(r)
            return None
        return handle

    def poll(self, handle: str) -> StageStatus:
        if handle.startswith("local:"):
            return self.local.poll(handle)
        r = self._run(handle)
        if r.last is not None and r.last.done:
            return r.last
        try:
            st = self._managed(r) if r.mode == "managed" else self._cluster(r)
        except KeyboardInterrupt:
            self.cancel(handle)
            raise
        except Exception as e:   # an API-server hiccup: keep the last state, keep pricing the time
            st = self._status(r, r.last.state if r.last else "PENDING", {}, message=f"status unavailable: {e}")
        # a cluster goes down as soon as its job ends (autostop would bill idle minutes); a managed job's
        # controller downs its own cluster, and a failed one gets a cancel too, to be sure
        if st.done and (r.mode == "cluster" or st.state == "FAILED"):
            st.message = "; ".join(m for m in (st.message, self._teardown(r)) if m)
        elif st.done:
            r.torn_down = True
        if r.bucket_url and st.state in ("RUNNING", "RECOVERING"):
            from reproduce.executors import bucket

            st.progress = bucket.read_json(r.bucket_url, f"{r.stage}/progress.json")
        if st.state == "FAILED" and r.bucket_url:   # the watchdog on the node may have stopped it
            from reproduce.executors import bucket

            stopped = bucket.read_json(r.bucket_url, f"{r.stage}/stopped.json")
            if stopped and (r.attempt is None or int(stopped.get("attempt", -2)) == r.attempt):
                st.stopped = stopped
        if st.state == "SUCCEEDED" and r.bucket_url and r.artifacts is not None:
            from reproduce.executors import bucket

            bucket.pull(r.bucket_url, r.artifacts)  # summaries, traces, scores; never model weights
        r.last = st
        return st

    def cancel(self, handle: str) -> None:
        if handle.startswith("local:"):
            return self.local.cancel(handle)
        r = self._run(handle)
        if r.last is not None and r.last.done:
            self._teardown(r)   # a no-op unless an earlier teardown failed
            return
        problem = self._teardown(r)
        r.last = self._status(r, "CANCELLED", {}, message=problem or "cancelled; cluster torn down")

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> float:
        return self.clock()

    def _run(self, handle: str) -> _Launched:
        """A handle from this process, or one from an earlier process (a resumed run, `reproduce status`):
        'managed:NAME:JOB_ID' or 'cluster:NAME:JOB_ID' is all it takes to find the job again."""
        if handle not in self.runs:
            try:
                mode, name, job = handle.split(":")
                assert mode in ("managed", "cluster")
            except (ValueError, AssertionError):
                raise UserError(f"{handle!r} is not a SkyPilot stage handle (managed:NAME:JOB_ID)") from None
            job_id = int(job) if job.isdigit() else None
            stage = name.rsplit("-", 1)[-1]
            self.runs[handle] = _Launched(stage, mode, name, job_id, StageEstimate(stage, "gpu"), None, self.clock())
        return self.runs[handle]

    # ---- states -------------------------------------------------------------------------------------
    def _managed(self, r: _Launched) -> StageStatus:
        rec = self.adapter.managed_status(r.job_id)
        if rec is None:
            return self._status(r, "FAILED", {}, message=f"managed job {r.job_id} not found")
        state = MANAGED_STATES.get(rec.get("status") or "", "PENDING")
        message = (rec.get("failure_reason") or "") if state == "FAILED" else ""
        return self._status(r, state, rec, preemptions=int(rec.get("recoveries") or 0), message=message)

    def _cluster(self, r: _Launched) -> StageStatus:
        rec = self.adapter.cluster_status(r.name, r.job_id)
        if rec is None:   # gone: autostop + down after the job, or preempted before we saw the end
            if r.last is not None and r.last.done:
                return r.last
            return self._status(r, "FAILED", {}, message=f"cluster {r.name} went away before its job finished")
        state = CLUSTER_JOB_STATES.get(rec.get("job_status") or "", "STARTING")
        if r.first_seen_running is None and state == "RUNNING":
            r.first_seen_running = self.clock()
        rec = {**rec, "start_at": rec.get("launched_at")}
        return self._status(r, state, rec)

    def _status(self, r: _Launched, state: str, rec: dict, preemptions: int = 0, message: str = "") -> StageStatus:
        prev = r.last or StageStatus(state="PENDING")
        cloud = rec.get("cloud") or prev.cloud
        region = rec.get("region") or prev.region
        instance = rec.get("instance_type") or prev.instance_type
        nodes = int(rec.get("nodes") or 1)
        accelerator = _accelerator(rec.get("accelerators")) or r.plan.accelerator
        r.start_at = _first(rec.get("start_at"), r.start_at, r.first_seen_running)
        start = _first(r.start_at, r.launched_at if state in BILLED else None)
        end = _first(rec.get("end_at"), self.clock())
        elapsed = max(0.0, end - start) if start is not None and state in BILLED else prev.elapsed_s
        price, source = self._price(cloud, region, instance, r.spot, accelerator, r.plan)
        price *= nodes
        per_node_gpus = _gpus(accelerator)
        return StageStatus(state=state, elapsed_s=elapsed, cost_usd=elapsed / 3600 * price, price_per_hour=price,
                           price_source=source, cloud=cloud, region=region, zone=rec.get("zone") or prev.zone,
                           instance_type=instance, spot=r.spot, gpus=per_node_gpus * nodes,
                           preemptions=max(preemptions, prev.preemptions), message=message)

    def _price(self, cloud, region, instance, spot, accelerator, plan) -> tuple[float, str]:
        if cloud:
            found = self.price_lookup(cloud, region, instance, spot, accelerator)
            if found is not None:
                return found
        nodes = max(1, int(plan.nodes or 1))
        return float(plan.price_per_hour or 0.0) / nodes, f"plan estimate ({plan.price_source or 'no source'})"

    def _teardown(self, r: _Launched) -> str:
        """Once: cancel the managed job (its controller downs the cluster) or down the cluster.
        Returns what went wrong ("" if nothing), so a failed teardown is shown, never swallowed."""
        if r.torn_down:
            return ""
        try:
            if r.mode == "managed":
                self.adapter.cancel_managed(job_id=r.job_id, name=None if r.job_id is not None else r.name)
            else:
                self.adapter.down(r.name)
        except Exception as e:   # the next cancel tries again
            return f"TEARDOWN FAILED for {r.name}: {e}; check `sky status` and `sky jobs queue`"
        r.torn_down = True
        return ""

    def written_gb(self, run: RunContext, share: float = 1.0) -> tuple[float, str] | None:
        """A cloud stage: the bytes under the run's bucket folder for it. A controller stage: its local
        folder, which the next cloud launch pushes to the bucket."""
        from reproduce.executors import bucket

        url = bucket_url(run)
        if url is None:
            return None
        if self._runs_here(run):
            folder = Path(run.artifacts) / run.stage
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
            return size / 1e9, f"measured: {folder} (pushed to {url})"
        size = bucket.stored_bytes(url, run.stage)
        return None if size is None else (size / 1e9, f"measured: {url}/{run.stage}/")

    def discard(self, run: RunContext, prefixes: tuple) -> int | None:
        from reproduce.executors import bucket

        url = bucket_url(run)
        if url is None or self._runs_here(run):
            return None
        return bucket.delete_prefixes(url, run.stage, prefixes)

    def stopped_on_node(self, run: RunContext) -> dict | None:
        """The stage's stopped.json in the run's bucket (where its watchdog wrote it), else locally."""
        from reproduce.executors import bucket

        url = bucket_url(run)
        if url is None or self._runs_here(run):
            return super().stopped_on_node(run)
        return bucket.read_json(url, f"{run.stage}/stopped.json")

    def _runs_here(self, run: RunContext) -> bool:
        return stagetable.stage(run.stage).on_controller(run.recipe or {})


def bucket_url(run: RunContext) -> str | None:
    from reproduce.executors import bucket

    return bucket.run_url(run.bucket, run.run_id) if run.bucket else None


def cluster_name(run_id: str, stage: str) -> str:
    """SkyPilot names: a letter first, then letters, digits, '-'; short, as clouds truncate them."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"rp-{run_id}-{stage}".lower()).strip("-")
    return name[:40].rstrip("-")


def catalog_price(cloud, region, instance_type, spot, accelerator) -> tuple[float, str] | None:
    """$/h of one node at (cloud, region, instance type) from costmodel's price sources, or None."""
    if not accelerator:
        return None
    try:
        from costmodel import prices

        offers = prices.gpu_offers(accelerator)
    except Exception:   # no catalog offline, or no such accelerator: the caller falls back to the plan
        return None
    for o in offers:
        if str(o.cloud).lower() != str(cloud).lower() or (region and o.region != region):
            continue
        if instance_type and o.instance_type != instance_type:
            continue
        price = o.spot if spot else o.on_demand
        if price:
            market = "spot" if spot else "on-demand"
            return float(price), f"{o.source} {o.date}, {o.cloud} {o.region} {o.instance_type} {market}".strip()
    return None


def _first(*values):
    return next((v for v in values if v is not None), None)


def _accelerator(accelerators) -> str | None:
    if not accelerators:
        return None
    name, count = next(iter(dict(accelerators).items()))
    return f"{name}:{int(count)}"


def _gpus(accelerator: str | None) -> int:
    try:
        return int(str(accelerator).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0
