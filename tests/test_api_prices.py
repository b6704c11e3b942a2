"""API token prices (costmodel/api_prices.py): OpenAI's from genai-prices' bundled data, DeepSeek's from our dated
table, each with its source and date; nothing fetched at run time."""
from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from costmodel import api_prices
from costmodel.errors import BadInput


@pytest.mark.parametrize("model", sorted(api_prices.GENAI_PRICES))
def test_openai_models_come_from_genai_prices_with_source_date_and_batch(model):
    p = api_prices.token_price(model)
    assert p.source.startswith("genai-prices 0.") and "openai.com" in p.source
    assert re.fullmatch(r"20\d\d-\d\d-\d\d", p.date), p.date
    assert p.batch and 0 < p.cached_input <= p.input < p.output
    # the plan's arithmetic reads "x 0.5 batch": it holds only while the Batch prices are half the standard ones
    assert (p.batch_input, p.batch_output) == (p.input * api_prices.BATCH_DISCOUNT, p.output * api_prices.BATCH_DISCOUNT)


def test_gpt_4o_mini_is_the_price_the_recipe_was_planned_at():
    # reference/environment.md: gpt-4o-mini $0.15 / $0.075 cached / $0.60 per 1M tokens, Batch half price
    p = api_prices.token_price("gpt-4o-mini")
    assert (p.input, p.cached_input, p.output) == (0.15, 0.075, 0.60)
    assert api_prices.api_cost("gpt-4o-mini", 2_000_000, 1_000_000, batch=True) == pytest.approx(0.45)
    # cached input under Batch keeps its price: OpenAI's Batch table lists no cached-input rate
    assert api_prices.api_cost("gpt-4o-mini", 1_000_000, 0, 1_000_000, batch=True) == pytest.approx(0.075)


@pytest.mark.parametrize("model", ["deepseek-reasoner", "deepseek-chat"])
def test_our_deepseek_rows_are_genai_prices_standard_hours(model):
    """What our table keeps (genai-prices has DeepSeek undated, with an off-peak price by the hour): the
    standard-hours price, which must agree with genai-prices' at noon UTC (inside 00:30-16:30)."""
    from genai_prices import data_snapshot

    ours = api_prices.token_price(model)
    assert ours.source == api_prices.DEEPSEEK and ours.date == "2025-01-20" and not ours.batch
    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, "deepseek", None)
    theirs = info.get_prices(datetime.now(timezone.utc).replace(hour=12, minute=0))
    assert (ours.input, ours.cached_input, ours.output) == tuple(
        float(x) for x in (theirs.input_mtok, theirs.cache_read_mtok, theirs.output_mtok))


def test_unknown_model_is_one_line_naming_the_known_ones():
    with pytest.raises(BadInput, match=r"no token price for model 'gpt-9': expected one of gpt-4o-mini, .*deepseek"):
        api_prices.token_price("gpt-9")
    assert api_prices.token_price("tiny-qwen").input == 0 and api_prices.token_price("local").source == "self-hosted"


def test_prices_are_read_without_the_network():
    """A fresh process whose every socket connect raises (an audit hook) still prices every model."""
    code = ("import sys\n"
            "def hook(event, args):\n"
            "    if event in ('socket.connect', 'socket.getaddrinfo'):\n"
            "        raise OSError(f'network touched: {event} {args}')\n"
            "sys.addaudithook(hook)\n"
            "from costmodel import api_prices\n"
            "print(sum(api_prices.api_cost(m, 10**6, 10**6, batch=True) for m in api_prices.models()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "REPRODUCE_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout) > 0
