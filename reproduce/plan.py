"""Recipe -> a priced plan, one row per stage, at the cheapest feasible placement.

The arithmetic lives in costmodel.estimates; this module picks placements, adds up, and when the plan
does not fit the budget, tries the recipe's knobs one at a time to say which would make it fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from reproduce import stagetable
from reproduce.errors import UserError

BACKENDS = ("auto", "sky", "local", "sim")


@dataclass
class Plan:
    recipe: str
    scale: str
    backend: str
    budget: float | None
    stages: list = field(default_factory=list)        # costmodel.estimates.StageEstimate, in stage-table order
    suggestions: list = field(default_factory=list)   # knobs that would make an over-budget plan fit
    spent_usd: float = 0.0                             # already spent by the run (a resumed run's finished stages)
    storage: dict = field(default_factory=dict)       # the run's bucket: storage + egress (costmodel.storage)

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
    def storage_usd(self) -> float:
        return sum(s.storage_usd for s in self.stages)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def on_demand_usd(self) -> float:
        """The same plan with every GPU stage on the cheapest on-demand capacity instead of spot."""
        return sum(s.total_usd if s.on_demand_usd is None else s.on_demand_usd + s.api_usd + s.storage_usd
                   for s in self.stages)

    @property
    def headroom(self) -> float | None:
        return None if self.budget is None else self.budget - self.spent_usd - self.total_usd

    @property
    def fits(self) -> bool:
        return self.budget is None or self.spent_usd + self.total_usd <= self.budget + 1e-9

    def stage(self, name: str):
        return next(s for s in self.stages if s.stage == name)

    def only(self, names) -> "Plan":
        """The same plan restricted to `names` (a resumed run's unfinished stages, `reproduce stage`)."""
        return Plan(self.recipe, self.scale, self.backend, self.budget, [s for s in self.stages if s.stage in names],
                    self.suggestions, self.spent_usd, self.storage)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "scale": self.scale, "backend": self.backend, "budget": self.budget,
                "stages": [s.to_dict() for s in self.stages],
                "totals": {"gpu_hours": self.gpu_hours, "compute_usd": self.compute_usd, "api_usd": self.api_usd,
                           "total_usd": self.total_usd, "on_demand_total_usd": self.on_demand_usd,
                           "spent_usd": self.spent_usd, "headroom_usd": self.headroom, "fits": self.fits,
                           "storage_usd": self.storage_usd},
                "storage": self.storage,
                "suggestions": self.suggestions}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


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
    """Every stage of the stage table priced at its cheapest feasible placement. A GPU stage whose
    configuration does not fit in memory is refused (UserError naming the knob that would fix it)."""
    from costmodel.errors import BadInput

    check_backend(backend)
    budget = check_budget(budget)
    if calibration is None:
        calibration = calibration_figures()
    remote = priced_remotely(recipe, backend)
    rows = []
    try:
        for s in stagetable.STAGES:
            rows.append(place_gpu_stage(s, recipe, calibration, remote) if s.runs_on(recipe) == stagetable.GPU
                        else s.estimator(recipe)(recipe))
    except BadInput as e:
        raise UserError(str(e)) from None
    if not remote and recipe["scale"] == "smoke":  # smoke runs every stage on this machine's CPU
        for row in rows:
            if row.kind == "gpu":
                row.kind, row.gpus, row.gpu_hours, row.cpu_hours = "cpu", 0, 0.0, row.hours
                row.arithmetic = "this machine's CPU at $0 (tiny model; GPU throughput figures do not apply)"
                row.assumptions, row.memory, row.fallbacks = [], {}, []
    plan = Plan(recipe["name"], recipe["scale"], backend, budget, rows)
    if remote:   # what each stage leaves in the run's bucket is paid for as long as it is kept: in the total
        from costmodel import storage

        plan.storage = storage.estimate(recipe, recipe["costs"].get("bucket_days"), str(recipe.get("bucket") or "s3"),
                                        hours={row.stage: row.hours for row in rows})
        kept = {r["stage"]: r for r in plan.storage["stages"]}
        for row in rows:
            if row.stage in kept:
                row.storage, row.storage_usd = kept[row.stage], kept[row.stage]["usd"]
                row.total_usd += row.storage_usd
    if suggest and not plan.fits:
        plan.suggestions = suggestions(recipe, plan, backend, calibration)
    return plan


def place_gpu_stage(s, recipe: dict, calibration: dict, remote: bool):
    """The cheapest (offer, market) for a GPU stage among the clouds that can run its task, the fallbacks
    it may take (each priced, only those that fit in memory), and its memory arithmetic."""
    from costmodel import clouds, estimates, prices

    cfg = recipe[s.section]
    mem = s.memory(recipe)
    if recipe["scale"] == "full" and not mem["fits"]:
        raise UserError(no_fit(s, recipe, mem))
    if not remote:
        est = s.estimate(recipe, None, calibration)
        est.memory = mem
        return est
    nodes = int(cfg.get("num_nodes", 1))
    pinned = cfg.get("use_spot", "auto")
    options = {}
    for spot in ((True, False) if pinned == "auto" else (bool(pinned),)):
        offer = _cheapest(cfg["accelerator"], spot, nodes)
        if offer is not None:
            options[spot] = offer
    if not options:
        market = {True: "spot ", False: "on-demand "}.get(pinned, "")
        raise UserError(f"{s.name}: no {market}price for {cfg['accelerator']}{_nodes(nodes)} on a cloud that can run "
                        f"its task (bucket mounts{', several nodes' if nodes > 1 else ''}): try "
                        f"`reproduce prices {cfg['accelerator']}`" + (f" or --set {s.section}.use_spot=auto"
                                                                       if pinned != "auto" else ""))
    priced = {spot: s.estimate(recipe, offer, calibration, spot=spot) for spot, offer in options.items()}
    best = min(priced.values(), key=lambda e: (e.total_usd, not e.spot))
    best.spot_usd = priced[True].total_usd if True in priced else None
    best.on_demand_usd = priced[False].total_usd if False in priced else None
    if False in options:
        od = options[False]
        best.details["on_demand_placement"] = f"{od.cloud} {od.region} ${od.on_demand:,.2f}/h"
    if pinned != "auto":
        best.details["market"] = f"{'spot' if best.spot else 'on-demand'}: pinned by {s.section}.use_spot"
    elif len(priced) == 2:
        other = priced[not best.spot]
        best.details["market"] = (f"{'spot' if best.spot else 'on-demand'} ${best.total_usd:,.2f} vs "
                                  f"{'spot' if other.spot else 'on-demand'} ${other.total_usd:,.2f} expected: "
                                  f"the cheaper wins")
    else:
        best.details["market"] = f"{'spot' if best.spot else 'on-demand'}: the only market offered"
    best.memory = mem
    best.fallbacks = fallbacks(s, recipe, calibration, best, nodes)
    _setup_note(s, recipe, best)
    best.details["clouds_unable"] = {c: why for c, why in clouds.able(prices.DEFAULT_CLOUDS, needs(nodes))[1].items()}
    return best


def _setup_note(s, recipe: dict, row) -> None:
    """What of the recipe's startup assumption is measured: the stage environment's build (its lock, uv, a cold
    cache: what a fresh node and every recovery pay)."""
    from costmodel import setup_time
    from reproduce import tasks

    env = ((tasks.load_task(s.task).get("envs") or {}).get("STAGE_EXTRAS")) if s.task else None
    found = setup_time.measured(env) if env else None
    if env:
        from reproduce import locks

        try:
            pins = ", ".join(f"{k} {v}" for k, v in locks.locked_versions(env).items())
            row.assumptions.append(f"environment: sky_tasks/locks/{env}.txt ({pins})")
        except Exception:   # noqa: BLE001 - a lock not written yet: the plan still prices
            pass
    if found:   # how it was measured is the same for every stage: the plan says it once (details env_build)
        row.assumptions.append(f"startup {recipe['costs']['startup_hours']:g} h per launch (costs.startup_hours, "
                               f"provisioning + weights, assumed) holds the {env} environment's measured "
                               f"{found[0]:.0f} s build ({found[1]}; how: below)")
        row.details["env_build"] = setup_time.method()


def needs(nodes: int, spot: bool = False) -> list[str]:
    """The SkyPilot features a GPU task needs: every one mounts the run's bucket (file_mounts)."""
    from costmodel import clouds

    return [clouds.STORAGE_MOUNTING] + ([clouds.MULTI_NODE] if nodes > 1 else []) + ([clouds.SPOT] if spot else [])


def _cheapest(accelerator: str, spot: bool, nodes: int):
    from costmodel import clouds, prices

    able, _ = clouds.able(prices.DEFAULT_CLOUDS, needs(nodes, spot))
    return prices.cheapest(accelerator, spot, able) if able else None


def fallbacks(s, recipe: dict, calibration: dict, best, nodes: int) -> list[dict]:
    """The recipe's fallback accelerators in its order, each priced in the chosen market where it is cheapest;
    one the memory model rejects is listed as dropped, never rendered."""
    import copy

    out = []
    for accel in recipe[s.section].get("fallbacks") or []:
        if accel == best.accelerator:
            continue
        mem = s.memory(recipe, accel)
        entry = {"accelerator": accel, "fits": mem["fits"], "per_gpu_gib": mem["per_gpu_gib"],
                 "usable_gib": mem["usable_gib"]}
        offer = _cheapest(accel, best.spot, nodes) if mem["fits"] else None
        if not mem["fits"]:
            entry["dropped"] = f"does not fit: {mem['per_gpu_gib']:.1f} > {mem['usable_gib']:.1f} GiB per GPU"
        elif offer is None:
            entry["dropped"] = f"no {'spot' if best.spot else 'on-demand'} price on a cloud that can run it"
        else:
            variant = copy.deepcopy(recipe)
            variant[s.section]["accelerator"] = accel
            est = s.estimate(variant, offer, calibration, spot=best.spot)
            entry.update(cloud=est.cloud, region=est.region, zone=est.zone, instance_type=est.instance_type,
                         spot=est.spot, price_per_hour=est.price_per_hour, max_hourly_cost=est.max_hourly_cost,
                         hours=est.hours, usd=est.total_usd, price_source=est.price_source,
                         price_date=est.price_date)
        out.append(entry)
    return out


def _nodes(n: int) -> str:
    return f" x {n} nodes" if n > 1 else ""


# Changes that lower memory per GPU, tried in this order to name the knob that would make a stage fit; a list is
# one change of several keys (a teacher too big for TP=8 on 80 GB needs the bigger GPU and TP=8 together).
FIT_KNOBS = {
    "sft": [("sft.liger_kernel", True), ("sft.gradient_checkpointing", True), ("sft.accelerator", "H200:8"),
            ("sft.num_nodes", 2), ("sft.num_nodes", 4), ("sft.cpu_offload", True)],
    "generate": [("generate.tensor_parallel", 4), ("generate.tensor_parallel", 8), ("generate.accelerator", "H200:8"),
                 [("generate.accelerator", "H200:8"), ("generate.tensor_parallel", 4)],
                 [("generate.accelerator", "H200:8"), ("generate.tensor_parallel", 8)]],
    "eval": [("eval.tensor_parallel", 4), ("eval.tensor_parallel", 8), ("eval.accelerator", "H200:8"),
             [("eval.accelerator", "H200:8"), ("eval.tensor_parallel", 8)]],
}
# When nothing fits: what is left. vLLM runs whole replicas inside one node here (generate.num_nodes shards the
# problems across nodes, it does not split a model over them).
API_HINT = "--set generate.backend=api --set generate.model=deepseek-reasoner"
NO_FIT_ADVICE = {
    "generate": "no node of up to 8 GPUs holds this teacher at any tensor parallel here (num_nodes shards the "
                f"problems, it does not split the model): serve it by an API, e.g. {API_HINT}",
}


def no_fit(s, recipe: dict, mem: dict) -> str:
    """One line: the stage, GiB needed vs usable, and the first knob (or pair of knobs) that would make it fit."""
    import copy

    from costmodel import estimates

    line = (f"stage {s.name} does not fit in memory: needs {mem['per_gpu_gib']:.1f} GiB per GPU, "
            f"{mem['accelerator']} has {mem['usable_gib']:.1f} GiB usable")
    for knob in FIT_KNOBS.get(s.name, []):
        changes = knob if isinstance(knob, list) else [knob]
        variant = copy.deepcopy(recipe)
        if all(variant[k.partition(".")[0]].get(k.partition(".")[2]) == v for k, v in changes):
            continue
        sets = []
        for key, value in changes:
            section, _, leaf = key.partition(".")
            variant[section][leaf] = value
            sets.append(f"--set {key}={str(value).lower() if isinstance(value, bool) else value}")
        cfg = variant[s.section]
        if any(k.endswith(".tensor_parallel") for k, _ in changes):   # keep every GPU busy: TP x DP = GPUs
            gpus = estimates.accelerator(cfg["accelerator"])[1]
            if gpus % cfg["tensor_parallel"]:
                continue
            cfg["data_parallel"] = gpus // cfg["tensor_parallel"]
            sets.append(f"--set {s.section}.data_parallel={cfg['data_parallel']}")
        try:
            alt = s.memory(variant)
        except Exception:   # noqa: BLE001 - a knob this model has no figures for is no advice
            continue
        if alt["fits"]:
            api = (f", or serve the teacher by an API ({API_HINT})"
                   if s.name == "generate" and cfg.get("tensor_parallel") == 8 else "")
            return line + f"; {' '.join(sets)} would fit ({alt['per_gpu_gib']:.1f} GiB){api}"
    return line + "; " + NO_FIT_ADVICE.get(s.name, "no single knob fits (see `reproduce plan --optimize`)")


def calibration_figures() -> dict:
    try:
        from costmodel import calibration
    except ImportError:
        return {}
    try:
        return calibration.load()
    except Exception:  # a missing or unreadable ledger must never stop a plan
        return {}


# Knobs tried one at a time when a plan is over budget: (dotted key, value, why it could help). A knob whose
# plan is refused (it does not fit in memory) is never offered.
KNOBS = [
    ("rewrite.batch", True, "OpenAI Batch API, half price"),
    ("sft.cpu_offload", False, "ZeRO-3 without CPU offload (needs the memory: see `plan --optimize`)"),
    ("sft.packing", True, "sequence packing"),
    ("sft.liger_kernel", True, "Liger kernels"),
    ("sft.accelerator", "H200:8", "H200:8 (more memory, faster decode)"),
    ("sft.num_train_epochs", 2.0, "2 epochs instead of 3 (changes the recipe)"),
    ("costs.bucket_days", 7, "keep the run's bucket folder 7 days instead of 30 (checkpoints are most of it)"),
]


def suggestions(recipe: dict, plan: Plan, backend: str, calibration: dict) -> list[dict]:
    """Single knobs, then shipped variants of this recipe, that lower the cost; each one priced by a full
    plan, so one that does not fit in memory is never offered."""
    import copy

    from reproduce import recipe as recipes
    from reproduce.recipe import set_key

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
        alt.spent_usd = plan.spent_usd
        saves = plan.total_usd - alt.total_usd
        if saves > 0.005:
            shown = str(value).lower() if isinstance(value, bool) else value
            out.append({"set": f"{key}={shown}", "why": why, "saves_usd": saves, "total_usd": alt.total_usd,
                        "fits": alt.fits})
    for name in recipes.variants_of(recipe["name"]):
        try:
            alt = build_plan(recipes.load(name, scale=recipe["scale"]), plan.budget, backend, calibration,
                             suggest=False)
        except Exception:
            continue
        alt.spent_usd = plan.spent_usd
        saves = plan.total_usd - alt.total_usd
        if saves > 0.005:
            out.append({"recipe": name, "why": "a shipped variant of this recipe", "saves_usd": saves,
                        "total_usd": alt.total_usd, "fits": alt.fits})
    return sorted(out, key=lambda s: -s["saves_usd"])
