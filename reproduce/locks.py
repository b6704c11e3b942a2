"""What a stage's locked environment holds: versions read from sky_tasks/locks/<env>.txt (`make lock`).

    locked_versions("sft")      # {'llamafactory': '0.9.5', 'transformers': '5.6.0', 'torch': '2.14.1', ...}
    lock_digest("sft")          # sha256 of the lock file: the environment's identity
    uv_bin()                    # the pinned uv that installs them, or None

The plan and the dry run name the versions that decide a stage's behaviour and scores (SkyThought notes that
the vLLM version moves them): vLLM, LLaMA-Factory, transformers, torch, DeepSpeed. Plain text parsing, no
imports beyond the standard library: the plan stays fast.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from reproduce.errors import UserError

LOCKS_DIR = Path(__file__).resolve().parents[1] / "sky_tasks" / "locks"
KEY_PACKAGES = ("vllm", "llamafactory", "transformers", "torch", "deepspeed")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.M)


def lock_path(env_name: str) -> Path:
    return LOCKS_DIR / f"{env_name}.txt"


def _read(env_name: str) -> str:
    path = lock_path(env_name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in LOCKS_DIR.glob("*.txt"))) or "none"
        raise UserError(f"no lock for stage environment {env_name!r} ({path}); locks: {known}; `make lock` writes them")
    return path.read_text()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()           # PEP 503: Liger_Kernel is liger-kernel


def all_versions(env_name: str) -> dict:
    """Every package the lock pins, canonical name -> version."""
    return {_canonical(n): v for n, v in _PIN.findall(_read(env_name))}


def locked_versions(env_name: str, names=KEY_PACKAGES) -> dict:
    """The pinned versions of `names` (default: vLLM, LLaMA-Factory, transformers, torch, DeepSpeed) that the
    lock holds, in that order; a package the environment does not carry is left out."""
    pins = all_versions(env_name)
    return {n: pins[_canonical(n)] for n in names if _canonical(n) in pins}


def lock_digest(env_name: str) -> str:
    return hashlib.sha256(_read(env_name).encode()).hexdigest()


def uv_bin() -> str | None:
    """The pinned uv (Makefile UV_VERSION = pyproject's uv==): the Makefile's copy in the checkout, else the
    one installed with the controller; None when neither is here."""
    for path in sorted((LOCKS_DIR.parents[1] / ".uv").glob("*/bin/uv")):
        return str(path)
    try:
        from uv import find_uv_bin
        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return None
