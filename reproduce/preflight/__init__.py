"""A $0 preflight of every real-world contact the plan will make, before the first paid launch.

    results = run(Context(recipe, plan, backend="sky", bucket="s3://b", run_id="R"))
    for r in results: print(r.line())          # passed / FAILED (with the fix) / skipped (with why)
    guard(ctx, waive=("api/batch",))           # `reproduce all`: UserError (exit 2) if any check failed

Each check module (data, models, api, bucket, skypilot, configs, machines) has `checks(ctx) -> list[Result]`; they run
concurrently (they wait on the network, on subprocesses), each result named GROUP/ITEM so `--skip-check NAME`
can waive one (or GROUP, every check of it). A check that cannot run here is skipped and says why; a check
that raises is a failure naming the exception, never a pass.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import time
from dataclasses import dataclass, field
from typing import Mapping

from reproduce.errors import UserError

PASSED, FAILED, SKIPPED, WAIVED = "passed", "failed", "skipped", "waived"
GROUPS = ("datasets", "models", "api", "bucket", "skypilot", "configs", "node", "controller")


@dataclass
class Result:
    name: str                 # GROUP/ITEM, e.g. "api/batch", "datasets/apps"
    status: str               # passed | failed | skipped | waived
    detail: str               # what was checked (passed), what is wrong (failed), why not (skipped)
    fix: str = ""             # failed: what fixes it
    seconds: float = 0.0

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]

    def line(self) -> str:
        mark = {FAILED: "FAILED "}.get(self.status, f"{self.status:<7}")
        return f"{mark} {self.name}: {self.detail}" + (f" -> fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix,
                "seconds": round(self.seconds, 3)}


def passed(name, detail):
    return Result(name, PASSED, detail)


def failed(name, detail, fix):
    return Result(name, FAILED, detail, fix)


def skipped(name, why):
    return Result(name, SKIPPED, why)


@dataclass
class Context:
    recipe: dict
    plan: object                       # reproduce.plan.Plan: the stages `all` would run (a resume: what is left)
    backend: str                       # sky | local | sim (resolved, not auto)
    bucket: str | None = None
    run_id: str = "preflight"
    environ: Mapping = field(default_factory=lambda: os.environ)

    @property
    def stages(self) -> list[str]:
        return [s.stage for s in self.plan.stages]

    @property
    def scale(self) -> str:
        return self.recipe.get("scale", "full")

    def row(self, stage: str):
        return next((s for s in self.plan.stages if s.stage == stage), None)

    def on_cloud(self, stage: str) -> bool:
        """The stage runs on a node SkyPilot launches (not beside the CLI)."""
        from reproduce import stagetable

        return (stage in self.stages and self.backend == "sky"
                and not stagetable.stage(stage).on_controller(self.recipe))


def _modules():
    from reproduce.preflight import api, bucket, configs, data, machines, models, skypilot

    return (data, models, api, bucket, skypilot, configs, machines)


def run(ctx: Context, progress=None) -> list[Result]:
    """Every check, concurrently; results in GROUPS order. `progress(result)` is called as each group ends."""
    if ctx.backend == "sim":
        return [skipped("all", "sim backend: a simulation contacts nothing real")]

    def one(module):
        start = time.monotonic()
        try:
            out = module.checks(ctx)
        except UserError as e:
            out = [failed(module.GROUP, str(e), "fix the value named, or --skip-check " + module.GROUP)]
        except Exception as e:   # noqa: BLE001 - a check that breaks is a failure, never a pass
            out = [failed(module.GROUP, f"could not check: {type(e).__name__}: {str(e)[:300]}",
                          f"--skip-check {module.GROUP} waives it (recorded in the ledger)")]
        took = time.monotonic() - start
        for r in out:
            r.seconds = r.seconds or took
        return out

    results = []
    modules = _modules()
    with cf.ThreadPoolExecutor(max_workers=len(modules)) as pool:
        for fut in cf.as_completed([pool.submit(one, m) for m in modules]):
            results += fut.result()
            for r in fut.result() if progress else ():
                progress(r)
    order = {g: i for i, g in enumerate(GROUPS)}
    return sorted(results, key=lambda r: order.get(r.group, len(GROUPS)))


def waive(results: list[Result], names) -> list[Result]:
    """Mark the failed checks `names` name (a check's full name, or its group) as waived; a name that is no
    check of this preflight is a user error (exit 2)."""
    names = list(names or ())
    known = {r.name for r in results} | {r.group for r in results}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--skip-check {unknown[0]!r}: no such check in this preflight; expected one of "
                        f"{', '.join(sorted(known))}")
    for r in results:
        if r.status == FAILED and (r.name in names or r.group in names):
            r.status = WAIVED
    return results


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status == FAILED]


def summary(results: list[Result]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in (PASSED, FAILED, SKIPPED, WAIVED)}
    return "preflight: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def refusal(results: list[Result]) -> str:
    """The one-line error `all` exits 2 with: the failed checks, and how to waive one."""
    bad = failures(results)
    return (f"preflight: {len(bad)} check(s) failed ({', '.join(r.name for r in bad)}): nothing launched, "
            "nothing spent; fix them (see above) or waive one with --skip-check NAME")


def guard(ctx: Context, skip: list[str] | tuple = (), echo=None) -> list[Result]:
    """What `reproduce all` runs before its first paid launch: every check, one line each (to `echo`), the
    `--skip-check` names waived; UserError (exit 2, nothing launched) if any check failed."""
    import sys

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    results = waive(run(ctx), skip)
    for r in results:
        echo(r.line())
    echo(summary(results))
    if failures(results):
        raise UserError(refusal(results))
    return results


def record(ledger, run_id: str, results: list[Result]) -> None:
    """The preflight in the run's ledger: one `preflight` event (the counts and every line), and one
    `check_waived` event per check `--skip-check` waived (the audit shows them)."""
    counts = {s: sum(r.status == s for r in results) for s in (PASSED, FAILED, SKIPPED, WAIVED)}
    ledger.add_event(run_id, None, "preflight", ok=not failures(results), reason=summary(results),
                     numbers={**counts, "checks": [r.to_dict() for r in results]})
    for r in results:
        if r.status == WAIVED:
            ledger.add_event(run_id, None, "check_waived", ok=None,
                             reason=f"--skip-check waived {r.name}: {r.detail}" + (f" (fix: {r.fix})" if r.fix else ""),
                             numbers=r.to_dict())
