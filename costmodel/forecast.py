"""The forecast to finish, with its uncertainty: the guard stops a run when it cannot fit, not when it might not.

    rate = StageRate()
    rate.feed(cost, done, total, now)           # at every poll, the stage's $ so far and its progress
    fc = rate.estimate()                        # Forecast(central, low, high, ...) once enough is measured
    rest = rest_bounds(later_rows, fc.factor(paid_part), fc.spread)   # the stages after it, central and low
    decision = decide("sft", spent_before, fc, storage, rest, budget)  # budget.Decision; ok=True: stop now

A stop buys nothing back: the user loses the model and pays a second run. So the controller (and the watchdog on
the node, which calls the same functions with the allowance it was launched with) stops only when even the low
end of what the run needs passes the budget. Three things are uncertain, and each bound says by how much:

- the running stage's remaining cost: its observed $ per unit of progress, extrapolated over what is left. The
  relative spread is the spread of the rates seen between polls (at least RATE_FLOOR), grown by how far it is
  extrapolated: x sqrt(share left / share measured). 5% measured: +-22%; half measured: +-5%.
- stages whose kind of work has not run yet, priced at a speed measured elsewhere on the run (generate's vLLM
  decode says little about SFT's training): that factor may be off by BORROWED_SPREAD, plus the measuring
  stage's own rate spread. Stages of a kind already measured carry MEASURED_SPREAD.
- a speedup is never assumed where nothing was measured: a row's low is at least its planned cost.

The bound is central x (1 - Z x spread). The hard cap of costmodel.budget.should_stop (spend by the next poll
would pass the budget) is what keeps every run within the budget; the forecast only decides how early a run that
cannot fit stops (benchmarks/guard_confusion.py measures both over slowdowns and seeds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from costmodel.budget import EPS, Decision

# Our choices, shown in every decision's arithmetic (no source publishes these):
MIN_SHARE = 0.05         # a rate means nothing before 5% of the stage ran (weights loading, warm-up)
RATE_FLOOR = 0.05        # the least relative spread of a stage's own rate: rates drift even when steady
BORROWED_SPREAD = 0.15   # how far one kind of work's slowdown may differ from another's on the same run
MEASURED_SPREAD = 0.05   # the same kind of work measured by a finished stage (eval's decode after generate's)
Z = 1.28                 # bounds at ~90% one-sided: "cannot fit" means the low end passes the budget


@dataclass
class Forecast:
    """A stage's $ at completion: central (the observed rate), low and high (its spread)."""
    cost: float             # $ so far
    central: float
    low: float
    high: float
    spread: float           # relative spread of the remaining cost (1 sigma)
    measured_share: float   # share of the stage's work measured at a rate this attempt
    done_share: float       # share of the stage's work done
    arithmetic: str

    def factor(self, planned: float) -> float:
        """Central at completion / the plan's: the slowdown this stage shows (1.0 without a plan)."""
        return self.central / planned if planned > 0 else 1.0


@dataclass
class StageRate:
    """$ and time per unit of progress within one attempt, from its first reported progress to now."""
    samples: list = field(default_factory=list)   # (cost, done, t) at each poll with progress
    total: float = 0.0
    eta_s: float | None = None

    def feed(self, cost: float, done: float, total: float, now: float) -> None:
        if total <= 0:
            return
        self.total = float(total)
        if self.samples and (done < self.samples[-1][1] or now < self.samples[-1][2]):
            return   # progress never goes back within an attempt; a stale report is ignored
        self.samples.append((float(cost), float(done), float(now)))
        (c0, d0, t0), (c, d, t) = self.samples[0], self.samples[-1]
        if d > d0 and t > t0:
            self.eta_s = (self.total - d) * (t - t0) / (d - d0)

    def estimate(self) -> Forecast | None:
        """The forecast once MIN_SHARE of the stage was measured at a rate this attempt, else None."""
        if len(self.samples) < 2:
            return None
        (c0, d0, _), (cost, done, _) = self.samples[0], self.samples[-1]
        measured = (done - d0) / self.total
        if measured < MIN_SHARE or done <= d0:
            return None
        rate = (cost - c0) / (done - d0)
        left = max(self.total - done, 0.0)
        spread = rate_spread(self.samples) * math.sqrt((left / self.total) / measured)
        rest = left * rate
        central = cost + rest
        low, high = cost + rest * max(1 - Z * spread, 0.0), cost + rest * (1 + Z * spread)
        text = (f"${cost:,.2f} so far + {left:,.0f} of {self.total:,.0f} left x ${rate:,.4f} each (observed over "
                f"{measured:.0%} of it) = ${central:,.2f}, +-{Z * spread:.0%} (low ${low:,.2f})")
        return Forecast(cost, central, low, high, spread, measured, done / self.total, text)


def rate_spread(samples: list) -> float:
    """Relative spread of the $ per unit between polls (progress-weighted), at least RATE_FLOOR."""
    steps = [(c1 - c0, d1 - d0) for (c0, d0, _), (c1, d1, _) in zip(samples, samples[1:]) if d1 > d0]
    units = sum(d for _, d in steps)
    if len(steps) < 3 or units <= 0:
        return RATE_FLOOR
    mean = sum(c for c, _ in steps) / units
    if mean <= 0:
        return RATE_FLOOR
    var = sum(d * (c / d - mean) ** 2 for c, d in steps) / units
    # the mean's spread is what extrapolates: sd / sqrt(number of independent steps)
    return max(RATE_FLOOR, math.sqrt(var) / mean / math.sqrt(len(steps)))


@dataclass
class Rest:
    central: float
    low: float
    arithmetic: str


def row_bounds(total: float, storage: float, kind: str, details: dict, factor: float = 1.0,
               factor_spread: float = 0.0) -> tuple[float, float]:
    """One later stage's (central, low) $. `factor` is the running stage's slowdown, assumed for a GPU stage
    whose kind of work nothing has measured yet; a stage re-planned from a measurement carries its own factor
    (details: measured_factor, factor_basis 'measured' or 'borrowed')."""
    paid = total - storage    # what the rate scales; the bucket is by the GB
    own = details.get("measured_factor")
    if own is not None:
        spread = MEASURED_SPREAD if details.get("factor_basis", "measured") == "measured" else BORROWED_SPREAD
        planned = paid / own if own > 0 else paid
        return total, storage + max(planned, paid * (1 - Z * spread))
    if kind == "gpu" and factor > 1:
        spread = math.hypot(BORROWED_SPREAD, factor_spread)
        return paid * factor + storage, storage + max(paid, paid * factor * (1 - Z * spread))
    return total, total


def rest_bounds(rows: list, factor: float = 1.0, factor_spread: float = 0.0) -> Rest:
    """The stages after the running one (plan rows: total_usd, storage_usd, kind, details), central and low."""
    central = low = 0.0
    borrowed = []
    for r in rows:
        c, lo = row_bounds(r.total_usd, r.storage_usd, r.kind, r.details, factor, factor_spread)
        central, low = central + c, low + lo
        if r.kind == "gpu" and "measured_factor" not in r.details and factor > 1:
            borrowed.append(r.stage)
    how = ""
    if borrowed:
        how = (f" (rest: {', '.join(borrowed)} not measured yet x {factor:.2f}, the overrun observed here, "
               f"+-{Z * math.hypot(BORROWED_SPREAD, factor_spread):.0%} for another kind of work)")
    return Rest(central, low, how)


def decide(stage: str, spent_before: float, fc: Forecast, storage: float, rest: Rest,
           budget: float | None) -> Decision:
    """ok=True means: stop now, the run cannot finish within the budget: what was spent before this stage + this
    stage at completion + the rest would pass it even at the low end of each forecast. Money spent on a stage
    that cannot be followed by the rest buys no model; money spent on one that might be is the model's price."""
    need = spent_before + fc.central + storage + rest.central
    need_low = spent_before + fc.low + storage + rest.low
    kept = f" + bucket ${storage:,.2f}" if storage else ""
    numbers = {"spent_before_stage_usd": spent_before, "stage_forecast_usd": fc.central + storage,
               "stage_forecast_low_usd": fc.low + storage, "rest_estimate_usd": rest.central,
               "rest_low_usd": rest.low, "needed_usd": need, "needed_low_usd": need_low, "budget_usd": budget,
               "measured_share": fc.measured_share, "spread": fc.spread, "z": Z,
               "arithmetic": fc.arithmetic + kept + rest.arithmetic}
    if budget is None:
        return Decision(False, "forecast", "no budget set", numbers)
    text = (f"at the observed rate {stage} ends at ${fc.central + storage:,.2f} (at least ${fc.low + storage:,.2f}); "
            f"spent before it ${spent_before:,.2f} + {stage} + rest ${rest.central:,.2f} (at least ${rest.low:,.2f}) "
            f"= ${need:,.2f}, at least ${need_low:,.2f}")
    if need_low > budget + EPS:
        return Decision(True, "forecast", f"{text} > budget ${budget:,.2f}", numbers)
    return Decision(False, "forecast", f"{text} <= budget ${budget:,.2f}", numbers)


def admit_bounds(spent: float, row, rest: Rest) -> tuple[float, float]:
    """(central, low) of what the run needs to start `row` after `spent`: admission refuses only the low."""
    c, lo = row_bounds(row.total_usd, row.storage_usd, row.kind, row.details)
    return spent + c + rest.central, spent + lo + rest.low


def admit(spent: float, row, later: list, budget: float | None, stage: str = "stage") -> Decision:
    """Admission before a stage starts (costmodel.budget.admit) on the low end of what the run needs: a stage
    re-planned at a speed measured on another kind of work is not refused for that factor's central value."""
    from costmodel.budget import admit as admit_central

    rest = rest_bounds(later)
    need, need_low = admit_bounds(spent, row, rest)
    stage_low = need_low - spent - rest.low
    if need_low >= need - EPS:
        return admit_central(spent, row.total_usd, rest.central, budget, stage)
    decision = admit_central(spent, stage_low, rest.low, budget, stage)
    decision.reason = (f"{decision.reason} (the low end: measured slowdowns carried with their spread; "
                       f"central ${need:,.2f})")
    decision.numbers.update(needed_central_usd=need, stage_central_usd=row.total_usd, rest_central_usd=rest.central)
    return decision
