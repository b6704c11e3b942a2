"""Configs: the full-scale SFT config through LLaMA-Factory's own argument parser (in an environment that has
it: the sft stage's, never the controller's), the DeepSpeed file at the path the node sees, and vLLM's
settings against the model (tensor parallel divides its heads; its context is checked in models/, which reads
max_position_embeddings from the model's config.json).

A CPU raises errors a GPU node would not: LLaMA-Factory refuses bf16 without a GPU ("Your setup doesn't
support bf16/gpu") and DeepSpeed outside torchrun ("Please use `FORCE_TORCHRUN=1`", which the node sets). Those
are named, the knob is set aside for the parse, and the rest of the config is parsed.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from reproduce.preflight import failed, passed, skipped

GROUP = "configs"
# (what LLaMA-Factory 0.9.5 / transformers say on a CPU, the key set aside to parse the rest, why a node differs)
CPU_ONLY = (("doesn't support bf16", {"bf16": False}, "a GPU node supports bf16"),
            ("FORCE_TORCHRUN", {"deepspeed": None}, "the node launches with FORCE_TORCHRUN=1 (sft.launch_env)"))
PARSE = Path(__file__).with_name("lf_parse.py")


def checks(ctx) -> list:
    from reproduce import stagetable

    out = []
    if any(s.work == "training" and s.name in ctx.stages for s in stagetable.STAGES):
        out += sft_checks(ctx)
    out += [tensor_parallel(ctx, s.name) for s in stagetable.STAGES if s.options == "vllm" and _vllm(ctx, s.name)]
    return out or [skipped(GROUP, "the plan has no sft, generate or eval stage")]


def _vllm(ctx, stage: str) -> bool:
    from reproduce import stagetable

    return (ctx.scale == "full" and stage in ctx.stages
            and stagetable.stage(stage).runs_on(ctx.recipe) == stagetable.GPU)   # smoke: transformers on a CPU


def sft_checks(ctx) -> list:
    from reproduce.stages import sft

    if ctx.scale == "smoke":
        return [skipped(f"{GROUP}/sft", "smoke scale: the sft stage parses its CPU config itself, on this machine, "
                                        "for $0")]
    cfg = sft.lf_config(ctx.recipe, "/artifacts")
    return [deepspeed_file(ctx, cfg), llamafactory_parse(cfg)]


def deepspeed_file(ctx, cfg: dict):
    """The node renders the same config from its copy of the workdir (SkyPilot uploads the checkout, minus what
    .gitignore excludes): the file must be in the checkout, not ignored, and say what the recipe asks."""
    from reproduce import tasks

    name = f"{GROUP}/deepspeed"
    if not cfg.get("deepspeed"):
        return skipped(name, "sft.zero_stage 0: no DeepSpeed")
    path, root = Path(cfg["deepspeed"]), tasks.workdir()
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return failed(name, f"{path} is outside the workdir {root} that SkyPilot uploads", "keep it in sky_tasks/")
    if not path.is_file():
        return failed(name, f"{rel} does not exist", "restore sky_tasks/deepspeed/ from the repository")
    if (root / ".git").exists():
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", str(rel)], capture_output=True)
        if ignored.returncode == 0:
            return failed(name, f"{rel} is git-ignored, so SkyPilot does not upload it", "un-ignore it")
    try:
        ds = json.loads(path.read_text())
    except ValueError as e:
        return failed(name, f"{rel} is not JSON ({e})", "restore it from the repository")
    zero = ds.get("zero_optimization") or {}
    offload = (zero.get("offload_optimizer") or {}).get("device") == "cpu"
    want = bool((ctx.recipe.get("sft") or {}).get("cpu_offload", True))
    if zero.get("stage") != 3 or offload != want:
        return failed(name, f"{rel}: ZeRO stage {zero.get('stage')}, optimizer offload {offload}; the recipe asks "
                            f"stage 3, offload {want}", "restore it from the repository")
    return passed(name, f"{rel} is in the uploaded workdir (ZeRO-3, optimizer offload {offload}); the node reads "
                        f"~/sky_workdir/{rel}")


def sft_python() -> tuple[str | None, str]:
    """A Python with LLaMA-Factory, and which environment it is: REPRODUCE_SFT_PYTHON, a ready sft (or smoke:
    the same LLaMA-Factory pin) environment of the local executor's cache, or the checkout's .venv-stage."""
    from reproduce import tasks
    from reproduce.executors.local import env_cache

    if os.environ.get("REPRODUCE_SFT_PYTHON"):
        return os.environ["REPRODUCE_SFT_PYTHON"], "REPRODUCE_SFT_PYTHON"
    found = [p.parent / "bin" / "python" for env in ("sft", "smoke")
             for p in sorted(env_cache().glob(f"{env}-*/.ready"))]
    if os.environ.get("REPRODUCE_STAGE_VENV"):
        found.insert(0, Path(os.environ["REPRODUCE_STAGE_VENV"]) / "bin" / "python")
    found.append(tasks.workdir() / ".venv-stage" / "bin" / "python")
    for python in found:
        if python.exists():
            return str(python), str(python.parent.parent)
    return None, ""


def llamafactory_parse(cfg: dict):
    from reproduce import locks

    name = f"{GROUP}/sft"
    python, where = sft_python()
    if python is None:
        return skipped(name, "no environment with LLaMA-Factory on this machine (the controller has none): "
                             "build one with `make .venv-stage/.installed` or set REPRODUCE_SFT_PYTHON")
    want = locks.locked_versions("sft").get("llamafactory")
    expected = []
    cfg = dict(cfg)
    for _ in range(len(CPU_ONLY) + 1):
        verdict = _parse(python, cfg)
        if verdict.get("ok"):
            break
        known = next((c for c in CPU_ONLY if c[0] in verdict.get("error", "")), None)
        if known is None or all(cfg.get(k, v) == v if v is not None else k not in cfg for k, v in known[1].items()):
            return failed(name, f"LLaMA-Factory {verdict.get('version', '?')} rejects the full-scale config: "
                                f"{verdict.get('error', 'no message')}",
                          "fix the sft.* recipe value (or sky_tasks/llamafactory/sft.yaml key) it names")
        expected.append(f"{known[0]!r} ({known[2]})")
        for k, v in known[1].items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
    version = verdict.get("version")
    pin = "" if version == want else f"; the sft lock pins {want}"
    note = f"; CPU-only errors set aside: {', '.join(expected)}" if expected else ""
    return passed(name, f"LLaMA-Factory {version}'s parser accepts the full-scale config, template "
                        f"{cfg.get('template')!r} exists ({where}{pin}){note}")


def _parse(python: str, cfg: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DISABLE_VERSION_CHECK="1")
    try:
        done = subprocess.run([python, str(PARSE)], input=json.dumps(cfg), capture_output=True, text=True,
                              timeout=300, env=env, cwd=str(PARSE.parent))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "the parse took over 300 s"}
    last = (done.stdout.strip().splitlines() or [""])[-1]
    try:
        return json.loads(last)
    except ValueError:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"the parser process failed (exit {done.returncode}): {tail[:240]}"}


def tensor_parallel(ctx, stage: str):
    from reproduce import stagetable
    from costmodel import estimates

    s = stagetable.stage(stage)
    cfg = ctx.recipe[s.section]
    model = ctx.recipe["models"][s.model]
    name = f"{GROUP}/vllm-{stage}"
    try:
        from costmodel import models as shapes

        shape = shapes.resolve(model)
    except Exception:   # noqa: BLE001 - a model without figures: the memory model already refused it
        shape = {}
    tp, dp = int(cfg.get("tensor_parallel", 1)), int(cfg.get("data_parallel", 1))
    gpus = estimates.accelerator(cfg["accelerator"])[1]
    heads, kv = shape.get("heads"), shape.get("kv_heads")
    if heads and heads % tp:
        return failed(name, f"tensor_parallel {tp} does not divide {model.get('id')}'s {heads} attention heads "
                            "(vLLM refuses it)", f"--set {s.section}.tensor_parallel=<a divisor of {heads}>")
    if kv and kv % tp and tp % kv:
        return failed(name, f"tensor_parallel {tp} and {model.get('id')}'s {kv} KV heads: neither divides the "
                            "other (vLLM refuses it)", f"--set {s.section}.tensor_parallel=<a divisor of {kv}>")
    if tp * dp != gpus:
        return failed(name, f"tensor_parallel {tp} x data_parallel {dp} = {tp * dp} GPUs, the node has {gpus}",
                      f"--set {s.section}.data_parallel={max(1, gpus // tp)}")
    return passed(name, f"TP {tp} divides {heads or '?'} heads ({kv or '?'} KV heads); TP {tp} x DP {dp} = "
                        f"{gpus} GPUs")

