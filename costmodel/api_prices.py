"""API token prices, per 1M tokens, in a dated table. Batch API is half price (OpenAI pricing page).

Every row names its source and date so cost output can show them.
"""
from __future__ import annotations

from dataclasses import dataclass

from costmodel.errors import BadInput

SOURCE = "openai.com/api/pricing"
DATE = "2026-11-24"  # date the table was last checked against its source
DEEPSEEK = "api-docs.deepseek.com/quick_start/pricing"
BATCH_DISCOUNT = 0.5  # Batch API: 50% off input and output (OpenAI Batch API docs)


@dataclass(frozen=True)
class TokenPrice:
    model: str
    input: float         # $ per 1M prompt tokens (uncached)
    cached_input: float  # $ per 1M cached prompt tokens
    output: float        # $ per 1M completion tokens
    source: str = SOURCE
    date: str = DATE
    batch: bool = True   # the provider has a Batch API at BATCH_DISCOUNT


TABLE = {p.model: p for p in [
    TokenPrice("gpt-4o-mini", 0.15, 0.075, 0.60),   # environment.md, checked against SOURCE
    TokenPrice("gpt-4o", 2.50, 1.25, 10.00),
    TokenPrice("gpt-4.1-mini", 0.40, 0.10, 1.60),
    TokenPrice("gpt-4.1-nano", 0.10, 0.025, 0.40),
    TokenPrice("o4-mini", 1.10, 0.275, 4.40),
    # DeepSeek: prices of the R1 release (deepseek-reasoner = DeepSeek-R1, deepseek-chat = DeepSeek-V3), standard
    # hours, cache-miss input / cache-hit input / output, including reasoning tokens in the output. No Batch API.
    # Written from the page as it stood at that date, NOT re-fetched here: DeepSeek has changed these since
    # (off-peak discounts, V3.1/V3.2 prices); check api-docs.deepseek.com before a paid run.
    TokenPrice("deepseek-reasoner", 0.55, 0.14, 2.19, source=DEEPSEEK, date="2025-01-20", batch=False),
    TokenPrice("deepseek-chat", 0.27, 0.07, 1.10, source=DEEPSEEK, date="2025-01-20", batch=False),
    # A local OpenAI-compatible server (smoke scale, or a self-hosted vLLM) costs no tokens;
    # its GPU time is accounted as compute.
    TokenPrice("local", 0.0, 0.0, 0.0, source="self-hosted", date=DATE),
]}


def token_price(model: str) -> TokenPrice:
    if model in TABLE:
        return TABLE[model]
    if model.startswith(("tiny-", "local")):
        return TABLE["local"]
    raise BadInput(f"no token price for model {model!r}: expected one of {', '.join(TABLE)}")


def api_cost(model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
             batch: bool = False) -> float:
    """$ for one usage record. `prompt_tokens` includes `cached_tokens`, as OpenAI reports it."""
    p = token_price(model)
    uncached = max(prompt_tokens - cached_tokens, 0)
    usd = (uncached * p.input + cached_tokens * p.cached_input + completion_tokens * p.output) / 1e6
    return usd * (BATCH_DISCOUNT if batch else 1.0)
