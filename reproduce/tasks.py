"""Task YAMLs in sky_tasks/ -> a sky.Task (to launch) or redacted YAML text (for --dry-run).

    cfg = load_task("sft")                              # the YAML as a dict
    task = render("sft", {"RUN_ID": "r1"}, row, "full")   # env overrides, the plan row's placement, secrets
    print(render_yaml("sft", {"RUN_ID": "r1"}, row, "full"))

The plan row (costmodel.estimates.StageEstimate) decides where a GPU task runs; this module renders it and
decides nothing: first the planned accelerator, node count, market and infra with a `max_hourly_cost` cap,
then the plan's priced fallbacks (those that fit in memory), each pinned to where it was priced.

Secrets (HF_TOKEN, OPENAI_API_KEY, WANDB_API_KEY) come from this process's environment into SkyPilot's
`secrets:` and nowhere else: never into `envs:`, and never into rendered text (shown as <redacted>).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from reproduce.errors import UserError

TASKS_DIR = Path(__file__).resolve().parents[1] / "sky_tasks"
REPO_ROOT = TASKS_DIR.parent          # a checkout's root, or site-packages for a plain install
PACKAGES = ("reproduce", "costmodel", "sky_tasks")   # what a stage runs, whichever way it was installed
SECRET_NAMES = ("HF_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY")
REDACTED, UNSET = "<redacted>", "<not set>"


@functools.lru_cache(maxsize=1)
def workdir() -> Path:
    """What every task's `workdir: .` means: this checkout; for a plain `pip install .`, a copy of the three
    installed packages (a few MB) in the user cache, keyed by their content. Never the folder the CLI was
    started in: SkyPilot uploads the workdir, and a home folder holds anything. It is also the local stages'
    cwd, so `python -m` never puts the controller's site-packages before the stage environment's."""
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT
    files = sorted(p for name in PACKAGES for p in (REPO_ROOT / name).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.relative_to(REPO_ROOT)}\0".encode() + p.read_bytes() + b"\0")
    from reproduce.paths import user_cache

    dest = user_cache() / "workdir" / digest.hexdigest()[:12]
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest.parent))
        for p in files:
            (staging / p.relative_to(REPO_ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, staging / p.relative_to(REPO_ROOT))
        try:
            staging.rename(dest)           # atomic: a concurrent CLI made the same copy, or this one did
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def task_path(stage: str) -> Path:
    return TASKS_DIR / f"{stage}.yaml"


def load_task(stage: str) -> dict:
    path = task_path(stage)
    if not path.is_file():
        known = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
        raise UserError(f"no task YAML for stage {stage!r} ({path}); tasks: {', '.join(known) or 'none'}")
    with path.open() as f:
        return yaml.safe_load(f) or {}


def is_gpu_task(cfg: dict) -> bool:
    res = cfg.get("resources") or {}
    options = [res] + list(res.get("any_of") or []) + list(res.get("ordered") or [])
    return any(o.get("accelerators") for o in options)


def secret_values(cfg: dict | None = None, environ=None) -> dict:
    """The secrets a task declares (and the known names), with their values from the environment, if set."""
    environ = os.environ if environ is None else environ
    names = set(SECRET_NAMES) | set((cfg or {}).get("secrets") or {})
    return {n: environ[n] for n in sorted(names) if environ.get(n)}


def config(stage: str, envs: dict | None = None, row=None, scale: str = "full") -> dict:
    """The task dict SkyPilot gets: env overrides and the plan row's placement applied, secrets left as
    declared, labels naming the run and stage (provider billing groups by them)."""
    cfg = copy.deepcopy(load_task(stage))
    leaked = sorted(set(envs or {}) & (set(SECRET_NAMES) | set(cfg.get("secrets") or {})))
    if leaked:  # a key passed as an env would show in `sky status`, logs and the YAML
        raise UserError(f"{', '.join(leaked)} must come from the environment as a secret, not as a task env")
    cfg_envs = dict(cfg.get("envs") or {})
    if scale == "smoke":
        cfg_envs["STAGE_EXTRAS"] = "smoke"
    cfg_envs.update({k: "" if v is None else str(v) for k, v in (envs or {}).items()})
    cfg["envs"] = cfg_envs
    if cfg.get("workdir") in (".", "./"):
        cfg["workdir"] = str(workdir())   # `.` means the code, wherever the CLI was started from
    res = dict(cfg.get("resources") or {})
    if row is not None and getattr(row, "infra", None) and row.kind == "gpu":
        from reproduce.stagetable import stage as table_row

        res = place(res, row, table_row(stage).mode)
        cfg["num_nodes"] = int(row.nodes)
    res["labels"] = {**(res.get("labels") or {}), **labels(cfg_envs.get("RUN_ID") or "", stage)}
    cfg["resources"] = res
    return cfg


def labels(run_id: str, stage: str) -> dict:
    """SkyPilot `labels:` (AWS instance tags, GCP labels): what provider billing is grouped by."""
    from costmodel.billing_tags import TAG_RUN, TAG_STAGE, tag_value

    return {TAG_RUN: tag_value(run_id) or "none", TAG_STAGE: tag_value(stage)}


# Resource keys the plan row decides; whatever the YAML says for them is replaced.
PLACED = ("accelerators", "ordered", "any_of", "cloud", "region", "zone", "infra", "use_spot", "max_hourly_cost")


def place(res: dict, row, mode: str | None) -> dict:
    """Resources as priced: the planned accelerator on the planned infra and market, capped at
    `max_hourly_cost`, then the priced fallbacks in the recipe's order (`ordered`: SkyPilot tries them in
    turn, where `any_of` would take the cheapest per hour, which is the slowest GPU for this work).

    Recovery stays where it was priced: with the region pinned, EAGER_NEXT_REGION (recover in another
    region) would contradict the pin, so a managed job recovers with FAILOVER (same region, then the next
    candidate of `ordered`, each capped at its own price)."""
    from costmodel import clouds
    from costmodel.infra import infra_string

    res = {k: v for k, v in res.items() if k not in PLACED}
    first = {"accelerators": row.accelerator, "infra": row.infra, "max_hourly_cost": row.max_hourly_cost}
    rest = [{"accelerators": f["accelerator"], "infra": infra_string(f["cloud"], f["region"]),
             "max_hourly_cost": f["max_hourly_cost"]} for f in (row.fallbacks or []) if not f.get("dropped")]
    # an own cluster has no cap (costmodel.estimates.price_gpu_stage): no `max_hourly_cost: null` for SkyPilot
    first = {k: v for k, v in first.items() if v is not None}
    rest = [{k: v for k, v in o.items() if v is not None} for o in rest]
    res["use_spot"] = bool(row.spot)
    if rest:
        res["ordered"] = [first, *rest]
    else:
        res.update(first)
    if mode == "managed":
        recovery = res.get("job_recovery")
        res["job_recovery"] = {**(recovery if isinstance(recovery, dict) else {}), "strategy": "FAILOVER"}
    # A managed job's controller tears its cluster down; autostop is for `sky launch` clusters, on clouds
    # whose SkyPilot adapter supports it (Prime Intellect's does not).
    placed_clouds = {str(row.cloud).lower()} | {str(f["cloud"]).lower() for f in row.fallbacks or []
                                                 if not f.get("dropped")}
    if mode == "managed" or not all(clouds.supports(c, clouds.AUTOSTOP) for c in placed_clouds):
        res.pop("autostop", None)
    return res


def render(stage: str, envs: dict | None = None, row=None, scale: str = "full", environ=None):
    """A validated sky.Task. Secrets go in as `secrets_overrides`, so they never sit in `envs`."""
    import sky

    cfg = config(stage, envs, row, scale)
    secrets = secret_values(cfg, environ)
    overrides = [(k, v) for k, v in secrets.items() if k in (cfg.get("secrets") or {})]
    try:
        return sky.Task.from_yaml_config(cfg, secrets_overrides=overrides or None)
    except Exception as e:  # SkyPilot's validation message names the bad field
        raise UserError(f"sky_tasks/{stage}.yaml: {e}") from None


def render_yaml(stage: str, envs: dict | None = None, row=None, scale: str = "full", environ=None) -> str:
    """What --dry-run prints: the task as it would launch, validated by SkyPilot, secrets redacted."""
    render(stage, envs, row, scale, environ)   # validation only
    cfg = config(stage, envs, row, scale)
    secrets = secret_values(cfg, environ)
    if cfg.get("secrets"):
        cfg["secrets"] = {k: REDACTED if k in secrets else UNSET for k in cfg["secrets"]}
    res = cfg.get("resources") or {}
    where = res.get("infra") or ((res.get("ordered") or [{}])[0].get("infra")) or "any cloud (SkyPilot picks the cheapest)"
    env = cfg["envs"].get("STAGE_EXTRAS")
    try:
        from reproduce import locks

        pins = ", ".join(f"{k} {v}" for k, v in locks.locked_versions(env).items()) if env else ""
    except Exception:   # noqa: BLE001 - no lock for it: say nothing
        pins = ""
    text = f"# stage {stage} ({scale} scale): {where}\n" + (f"# environment sky_tasks/locks/{env}.txt: {pins}\n"
                                                             if pins else "") + yaml.dump(cfg, Dumper=_BlockDumper, sort_keys=False,
                                                                      width=120)
    return redact(text, secrets.values())


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (setup:, run:) as `|` blocks, the way they are written in sky_tasks/."""


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def redact(text: str, values) -> str:
    """Belt and braces: no secret value survives in text we print or write."""
    for value in sorted((v for v in values if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text
