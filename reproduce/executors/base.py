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
    progress: dict | None = None  # {done, total, unit, updated_at}: ARTIFACTS/<stage>/progress.json

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict:
        return asdict(self)


class Executor(Protocol):
    name: str

    def launch(self, run: RunContext) -> str: ...
    def poll(self, handle: str) -> StageStatus: ...
    def cancel(self, handle: str) -> None: ...
    def wait(self, seconds: float) -> None: ...
    def now(self) -> float: ...
