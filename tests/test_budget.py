"""The budget guard's three decisions, at and around their boundaries, and their ledger events."""
import pytest

from costmodel import budget
from costmodel.api_prices import api_cost
from costmodel.errors import BadInput
from costmodel.ledger import Ledger


def test_admit_counts_spent_stage_and_rest():
    ok = budget.admit(100.0, 150.0, 200.0, 450.0, "sft")
    assert ok.ok and ok.kind == "admit"
    assert ok.numbers["needed_usd"] == 450.0 and ok.numbers["headroom_usd"] == 0.0
    assert "spent $100.00 + sft $150.00 + rest $200.00 = $450.00 <= budget $450.00" == ok.reason
    no = budget.admit(100.01, 150.0, 200.0, 450.0, "sft")
    assert not no.ok and "> budget $450.00" in no.reason


def test_admit_refuses_a_bad_budget():
    with pytest.raises(BadInput, match="positive number"):
        budget.admit(0, 1, 0, -5.0)


def test_should_stop_acts_one_poll_early():
    # $16.80/h, polling every 300 s: the next poll adds $1.40
    keep = budget.should_stop(400.0, 48.5, 16.8, 300, 450.0)
    assert not keep.ok and keep.numbers["projected_usd"] == pytest.approx(449.9)
    stop = budget.should_stop(400.0, 48.7, 16.8, 300, 450.0)
    assert stop.ok and stop.numbers["next_poll_usd"] == pytest.approx(1.4)
    assert "would pass the $450.00 budget" in stop.reason
    # the teardown is billed too
    assert budget.should_stop(400.0, 48.5, 16.8, 300, 450.0, teardown_s=300).ok


def test_no_budget_never_stops():
    assert not budget.should_stop(1e9, 1e9, 100, 30, None).ok
    assert budget.admit(1e9, 1, 1, None).ok


def test_api_batch_refused_when_tokens_do_not_fit():
    usd = api_cost("gpt-4o-mini", 90_000_000, 60_000_000, batch=True)
    assert usd == pytest.approx((90 * 0.15 + 60 * 0.60) * 0.5)
    fits = budget.admit_api_batch(410.0, "gpt-4o-mini", 90_000_000, 60_000_000, True, 450.0)
    assert fits.ok and fits.numbers["batch_estimate_usd"] == pytest.approx(usd)
    refused = budget.admit_api_batch(410.0, "gpt-4o-mini", 90_000_000, 60_000_000, False, 450.0)
    assert not refused.ok and refused.numbers["batch_estimate_usd"] == pytest.approx(2 * usd)
    with pytest.raises(BadInput, match="no token price"):
        budget.admit_api_batch(0, "made-up-model", 1, 1, True, 10.0)


def test_every_decision_is_a_ledger_event_with_numbers(home):
    with Ledger() as led:
        led.create_run("r", recipe="x", scale="full", backend="sim", budget=450.0)
        budget.record(led, "r", "sft", budget.should_stop(400.0, 49.0, 16.8, 300, 450.0), at=5.0)
        [event] = led.events("r")
    assert event["kind"] == "stop" and event["ok"] == 1 and event["stage"] == "sft" and event["at"] == 5.0
    assert event["numbers"]["projected_usd"] == pytest.approx(450.4)
    assert event["numbers"]["budget_usd"] == 450.0
