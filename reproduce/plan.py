"""Recipe -> a priced plan, one row per stage, at the cheapest feasible placement.

The arithmetic lives in costmodel.estimates; this module picks placements, adds up, and when the plan
does not fit the budget, tries the recipe's knobs one at a time to say which would make it fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from reproduce.errors import UserError
from reproduce.executors.base import STAGES

BACKENDS = ("auto", "sky", "local", "sim")


@dataclass
class Plan:
    recipe: str
    scale: str
    backend: str
    budget: float | None
    stages: list = field(default_factory=list)        # costmodel.estimates.StageEstimate, in STAGES order
    suggestions: list = field(default_factory=list)   # knobs that would make an over-budget plan fit

    @property
    def total_usd(self) -> float:
        return sum(s.total_usd for s in self.stages)

    @property
    def compute_usd(self) -> float:
        return sum(s.compute_usd for s in self.stages)

    @property
    def api_usd(self) -> float:
        return sum(s.api_usd for s in self.stages)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def on_demand_usd(self) -> float:
        """The same plan with every GPU stage on the cheapest on-demand capacity instead of spot."""
        return sum(s.total_usd if s.on_demand_usd is None else s.on_demand_usd + s.api_usd for s in self.stages)

    @property
    def headroom(self) -> float | None:
        return None if self.budget is None else self.budget - self.total_usd

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total_usd <= self.budget + 1e-9

    def stage(self, name: str):
        return next(s for s in self.stages if s.stage == name)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "scale": self.scale, "backend": self.backend, "budget": self.budget,
                "stages": [s.to_dict() for s in self.stages],
                "totals": {"gpu_hours": self.gpu_hours, "compute_usd": self.compute_usd, "api_usd": self.api_usd,
                           "total_usd": self.total_usd, "on_demand_total_usd": self.on_demand_usd,
                           "headroom_usd": self.headroom, "fits": self.fits},
                "suggestions": self.suggestions}


def check_budget(budget) -> float | None:
    if budget is None:
        return None
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise UserError(f"--budget {budget!r}: expected a positive number of US dollars, e.g. 450") from None
    if not value > 0 or value != value or value == float("inf"):
        raise UserError(f"--budget {budget!r}: expected a positive number of US dollars, e.g. 450")
    return value


def priced_remotely(recipe: dict, backend: str) -> bool:
    """Smoke scale runs on this machine; full scale is priced at cloud prices (sky and sim alike)."""
    if backend == "local":
        return False
    return not (backend == "auto" and recipe["scale"] == "smoke")


def build_plan(recipe: dict, budget=None, backend: str = "auto", calibration: dict | None = None,
               suggest: bool = True) -> Plan:
    from costmodel import api_prices, estimates
    from costmodel.errors import BadInput

    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    budget = check_budget(budget)
    if calibration is None:
        calibration = _calibration()
    remote = priced_remotely(recipe, backend)
    try:
        offer = {stage: (_placement(recipe[stage]) if remote else None) for stage in ("generate", "sft", "eval")}
        od = {stage: (_on_demand(recipe[stage]) if remote else None) for stage in ("generate", "sft", "eval")}
        rows = {
            "generate": estimates.estimate_generate(recipe, offer["generate"], calibration,
                                                    on_demand_offer=od["generate"]),
            "filter": estimates.estimate_filter(recipe),
            "rewrite": estimates.estimate_rewrite(recipe, api_prices.token_price(recipe["rewrite"]["model"])),
            "convert": estimates.StageEstimate("convert", "none", arithmetic="on the controller: $0.00",
                                               price_source="controller ($0)"),
            "sft": estimates.estimate_sft(recipe, offer["sft"], calibration, on_demand_offer=od["sft"]),
            "eval": estimates.estimate_generate(recipe, offer["eval"], calibration, stage="eval",
                                                on_demand_offer=od["eval"]),
        }
    except BadInput as e:
        raise UserError(str(e)) from None
    if not remote and recipe["scale"] == "smoke":  # smoke runs every stage on this machine's CPU
        for row in rows.values():
            if row.kind == "gpu":
                row.kind, row.gpus, row.gpu_hours, row.cpu_hours = "cpu", 0, 0.0, row.hours
                row.arithmetic = "this machine's CPU at $0 (tiny model; GPU throughput figures do not apply)"
                row.assumptions = []
    plan = Plan(recipe["name"], recipe["scale"], backend, budget, [rows[s] for s in STAGES])
    if suggest and not plan.fits:
        plan.suggestions = suggestions(recipe, plan, backend, calibration)
    return plan


def _placement(cfg: dict):
    from costmodel import prices

    offer = prices.cheapest(cfg["accelerator"], spot=cfg.get("use_spot", True))
    if offer is None and cfg.get("use_spot", True):  # no spot market anywhere: on-demand
        offer = prices.cheapest(cfg["accelerator"], spot=False)
    if offer is None:
        raise UserError(f"no price for {cfg['accelerator']} on any cloud: try `reproduce prices {cfg['accelerator']}`")
    return offer


def _on_demand(cfg: dict):
    from costmodel import prices

    return prices.cheapest(cfg["accelerator"], spot=False)


def _calibration() -> dict:
    try:
        from costmodel import calibration
    except ImportError:
        return {}
    try:
        return calibration.load()
    except Exception:  # a missing or unreadable ledger must never stop a plan
        return {}


# Knobs tried one at a time when a plan is over budget: (dotted key, value, why it could help).
KNOBS = [
    ("generate.use_spot", True, "spot capacity for generation"),
    ("sft.use_spot", True, "spot capacity for SFT (managed job recovers from preemption)"),
    ("eval.use_spot", True, "spot capacity for evaluation"),
    ("rewrite.batch", True, "OpenAI Batch API, half price"),
    ("sft.cpu_offload", False, "ZeRO-3 without CPU offload (needs the memory: see `plan --optimize`)"),
    ("sft.packing", True, "sequence packing"),
    ("sft.liger_kernel", True, "Liger kernels"),
    ("sft.accelerator", "H200:8", "H200:8 (more memory, faster decode)"),
    ("sft.num_train_epochs", 2.0, "2 epochs instead of 3 (changes the recipe)"),
]


def suggestions(recipe: dict, plan: Plan, backend: str, calibration: dict) -> list[dict]:
    from reproduce.recipe import set_key
    import copy

    out = []
    for key, value, why in KNOBS:
        variant = copy.deepcopy(recipe)
        section, _, leaf = key.partition(".")
        if variant.get(section, {}).get(leaf) == value:
            continue
        try:
            set_key(variant, key, value)
            alt = build_plan(variant, plan.budget, backend, calibration, suggest=False)
        except Exception:
            continue
        saves = plan.total_usd - alt.total_usd
        if saves > 0.005:
            shown = str(value).lower() if isinstance(value, bool) else value
            out.append({"set": f"{key}={shown}", "why": why, "saves_usd": saves, "total_usd": alt.total_usd,
                        "fits": alt.fits})
    return sorted(out, key=lambda s: -s["saves_usd"])
