"""The stage table: every per-stage fact in one place, one typed row per stage, in pipeline order.

It lives in costmodel so the cost model reads it as the CLI does (storage, calibration, search, the recipe schema,
the re-plan and the preflight iterate over it; reproduce.stagetable re-exports it with the CLI's error). Adding a
stage is four files: its program (reproduce/stages/<program>.py), its task YAML (sky_tasks/<task>.yaml, unless
it runs on the controller), one row here (with its section's knobs and defaults) and in costmodel.estimates its
estimator and what it writes to the bucket; then its section in the base recipes (data). A stage whose
measurements change the later stages' plan adds a handoff (costmodel.handoff).

    from costmodel.stages import STAGES, stage
    for s in STAGES: print(s.name, s.where, s.mode)
    stage("sft").needs          # ('convert',): the stages whose outputs it reads
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from costmodel import estimates, handoff, memory
from costmodel.checks import (ANY_TEXT, BOOL, DOMAIN_LIST, DOMAINS, LAYOUT, MAPPING, NON_NEGATIVE,
                              OPTIONAL_POSITIVE, POSITIVE, PREF_LOSSES, SFT_METHODS, SHARE, TEXT, Check, number,
                              one_of, whole)
from costmodel.errors import BadInput
from costmodel.handoff import Handoff

GPU, CPU, CONTROLLER = "gpu", "cpu", "controller"


@dataclass(frozen=True)
class Stage:
    name: str                    # as in the ledger, the plan and `reproduce stage NAME`
    program: str                 # python -m reproduce.stages.<program>; `reproduce <program>` runs it too
    task: str | None             # sky_tasks/<task>.yaml; None: a controller stage with no task
    where: str                   # gpu (a GPU node) | cpu (a CPU node, or here) | controller (beside the CLI)
    mode: str | None             # SkyPilot: managed (sky.jobs.launch, recovers) | cluster (sky.launch + down)
    section: str                 # the recipe section that holds its knobs
    needs: tuple                 # stages whose outputs it reads (a run must have finished them)
    help: str
    estimate: Callable           # gpu: (recipe, offer, calibration, on_demand_offer=, spot=) -> StageEstimate
                                 # others: (recipe) -> StageEstimate
    writes: Callable             # (recipe) -> (GB it leaves in the run's bucket, what they are), beside its
                                 #   estimator; costmodel.storage prices them
    progress: str | None         # the unit its progress is counted in (problems, records, requests, steps);
                                 #   None: it reports none (the simulator counts one step)
    options: str | None = None   # the settings the optimizer tries (costmodel.search.OPTIONS): vllm | where |
                                 #   api-batch | training; None: nothing to choose
    model: str | None = None     # gpu stages: the recipe's models.<model> it loads (memory, throughput)
    work: str | None = None      # what bounds its speed: a finished stage's measured speed re-plans the
                                 #   remaining stages of the same work (reproduce.replan)
    measures: str | None = None  # the figure a finished run calibrates (costmodel.calibration): decode | mfu
    api_estimate: Callable | None = None  # (recipe) -> StageEstimate when the recipe serves it by an API
    scratch: tuple = ()          # what it writes under <stage>/ only to resume itself (key prefixes): deleted
                                 #   from the bucket once it succeeds, unless <section>.keep_checkpoints
    pulls: str = "output"        # what the controller pulls of what it wrote when it ran elsewhere: output (all of
                                 #   it) | logs (logs and trainer state, never weights: storage.SFT_PULLED_GB)
    may_run_here: bool = False   # a CPU stage the recipe may keep beside the CLI (<section>.where: local)
    handoff: Handoff | None = None   # the workload it measured that the later stages' plan assumed
                                 #   (costmodel.handoff: read after it finishes, applied when re-planning)
    knobs: dict = field(default_factory=dict, hash=False)     # its section's own keys -> costmodel.checks
                                 #   check; reproduce.recipe_schema adds what the row implies (a GPU stage's
                                 #   accelerator, a vLLM stage's parallelism, `where`, `keep_checkpoints`)
    defaults: dict = field(default_factory=dict, hash=False)  # its section's keys a recipe may leave out
    fit: tuple = ()              # GPU stages: changes that lower memory per GPU, tried in order to name the knob
                                 #   that makes it fit (reproduce.plan.no_fit): (key, value) of its section, or a
                                 #   list of them changed together
    secrets: tuple = ()          # a controller stage's (it has no task YAML): what it may see of the environment
    # A node stage's secrets are its task YAML's `secrets:` (reproduce.tasks).

    def keeps_scratch(self, recipe: dict) -> bool:
        return bool((recipe.get(self.section) or {}).get("keep_checkpoints"))

    def runs_on(self, recipe: dict) -> str:
        """Where this stage runs for this recipe: its row's `where`, except a stage with an API form (generate)
        whose recipe serves it by an API (`generate.backend: api`): then the controller, priced at token prices."""
        if self.api_estimate is not None and api_backend(recipe):
            return CONTROLLER
        return self.where

    def uses_api(self, recipe: dict) -> bool:
        """Calls a token-priced API: a Batch-API stage (rewrite), or a stage with an API form served by one."""
        return self.options == "api-batch" or self.runs_on(recipe) != self.where

    def estimator(self, recipe: dict) -> Callable:
        """The estimator this recipe's form of the stage takes (see `estimate` and `api_estimate`)."""
        return self.api_estimate if self.runs_on(recipe) != self.where else self.estimate

    def on_controller(self, recipe: dict) -> bool:
        """Runs beside the CLI, never on a cluster: controller stages, an API teacher, and a CPU stage with
        `where: local`."""
        if self.runs_on(recipe) == CONTROLLER:
            return True
        return self.may_run_here and (recipe.get(self.section) or {}).get("where", "local") == "local"

    def memory(self, recipe: dict, accelerator: str | None = None) -> dict:
        """{per_gpu_gib, usable_gib, fits, arithmetic} of this GPU stage's configuration on `accelerator`
        (default: the recipe's); {} for stages that use no GPU."""
        if self.runs_on(recipe) != GPU:
            return {}
        cfg = recipe[self.section]
        accel = accelerator or cfg["accelerator"]
        if self.work == "training":
            ok, parts, arithmetic = memory.fits(memory.sft_config(recipe, accelerator=accel))
            need, usable = parts["total_gib"], parts["usable_gib"]
            if not parts["fits_cpu"]:
                arithmetic += "\n  (node CPU RAM does not hold the offloaded optimizer)"
        else:
            ok, parts, arithmetic = memory.vllm_fits(recipe["models"][self.model], estimates.accelerator(accel)[0],
                                                     int(cfg["tensor_parallel"]), *self.vllm_tokens(recipe))
            need, usable = parts.get("need_gib", float("inf")), parts.get("usable_gib", 0.0)
        return {"per_gpu_gib": round(need, 1), "usable_gib": round(usable, 1), "fits": bool(ok),
                "accelerator": accel, "arithmetic": arithmetic}

    def vllm_tokens(self, recipe: dict) -> tuple[float, float]:
        """(longest, mean) tokens of one sequence this vLLM stage holds: the teacher's prompts and its response
        (generate), or the student's answers to them (eval: its own section's response length)."""
        prompt, cfg = recipe["generate"]["mean_prompt_tokens"], recipe[self.section]
        return prompt + cfg["max_tokens"], prompt + cfg["mean_response_tokens"] / 2


def api_backend(recipe: dict) -> bool:
    """The teacher is served by an API: `generate.backend: api`, or a `generate.model` with no backend said."""
    gen = recipe.get("generate") or {}
    return gen.get("backend", "api" if gen.get("model") else "vllm") == "api"


def _rewrite(recipe: dict):
    from costmodel import api_prices

    return estimates.estimate_rewrite(recipe, api_prices.token_price(recipe["rewrite"]["model"]))


def _generate_api(recipe: dict):
    from costmodel import api_prices

    return estimates.estimate_generate_api(recipe, api_prices.token_price(recipe["generate"]["model"]))


def _convert(recipe: dict):
    return estimates.StageEstimate("convert", "none", arithmetic="on the controller: $0.00",
                                   price_source="controller ($0)")


# Each section's own knobs (a key with no check is refused at load; reproduce.recipe_schema).
_GENERATE_KNOBS = {
    "samples_per_problem": whole(), "temperature": number(0, 2), "top_p": SHARE, "system_prompt": ANY_TEXT,
    "user_templates": MAPPING,
    **{f"user_templates.{k}": TEXT for k in (*DOMAINS, "code_call_based", "taco", "taco_call_based")},
    "mean_prompt_tokens": POSITIVE, "backend": one_of("vllm", "api"),
    "model": Check(lambda v: v is None or TEXT(v), "an API model name, or null (no API)"), "batch": BOOL,
    "num_nodes": whole(1, 64)}
_FILTER_KNOBS = {
    "grade_after_rewrite": DOMAIN_LIST, "cpus": whole(), "math_timeout_s": number(0, 3600, lo_open=True),
    "code_timeout_s": number(0, 3600, lo_open=True), "code_memory_mb": whole(64, 65536),
    "mean_cpu_s_per_math": NON_NEGATIVE, "mean_cpu_s_per_code": NON_NEGATIVE}
_REWRITE_KNOBS = {
    "model": TEXT, "batch": BOOL, "temperature": number(0, 2), "max_tokens": whole(), "system_prompt": ANY_TEXT,
    "prompt_overhead_tokens": NON_NEGATIVE, "output_ratio": POSITIVE, "recheck": BOOL}
_CONVERT_KNOBS = {
    "pairs": MAPPING, "pairs.chosen": one_of("shortest", "longest"), "pairs.rejected": one_of("shortest", "longest"),
    "pairs.min_correct": whole(2), "dataset_name": TEXT, "system_prompt": ANY_TEXT, "dedupe": BOOL,
    "decontaminate": MAPPING, "decontaminate.enabled": BOOL, "decontaminate.ngram": whole(),
    "decontaminate.common_ngram_problems": whole(0), "decontaminate.near_duplicates": number(0, 1)}
_SFT_KNOBS = {
    "num_nodes": whole(1, 64), "samples": whole(), "mean_sample_tokens": POSITIVE, "template": TEXT,
    "cutoff_len": whole(16), "per_device_train_batch_size": whole(), "gradient_accumulation_steps": whole(),
    "learning_rate": number(0, 1, lo_open=True), "num_train_epochs": POSITIVE,
    "lr_scheduler_type": one_of("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                                "polynomial", "inverse_sqrt"),
    "warmup_ratio": number(0, 1, hi_open=True), "bf16": BOOL, "zero_stage": one_of(0, 3), "cpu_offload": BOOL,
    "packing": BOOL, "liger_kernel": BOOL, "gradient_checkpointing": BOOL, "save_steps": whole(),
    "published_hours": OPTIONAL_POSITIVE, "published_usd": OPTIONAL_POSITIVE, "method": one_of(*SFT_METHODS),
    "pref_loss": one_of(*sorted({x for v in PREF_LOSSES.values() for x in v})), "pref_beta": POSITIVE,
    "simpo_gamma": NON_NEGATIVE}
_EVAL_KNOBS = {
    "seed": whole(0), "batch_invariant": BOOL,
    "benchmarks.*.name": TEXT, "benchmarks.*.dataset": TEXT, "benchmarks.*.split": TEXT,
    "benchmarks.*.subset": TEXT, "benchmarks.*.version": TEXT, "benchmarks.*.domain": one_of(*DOMAINS),
    "benchmarks.*.problems": whole(), "benchmarks.*.temperature": number(0, 2), "benchmarks.*.n": whole(),
    "benchmarks.*.published": number(0, 100), **{f"benchmarks.*.{k}": c for k, c in LAYOUT.items()}}


STAGES: tuple[Stage, ...] = (
    Stage("generate", "generate", "generate", GPU, "managed", "generate", (),
          "teacher traces (vLLM on GPU, transformers on CPU)",
          partial(estimates.estimate_generate, stage="generate"), estimates.traces_written, "problems",
          options="vllm", model="teacher", work="vLLM decode", measures="decode", api_estimate=_generate_api,
          handoff=handoff.GENERATE, knobs=_GENERATE_KNOBS, defaults={"num_nodes": 1, "batch": False},
          fit=(("tensor_parallel", 4), ("tensor_parallel", 8), ("accelerator", "H200:8"),
               [("accelerator", "H200:8"), ("tensor_parallel", 4)],
               [("accelerator", "H200:8"), ("tensor_parallel", 8)])),
    Stage("filter", "filter", "filter", CPU, "cluster", "filter", ("generate",),
          "rejection sampling: grade traces (math-verify, sandboxed code, multiple choice)",
          estimates.estimate_filter, estimates.graded_written, "records", options="where", may_run_here=True,
          handoff=handoff.FILTER, knobs=_FILTER_KNOBS, defaults={"grade_after_rewrite": []}),
    Stage("rewrite", "rewrite", None, CONTROLLER, None, "rewrite", ("filter",),
          "reformat kept traces through an OpenAI-compatible API (Batch by default)", _rewrite,
          estimates.rewritten_written, "requests", options="api-batch", knobs=_REWRITE_KNOBS,
          defaults={"batch": False, "recheck": False},
          secrets=("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")),   # its openai client
    Stage("convert", "convert", None, CONTROLLER, None, "convert", ("rewrite",),
          "kept traces -> ShareGPT + dataset_info.json for LLaMA-Factory", _convert, estimates.records_written,
          None, handoff=handoff.CONVERT, knobs=_CONVERT_KNOBS),
    Stage("sft", "sft", "sft", GPU, "managed", "sft", ("convert",),
          "render the LLaMA-Factory config and train", estimates.estimate_sft, estimates.model_written, "steps",
          options="training", model="student", work="training", measures="mfu", scratch=("checkpoints/checkpoint-",),
          pulls="logs", knobs=_SFT_KNOBS, defaults={"num_nodes": 1, "method": "sft", "liger_kernel": False},
          fit=(("liger_kernel", True), ("gradient_checkpointing", True), ("accelerator", "H200:8"), ("num_nodes", 2),
               ("num_nodes", 4), ("cpu_offload", True))),
    Stage("eval", "evaluate", "eval", GPU, "managed", "eval", ("sft",),
          "benchmarks vs the published table",
          partial(estimates.estimate_generate, stage="eval"), estimates.answers_written, "samples",
          options="vllm", model="student", work="vLLM decode", measures="decode", knobs=_EVAL_KNOBS,
          fit=(("tensor_parallel", 4), ("tensor_parallel", 8), ("accelerator", "H200:8"),
               [("accelerator", "H200:8"), ("tensor_parallel", 8)])),
)
NAMES = tuple(s.name for s in STAGES)
GPU_STAGES = tuple(s.name for s in STAGES if s.where == GPU)
_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    if name not in _BY_NAME:
        raise BadInput(f"unknown stage {name!r}: expected one of {', '.join(NAMES)}")
    return _BY_NAME[name]


def later(name: str) -> tuple[str, ...]:
    """The stages after `name`, in pipeline order."""
    return NAMES[NAMES.index(name) + 1:]
