"""Datasets: every source generate reads and every benchmark eval (and convert's decontamination) reads, its
first rows through the stage's own loader, record transform and prompt template (reproduce.stages.lib.problems
peek_source / peek_benchmark), gated ones with the user's HF_TOKEN; the hub's row count against the recipe's
`problems`.

`datasets` is not in the controller's environment, and its version decides what loads (4.0 refuses loading
scripts): the peek runs as a subprocess (reproduce/preflight/peek.py) in an environment with the generate lock's
`datasets` and `huggingface_hub` pins, built once into the local executor's cache (uv, seconds with a warm
cache), or REPRODUCE_PEEK_PYTHON.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from reproduce.preflight import failed, passed, skipped

GROUP = "datasets"
PEEK = Path(__file__).with_name("peek.py")
LOCK = "generate"            # the environment that loads sources and benchmarks on the nodes (eval shares it)
PACKAGES = ("datasets", "huggingface-hub")


def items(ctx) -> list[tuple[str, dict]]:
    """(kind, item) for what the plan's stages load from the hub."""
    out = []
    if "generate" in ctx.stages:
        out += [("source", s) for s in ctx.recipe.get("sources") or []]
    decontam = ((ctx.recipe.get("convert") or {}).get("decontaminate") or {}).get("enabled")
    if "eval" in ctx.stages or ("convert" in ctx.stages and decontam):
        out += [("benchmark", b) for b in (ctx.recipe.get("eval") or {}).get("benchmarks") or []]
    return out


def checks(ctx) -> list:
    wanted = items(ctx)
    if not wanted:
        return [skipped(GROUP, "the plan loads no dataset (no generate, eval or decontaminating convert)")]
    if ctx.scale == "smoke":
        return [skipped(GROUP, "smoke scale: problems come from reproduce/stages/smoke/smoke_data, not the hub")]
    from reproduce.stages.lib import problems

    if not hasattr(problems, "peek_source"):
        return [skipped(GROUP, "this build's loaders have no peek_source/peek_benchmark (the real-data issue): "
                               "datasets are not checked before the launch")]
    python, where = peek_python()
    if python is None:
        return [failed(GROUP, f"no environment with the {LOCK} lock's datasets/huggingface_hub to peek with: {where}",
                       "check the network for the one-time build (uv), or set REPRODUCE_PEEK_PYTHON to a Python "
                       "that has them")]
    gen, ev = ctx.recipe.get("generate") or {}, ctx.recipe.get("eval") or {}
    request = {"n": 3, "generate": {k: gen.get(k) for k in ("system_prompt", "user_templates")},
               "eval": {k: v for k, v in ev.items() if k != "benchmarks"},
               "items": [{"kind": k, "item": i} for k, i in wanted]}
    env = {k: v for k, v in ctx.environ.items() if not k.startswith(("PYTHONHOME", "VIRTUAL_ENV"))}
    from reproduce import tasks

    env["PYTHONPATH"] = str(tasks.workdir())
    try:
        done = subprocess.run([python, str(PEEK)], input=json.dumps(request), capture_output=True, text=True,
                              timeout=240, env=env, cwd=str(tasks.workdir()))
    except subprocess.TimeoutExpired:
        return [failed(GROUP, "the peek took over 240 s", "check the network (or HF_ENDPOINT)")]
    try:
        answer = json.loads((done.stdout.strip().splitlines() or ["{}"])[-1])
        results = answer["results"]
    except (ValueError, KeyError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [failed(GROUP, f"the peek process failed (exit {done.returncode}): {tail[:240]}",
                       f"run it again; if it persists, --skip-check {GROUP} and report it")]
    versions = answer.get("versions") or {}
    pins = _pins()
    drift = [f"{k} {versions.get(k.replace('-', '_'))} (lock {v})" for k, v in pins.items()
             if versions.get(k.replace("-", "_")) != v]
    label = (f"datasets {versions.get('datasets')}, huggingface_hub {versions.get('huggingface_hub')}"
             + (f"; NOT the {LOCK} lock's: {', '.join(drift)}" if drift else f", as the {LOCK} lock"))
    return [_verdict(kind, item, r, label, ctx) for (kind, item), r in zip(wanted, results)]


def _verdict(kind: str, item: dict, r: dict, label: str, ctx):
    name = f"{GROUP}/{item.get('name')}"
    repo = item.get("dataset")
    if not r.get("ok"):
        return failed(name, f"{repo}: {r.get('error')}", fix(r, item, kind, ctx))
    if not r.get("records"):
        return failed(name, f"{repo}: the first rows gave no record through the {kind}'s transform and filter",
                      f"check the {kind}'s split, subset and filter against the dataset card")
    detail = (f"{repo}: {r['records']} record(s) from its first rows, prompt {r.get('prompt_chars', 0):,} chars "
              f"({label})")
    rows, planned = r.get("rows"), item.get("problems")
    if rows is not None and planned and rows < int(planned):   # `problems` is a cap: fewer rows cost less, not more
        detail += (f"; the hub has {rows:,} rows, fewer than the {int(planned):,} problems the recipe plans: the plan "
                   f"overestimates it (set `problems: {rows}` for a closer price)")
    elif rows is not None:
        detail += f"; {rows:,} rows on the hub" + (f" for {int(planned):,} planned" if planned else "")
    return passed(name, detail)


def fix(r: dict, item: dict, kind: str, ctx) -> str:
    """What fixes a failed peek, from the loader's one-line error."""
    text, repo = f"{r.get('error_type')}: {r.get('error')}".lower(), item.get("dataset")
    if r.get("gated") or "gated" in text:
        if ctx.environ.get("HF_TOKEN"):
            return f"accept {repo}'s conditions on the hub with the account whose HF_TOKEN this is"
        return f"accept {repo}'s conditions on the hub and export HF_TOKEN (a token of that account)"
    if "script" in text:
        return (f"{repo} is a loading-script repository, which datasets >= 4 refuses: name its data files "
                f"(`files:` and `format:` on the {kind})")
    if any(w in text for w in ("couldn't reach", "connect", "timed out", "proxy", "name or service")):
        return "check the network (or HF_ENDPOINT)"
    if "not found" in text or "notfound" in text or "doesn't exist" in text or "does not exist" in text:
        return f"fix the {kind}'s `dataset` ({repo!r}: misspelt, or removed from the hub)"
    return f"fix the {kind} {item.get('name')!r} in the recipe as the message says"


def _pins() -> dict:
    from reproduce import locks

    return locks.locked_versions(LOCK, PACKAGES)


def peek_python() -> tuple[str | None, str]:
    """(python, where): REPRODUCE_PEEK_PYTHON, else a venv with the lock's datasets/huggingface_hub pins (their
    dependencies constrained to the lock too) in the local executor's env cache, built here once."""
    if os.environ.get("REPRODUCE_PEEK_PYTHON"):
        return os.environ["REPRODUCE_PEEK_PYTHON"], "REPRODUCE_PEEK_PYTHON"
    from reproduce import locks
    from reproduce.executors.local import env_cache

    pins = _pins()
    venv = env_cache() / f"peek-{LOCK}-{locks.lock_digest(LOCK)[:12]}"   # a re-locked environment is a new one
    python = venv / "bin" / "python"
    if (venv / ".ready").exists():
        return str(python), str(venv)
    uv = locks.uv_bin()
    if uv is None:
        return None, "no uv to build it with (pip install uv==0.13.9)"
    q = shlex.quote
    script = (f"{q(uv)} venv -q --allow-existing --python {q(sys.executable)} {q(str(venv))} && "
              f"{q(uv)} pip install -q --python {q(str(python))} -c {q(str(locks.lock_path(LOCK)))} "
              + " ".join(q(f"{k}=={v}") for k, v in pins.items()) + f" && touch {q(str(venv / '.ready'))}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"preflight: building the dataset peek environment ({', '.join(f'{k} {v}' for k, v in pins.items())}) "
          f"in {venv}", file=sys.stderr, flush=True)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600)
    if done.returncode:
        return None, (done.stderr.strip().splitlines() or ["uv failed"])[-1][:200]
    return str(python), str(venv)
