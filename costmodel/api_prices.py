"""API token prices, per 1M tokens, each with its source and date (cost output shows both).

OpenAI's models are priced by genai-prices (github.com/pydantic/genai-prices), a maintained price library whose
data ships inside the package, so nothing is fetched at run time: standard, cached-input and Batch prices, with
the date it verified them against OpenAI's pricing page. Our own dated table keeps what it lacks:
- DeepSeek: genai-prices carries its prices undated, and with the off-peak discount (16:30-00:30 UTC), which
  would make a plan's figure depend on the hour it is made; the table holds the standard-hours prices, dated
  (tests/test_api_prices.py checks they agree with genai-prices' standard hours).
- "local": a self-hosted OpenAI-compatible server has no token price (its GPU time is compute).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from costmodel.errors import BadInput

DATE = "2026-11-24"  # date the table was last checked against its source
DEEPSEEK = "api-docs.deepseek.com/quick_start/pricing"
BATCH_DISCOUNT = 0.5  # Batch API: 50% off input and output (OpenAI Batch API docs)
GENAI_PRICES = {"gpt-4o-mini": "openai", "gpt-4o": "openai", "gpt-4.1-mini": "openai", "gpt-4.1-nano": "openai",
                "o4-mini": "openai"}   # model -> genai-prices provider id: the models it prices for us


@dataclass(frozen=True)
class TokenPrice:
    model: str
    input: float         # $ per 1M prompt tokens (uncached)
    cached_input: float  # $ per 1M cached prompt tokens
    output: float        # $ per 1M completion tokens
    source: str
    date: str
    batch: bool = True   # the provider has a Batch API
    # $ per 1M under the Batch API where the source lists them; None: BATCH_DISCOUNT x the standard price
    batch_input: float | None = None
    batch_cached_input: float | None = None
    batch_output: float | None = None


TABLE = {p.model: p for p in [
    # DeepSeek: prices of the R1 release (deepseek-reasoner = DeepSeek-R1, deepseek-chat = DeepSeek-V3), standard
    # hours, cache-miss input / cache-hit input / output, including reasoning tokens in the output. No Batch API.
    # Written from the page as it stood at that date, NOT re-fetched here: DeepSeek has changed these since
    # (off-peak discounts, V3.1/V3.2 prices); check api-docs.deepseek.com before a paid run.
    TokenPrice("deepseek-reasoner", 0.55, 0.14, 2.19, DEEPSEEK, "2025-01-20", batch=False),
    TokenPrice("deepseek-chat", 0.27, 0.07, 1.10, DEEPSEEK, "2025-01-20", batch=False),
    # A local OpenAI-compatible server (smoke scale, or a self-hosted vLLM) costs no tokens;
    # its GPU time is accounted as compute.
    TokenPrice("local", 0.0, 0.0, 0.0, "self-hosted", DATE),
]}


@functools.lru_cache(maxsize=None)
def _genai_price(model: str) -> TokenPrice:
    """`model`'s prices from genai-prices' bundled data (its import builds it: ~0.35 s, once per process)."""
    from datetime import datetime, timezone

    import genai_prices
    from genai_prices import data_snapshot

    provider, info = data_snapshot.get_snapshot().find_provider_model(model, None, GENAI_PRICES[model], None)
    now = datetime.now(timezone.utc)
    std, bat = info.get_prices(now), info.get_prices(now, {"processing": "batch"})
    verified = re.findall(r"verified on (\d{4}-\d{2}-\d{2})", info.price_comments or "")
    url = re.sub(r"^https?://", "", (provider.pricing_urls or [provider.name])[0])
    cached = std.cache_read_mtok if std.cache_read_mtok is not None else std.input_mtok   # no cache discount
    batch_cached = bat.cache_read_mtok if bat.cache_read_mtok is not None else bat.input_mtok
    return TokenPrice(model, float(std.input_mtok), float(cached), float(std.output_mtok),
                      f"genai-prices {genai_prices.__version__}: {url}",
                      max(verified) if verified else f"genai-prices {genai_prices.__version__} data",
                      batch=bat.input_mtok != std.input_mtok, batch_input=float(bat.input_mtok),
                      batch_cached_input=float(batch_cached), batch_output=float(bat.output_mtok))


def models() -> list[str]:
    return [*GENAI_PRICES, *TABLE]


def token_price(model: str) -> TokenPrice:
    if model in GENAI_PRICES:
        return _genai_price(model)
    if model in TABLE:
        return TABLE[model]
    if model.startswith(("tiny-", "local")):
        return TABLE["local"]
    raise BadInput(f"no token price for model {model!r}: expected one of {', '.join(models())}")


def api_cost(model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
             batch: bool = False) -> float:
    """$ for one usage record. `prompt_tokens` includes `cached_tokens`, as OpenAI reports it. Under Batch, the
    source's Batch prices where it lists them (OpenAI's Batch table has no cached-input rate: cached input keeps
    its standard price), else BATCH_DISCOUNT x the standard ones."""
    p = token_price(model)
    uncached = max(prompt_tokens - cached_tokens, 0)
    if batch and p.batch_input is not None:
        return (uncached * p.batch_input + cached_tokens * p.batch_cached_input
                + completion_tokens * p.batch_output) / 1e6
    usd = (uncached * p.input + cached_tokens * p.cached_input + completion_tokens * p.output) / 1e6
    return usd * (BATCH_DISCOUNT if batch else 1.0)
