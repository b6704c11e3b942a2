"""The stage table: every per-stage fact in one place, one typed row per stage, in pipeline order.

Plan, executors, dry run, CLI and optimizer ask this table; nothing else lists stages. Adding a stage is
its program (reproduce/stages/<program>.py), its task YAML (sky_tasks/<task>.yaml, unless it runs on the
controller), one row here and one estimator in costmodel.estimates.

    from reproduce.stagetable import STAGES, stage
    for s in STAGES: print(s.name, s.where, s.mode)
    stage("sft").needs          # ('convert',): the stages whose outputs it reads
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from costmodel import estimates, memory

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
    model: str | None = None     # gpu stages: the recipe's models.<model> it loads (memory, throughput)
    work: str | None = None      # what bounds its speed: a finished stage's measured speed re-plans the
                                 #   remaining stages of the same work (reproduce.replan)
    api_estimate: Callable | None = None  # (recipe) -> StageEstimate when the recipe serves it by an API
    scratch: tuple = ()          # what it writes under <stage>/ only to resume itself (key prefixes): deleted
                                 #   from the bucket once it succeeds, unless <section>.keep_checkpoints

    def keeps_scratch(self, recipe: dict) -> bool:
        return bool((recipe.get(self.section) or {}).get("keep_checkpoints"))

    def runs_on(self, recipe: dict) -> str:
        """Where this stage runs for this recipe: its row's `where`, except a stage with an API form (generate)
        whose recipe serves it by an API (`generate.backend: api`): then the controller, priced at token prices."""
        from reproduce.recipe_schema import api_backend

        if self.api_estimate is not None and api_backend(recipe):
            return CONTROLLER
        return self.where

    def estimator(self, recipe: dict) -> Callable:
        """The estimator this recipe's form of the stage takes (see `estimate` and `api_estimate`)."""
        return self.api_estimate if self.runs_on(recipe) != self.where else self.estimate

    def on_controller(self, recipe: dict) -> bool:
        """Runs beside the CLI, never on a cluster: controller stages, an API teacher, and a filter with
        `where: local`."""
        if self.runs_on(recipe) == CONTROLLER:
            return True
        return self.name == "filter" and (recipe.get("filter") or {}).get("where", "local") == "local"

    def memory(self, recipe: dict, accelerator: str | None = None) -> dict:
        """{per_gpu_gib, usable_gib, fits, arithmetic} of this GPU stage's configuration on `accelerator`
        (default: the recipe's); {} for stages that use no GPU."""
        if self.runs_on(recipe) != GPU:
            return {}
        cfg = recipe[self.section]
        accel = accelerator or cfg["accelerator"]
        if self.name == "sft":
            ok, parts, arithmetic = memory.fits(memory.sft_config(recipe, accelerator=accel))
            need, usable = parts["total_gib"], parts["usable_gib"]
            if not parts["fits_cpu"]:
                arithmetic += "\n  (node CPU RAM does not hold the offloaded optimizer)"
        else:
            gen = recipe["generate"]
            response = gen["mean_response_tokens"] if self.name == "generate" else cfg["mean_response_tokens"]
            ok, parts, arithmetic = memory.vllm_fits(
                recipe["models"][self.model], estimates.accelerator(accel)[0], int(cfg["tensor_parallel"]),
                gen["mean_prompt_tokens"] + cfg["max_tokens"], gen["mean_prompt_tokens"] + response / 2)
            need, usable = parts.get("need_gib", float("inf")), parts.get("usable_gib", 0.0)
        return {"per_gpu_gib": round(need, 1), "usable_gib": round(usable, 1), "fits": bool(ok),
                "accelerator": accel, "arithmetic": arithmetic}


def _rewrite(recipe: dict):
    from costmodel import api_prices

    return estimates.estimate_rewrite(recipe, api_prices.token_price(recipe["rewrite"]["model"]))


def _generate_api(recipe: dict):
    from costmodel import api_prices

    return estimates.estimate_generate_api(recipe, api_prices.token_price(recipe["generate"]["model"]))


def _convert(recipe: dict):
    return estimates.StageEstimate("convert", "none", arithmetic="on the controller: $0.00",
                                   price_source="controller ($0)")


STAGES: tuple[Stage, ...] = (
    Stage("generate", "generate", "generate", GPU, "managed", "generate", (),
          "teacher traces (vLLM on GPU, transformers on CPU)",
          partial(estimates.estimate_generate, stage="generate"), model="teacher", work="vLLM decode",
          api_estimate=_generate_api),
    Stage("filter", "filter", "filter", CPU, "cluster", "filter", ("generate",),
          "rejection sampling: grade traces (math-verify, sandboxed code, multiple choice)",
          estimates.estimate_filter),
    Stage("rewrite", "rewrite", None, CONTROLLER, None, "rewrite", ("filter",),
          "reformat kept traces through an OpenAI-compatible API (Batch by default)", _rewrite),
    Stage("convert", "convert", None, CONTROLLER, None, "convert", ("rewrite",),
          "kept traces -> ShareGPT + dataset_info.json for LLaMA-Factory", _convert),
    Stage("sft", "sft", "sft", GPU, "managed", "sft", ("convert",),
          "render the LLaMA-Factory config and train", estimates.estimate_sft, model="student", work="training",
          scratch=("checkpoints/checkpoint-",)),
    Stage("eval", "evaluate", "eval", GPU, "managed", "eval", ("sft",),
          "benchmarks vs the published table",
          partial(estimates.estimate_generate, stage="eval"), model="student", work="vLLM decode"),
)
NAMES = tuple(s.name for s in STAGES)
GPU_STAGES = tuple(s.name for s in STAGES if s.where == GPU)
_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    from reproduce.errors import UserError

    if name not in _BY_NAME:
        raise UserError(f"unknown stage {name!r}: expected one of {', '.join(NAMES)}")
    return _BY_NAME[name]


def later(name: str) -> tuple[str, ...]:
    """The stages after `name`, in pipeline order."""
    return NAMES[NAMES.index(name) + 1:]


def by_program(name: str) -> str:
    """A stage's name given it or its program's (`evaluate` -> `eval`); UserError on neither."""
    for s in STAGES:
        if name in (s.name, s.program):
            return s.name
    return stage(name).name
