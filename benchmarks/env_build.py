"""Stage-environment build time, pip vs uv, side by side in one run: what every GPU launch and every spot
recovery pays before the stage's work starts (the task's `setup:`).

    python benchmarks/env_build.py                     # the smoke environment (sky_tasks/locks/smoke.txt)
    python benchmarks/env_build.py --env sft --uv-only # a GPU lock: its CUDA wheels install on a CPU too
    python benchmarks/env_build.py --env smoke --env sft --env generate --record   # -> costmodel/data/

Each build is a fresh venv in a temporary folder, installing the same lock (every package pinned with its
hash) and then this package with --no-deps:
  pip                   `pip install --require-hashes -r LOCK` with pip's cache (and pip.conf) as this
                        machine has them; --pip-runs 2 runs it again with whatever pip cached the first time
  uv (cold cache)       the task's own `setup:` text, with an empty uv cache: a fresh cloud node
  uv (warm cache)       the same setup again into a second venv: uv hard-links from its cache (a local rerun)
  uv (warm, bytecode)   the same with UV_COMPILE_BYTECODE=1: compiles every .pyc at install, as pip does;
                        without it each module compiles at its first import (the local executor lets it)
"disk of its own" counts only files not hard-linked elsewhere: what a second environment really costs.
--record writes the uv figures with date and machine to costmodel/data/env_setup.json, the measured setup
time the plan's startup estimate uses (costmodel/setup_time.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RECORD = REPO / "costmodel" / "data" / "env_setup.json"


def find_uv() -> str:
    from reproduce.locks import uv_bin

    uv = uv_bin()
    if uv is None:
        raise SystemExit("no uv: run `make install` (or pip install uv==0.13.9)")
    return uv


def task_setup() -> str:
    import yaml

    return yaml.safe_load((REPO / "sky_tasks" / "generate.yaml").read_text())["setup"]


def run(argv, env=None, cwd=REPO) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} ... exited {proc.returncode}: {proc.stderr[-1500:]}")
    return time.perf_counter() - start


def disk(path: Path) -> tuple[int, int]:
    """(bytes in all, bytes in files no other path links to)."""
    total = own = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            total += st.st_blocks * 512
            own += st.st_blocks * 512 if st.st_nlink == 1 else 0
    return total, own


def pip_cache_bytes() -> int:
    out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True).stdout
    path = Path(out.strip()) if out.strip() else None
    return disk(path)[0] if path and path.is_dir() else 0


def build_pip(lock: Path, venv: Path) -> float:
    return (run([sys.executable, "-m", "venv", str(venv)])
            + run([str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "-r", str(lock)])
            + run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "-e", "."]))


def build_uv(uv: str, env_name: str, venv: Path, cache: Path, bytecode: bool = False) -> float:
    """The task's `setup:` exactly as the local executor runs it, into `venv`, with uv's cache at `cache`."""
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "REPRODUCE_UV": uv, "STAGE_EXTRAS": env_name,
           "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONHOME", None)
    env.pop("UV_COMPILE_BYTECODE", None)
    if bytecode:
        env["UV_COMPILE_BYTECODE"] = "1"
    return (run([uv, "venv", "-q", "--seed", "--python", sys.executable, str(venv)], env=env)
            + run(["bash", "-c", "set -e\n" + task_setup()], env=env))


def measure(env_name: str, uv: str, pip_runs: int, scratch: Path) -> list[dict]:
    lock = REPO / "sky_tasks" / "locks" / f"{env_name}.txt"
    if not lock.is_file():
        raise SystemExit(f"--env {env_name}: no {lock.relative_to(REPO)}; `make lock` writes the locks")
    rows = []
    for i in range(pip_runs):
        cached = pip_cache_bytes()
        venv = scratch / f"pip-{i}"
        seconds = build_pip(lock, venv)
        rows.append({"env": env_name, "tool": "pip", "cache": f"pip cache {cached / 1e9:.1f} GB before",
                     "seconds": seconds, "disk": disk(venv)})
        shutil.rmtree(venv)
    cache = scratch / "uv-cache"
    for label, name, bytecode in (("cold cache", "uv-cold", False), ("warm cache", "uv-warm", False),
                                  ("warm cache, bytecode", "uv-bytecode", True)):
        venv = scratch / name
        seconds = build_uv(uv, env_name, venv, cache, bytecode)
        rows.append({"env": env_name, "tool": "uv", "cache": label, "seconds": seconds,
                     "disk": disk(venv), "uv_cache_gb": disk(cache)[0] / 1e9})
        if name != "uv-cold":
            shutil.rmtree(venv)
    return rows


def print_rows(rows: list[dict], uv_version: str) -> None:
    print(f"Stage-environment build, one run each, side by side ({os.cpu_count()} CPUs, {uv_version}, "
          f"{datetime.date.today()})")
    print(f"  {'env':<9} {'tool':<4} {'cache':<24} {'time':>8} {'venv':>9} {'disk of its own':>16}")
    for r in rows:
        total, own = r["disk"]
        note = f"  (uv cache now {r['uv_cache_gb']:.1f} GB)" if r["cache"] == "cold cache" else ""
        print(f"  {r['env']:<9} {r['tool']:<4} {r['cache']:<24} {r['seconds']:>7.1f}s {total / 1e9:>7.2f}GB "
              f"{own / 1e6:>13,.1f} MB{note}")
    for env_name in dict.fromkeys(r["env"] for r in rows):
        pips = [r["seconds"] for r in rows if r["env"] == env_name and r["tool"] == "pip"]
        cold = next(r["seconds"] for r in rows if r["env"] == env_name and r["cache"] == "cold cache")
        if pips:
            print(f"  {env_name}: uv with a cold cache is {min(pips) / cold:.1f}x faster than pip's best run")


def record(rows: list[dict], uv_version: str) -> None:
    data = json.loads(RECORD.read_text()) if RECORD.is_file() else {"envs": {}}
    for env_name in dict.fromkeys(r["env"] for r in rows):
        mine = {r["cache"]: r for r in rows if r["env"] == env_name and r["tool"] == "uv"}
        data["envs"][env_name] = {"uv_cold_s": round(mine["cold cache"]["seconds"], 1),
                                  "uv_warm_s": round(mine["warm cache"]["seconds"], 1),
                                  "venv_gb": round(mine["cold cache"]["disk"][0] / 1e9, 2),
                                  "measured": str(datetime.date.today())}
        pips = [r["seconds"] for r in rows if r["env"] == env_name and r["tool"] == "pip"]
        if pips:
            data["envs"][env_name]["pip_s"] = [round(s, 1) for s in pips]
    data["source"] = ("benchmarks/env_build.py --record: the task's setup: with uv, cold cache = a fresh node; "
                      f"{uv_version}, {os.cpu_count()} CPUs, {platform.machine()}, PyPI over this machine's network")
    RECORD.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"recorded in {RECORD.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", action="append", help="a lock in sky_tasks/locks/ (default: smoke); repeatable")
    ap.add_argument("--uv-only", action="store_true", help="skip pip (minutes per GPU environment)")
    ap.add_argument("--pip-runs", type=int, default=1, help="pip builds, one after the other (default 1)")
    ap.add_argument("--record", action="store_true", help=f"write the uv figures to {RECORD.relative_to(REPO)}")
    ap.add_argument("--scratch", help="folder for the venvs and the cold uv cache (default: a temporary one)")
    args = ap.parse_args(argv)
    uv = find_uv()
    uv_version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()
    pip_runs = 0 if args.uv_only else args.pip_runs
    rows = []
    for env_name in args.env or ["smoke"]:
        with tempfile.TemporaryDirectory(prefix="env-build-", dir=args.scratch) as scratch:
            rows += measure(env_name, uv, pip_runs, Path(scratch))
    print_rows(rows, uv_version)
    if args.record:
        record(rows, uv_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
