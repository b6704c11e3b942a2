"""What a recipe may say: every section, key and value range, checked once at load (files and `--set` alike).

A bad value is one line naming the key, the value, where it came from and what is accepted:
    sft.num_nodes=-2 (from --set): expected a whole number >= 1
Rules are data: RULES maps a dotted key (`*` for every item of a list) to a check (costmodel.checks). A key with no
rule is refused, so a typo or a key no code reads never passes silently. A stage's section takes its rules and
defaults from its row (costmodel.stages: what the row implies, and its `knobs` and `defaults`); what is left here
is the sections no stage owns and the rules between keys (_cross).
"""
from __future__ import annotations

import difflib

from reproduce.errors import UserError

from costmodel.checks import (ACCEL, ACCELS, ANY_TEXT, BOOL, DOMAINS, GPUS_PER_NODE, INFRA_LIST,  # noqa: F401
                              LAYOUT, MAPPING, MARKET, NON_NEGATIVE, POSITIVE, PREF_LOSSES, SFT_METHODS, SHARE, TEXT,
                              Check, number, one_of, whole)
from costmodel import estimates
from costmodel.errors import BadInput
from costmodel.stages import GPU, STAGES, Stage, api_backend   # api_backend here too for the schema's callers

# A model entry: an id (costmodel/data/models.yaml), a local config.json, figures overriding either.
_MODEL = {"id": TEXT, "config": TEXT, "params_b": POSITIVE, "active_params_b": POSITIVE, "layers": whole(),
          "hidden": whole(), "intermediate": whole(), "heads": whole(), "kv_heads": whole(), "vocab": whole(),
          "experts": whole(0), "experts_per_token": whole(0), "kv_cache_dim": whole(), "weight_bytes": one_of(1, 2),
          "source": ANY_TEXT}
MODEL_ROLES = ("teacher", "student")
# A `sources` item must say these; the rest have defaults (an empty filter, the dataset's default subset).
SOURCE_REQUIRED = ("name", "dataset", "split", "domain", "problems", "keep_rate")
# What a stage's row implies its section holds (its own knobs are the row's: costmodel.stages)
_GPU_SECTION = {"accelerator": ACCEL, "fallbacks": ACCELS, "use_spot": MARKET}
_VLLM_SECTION = {"tensor_parallel": whole(), "data_parallel": whole(), "max_tokens": whole(),
                 "mean_response_tokens": POSITIVE}   # what the memory fit (Stage.vllm_tokens) and _cross read


def section_rules(row: Stage) -> dict[str, Check]:
    """A stage section's rules: what its row implies, then the row's own knobs."""
    implied = {**(_GPU_SECTION if row.where == GPU else {}), **(_VLLM_SECTION if row.options == "vllm" else {})}
    if row.may_run_here:
        implied["where"] = one_of("local", "cpu-node")
    if row.scratch:
        implied["keep_checkpoints"] = BOOL
    return {f"{row.section}.{k}": c for k, c in {**implied, **row.knobs}.items()}


def section_defaults(row: Stage) -> dict:
    """A stage section's defaults: a GPU stage's market auto, a stage kept here by default, scratch deleted."""
    implied = {"use_spot": "auto"} if row.where == GPU else {}
    if row.may_run_here:
        implied["where"] = "local"
    if row.scratch:
        implied["keep_checkpoints"] = False
    return {f"{row.section}.{k}": v for k, v in {**implied, **row.defaults}.items()}


RULES: dict[str, Check] = {
    "name": TEXT, "description": ANY_TEXT, "scale": one_of("full", "smoke"), "source_file": TEXT, "bucket": TEXT,
    **{f"models.{m}.{k}": c for m in ("teacher", "student") for k, c in _MODEL.items()},
    "sources.*.name": TEXT, "sources.*.dataset": TEXT, "sources.*.split": TEXT, "sources.*.filter": MAPPING,
    "sources.*.domain": one_of(*DOMAINS, "science"), "sources.*.problems": whole(), "sources.*.keep_rate": SHARE,
    "sources.*.subset": TEXT, "sources.*.fields": MAPPING, "sources.*.answer_from": one_of("column", "boxed"),
    **{f"sources.*.fields.{k}": TEXT for k in ("id", "problem", "answer", "tests", "starter_code")},
    **{f"sources.*.{k}": c for k, c in LAYOUT.items()},
    "sources.*.traces": one_of("generate", "published"),
    **{k: c for row in STAGES for k, c in section_rules(row).items()},
    "costs.spot_preemptions_per_hour": number(0, 10), "costs.recovery_hours": number(0, 48),
    "costs.startup_hours": number(0, 48), "costs.cpu_node_usd_per_hour": NON_NEGATIVE,
    "costs.filter_cpus_local": whole(), "costs.bucket_days": number(0, 3650),
    "costs.local_usd_per_hour": NON_NEGATIVE, "costs.stop_grace_s": number(0, 3600),
    # where stages may be placed (costmodel.infra): infra names narrow what SkyPilot has enabled
    "placement.infra": INFRA_LIST, "placement.exclude": INFRA_LIST, "placement.rates": MAPPING,
}
# What a key means when a recipe leaves it out, filled in at load so code indexes (recipe["sft"]["num_nodes"])
# instead of repeating a guess at each read.
DEFAULTS = {**{k: v for row in STAGES for k, v in section_defaults(row).items()},
            "costs.local_usd_per_hour": 0.0, "costs.stop_grace_s": 300}
SECTIONS = ("name", "models", "sources", *(s.section for s in STAGES), "costs")
LISTS = tuple(dict.fromkeys(k.split(".*.")[0] for k in RULES if ".*." in k))   # lists of named mappings
OPEN_MAPPINGS = ("sources.*.filter", "placement.rates")          # dataset filters: the stage program checks them


def check(recipe: dict, origin=lambda key: "the recipe") -> None:
    """Raise UserError (one line) on the first bad section, key or value. `origin(key)` says where a key
    was set: a file, a variant's `set:`, or `--set`."""
    if not isinstance(recipe, dict):
        raise UserError(f"recipe: expected a mapping of sections, got {type(recipe).__name__}")
    missing = [s for s in SECTIONS if s not in recipe]
    if missing:
        raise UserError(f"recipe {origin(missing[0])}: section {missing[0]!r} is missing; a recipe needs "
                        f"{', '.join(SECTIONS)}")
    models = recipe.get("models")
    for role in MODEL_ROLES:   # an id alone is the short form of {id: ...}
        if isinstance(models, dict) and isinstance(models.get(role), str):
            models[role] = {"id": models[role]}
    _walk(recipe, "", "", origin)
    _resolve_models(recipe, origin)
    _required(recipe, origin)
    _cross(recipe, origin)
    fill_defaults(recipe)


def fill_defaults(recipe: dict) -> dict:
    """Every key of DEFAULTS the recipe leaves out, set to its default (a checked recipe; returns it)."""
    for key, value in DEFAULTS.items():
        section, _, name = key.partition(".")
        recipe[section].setdefault(name, list(value) if isinstance(value, list) else value)
    return recipe


def _resolve_models(recipe: dict, origin) -> None:
    """Every model entry gets its whole shape (costmodel.models), so FLOPs, memory and throughput read one dict;
    resolving a resolved entry changes nothing (a run's recipe.yaml loads as it was written)."""
    from costmodel import models

    for role in MODEL_ROLES:
        key = f"models.{role}"
        if role not in recipe["models"]:
            raise UserError(f"recipe {origin(key)}: {key} is missing: name a model id, e.g. Qwen/Qwen2.5-32B-Instruct")
        try:
            recipe["models"][role] = models.resolve(recipe["models"][role])
        except BadInput as e:
            raise UserError(f"{key} ({origin(key)}): {e}") from None


def _required(recipe: dict, origin) -> None:
    for i, src in enumerate(recipe["sources"]):
        missing = [k for k in SOURCE_REQUIRED if k not in src]
        if missing:
            key = f"sources.{src.get('name', i)}"
            raise UserError(f"{key} ({origin(key)}): {missing[0]} is missing; a source states "
                            f"{', '.join(SOURCE_REQUIRED)} (keep_rate: the share of its traces the filter keeps, "
                            f"e.g. 0.8)")
    from reproduce.stages.lib import problems

    for src in recipe["sources"]:
        try:
            problems.check_source(src)
        except problems.BadSource as e:
            key = f"sources.{src['name']}"
            raise UserError(f"{key} ({origin(key)}): {e}") from None


def _walk(node, key: str, pattern: str, origin) -> None:
    if pattern in OPEN_MAPPINGS:
        return
    if isinstance(node, dict) and (pattern == "" or pattern not in RULES or RULES[pattern] is MAPPING):
        for k, v in node.items():
            if not isinstance(k, str):
                raise UserError(f"{key or 'recipe'} ({origin(key)}): key {k!r} is not a name")
            _walk(v, f"{key}.{k}" if key else k, f"{pattern}.{k}" if pattern else k, origin)
        return
    if pattern in LISTS:
        if not isinstance(node, list) or not all(isinstance(x, dict) for x in node) or not node:
            raise UserError(f"{key}={_show(node)} ({origin(key)}): expected a non-empty list of mappings")
        for i, item in enumerate(node):
            name = item.get("name", i)
            _walk(item, f"{key}.{name}", f"{pattern}.*", origin)
        return
    rule = RULES.get(pattern)
    if rule is None and any(p.startswith(pattern + ".") for p in RULES):
        raise UserError(f"{key}={_show(node)} ({origin(key)}): expected a mapping of keys, got "
                        f"{type(node).__name__}")
    if rule is None:
        sections = {p.split(".")[0] for p in RULES}
        if "." not in pattern and pattern not in sections:
            hint = difflib.get_close_matches(pattern, sorted(sections), n=1)
            raise UserError(f"unknown recipe section {key!r} ({origin(key)})"
                            + (f": did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(SECTIONS)}"))
        parent = pattern.rsplit(".", 1)[0]
        siblings = [p.rsplit(".", 1)[1] for p in RULES if p.rsplit(".", 1)[0] == parent]
        if not siblings:
            raise UserError(f"{key.rsplit('.', 1)[0]} ({origin(key)}): expected a value, got a mapping")
        hint = difflib.get_close_matches(pattern.rsplit(".", 1)[1], siblings, n=1)
        raise UserError(f"unknown recipe key {key!r} ({origin(key)})"
                        + (f": did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(siblings)}"))
    if not rule(node):
        raise UserError(f"{key}={_show(node)} ({origin(key)}): expected {rule.accepted}")


def _cross(recipe: dict, origin) -> None:
    """Rules between keys: the GPUs a vLLM stage uses are TP x DP of its node; names are unique."""
    for section in (s.section for s in STAGES if s.options == "vllm"):
        cfg = recipe[section]
        gpus = estimates.accelerator(cfg["accelerator"])[1]
        tp, dp = cfg["tensor_parallel"], cfg["data_parallel"]
        if gpus % tp and recipe.get("scale") != "smoke":
            raise UserError(f"{section}.tensor_parallel={tp} ({origin(section + '.tensor_parallel')}): expected a "
                            f"divisor of the {gpus} GPUs of {cfg['accelerator']}")
        if tp * dp != gpus and recipe.get("scale") != "smoke":   # smoke: one CPU process, whatever the GPUs
            raise UserError(f"{section}.data_parallel={dp} ({origin(section + '.data_parallel')}): expected "
                            f"{gpus // tp} so that tensor_parallel {tp} x data_parallel uses the {gpus} GPUs of "
                            f"{cfg['accelerator']}")
    for name in LISTS:
        section, _, sub = name.partition(".")
        items = recipe.get(section) or []
        items = items.get(sub) or [] if isinstance(items, dict) else items
        names = [x.get("name") for x in items]
        dupes = sorted({n for n in names if names.count(n) > 1 and n is not None})
        if dupes:
            raise UserError(f"{name} ({origin(name)}): item name {dupes[0]!r} appears twice; names must be unique")
    _cross_new(recipe, origin)
    for src in recipe.get("sources") or []:      # science has no grader: only published traces (STILL-2) bring it
        if src.get("domain") not in DOMAINS and src.get("traces") != "published":
            key = f"sources.{src.get('name')}.domain"
            raise UserError(f"{key}={src.get('domain')} ({origin(key)}): expected one of {', '.join(DOMAINS)}; "
                            "science only with traces: published (no teacher, no grader)")
    if recipe["sft"]["cpu_offload"] and recipe["sft"]["zero_stage"] == 0:
        raise UserError(f"sft.cpu_offload=true ({origin('sft.cpu_offload')}): needs sft.zero_stage 3 (DeepSpeed); "
                        "set sft.cpu_offload=false or sft.zero_stage=3")


def _cross_new(recipe: dict, origin) -> None:
    """Preference training's loss agrees with its method; an API teacher names a priced model and no GPUs."""
    sft, gen = recipe["sft"], recipe["generate"]
    method = sft.get("method", "sft")
    if "pref_loss" in sft and sft["pref_loss"] not in PREF_LOSSES.get(method, ()):
        raise UserError(f"sft.pref_loss={sft['pref_loss']} ({origin('sft.pref_loss')}): expected "
                        + (f"one of {', '.join(PREF_LOSSES[method])} for sft.method={method}" if method in PREF_LOSSES
                           else "no pref_loss with sft.method=sft (set sft.method=dpo or simpo)"))
    pairs = recipe["convert"].get("pairs") or {}
    if method in PREF_LOSSES and pairs.get("chosen", "shortest") == pairs.get("rejected", "longest"):
        raise UserError(f"convert.pairs.rejected={pairs.get('rejected')} ({origin('convert.pairs.rejected')}): "
                        "expected the other end from convert.pairs.chosen (shortest vs longest)")
    backend = api_backend(recipe)
    if gen.get("backend") == "api" and not gen.get("model"):
        raise UserError(f"generate.backend=api ({origin('generate.backend')}): needs generate.model, the API's "
                        "model name (e.g. deepseek-reasoner)")
    if gen.get("backend") == "vllm" and gen.get("model"):
        raise UserError(f"generate.model={gen['model']} ({origin('generate.model')}): names an API model; set "
                        "generate.backend=api, or models.teacher for a self-hosted teacher")
    if backend:
        from costmodel import api_prices

        try:
            price = api_prices.token_price(gen["model"])
        except BadInput as e:
            raise UserError(f"generate.model={gen['model']} ({origin('generate.model')}): {e}") from None
        if gen.get("batch") and not price.batch:
            raise UserError(f"generate.batch=true ({origin('generate.batch')}): {gen['model']} has no Batch API "
                            f"({price.source}); set generate.batch=false")
        if int(gen.get("num_nodes", 1)) > 1:
            raise UserError(f"generate.num_nodes={gen['num_nodes']} ({origin('generate.num_nodes')}): an API "
                            "teacher uses no nodes; remove it or set generate.backend=vllm")



def _show(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."
