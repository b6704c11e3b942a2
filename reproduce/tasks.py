"""Task YAMLs in sky_tasks/ -> a sky.Task (to launch) or redacted YAML text (for --dry-run).

    cfg = load_task("sft")                                   # the YAML as a dict
    task = render("sft", {"RUN_ID": "r1"}, placement, "full")  # env overrides, placement, secrets
    print(render_yaml("sft", {"RUN_ID": "r1"}, placement, "full"))

Secrets (HF_TOKEN, OPENAI_API_KEY, WANDB_API_KEY) come from this process's environment into SkyPilot's
`secrets:` and nowhere else: never into `envs:`, and never into rendered text (shown as <redacted>).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from reproduce.errors import UserError

TASKS_DIR = Path(__file__).resolve().parents[1] / "sky_tasks"
REPO_ROOT = TASKS_DIR.parent          # the `workdir: .` of every task
SECRET_NAMES = ("HF_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY")
REDACTED, UNSET = "<redacted>", "<not set>"


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


def config(stage: str, envs: dict | None = None, placement: dict | None = None, scale: str = "full") -> dict:
    """The task dict SkyPilot gets: env overrides and placement applied, secrets left as declared."""
    cfg = copy.deepcopy(load_task(stage))
    leaked = sorted(set(envs or {}) & (set(SECRET_NAMES) | set(cfg.get("secrets") or {})))
    if leaked:  # a key passed as an env would show in `sky status`, logs and the YAML
        raise UserError(f"{', '.join(leaked)} must come from the environment as a secret, not as a task env")
    cfg_envs = dict(cfg.get("envs") or {})
    if scale == "smoke":
        cfg_envs["STAGE_EXTRAS"] = "smoke"
    cfg_envs.update({k: "" if v is None else str(v) for k, v in (envs or {}).items()})
    cfg["envs"] = cfg_envs
    if cfg.get("workdir") in (".", "./") and (REPO_ROOT / "pyproject.toml").is_file():
        cfg["workdir"] = str(REPO_ROOT)   # `.` means the repo, wherever the CLI was started from
    if placement:
        cfg["resources"] = _place(dict(cfg.get("resources") or {}), placement)
    return cfg


def _place(res: dict, placement: dict) -> dict:
    """Pin the plan's cloud/region (`infra`) and market; SkyPilot still picks the instance for the GPU there,
    and `any_of` fallbacks stay, now within that infra. The instance type is not pinned: it would clash with
    fallback accelerators (a p5.48xlarge has no A100s)."""
    cloud, region = placement.get("cloud"), placement.get("region")
    if cloud:
        res["infra"] = f"{str(cloud).lower()}/{region}" if region else str(cloud).lower()
        for key in ("cloud", "region", "zone"):   # `infra` replaces these; both at once is an error
            res.pop(key, None)
    spot = placement.get("use_spot", placement.get("spot"))
    if spot is not None:
        res["use_spot"] = bool(spot)
        for option in (res.get("any_of") or []) + (res.get("ordered") or []):
            option.pop("use_spot", None)
    return res


def render(stage: str, envs: dict | None = None, placement: dict | None = None, scale: str = "full",
           environ=None):
    """A validated sky.Task. Secrets go in as `secrets_overrides`, so they never sit in `envs`."""
    import sky

    cfg = config(stage, envs, placement, scale)
    secrets = secret_values(cfg, environ)
    overrides = [(k, v) for k, v in secrets.items() if k in (cfg.get("secrets") or {})]
    try:
        return sky.Task.from_yaml_config(cfg, secrets_overrides=overrides or None)
    except Exception as e:  # SkyPilot's validation message names the bad field
        raise UserError(f"sky_tasks/{stage}.yaml: {e}") from None


def render_yaml(stage: str, envs: dict | None = None, placement: dict | None = None, scale: str = "full",
                environ=None) -> str:
    """What --dry-run prints: the task as it would launch, validated by SkyPilot, secrets redacted."""
    render(stage, envs, placement, scale, environ)   # validation only
    cfg = config(stage, envs, placement, scale)
    secrets = secret_values(cfg, environ)
    if cfg.get("secrets"):
        cfg["secrets"] = {k: REDACTED if k in secrets else UNSET for k in cfg["secrets"]}
    where = (cfg.get("resources") or {}).get("infra", "any cloud (SkyPilot picks the cheapest)")
    text = f"# stage {stage} ({scale} scale): {where}\n" + yaml.dump(cfg, Dumper=_BlockDumper, sort_keys=False,
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
