"""The node and the controller. Node: the task's disk holds the weights (and sft's checkpoints, which
MOUNT_CACHED stages on local disk before upload); the priced instance's host RAM holds ZeRO-3's offloaded
optimizer (its catalog figure where the plan row carries one, else the memory model's assumption, labelled).
Controller: what the plan runs here can run here (a local filter needs bubblewrap and user namespaces, which a
macOS laptop lacks: then the `filter.where` that works and its cost), and the disk holds the artifacts.
"""
from __future__ import annotations

import shutil

from reproduce.preflight import failed, passed, skipped

GROUP_NODE, GROUP_CONTROLLER = "node", "controller"
GROUP = "node"          # this module's checks are in two groups; run() files an unexpected error under this one
GB = 1e9


def checks(ctx) -> list:
    return node_checks(ctx) + controller_checks(ctx)


# ---- the node ------------------------------------------------------------------------------------------------

def node_checks(ctx) -> list:
    from reproduce import stagetable

    gpu = [s for s in ctx.stages if ctx.on_cloud(s) and stagetable.stage(s).runs_on(ctx.recipe) == stagetable.GPU]
    if not gpu:
        return [skipped(GROUP_NODE, "no GPU node in this plan" + (f" (--backend {ctx.backend})"
                                                                    if ctx.backend != "sky" else ""))]
    out = [disk(ctx, s) for s in gpu]
    if any(stagetable.stage(s).work == "training" for s in gpu):
        out.append(host_ram(ctx))
    return out


def disk(ctx, stage: str):
    from costmodel import models, storage
    from reproduce import stagetable, tasks

    s = stagetable.stage(stage)
    res = tasks.load_task(s.task).get("resources") or {}
    size = res.get("disk_size")
    name = f"{GROUP_NODE}/disk-{stage}"
    if not size:
        return skipped(name, f"sky_tasks/{s.task}.yaml sets no disk_size: SkyPilot's default (256 GB)")
    shape = models.resolve(ctx.recipe["models"][s.model])
    weights = shape["params_b"] * shape.get("weight_bytes", 2)       # GB: 1e9 params x bytes each
    parts = [f"weights {weights:,.0f} GB"]
    need = weights
    if s.scratch:   # it checkpoints to resume itself
        ckpt = storage.checkpoint_bytes(ctx.recipe) / GB
        need += ckpt + weights                                          # checkpoints staged + the final model
        parts += [f"checkpoints {ckpt:,.0f} GB", f"final model {weights:,.0f} GB"]
    line = f"{' + '.join(parts)} = {need:,.0f} GB"
    if need > float(size):
        return failed(name, f"{line}, over the task's disk_size {size} GB",
                      f"raise resources.disk_size in sky_tasks/{s.task}.yaml to {int(need * 1.2):,}")
    return passed(name, f"{line} within disk_size {size} GB")


def host_ram(ctx):
    """ZeRO-3 offload's host RAM per node (costmodel.memory, DeepSpeed's own estimate) against the priced
    instance's RAM: the plan row's figure where it has one, else the memory model's assumed 1,000 GiB."""
    from costmodel import memory

    name = f"{GROUP_NODE}/host-ram"
    row = ctx.row("sft")
    sft = ctx.recipe.get("sft") or {}
    if not sft.get("cpu_offload", True) or int(sft.get("zero_stage", 3) or 0) != 3:
        return skipped(name, "no CPU offload (sft.cpu_offload false or no ZeRO-3): host RAM is not the limit")
    ram = _row_ram(row)
    changes = {"accelerator": row.accelerator} if getattr(row, "accelerator", None) else {}
    try:
        config = memory.sft_config(ctx.recipe, **changes)
        if ram is not None and "node_ram_gib" in config:
            config["node_ram_gib"] = ram
        _, parts, _ = memory.fits(config)
    except Exception as e:   # noqa: BLE001 - a model without figures: the plan refused it already
        return skipped(name, f"no memory figures: {e}")
    need = parts.get("node_cpu_ram_peak_gib") or parts.get("node_cpu_ram_gib")
    if need is None:
        return skipped(name, "the memory model gives no host RAM figure for this configuration")
    have = ram if ram is not None else parts.get("node_ram_gib") or memory.NODE_RAM / memory.GIB
    where = (f"{getattr(row, 'instance_type', '?')}'s {have:,.0f} GiB (its catalog row)" if ram is not None
             else f"{have:,.0f} GiB ASSUMED (the plan row carries no host RAM figure for "
                  f"{getattr(row, 'instance_type', None) or 'the instance'})")
    if need > have:
        return failed(name, f"ZeRO-3 offload needs {need:,.0f} GiB of host RAM per node, over {where}",
                      "--set sft.num_nodes=2 (halves it per node), or an instance with more RAM")
    return passed(name, f"ZeRO-3 offload needs {need:,.0f} GiB of host RAM per node, within {where}")


def _row_ram(row) -> float | None:
    """The priced instance's host RAM, as the plan row carries it (issue 22: details["node"], from the catalog row)."""
    node = (getattr(row, "details", None) or {}).get("node") or {}
    value = node.get("host_ram_gib")
    return float(value) if value else None


# ---- the controller ------------------------------------------------------------------------------------------

def controller_checks(ctx) -> list:
    return [sandbox(ctx), artifacts_disk(ctx)]


def sandbox(ctx):
    from reproduce import stagetable

    name = f"{GROUP_CONTROLLER}/sandbox"
    if "filter" not in ctx.stages or not stagetable.stage("filter").on_controller(ctx.recipe):
        return skipped(name, "no filter on this machine (filter.where is not local, or no filter in the plan)")
    from reproduce.stages.lib import sandbox as sb

    try:
        mode = sb.require()
    except sb.Unavailable as e:
        return failed(name, f"the local filter cannot run model-written code here: {e}",
                      f"install bubblewrap, or --set filter.where=cpu-node ({_cpu_node_cost(ctx)})")
    if mode == "unsafe":
        return passed(name, f"{sb.UNSAFE_ENV}=1: model-written code runs with rlimits only, UNISOLATED (your choice)")
    return passed(name, "bubblewrap runs programs in fresh user, mount and PID namespaces here")


def _cpu_node_cost(ctx) -> str:
    import copy

    from costmodel import estimates

    variant = copy.deepcopy(ctx.recipe)
    variant["filter"]["where"] = "cpu-node"
    try:
        est = estimates.estimate_filter(variant)
        return f"~${est.total_usd:,.2f}: {est.arithmetic}"
    except Exception:   # noqa: BLE001 - a recipe without cpu-node figures: name the knob, not a price
        return "priced by `reproduce plan --set filter.where=cpu-node`"


def artifacts_disk(ctx):
    from costmodel.ledger import home
    from reproduce import stagetable

    name = f"{GROUP_CONTROLLER}/disk"
    storage = ctx.plan.storage or {}
    here = [r for r in storage.get("stages") or [] if r.get("stage") in ctx.stages]
    need = sum(r.get("gb_pulled") or 0.0 for r in here) + sum(
        r.get("gb_written") or 0.0 for r in here if stagetable.stage(r["stage"]).where == stagetable.CONTROLLER)
    folder = home()
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), folder.anchor)
    free = shutil.disk_usage(probe).free / GB
    if need > free:
        return failed(name, f"the run keeps ~{need:,.1f} GB of artifacts in {folder}; {free:,.1f} GB free there",
                      "free disk space, or set REPRODUCE_HOME to a larger disk")
    return passed(name, f"~{need:,.1f} GB of artifacts here; {free:,.1f} GB free in {probe}")
