"""The one small interface every executor (sky, local, sim) offers the pipeline.

    handle = ex.launch(stage, run)      # start the stage; returns at once
    st = ex.poll(handle)                # StageStatus: state, elapsed, where, $/h, $ so far, preemptions
    ex.wait(seconds)                    # real sleep (sky, local) or a virtual clock tick (sim)
    ex.cancel(handle)                   # stop it and tear down everything it launched; idempotent
    ex.now()                            # wall or virtual time (epoch seconds) for ledger timestamps

`run` is a RunContext: the run id, the resolved recipe, the stage's plan row (a typed
costmodel.estimates.StageEstimate, the same object the plan priced), the artifacts folder, env overrides.
Which stages exist, where each runs and in which SkyPilot mode: reproduce.stagetable. Stage programs
themselves know nothing of this.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from costmodel.estimates import StageEstimate

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


@dataclass
class RunContext:
    run_id: str
    recipe: dict                 # resolved recipe (overrides and scale applied)
    stage: str
    plan: StageEstimate          # this stage's row of the plan: what was priced is what is launched
    artifacts: Path              # local folder, or the bucket mount on clouds
    envs: dict = field(default_factory=dict)   # task env overrides (never secrets)
    bucket: str | None = None    # s3://... or gs://... for cloud runs
    on_handle: object = None     # called with the stage's cloud handle before and after its launch returns,
                                 #   so a controller that dies mid-stage leaves a handle to re-attach to

    def __post_init__(self):
        if self.plan is None:
            self.plan = StageEstimate(self.stage, "none")
        elif isinstance(self.plan, dict):   # a row read back from the ledger's plan JSON
            self.plan = StageEstimate.from_dict({"stage": self.stage, "kind": "none", **self.plan})


@dataclass
class StageStatus:
    state: str                   # PENDING | STARTING | RUNNING | RECOVERING | SUCCEEDED | FAILED | CANCELLED
    elapsed_s: float = 0.0       # billed wall time so far (all nodes together count once; see gpus)
    cost_usd: float = 0.0        # compute $ so far at the hourly price of where it runs
    price_per_hour: float = 0.0  # $/h of the placement (all nodes)
    price_source: str = ""
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    spot: bool | None = None
    gpus: int = 0
    preemptions: int = 0
    message: str = ""
    api_usd: float = 0.0         # API $ paid so far by this attempt (API stages)
    committed_usd: float = 0.0   # API $ in submitted batches not yet paid: billed whether or not we watch
    progress: dict | None = None  # {done, total, unit, updated_at}: ARTIFACTS/<stage>/progress.json
    stopped: dict | None = None   # ARTIFACTS/<stage>/stopped.json: the node's watchdog stopped it (why, $)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict:
        return asdict(self)


class Executor(Protocol):
    """What the pipeline and the CLI ask of an executor; BaseExecutor gives the optional parts' defaults."""
    name: str
    simulated: bool           # its ledger rows are marked simulated
    poll_s: float             # seconds between polls (virtual seconds for sim)
    progress_every_s: float   # a progress row in the ledger at least this often
    teardown_s: float         # billed seconds between deciding to stop and the last node gone
    detached: bool            # its jobs outlive this process (clouds): a resume re-attaches, a lost lease
                              #   leaves them to the new owner

    def launch(self, run: RunContext) -> str: ...
    def poll(self, handle: str) -> StageStatus: ...
    def cancel(self, handle: str) -> None: ...
    def wait(self, seconds: float) -> None: ...
    def now(self) -> float: ...
    def preflight(self, stages: list[str]) -> None: ...
    def render(self, run: RunContext) -> str | None: ...
    def reattach(self, handle: str, run: RunContext) -> str | None: ...
    def written_gb(self, run: RunContext, share: float = 1.0) -> tuple[float, str] | None: ...
    def discard(self, run: RunContext, prefixes: tuple) -> int | None: ...
    def stopped_on_node(self, run: RunContext) -> dict | None: ...


class BaseExecutor:
    """Defaults of the optional parts of Executor."""
    name = "executor"
    simulated = False
    poll_s = 30.0
    progress_every_s = 300.0
    teardown_s = 0.0
    detached = False

    def preflight(self, stages: list[str]) -> None:
        """Refuse before a run is recorded what this executor cannot run (UserError); by default nothing."""

    def render(self, run: RunContext) -> str | None:
        """What a dry run prints for this stage; None: the stage's task YAML rendered from its plan row."""
        return None

    def reattach(self, handle: str, run: RunContext) -> str | None:
        """A stage launched by a controller that died: a handle to keep watching, or None (launch again).
        Jobs of an executor that lives in the controller's process die with it: None."""
        return None

    def written_gb(self, run: RunContext, share: float = 1.0) -> tuple[float, str] | None:
        """(GB the stage left where the run keeps its artifacts, how that was known), measured after it
        ended; `share`: the part of its work done. None: nothing is kept in a bucket, or it cannot be measured."""
        return None

    def stopped_on_node(self, run: RunContext) -> dict | None:
        """The stage's stopped.json (reproduce.watchdog): its node stopped it, why and at what cost; None."""
        from reproduce.watchdog import read_stopped

        return read_stopped(run.artifacts, run.stage)

    def discard(self, run: RunContext, prefixes: tuple) -> int | None:
        """Delete what a stage that succeeded kept only to resume itself (keys under <stage>/ starting with
        PREFIXES) from where the run keeps its artifacts; how many objects. None: nothing billed to delete."""
        return None
