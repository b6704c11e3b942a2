"""The budget guard: three decisions, each returned with every number it used (the ledger records them).

    admit(spent, stage_estimate, rest_estimate, budget)          before a stage starts
    should_stop(spent_before_stage, stage_cost_so_far, burn_per_hour, poll_s, budget)   at every poll
    admit_api_batch(spent, model, prompt_tokens, completion_tokens, batch, budget, rest_estimate)

A stage starts only if spent + its estimate + the remaining stages' estimates fit. While it runs, it is
stopped as soon as the spend projected to the next poll (plus the teardown) would pass the budget: a
watcher that polls every `poll_s` seconds can only act at polls, so it must act one poll early.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from costmodel.errors import BadInput

EPS = 1e-9


@dataclass
class Decision:
    ok: bool
    kind: str              # admit | stop | api_batch
    reason: str
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def admit(spent: float, stage_estimate: float, rest_estimate: float, budget: float | None,
          stage: str = "stage") -> Decision:
    need = spent + stage_estimate + rest_estimate
    numbers = {"spent_usd": spent, "stage_estimate_usd": stage_estimate, "rest_estimate_usd": rest_estimate,
               "needed_usd": need, "budget_usd": budget,
               "headroom_usd": None if budget is None else budget - need}
    if budget is None:
        return Decision(True, "admit", f"{stage}: no budget set", numbers)
    _check(budget)
    text = (f"spent ${spent:,.2f} + {stage} ${stage_estimate:,.2f} + rest ${rest_estimate:,.2f} "
            f"= ${need:,.2f}")
    return _fits("admit", text, need, budget, numbers)


def should_stop(spent_before_stage: float, stage_cost_so_far: float, burn_per_hour: float, poll_s: float,
                budget: float | None, teardown_s: float = 0.0) -> Decision:
    """ok=True means: stop now. Spend at the next chance to act = what is spent + one poll interval and a
    teardown at the current burn rate."""
    next_poll = burn_per_hour * (poll_s + teardown_s) / 3600
    projected = spent_before_stage + stage_cost_so_far + next_poll
    numbers = {"spent_before_stage_usd": spent_before_stage, "stage_cost_so_far_usd": stage_cost_so_far,
               "burn_per_hour_usd": burn_per_hour, "poll_s": poll_s, "teardown_s": teardown_s,
               "next_poll_usd": next_poll, "projected_usd": projected, "budget_usd": budget}
    if budget is None:
        return Decision(False, "stop", "no budget set", numbers)
    text = (f"spent ${spent_before_stage:,.2f} + this stage ${stage_cost_so_far:,.2f} + next "
            f"{(poll_s + teardown_s) / 60:,.1f} min at ${burn_per_hour:,.2f}/h (${next_poll:,.2f}) = ${projected:,.2f}")
    if projected > budget + EPS:
        return Decision(True, "stop", f"{text} would pass the ${budget:,.2f} budget", numbers)
    return Decision(False, "stop", f"{text} <= ${budget:,.2f}", numbers)


# A forecast needs some of the stage done before its rate means anything (the first minutes include loading
# weights and warm-up), and is padded by a margin for rates that drift: our choices, shown in every decision.
FORECAST_MIN_SHARE = 0.05
FORECAST_MARGIN = 0.10


def forecast(cost_so_far: float, done: float, total: float, rate_cost_per_unit: float) -> tuple[float, str]:
    """This stage's $ at completion: what it has cost, plus the units left at the observed $ per unit, padded
    by FORECAST_MARGIN. Returns (usd, arithmetic)."""
    left = max(total - done, 0.0)
    rest = left * rate_cost_per_unit * (1 + FORECAST_MARGIN)
    return cost_so_far + rest, (f"${cost_so_far:,.2f} so far + {left:,.0f} of {total:,.0f} left x "
                                f"${rate_cost_per_unit:,.4f} each (observed) x {1 + FORECAST_MARGIN:.2f} margin "
                                f"= ${cost_so_far + rest:,.2f}")


def should_stop_forecast(stage: str, spent_before_stage: float, stage_forecast: float, rest_estimate: float,
                         budget: float | None, arithmetic: str = "") -> Decision:
    """ok=True means: stop now, the run cannot finish: what was spent before this stage + this stage at
    completion (forecast) + the re-planned rest would pass the budget. Money spent on a stage that cannot
    be followed by the rest buys no model."""
    need = spent_before_stage + stage_forecast + rest_estimate
    numbers = {"spent_before_stage_usd": spent_before_stage, "stage_forecast_usd": stage_forecast,
               "rest_estimate_usd": rest_estimate, "needed_usd": need, "budget_usd": budget,
               "arithmetic": arithmetic}
    if budget is None:
        return Decision(False, "forecast", "no budget set", numbers)
    text = (f"at the observed rate {stage} ends at ${stage_forecast:,.2f}; spent before it ${spent_before_stage:,.2f} "
            f"+ {stage} ${stage_forecast:,.2f} + rest ${rest_estimate:,.2f} = ${need:,.2f}")
    if need > budget + EPS:
        return Decision(True, "forecast", f"{text} > budget ${budget:,.2f}", numbers)
    return Decision(False, "forecast", f"{text} <= budget ${budget:,.2f}", numbers)


def admit_api_batch(spent: float, model: str, prompt_tokens: int, completion_tokens: int, batch: bool,
                    budget: float | None, rest_estimate: float = 0.0, cached_tokens: int = 0) -> Decision:
    """Refuse an API batch whose token estimate does not fit what is left (after the stages still to run)."""
    from costmodel.api_prices import api_cost

    usd = api_cost(model, int(prompt_tokens), int(completion_tokens), int(cached_tokens), batch=batch)
    need = spent + usd + rest_estimate
    numbers = {"model": model, "batch": batch, "prompt_tokens": int(prompt_tokens), "cached_tokens": int(cached_tokens),
               "completion_tokens": int(completion_tokens), "batch_estimate_usd": usd, "spent_usd": spent,
               "rest_estimate_usd": rest_estimate, "needed_usd": need, "budget_usd": budget}
    if budget is None:
        return Decision(True, "api_batch", "no budget set", numbers)
    _check(budget)
    text = (f"{model} batch of {prompt_tokens:,} in + {completion_tokens:,} out tokens ~ ${usd:,.2f}; "
            f"spent ${spent:,.2f} + batch + rest ${rest_estimate:,.2f} = ${need:,.2f}")
    return _fits("api_batch", text, need, budget, numbers)


def _fits(kind: str, text: str, need: float, budget: float, numbers: dict) -> Decision:
    ok = need <= budget + EPS
    return Decision(ok, kind, f"{text} {'<=' if ok else '>'} budget ${budget:,.2f}", numbers)


def record(ledger, run_id: str, stage: str | None, decision: Decision, at: float | None = None) -> Decision:
    """Every decision becomes a ledger event with its numbers."""
    ledger.add_event(run_id, stage, decision.kind, ok=decision.ok, reason=decision.reason,
                     numbers=decision.numbers, at=at)
    return decision


def _check(budget: float) -> None:
    if not isinstance(budget, (int, float)) or budget != budget or budget <= 0:
        raise BadInput(f"budget {budget!r}: expected a positive number of US dollars")
