"""What a recipe may say: every section, key and value range, checked once at load (files and `--set` alike).

A bad value is one line naming the key, the value, where it came from and what is accepted:
    sft.num_nodes=-2 (from --set): expected a whole number >= 1
Rules are data: RULES maps a dotted key (`*` for every item of a list) to a check. A key with no rule is
refused, so a typo or a key no code reads never passes silently.
"""
from __future__ import annotations

import difflib
import math

from reproduce.errors import UserError

from costmodel import estimates
from costmodel.errors import BadInput
from costmodel.estimates import GPU_NAMES
from costmodel.stages import STAGES, api_backend   # api_backend here too for the schema's callers
DOMAINS = ("math", "code", "mcq")


class Check:
    def __init__(self, test, accepted: str):
        self.test, self.accepted = test, accepted

    def __call__(self, value) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def whole(lo: int = 1, hi: int | None = None) -> Check:
    rng = f">= {lo}" if hi is None else f"from {lo} to {hi}"
    return Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi),
                 f"a whole number {rng}")


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    def test(v):
        return (_num(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return Check(test, "a finite number" + (" " + " and ".join(parts) if parts else ""))


def one_of(*values) -> Check:
    return Check(lambda v: v in values and type(v) in {type(x) for x in values},
                 "one of " + ", ".join(str(x).lower() if isinstance(x, bool) else str(x) for x in values))


GPUS_PER_NODE = 8   # the largest node any catalog row offers (costmodel/data/snapshot_8gpu.csv)


def _accel(v) -> bool:
    try:
        return isinstance(v, str) and estimates.accelerator(v)[1] <= GPUS_PER_NODE
    except BadInput:
        return False


TEXT = Check(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
ANY_TEXT = Check(lambda v: isinstance(v, str), "a string")
BOOL = Check(lambda v: isinstance(v, bool), "true or false")
POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
SHARE = number(0, 1, lo_open=True)                       # (0, 1]
OPTIONAL_POSITIVE = Check(lambda v: v is None or POSITIVE(v), "a finite number > 0, or null (nothing published)")
ACCEL = Check(_accel, f"NAME:COUNT with NAME one of {', '.join(GPU_NAMES)}, e.g. H100:8, and COUNT the GPUs of "
                      f"one node (at most {GPUS_PER_NODE}): for more, set the section's num_nodes")
ACCELS = Check(lambda v: isinstance(v, list) and all(_accel(x) for x in v),
               f"a list of NAME:COUNT with NAME one of {', '.join(GPU_NAMES)}, e.g. [H200:8]")
MARKET = Check(lambda v: v in (True, False, "auto"), "true (spot), false (on-demand) or auto (the cheaper)")
DOMAIN_LIST = Check(lambda v: isinstance(v, list) and all(x in DOMAINS for x in v),
                    f"a list of domains from {', '.join(DOMAINS)}")
MAPPING = Check(lambda v: isinstance(v, dict), "a mapping")
INFRA_LIST = Check(lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)),
                   "a list of infra names, e.g. [aws, gcp/us-central1, k8s/lab]")

# A model entry: an id (costmodel/data/models.yaml), a local config.json, figures overriding either.
_MODEL = {"id": TEXT, "config": TEXT, "params_b": POSITIVE, "active_params_b": POSITIVE, "layers": whole(),
          "hidden": whole(), "intermediate": whole(), "heads": whole(), "kv_heads": whole(), "vocab": whole(),
          "experts": whole(0), "experts_per_token": whole(0), "kv_cache_dim": whole(), "weight_bytes": one_of(1, 2),
          "source": ANY_TEXT}
MODEL_ROLES = ("teacher", "student")
SFT_METHODS = ("sft", "dpo", "simpo")
PREF_LOSSES = {"dpo": ("sigmoid", "hinge", "ipo"), "simpo": ("simpo",)}   # LLaMA-Factory's pref_loss per method
# A `sources` item must say these; the rest have defaults (an empty filter, the dataset's default subset).
SOURCE_REQUIRED = ("name", "dataset", "split", "domain", "problems", "keep_rate")
_GPU_SECTION = {"accelerator": ACCEL, "fallbacks": ACCELS, "use_spot": MARKET}
# Where a source's or benchmark's rows are on the hub (reproduce/stages/lib/hub.py): never a loading script.
_LAYOUT = {"revision": TEXT, "gated": BOOL, "format": one_of("json", "parquet", "arrow", "csv"),
           "files": Check(lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v),
                          "a non-empty list of paths or globs in the dataset's repository, e.g. [data/train-*.parquet]")}

RULES: dict[str, Check] = {
    "name": TEXT, "description": ANY_TEXT, "scale": one_of("full", "smoke"), "source_file": TEXT, "bucket": TEXT,
    **{f"models.{m}.{k}": c for m in ("teacher", "student") for k, c in _MODEL.items()},
    "sources.*.name": TEXT, "sources.*.dataset": TEXT, "sources.*.split": TEXT, "sources.*.filter": MAPPING,
    "sources.*.domain": one_of(*DOMAINS, "science"), "sources.*.problems": whole(), "sources.*.keep_rate": SHARE,
    "sources.*.subset": TEXT, "sources.*.fields": MAPPING, "sources.*.answer_from": one_of("column", "boxed"),
    **{f"sources.*.fields.{k}": TEXT for k in ("id", "problem", "answer", "tests", "starter_code")},
    **{f"{where}.*.{k}": c for where in ("sources", "eval.benchmarks") for k, c in _LAYOUT.items()},
    "sources.*.traces": one_of("generate", "published"),
    **{f"generate.{k}": c for k, c in _GPU_SECTION.items()},
    "generate.samples_per_problem": whole(), "generate.temperature": number(0, 2), "generate.top_p": SHARE,
    "generate.max_tokens": whole(), "generate.tensor_parallel": whole(), "generate.data_parallel": whole(),
    "generate.system_prompt": ANY_TEXT, "generate.user_templates": MAPPING,
    "generate.user_templates.math": TEXT, "generate.user_templates.code": TEXT, "generate.user_templates.mcq": TEXT,
    **{f"generate.user_templates.{k}": TEXT for k in ("code_call_based", "taco", "taco_call_based")},
    "generate.mean_prompt_tokens": POSITIVE, "generate.mean_response_tokens": POSITIVE,
    "generate.backend": one_of("vllm", "api"), "generate.model": Check(lambda v: v is None or TEXT(v), "an API model name, or null (no API)"), "generate.batch": BOOL,
    "generate.num_nodes": whole(1, 64),
    "filter.where": one_of("local", "cpu-node"), "filter.grade_after_rewrite": DOMAIN_LIST, "filter.cpus": whole(),
    "filter.math_timeout_s": number(0, 3600, lo_open=True), "filter.code_timeout_s": number(0, 3600, lo_open=True),
    "filter.code_memory_mb": whole(64, 65536), "filter.mean_cpu_s_per_math": NON_NEGATIVE,
    "filter.mean_cpu_s_per_code": NON_NEGATIVE,
    "rewrite.model": TEXT, "rewrite.batch": BOOL, "rewrite.temperature": number(0, 2), "rewrite.max_tokens": whole(),
    "rewrite.system_prompt": ANY_TEXT, "rewrite.prompt_overhead_tokens": NON_NEGATIVE,
    "rewrite.output_ratio": POSITIVE, "rewrite.recheck": BOOL,
    "convert.pairs": MAPPING, "convert.pairs.chosen": one_of("shortest", "longest"),
    "convert.pairs.rejected": one_of("shortest", "longest"), "convert.pairs.min_correct": whole(2),
    "convert.dataset_name": TEXT, "convert.system_prompt": ANY_TEXT, "convert.dedupe": BOOL,
    "convert.decontaminate": MAPPING, "convert.decontaminate.enabled": BOOL, "convert.decontaminate.ngram": whole(),
    "convert.decontaminate.common_ngram_problems": whole(0), "convert.decontaminate.near_duplicates": number(0, 1),
    **{f"sft.{k}": c for k, c in _GPU_SECTION.items()},
    "sft.num_nodes": whole(1, 64), "sft.samples": whole(), "sft.mean_sample_tokens": POSITIVE, "sft.template": TEXT,
    "sft.cutoff_len": whole(16), "sft.per_device_train_batch_size": whole(), "sft.gradient_accumulation_steps": whole(),
    "sft.learning_rate": number(0, 1, lo_open=True), "sft.num_train_epochs": POSITIVE,
    "sft.lr_scheduler_type": one_of("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                                    "polynomial", "inverse_sqrt"),
    "sft.warmup_ratio": number(0, 1, hi_open=True), "sft.bf16": BOOL, "sft.zero_stage": one_of(0, 3),
    "sft.cpu_offload": BOOL, "sft.packing": BOOL, "sft.liger_kernel": BOOL, "sft.gradient_checkpointing": BOOL,
    "sft.save_steps": whole(), "sft.keep_checkpoints": BOOL,
    "sft.published_hours": OPTIONAL_POSITIVE, "sft.published_usd": OPTIONAL_POSITIVE,
    "sft.method": one_of(*SFT_METHODS), "sft.pref_loss": one_of(*sorted({x for v in PREF_LOSSES.values() for x in v})),
    "sft.pref_beta": POSITIVE, "sft.simpo_gamma": NON_NEGATIVE,
    **{f"eval.{k}": c for k, c in _GPU_SECTION.items()},
    "eval.tensor_parallel": whole(), "eval.data_parallel": whole(), "eval.max_tokens": whole(),
    "eval.mean_response_tokens": POSITIVE, "eval.seed": whole(0), "eval.batch_invariant": BOOL,
    "eval.benchmarks.*.name": TEXT, "eval.benchmarks.*.dataset": TEXT, "eval.benchmarks.*.split": TEXT,
    "eval.benchmarks.*.subset": TEXT, "eval.benchmarks.*.version": TEXT, "eval.benchmarks.*.domain": one_of(*DOMAINS),
    "eval.benchmarks.*.problems": whole(), "eval.benchmarks.*.temperature": number(0, 2),
    "eval.benchmarks.*.n": whole(), "eval.benchmarks.*.published": number(0, 100),
    "costs.spot_preemptions_per_hour": number(0, 10), "costs.recovery_hours": number(0, 48),
    "costs.startup_hours": number(0, 48), "costs.cpu_node_usd_per_hour": NON_NEGATIVE,
    "costs.filter_cpus_local": whole(), "costs.bucket_days": number(0, 3650),
    "costs.local_usd_per_hour": NON_NEGATIVE, "costs.stop_grace_s": number(0, 3600),
    # where stages may be placed (costmodel.infra): infra names narrow what SkyPilot has enabled
    "placement.infra": INFRA_LIST, "placement.exclude": INFRA_LIST, "placement.rates": MAPPING,
}
# What a key means when a recipe leaves it out, filled in at load so code indexes (recipe["sft"]["num_nodes"])
# instead of repeating a guess at each read.
DEFAULTS = {
    "generate.num_nodes": 1, "generate.use_spot": "auto", "generate.batch": False,
    "filter.where": "local", "filter.grade_after_rewrite": [],
    "rewrite.batch": False, "rewrite.recheck": False,
    "sft.num_nodes": 1, "sft.use_spot": "auto", "sft.method": "sft", "sft.liger_kernel": False,
    "sft.keep_checkpoints": False,
    "eval.use_spot": "auto",
    "costs.local_usd_per_hour": 0.0, "costs.stop_grace_s": 300,
}
SECTIONS = ("name", "models", "sources", "generate", "filter", "rewrite", "convert", "sft", "eval", "costs")
LISTS = ("sources", "eval.benchmarks")         # lists of named mappings
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
