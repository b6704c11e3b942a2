"""API: the key authenticates, the model exists, Batch is allowed, its price is known. Read-only calls only
(models.retrieve, batches.list): nothing is submitted, nothing is paid.

The client is the stages' own (`openai`, OPENAI_API_KEY / OPENAI_BASE_URL, as reproduce.stages.rewrite reads
them); the rewrite and an API teacher (`generate.backend: api`) are checked, each with its model.
"""
from __future__ import annotations

from reproduce.preflight import failed, passed, skipped

GROUP = "api"
LOCAL_MODEL = "local-formatter"   # reproduce.stages.rewrite: the smoke-scale formatter, served in-process


def uses(ctx) -> list[tuple[str, str, bool]]:
    """(stage, model, batch) of each API the plan calls."""
    from reproduce import stagetable

    return [(s.name, str(cfg.get("model")), bool(cfg.get("batch")))
            for s in stagetable.STAGES if s.name in ctx.stages and s.uses_api(ctx.recipe)
            for cfg in [ctx.recipe.get(s.section) or {}]]


def checks(ctx) -> list:
    used = uses(ctx)
    if not used:
        return [skipped(GROUP, "the plan calls no API (no rewrite, no API teacher)")]
    out = []
    for stage, model, batch in used:
        out += check_one(ctx, stage, model, batch)
    return out


def check_one(ctx, stage: str, model: str, batch: bool) -> list:
    from costmodel import api_prices
    from costmodel.errors import BadInput

    name = f"{GROUP}/{stage}"
    base_url, key = ctx.environ.get("OPENAI_BASE_URL"), ctx.environ.get("OPENAI_API_KEY")
    if model == LOCAL_MODEL and not base_url:
        return [skipped(name, f"{model}: the deterministic formatter runs in the stage's own process ($0, no key)")]
    out, price = [], None
    try:
        price = api_prices.token_price(model)
        out.append(passed(f"{name}-price", f"{model}: ${price.input:g}/${price.output:g} per 1M tokens in/out "
                                           f"({price.source}, {price.date})"))
    except BadInput as e:
        out.append(failed(f"{name}-price", str(e), f"--set {stage}.model=<a priced model> or add its price to "
                                                   "costmodel/api_prices.py with its source and date"))
    if not key and not base_url:
        return out + [failed(name, "OPENAI_API_KEY is not set", f"export OPENAI_API_KEY to call {model} "
                                                                "(or OPENAI_BASE_URL for an OpenAI-compatible server)")]
    client = _client(key, base_url)
    where = base_url or "api.openai.com"
    fault = _call(lambda: client.models.retrieve(model), model, where, stage)
    if fault:
        return out + [failed(name, *fault)]
    out.append(passed(name, f"the key authenticates at {where} and {model} exists (models.retrieve)"))
    if batch:
        if price is not None and not price.batch:
            out.append(failed(f"{name}-batch", f"{model} has no Batch API at its provider",
                              f"--set {stage}.batch=false"))
        else:
            fault = _call(lambda: client.batches.list(limit=1), model, where, stage, batch=True)
            out.append(failed(f"{name}-batch", *fault) if fault else
                       passed(f"{name}-batch", f"Batch API allowed for this key (batches.list at {where})"))
    return out


def _client(key, base_url):
    import openai

    # one short try each: a preflight waits seconds, not the stage's ten minutes
    return openai.OpenAI(api_key=key or "unused-local-key", base_url=base_url, max_retries=0, timeout=20)


def _call(call, model: str, where: str, stage: str, batch: bool = False) -> tuple[str, str] | None:
    """None if the read-only call succeeded, else (what is wrong, what fixes it). The key is never echoed."""
    import openai

    try:
        call()
        return None
    except openai.AuthenticationError:
        return (f"{where} rejected the key (401)", "export a valid OPENAI_API_KEY (platform.openai.com/api-keys)")
    except openai.NotFoundError:
        if batch:
            return (f"{where} has no Batch API (404 on /batches)", f"--set {stage}.batch=false (sync requests, "
                                                                   "twice the price) or use a provider with Batch")
        return (f"{where} has no model {model!r} (404)", f"--set {stage}.model=<a model your key can use> "
                                                          "(a misspelt id?)")
    except openai.PermissionDeniedError as e:
        what = "Batch API" if batch else f"model {model!r}"
        return (f"{where} refused this key the {what} (403: {_message(e)})",
                f"--set {stage}.batch=false, or ask the organization owner to allow Batch for this key" if batch
                else f"grant the key access to {model}, or --set {stage}.model=<one it can use>")
    except openai.APIConnectionError as e:
        return (f"cannot reach {where} ({type(e.__cause__ or e).__name__})",
                "check the network or OPENAI_BASE_URL")
    except openai.APIStatusError as e:
        return (f"{where} answered {e.status_code}: {_message(e)}", "retry later, or check the key's organization")


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        return str((body.get("error") or body).get("message") or body)[:200]
    return str(e)[:200]
