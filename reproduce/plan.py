"""Recipe -> a priced plan, one row per stage, at the cheapest feasible placement.

The arithmetic lives in costmodel.estimates; this module picks placements, adds up, and when the plan
does not fit the budget, tries the recipe's knobs one at a time to say which would make it fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from reproduce import stagetable
from reproduce.errors import OverBudget, UserError

BACKENDS = ("auto", "sky", "local", "sim")


class CannotPlace(OverBudget):
    """The infra the plan may use cannot run a stage (not enabled, over quota, no capacity of that GPU). Exit 3."""


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
    infra: dict = field(default_factory=dict)         # where it may run (costmodel.infra.Scope.to_dict), first_line

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
                    self.suggestions, self.spent_usd, self.storage, self.infra)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "scale": self.scale, "backend": self.backend, "budget": self.budget,
                "stages": [s.to_dict() for s in self.stages],
                "totals": {"gpu_hours": self.gpu_hours, "compute_usd": self.compute_usd, "api_usd": self.api_usd,
                           "total_usd": self.total_usd, "on_demand_total_usd": self.on_demand_usd,
                           "spent_usd": self.spent_usd, "headroom_usd": self.headroom, "fits": self.fits,
                           "storage_usd": self.storage_usd},
                "storage": self.storage, "infra": self.infra,
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
        where = placement_scope(recipe) if remote else None
        for s in stagetable.STAGES:
            rows.append(place_gpu_stage(s, recipe, calibration, remote, where) if s.runs_on(recipe) == stagetable.GPU
                        else s.estimator(recipe)(recipe))
    except BadInput as e:
        raise UserError(str(e)) from None
    if not remote and recipe["scale"] == "smoke":  # smoke runs every stage on this machine's CPU
        for row in rows:
            if row.kind == "gpu":
                row.kind, row.gpus, row.gpu_hours, row.cpu_hours = "cpu", 0, 0.0, row.hours
                rate = (f"x ${row.price_per_hour:,.2f}/h x {row.hours:,.4f} h = ${row.compute_usd:,.2f}"
                        if row.price_per_hour else "at $0")
                row.arithmetic = f"this machine's CPU {rate} (tiny model; GPU throughput figures do not apply)"
                row.assumptions, row.memory, row.fallbacks = [], {}, []
    plan = Plan(recipe["name"], recipe["scale"], backend, budget, rows)
    if where is not None:
        plan.infra = {**where.to_dict(), "first_line": where.first_line()}
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


_knowledge_cache: list = []


def placement_scope(recipe: dict):
    """Where this recipe's stages may run (costmodel.infra.Scope): SkyPilot's enabled infra (read once per process),
    narrowed by `placement.infra` (`--infra`) and `placement.exclude`."""
    from costmodel import infra, prices

    if not _knowledge_cache:
        _knowledge_cache.append(infra.enabled())
    placement = recipe.get("placement") or {}
    return infra.scope(_knowledge_cache[0], placement.get("infra"), placement.get("exclude"),
                       regions_of=prices.regions)


def infra_sets(infra) -> list[str]:
    """`--infra a --infra b,c` as the recipe override `placement.infra=[a, b, c]` (so a run's recipe keeps it)."""
    names = [x.strip() for item in (infra or []) for x in str(item).split(",") if x.strip()]
    return [f"placement.infra=[{', '.join(names)}]"] if names else []


def refuse_whatif(plan) -> None:
    """A plan priced without knowing what SkyPilot has enabled, over every cloud, is not launched (exit 2): it may
    place a stage where the user has no account. Naming the infra (--infra) or `sky check` makes it launchable."""
    if plan.infra.get("whatif") and not plan.infra.get("pinned"):
        raise UserError("the plan is a what-if (" + plan.infra.get("why_unknown", "enabled infra unknown")
                        + "): name where to launch with --infra (e.g. --infra aws), or run `sky check`")


def placement_problems(plan) -> list[str]:
    """Each planned GPU placement's launchability problems, one line each with its fix: not enabled in SkyPilot,
    over quota, quota unknown; for the preflight to check before the first launch. Empty: none."""
    out = []
    info = plan.infra or {}
    enabled = set(info.get("enabled") or [])
    for s in plan.stages:
        if s.kind != "gpu" or not s.cloud or s.cloud == "local":
            continue
        place = s.infra
        cloud = place.split("/")[0]
        if not info.get("known"):
            out.append(f"{s.stage}: {place} is not known to be enabled ({info.get('why_unknown', 'no SkyPilot state')})"
                       f": run `sky check {'kubernetes' if cloud == 'k8s' else cloud}`")
        elif cloud not in enabled and place not in enabled:
            out.append(f"{s.stage}: {place} is not enabled in SkyPilot: run `sky check "
                       f"{'kubernetes' if cloud == 'k8s' else cloud}`, or plan with --infra naming an enabled one")
        q = s.details.get("quota")
        if q and q.get("ok") is False:
            out.append(f"{s.stage}: {q['cloud']} {q['region']} quota {q['name']!r} ({q['code']}) is {q['limit']:g} "
                       f"{q['unit']}, needs {q['needs']:g}: raise it: {q['fix']}")
        elif q and q.get("ok") is None:
            out.append(f"{s.stage}: {q['cloud']} {q['region']} quota {q['name']!r} ({q['code']}) unknown "
                       f"({q['why_unknown']}); needs {q['needs']:g} {q['unit']}: check it at {q['fix']}")
    return out


def place_gpu_stage(s, recipe: dict, calibration: dict, remote: bool, where=None):
    """The cheapest (offer, market) for a GPU stage among the places that can run its task (enabled, within quota,
    the node's host RAM enough), the fallbacks it may take (each priced, only those that fit in memory), and its
    memory arithmetic."""
    from costmodel import estimates

    cfg = recipe[s.section]
    mem = s.memory(recipe)
    if recipe["scale"] == "full" and not mem["fits"]:
        raise UserError(no_fit(s, recipe, mem))
    if not remote:
        est = s.estimate(recipe, None, calibration)
        est.memory = mem
        return est
    nodes = int(cfg.get("num_nodes", 1))   # eval states none: one node
    pinned = cfg["use_spot"]
    where = where if where is not None else placement_scope(recipe)
    host_need = _host_ram_need(s, recipe)
    options, excluded, checked = {}, [], {}
    for spot in ((True, False) if pinned == "auto" else (bool(pinned),)):
        offer, why, quota = _choose(cfg["accelerator"], spot, nodes, where, recipe, host_need)
        excluded += [w for w in why if w not in excluded]
        if offer is not None:
            options[spot], checked[spot] = offer, quota
    if not options:
        market = {True: "spot ", False: "on-demand "}.get(pinned, "")
        if not where.places:
            raise CannotPlace(f"{s.name}: SkyPilot has no infra enabled ({where.knowledge.source}): run `sky check`, "
                              f"or declare an own cluster with --infra k8s/CONTEXT")
        reason = (f"{s.name}: no {market}price for {cfg['accelerator']}{_nodes(nodes)} on "
                  + (f"{where.describe()}" if (where.pinned or where.knowledge.known) else "a cloud")
                  + f" that can run its task (bucket mounts{', several nodes' if nodes > 1 else ''})")
        if excluded:
            reason += "; excluded: " + "; ".join(excluded[:3]) + (f"; and {len(excluded) - 3} more" if len(excluded) > 3
                                                                   else "")
        hint = (f": try `reproduce prices {cfg['accelerator']}`" + (f" or --set {s.section}.use_spot=auto"
                                                                    if pinned != "auto" else ""))
        if where.pinned or where.knowledge.known:   # the set the user can launch on cannot run it
            raise CannotPlace(reason + f"{hint}, or another --infra")
        raise UserError(reason + hint)
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
    chosen = options[best.spot]
    best.memory = _with_host(s, recipe, mem, chosen)
    best.details["node"] = node_resources(chosen, s.task)
    if excluded:
        best.details["excluded"] = excluded
    quota = checked.get(best.spot)
    if quota is not None:
        best.details["quota"] = quota.to_dict()
    best.fallbacks = fallbacks(s, recipe, calibration, best, nodes, where)
    _setup_note(s, recipe, best)
    best.details["clouds_unable"] = _unable(where, nodes)
    return best


def _unable(where, nodes: int) -> dict:
    from costmodel import clouds

    return {c: why for c, why in clouds.able(list(where.clouds) + sorted({p.cloud for p in where.own}),
                                             needs(nodes))[1].items()}


# sky/resources.py DEFAULT_DISK_SIZE_GB (SkyPilot 0.14.1): the boot disk of a task that sets no disk_size
SKY_DEFAULT_DISK_GB = 256


def node_resources(offer, task: str | None = None) -> dict:
    """The priced node's own figures for the preflight: instance, vcpus, host_ram_gib, local_disk_gb (the catalog's
    or the snapshot's; None: unknown), and disk_gib, the disk SkyPilot gives the task (its `disk_size`)."""
    from costmodel import prices

    disk = SKY_DEFAULT_DISK_GB
    if task:
        from reproduce import tasks

        disk = int(((tasks.load_task(task).get("resources") or {}).get("disk_size")) or SKY_DEFAULT_DISK_GB)
    return {**prices.node_resources(offer), "disk_gib": disk}


def _host_ram_need(s, recipe: dict) -> float | None:
    """GiB of host RAM one node needs (ZeRO offload), None when the stage keeps everything on the GPUs."""
    if s.work != "training" or not recipe[s.section].get("cpu_offload"):
        return None
    from costmodel import memory

    _, parts, _ = memory.fits(memory.sft_config(recipe))
    return parts["node_cpu_ram_peak_gib"] or None


def _with_host(s, recipe: dict, mem: dict, offer) -> dict:
    """The memory verdict with the priced node's own host RAM where the catalog gives it."""
    if not mem or s.work != "training" or not recipe[s.section].get("cpu_offload") \
            or not getattr(offer, "host_ram_gib", None):
        return mem
    from costmodel import memory

    ok, parts, arithmetic = memory.fits(memory.sft_config(recipe, node_ram_gib=offer.host_ram_gib))
    return {**mem, "host_ram_gib": offer.host_ram_gib, "host_ram_needed_gib": parts["node_cpu_ram_peak_gib"],
            "fits_host": parts["fits_cpu"], "arithmetic": arithmetic}


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


def _choose(accelerator: str, spot: bool, nodes: int, where, recipe: dict, host_need: float | None = None):
    """(the cheapest offer in that market that can launch, [one line per cheaper place excluded and why], its Quota
    or None). Places: the scope's catalog clouds able to run the task (SkyPilot's features) and regions, plus its own
    clusters at their declared rates. Excluded: a node whose host RAM is below `host_need` GiB, a known quota below
    the need (SkyPilot's answer known: quotas matter only where the user can launch)."""
    from costmodel import clouds, infra, prices, quotas

    able, _ = clouds.able(list(where.clouds), needs(nodes, spot))
    offers = [o for o in (prices.gpu_offers(accelerator, able) if able else [])
              if o.price(spot) is not None and where.allows(o.cloud, o.region)]
    own_able = [p for p in where.own if clouds.supports(p.cloud, clouds.SPOT) or not spot]
    if own_able:
        own, problems = infra.own_offers(accelerator, where, (recipe.get("placement") or {}).get("rates"))
        offers += [o for o in own if o.price(spot) is not None and clouds.able([o.cloud], needs(nodes, spot))[0]]
    else:
        problems = []
    offers.sort(key=lambda o: (o.price(spot), o.cloud, o.region, o.zone or ""))
    excluded = list(problems) if not offers else []
    for o in offers:
        if host_need and o.host_ram_gib and o.host_ram_gib < host_need:
            excluded.append(f"{o.cloud} {o.region} {o.instance_type}: {o.host_ram_gib:,.0f} GiB host RAM < "
                            f"{host_need:,.0f} GiB the offloaded optimizer needs")
            continue
        quota = quotas.quota_for(o, nodes, spot) if where.knowledge.known else None
        if quota is not None and quota.ok is False:
            excluded.append(quota.line())
            continue
        return o, excluded, quota
    return None, excluded, None


def _cheapest(accelerator: str, spot: bool, nodes: int, where=None, recipe: dict | None = None):
    """The offer `_choose` takes (for callers that only want the offer)."""
    recipe = recipe or {}
    return _choose(accelerator, spot, nodes, where if where is not None else placement_scope(recipe), recipe)[0]


def fallbacks(s, recipe: dict, calibration: dict, best, nodes: int, where=None) -> list[dict]:
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
        offer = (_choose(accel, best.spot, nodes, where if where is not None else placement_scope(recipe), recipe,
                         _host_ram_need(s, recipe))[0] if mem["fits"] else None)
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
def _fit_knobs(row) -> list:
    """A row's `fit` as dotted keys of its section: (key, value), or a list of them changed together."""
    def dotted(change):
        return [dotted(c) for c in change] if isinstance(change, list) else (f"{row.section}.{change[0]}", change[1])
    return [dotted(c) for c in row.fit]


FIT_KNOBS = {s.name: _fit_knobs(s) for s in stagetable.STAGES if s.fit}
# When nothing fits: what is left. vLLM runs whole replicas inside one node here (generate.num_nodes shards the
# problems across nodes, it does not split a model over them).
API_HINT = "--set generate.backend=api --set generate.model=deepseek-reasoner"
NO_FIT_API = ("no node of up to 8 GPUs holds this teacher at any tensor parallel here (num_nodes shards the "
              f"problems, it does not split the model): serve it by an API, e.g. {API_HINT}")


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
                   if s.api_estimate is not None and cfg.get("tensor_parallel") == 8 else "")
            return line + f"; {' '.join(sets)} would fit ({alt['per_gpu_gib']:.1f} GiB){api}"
    # a stage with an API form (the teacher) has one more way out
    return line + "; " + (NO_FIT_API if s.api_estimate is not None
                          else "no single knob fits (see `reproduce plan --optimize`)")


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
