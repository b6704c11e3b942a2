"""Models: the teacher's and the student's repositories reachable (config.json, with HF_TOKEN for a gated one),
their shapes as costmodel/data/models.yaml has them (the memory model and the price rest on those figures), the
tokenizer has a chat template (generate and eval render prompts with it), and vLLM's context fits the model's
max_position_embeddings (generate's and eval's prompt + max_tokens).

`huggingface_hub` is in the controller's environment: read in-process, small files only, HF_ENDPOINT honoured.
"""
from __future__ import annotations

import json
from pathlib import Path

from reproduce.preflight import failed, passed, skipped

GROUP = "models"


def roles(ctx) -> list[tuple[str, list[str]]]:
    """(recipe models.<role>, the stages of the plan that load it)."""
    from reproduce import stagetable

    def loading(role: str) -> list[str]:   # an API teacher is loaded by no stage of ours
        return [s.name for s in stagetable.STAGES
                if s.model == role and s.name in ctx.stages and s.runs_on(ctx.recipe) == s.where]
    return [(r, s) for r, s in ((r, loading(r)) for r in ("teacher", "student")) if s]


def checks(ctx) -> list:
    wanted = roles(ctx)
    if not wanted:
        return [skipped(GROUP, "the plan loads no model (no vLLM generate, sft or eval)")]
    if ctx.scale == "smoke":
        return [skipped(GROUP, "smoke scale: tiny models built on this machine (reproduce/stages/smoke/tinymodel.py)")]
    from huggingface_hub import close_session

    close_session()   # huggingface_hub keeps one client made with the proxy settings of its time: use today's
    out = []
    for role, stages in wanted:
        out += check_model(ctx, role, stages)
    return out


def check_model(ctx, role: str, stages: list[str]) -> list:
    from costmodel import models as shapes

    entry = (ctx.recipe.get("models") or {}).get(role) or {}
    mid = str(entry.get("id") if isinstance(entry, dict) else entry)
    name = f"{GROUP}/{role}"
    try:
        config = _read(mid, "config.json", ctx.environ)
    except _Unreachable as e:
        return [failed(name, f"{mid}: {e.what}", e.fix.replace("ROLE", role))]
    out = []
    table = shapes.known().get(mid)
    if table:
        differ = [f"{ours} {table[ours]} vs {hf} {config.get(hf)}" for hf, ours in shapes.CONFIG_NAMES.items()
                  if ours in table and hf in config and config[hf] != table[ours]]
        if differ:
            out.append(failed(name, f"{mid}: costmodel/data/models.yaml disagrees with its config.json: "
                                    f"{'; '.join(differ)}", "correct the row in costmodel/data/models.yaml "
                                                           "(memory and price rest on it), with its source"))
        else:
            out.append(passed(name, f"{mid}: config.json reachable; shape as costmodel/data/models.yaml"))
    else:
        out.append(passed(name, f"{mid}: config.json reachable (not in costmodel/data/models.yaml: the recipe's "
                                f"figures are used)"))
    out.append(_chat_template(ctx, mid, role))
    from reproduce import stagetable

    for stage in stages:
        if stagetable.stage(stage).options == "vllm":
            out.append(_context(ctx, stage, mid, config))
    return out


def _chat_template(ctx, mid: str, role: str):
    name = f"{GROUP}/{role}-chat-template"
    try:
        tok = _read(mid, "tokenizer_config.json", ctx.environ)
    except _Unreachable as e:
        return failed(name, f"{mid}: tokenizer_config.json: {e.what}", "use a model with a tokenizer")
    if tok.get("chat_template"):
        return passed(name, f"{mid}: the tokenizer has a chat template")
    for extra in ("chat_template.jinja", "chat_template.json"):
        try:
            _read(mid, extra, ctx.environ, parse=False)
            return passed(name, f"{mid}: the tokenizer has a chat template ({extra})")
        except _Unreachable:
            continue
    return failed(name, f"{mid}: the tokenizer has no chat template (prompts are rendered with it)",
                  f"use an instruct/chat model for models.{role}, or one whose tokenizer_config.json has "
                  "chat_template")


def _context(ctx, stage: str, mid: str, config: dict):
    cfg, gen = ctx.recipe.get(stage) or {}, ctx.recipe.get("generate") or {}
    name = f"{GROUP}/{stage}-context"
    limit = config.get("max_position_embeddings")
    if not limit:
        return skipped(name, f"{mid}'s config.json has no max_position_embeddings")
    prompt = int(gen.get("mean_prompt_tokens") or 0)
    need = prompt + int(cfg.get("max_tokens") or 0)
    if prompt >= int(limit):
        return failed(name, f"{stage}: prompts of ~{prompt:,} tokens do not fit {mid}'s max_position_embeddings "
                            f"{limit:,} (vLLM refuses them)", "a model with a longer context, or shorter prompts")
    if need > int(limit):   # vLLM's offline generate ends such an answer at max_model_len: a cap, not a refusal
        return passed(name, f"{stage}: prompt ~{prompt:,} + max_tokens {cfg.get('max_tokens'):,} = {need:,} tokens, "
                            f"{need - int(limit):,} over {mid}'s {limit:,} positions: vLLM ends those answers at "
                            f"{limit:,}")
    return passed(name, f"{stage}: prompt + max_tokens = {need:,} tokens within {mid}'s {limit:,} positions")


class _Unreachable(Exception):
    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what, self.fix = what, fix


def _read(mid: str, filename: str, environ, parse: bool = True):
    """A small file of model repository `mid` (or of a local folder of that name)."""
    local = Path(mid) / filename
    if Path(mid).is_dir():
        if not local.is_file():
            raise _Unreachable(f"{local} does not exist", "point models.ROLE.id at a saved model folder")
        return json.loads(local.read_text()) if parse else local.read_text()
    from huggingface_hub import errors, hf_hub_download

    try:
        path = hf_hub_download(mid, filename, token=environ.get("HF_TOKEN") or False,
                               endpoint=environ.get("HF_ENDPOINT") or None)
    except errors.GatedRepoError:
        raise _Unreachable("gated, and " + ("this HF_TOKEN has no access" if environ.get("HF_TOKEN")
                                            else "HF_TOKEN is not set"),
                           f"accept {mid}'s conditions on the hub and export HF_TOKEN of that account") from None
    except errors.RepositoryNotFoundError:
        raise _Unreachable("no such model repository on the hub (or it is private)",
                           "--set models.ROLE.id=<an existing repository> (a misspelt id?)") from None
    except errors.EntryNotFoundError:
        raise _Unreachable(f"the repository has no {filename}", "use a transformers model repository") from None
    except Exception as e:   # noqa: BLE001 - network, proxy, a closed client: unreachable, said as such
        raise _Unreachable(f"cannot read {filename} ({type(e).__name__}: {str(e)[:160]})",
                           "check the network (or HF_ENDPOINT) and HF_TOKEN") from None
    text = Path(path).read_text()
    return json.loads(text) if parse else text

