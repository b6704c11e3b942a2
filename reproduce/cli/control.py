"""`reproduce cancel RUN`, `reproduce logs RUN [STAGE] [--follow]`: a run from another terminal.

    reproduce all --budget 450 --detach -y     # the controller in the background (reproduce.cli.run)
    reproduce logs 20261124-101500-ab12 --follow
    reproduce cancel 20261124-101500-ab12      # stops everything the run launched; says what was paid

`cancel` asks a live controller on this host to stop (SIGTERM: it tears its stage down and records it, as
on Ctrl-C); with no controller alive it takes the run's lease itself and cancels, through the run's own
executor, every job the ledger says is still open (managed jobs, clusters, local processes) and every
OpenAI batch the rewrite left open, then records each attempt as cancelled.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Optional

import typer

from reproduce.errors import UserError
from reproduce.cli.output import money

STOP_WAIT_S = 120.0   # how long `cancel` waits for a live controller to tear its stage down and let go


def register(app: typer.Typer) -> None:
    from reproduce.cli.plan import examples

    app.command("cancel", epilog=examples("reproduce cancel RUN"))(cancel)
    app.command("logs", epilog=examples("reproduce logs RUN", "reproduce logs RUN sft --follow"))(logs)


def controller_log(ledger, run_id: str) -> Path:
    """Where a detached controller writes: next to the run's artifacts."""
    return Path(_found(ledger, run_id)["artifacts"]).parent / "controller.log"


def liveness(ledger, run_id: str) -> dict:
    """{alive, pid, host, since}: whether the run's controller holds its lease now; `since`: its last heartbeat."""
    lease = ledger.lease(run_id)
    if lease is None:
        return {"alive": False, "pid": None, "host": None, "since": None}
    return {"alive": bool(lease["live"]), "pid": lease["pid"], "host": lease["host"],
            "since": lease["released_at"] or lease["heartbeat_at"]}


def cancel(run_id: str = typer.Argument(..., metavar="RUN", help="The run to stop (see `reproduce status`)."),
           wait_s: float = typer.Option(STOP_WAIT_S, "--wait", metavar="SECONDS",
                                        help="How long to wait for a live controller to let go.")) -> None:
    """Stop everything run RUN launched (its controller, jobs, clusters, API batches); say what was paid."""
    from reproduce.cli.audit import open_ledger

    ledger = open_ledger()
    _found(ledger, run_id)
    live = liveness(ledger, run_id)
    if live["alive"]:
        if live["host"] != socket.gethostname():
            raise UserError(f"run {run_id} is driven by pid {live['pid']} on {live['host']}: run "
                            f"`reproduce cancel {run_id}` there")
        os.kill(int(live["pid"]), signal.SIGTERM)   # the controller tears its stage down, as on Ctrl-C
        typer.echo(f"asked the controller (pid {live['pid']}) to stop", err=True)
        deadline = time.monotonic() + wait_s
        while liveness(ledger, run_id)["alive"] and time.monotonic() < deadline:
            time.sleep(0.2)
        if liveness(ledger, run_id)["alive"]:
            raise UserError(f"the controller of run {run_id} (pid {live['pid']}) did not stop within {wait_s:g} s")
    stopped = cancel_orphans(ledger, run_id)
    for line in stopped:
        typer.echo(line, err=True)
    typer.echo(f"run {run_id} cancelled: {money(ledger.spent(run_id))} paid")


def cancel_orphans(ledger, run_id: str) -> list[str]:
    """With no controller: cancel every job and batch of the run still open, record it. What it did."""
    from reproduce import pipeline, resume

    me = {"pid": os.getpid(), "host": socket.gethostname()}
    found = _found(ledger, run_id)
    ledger.claim_run(run_id, me)   # one owner: a resume cannot start while this cancels
    done = []
    try:
        open_attempts = ledger.open_attempts(run_id)
        recipe = resume.resumed_recipe(ledger, run_id, found)
        executor = None
        handles = {}
        for e in ledger.events(run_id, "handle"):
            handles[(e["stage"], e["numbers"].get("attempt"))] = e["numbers"]["handle"]
        for a in open_attempts:
            handle = handles.get((a["stage"], a["attempt"]))
            if handle and not found.get("simulated"):
                executor = executor or pipeline.make_executor(found["backend"], recipe)[0]
                try:
                    executor.cancel(handle)
                    done.append(f"[{a['stage']}] cancelled {handle}")
                except Exception as e:   # noqa: BLE001 - say it, keep cancelling the rest
                    done.append(f"[{a['stage']}] could not cancel {handle}: {e}; check `sky status` and "
                                "`sky jobs queue`")
            fields = {k: a[k] for k in resume._KEPT}
            fields.update(state="CANCELLED", ended_at=a["at"], message="cancelled by `reproduce cancel`")
            ledger.add_stage_row(run_id, a["stage"], "cancelled", at=time.time(), attempt=a["attempt"], **fields)
        from reproduce import stage_loop, stagetable

        for row in stagetable.STAGES:   # an API stage's batches bill without us
            attempts = ledger.attempts(run_id, row.name)
            done += stage_loop.cancel_batches(ledger, run_id, Path(found["artifacts"]), row.name,
                                              attempts[-1]["attempt"] if attempts else None,
                                              bool(found.get("simulated")), time.time())
        ledger.add_event(run_id, None, "run", ok=False, reason="cancelled", numbers={**me, "by": "reproduce cancel"})
    finally:
        ledger.release_run(run_id, me)
    return done


def logs(run_id: str = typer.Argument(..., metavar="RUN"),
         stage: Optional[str] = typer.Argument(None, metavar="[STAGE]", help="One stage's log (default: the controller's)."),
         follow: bool = typer.Option(False, "--follow", "-f", metavar="", help="Keep printing while the controller runs.")) -> None:
    """Print run RUN's controller log, or one stage's; --follow keeps printing until its controller stops."""
    from reproduce import stagetable
    from reproduce.cli.audit import open_ledger

    ledger = open_ledger()
    found = _found(ledger, run_id)
    if stage:
        stage = stagetable.by_program(stage)
        path = Path(found["artifacts"]).parent / "logs" / f"{stage}.log"
        where = (f"; a cloud stage's log: `sky jobs logs --name {_cluster(run_id, stage)}`"
                 if found["backend"] == "sky" else "")
    else:
        path, where = controller_log(ledger, run_id), " (a run started without --detach logs to its terminal)"
    if not path.is_file() and not follow:
        raise UserError(f"no log at {path}{where}")
    offset = 0
    while True:
        if path.is_file():
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            if chunk:
                typer.echo(chunk.decode(errors="replace"), nl=False)
        if not follow or not liveness(ledger, run_id)["alive"]:
            if follow:   # what it wrote between the last read and its end
                tail = path.read_bytes()[offset:] if path.is_file() else b""
                typer.echo(tail.decode(errors="replace"), nl=False)
            return
        time.sleep(0.5)


def _cluster(run_id: str, stage: str) -> str:
    from reproduce.executors.sky import cluster_name

    return cluster_name(run_id, stage)


def _found(ledger, run_id: str) -> dict:
    found = ledger.run(run_id)
    if found is None:
        raise UserError(f"run {run_id!r}: no such run in {ledger.path}; see `reproduce runs`")
    return found
