"""Stage program `eval`: score a model on the recipe's benchmarks and compare with the published table.

    python -m reproduce.stages.evaluate --recipe ARTIFACTS/recipe.yaml --artifacts ARTIFACTS [--model PATH]

For each `eval.benchmarks` item: its problems (problems.load_benchmark; smoke: smoke_data), prompts with the
student's system prompt (`eval.system_prompt`, else `convert.system_prompt`, the one SFT trained with; Sky-T1
is evaluated with it, sky-t1.md section 3) and `generate.user_templates[domain]`, `n` samples at the
benchmark's temperature and `eval.max_tokens` (generation shared with the generate stage: vLLM on GPUs,
transformers on a CPU), graded by `grading.grade`. Score = mean accuracy over all samples x 100 (pass@1
averaged over n, as SkyThought reports AIME/GPQA at n=8).

Writes ARTIFACTS/eval/<benchmark>.jsonl (every graded sample), scores.json, table.md (ours vs published)
and summary.json. Resumable: a benchmark already scored for the same model and settings is skipped.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import shlex
import sys
import time
from pathlib import Path

from reproduce.stages import generate as gen_stage
from reproduce.stages.common import BadInput, run_main


def log(msg: str) -> None:
    print(f"eval: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_main("eval", _parser(), lambda args: run(args, argv), argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.stages.evaluate",
                                description="Score a model on the recipe's benchmarks (ours vs published).")
    p.add_argument("--recipe", required=True, help="the resolved recipe YAML")
    p.add_argument("--artifacts", required=True, help="the artifacts folder (writes eval/)")
    p.add_argument("--model", help="model folder or id (default ARTIFACTS/sft/model)")
    p.add_argument("--benchmarks", help="comma-separated names (default: all of eval.benchmarks)")
    p.add_argument("--limit", type=int, help="at most N problems per benchmark (a quick trial)")
    p.add_argument("--backend", default="auto", choices=("auto", "vllm", "transformers"))
    return p


def _grade_one(args):
    from reproduce.stages.grading import grade

    record, limits = args
    return grade(record, **limits)


def grade_all(records: list[dict], limits: dict) -> list[tuple[bool, str]]:
    """Grade in worker processes (math-verify's timeouts need a process's main thread; code runs in the
    sandbox, which wants a single-threaded parent); a handful inline."""
    if len(records) <= 8:
        return [_grade_one((r, limits)) for r in records]
    import multiprocessing as mp

    workers = max(1, min(os.cpu_count() or 1, 32))
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_grade_one, [(r, limits) for r in records], chunksize=4))


def run(args, argv) -> int:
    from reproduce.stages import problems

    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit {args.limit}: expected 1 or more")
    t_start = time.monotonic()
    recipe = gen_stage.load_recipe(args.recipe)
    ev = recipe.get("eval") or {}
    benches = ev.get("benchmarks") or []
    if args.benchmarks:
        wanted = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
        names = [b["name"] for b in benches]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise BadInput(f"--benchmarks {','.join(unknown)}: expected names from {', '.join(names)}")
        benches = [b for b in benches if b["name"] in wanted]
    model = args.model or str(Path(args.artifacts) / "sft" / "model")
    if not args.model and not Path(model).is_dir():
        raise BadInput(f"no model at {model}: run the sft stage first, or give --model")
    system_prompt = ev.get("system_prompt") or (recipe.get("convert") or {}).get("system_prompt")
    templates = recipe["generate"]["user_templates"]
    limits = {k: v for k, v in (recipe.get("filter") or {}).items()
              if k in ("math_timeout_s", "code_timeout_s", "code_memory_mb")}
    tp, dp = int(ev.get("tensor_parallel", 1)), int(ev.get("data_parallel", 1))
    out_dir = Path(args.artifacts) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)

    scores, tokens, gen_s = _previous_scores(out_dir, model), collections.Counter(), 0.0
    info = {"backend": None, "gpus": 0}
    pending = []
    for bench in benches:
        settings = _settings(bench, ev, system_prompt, args.limit, recipe.get("scale"))
        if scores.get(bench["name"], {}).get("settings") == settings:
            log(f"{bench['name']}: already scored ({scores[bench['name']]['score']:.1f}); skipped")
            continue
        try:
            records = problems.load_benchmark(bench, recipe.get("scale", "full"), args.limit)
        except problems.BadSource as e:
            raise BadInput(str(e)) from None
        pending.append((bench, settings, records))

    if pending:
        render = gen_stage.chat_renderer(model)
        with gen_stage.open_backend(model, tp, dp, args.backend) as (info, complete):
            for bench, settings, records in pending:
                sampling = {"n": settings["n"], "temperature": settings["temperature"], "top_p": settings["top_p"],
                            "max_tokens": settings["max_tokens"]}
                prompts = [render(gen_stage.messages(r, system_prompt, templates)) for r in records]
                t0 = time.monotonic()
                outs = complete(prompts, sampling)
                dt = time.monotonic() - t0
                gen_s += dt
                samples = [{**r, "sample": k, "response": c["text"], "prompt_tokens": c["prompt_tokens"],
                            "response_tokens": c["response_tokens"], "finish_reason": c["finish_reason"]}
                           for r, cs in zip(records, outs) for k, c in enumerate(cs)]
                for s, (ok, reason) in zip(samples, grade_all(samples, limits)):
                    s["correct"], s["reason"] = ok, reason
                    tokens["prompt"] += s["prompt_tokens"]
                    tokens["response"] += s["response_tokens"]
                _write_jsonl(out_dir / f"{bench['name']}.jsonl", samples)
                correct = sum(s["correct"] for s in samples)
                score = 100.0 * correct / len(samples) if samples else 0.0
                published = bench.get("published")
                scores[bench["name"]] = {
                    "score": round(score, 2), "published": published,
                    "delta": round(score - published, 2) if published is not None else None,
                    "problems": len(records), "samples": len(samples), "correct": correct,
                    "reasons": dict(collections.Counter(s["reason"].split(":", 1)[0] for s in samples)),
                    "response_tokens": sum(s["response_tokens"] for s in samples), "generate_s": round(dt, 2),
                    "settings": settings}
                _write_json(out_dir / "scores.json", {"model": model, "benchmarks": scores})  # resume point
                log(f"{bench['name']}: {score:.1f} ({correct}/{len(samples)} samples correct)"
                    + (f", published {published}" if published is not None else "") + f"; {dt:.1f} s")

    order = [b["name"] for b in ev.get("benchmarks") or []]
    scores = {k: scores[k] for k in sorted(scores, key=lambda k: order.index(k) if k in order else len(order))}
    command = "python -m reproduce.stages.evaluate " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = {"model": model, "scale": recipe.get("scale"), "recipe": recipe.get("name"), "command": command,
              "benchmarks": scores}
    _write_json(out_dir / "scores.json", result)
    (out_dir / "table.md").write_text(table_md(result))
    summary = {"stage": "eval", "model": model, "benchmarks": len(scores), "benchmarks_this_run": len(pending),
               "samples": sum(s["samples"] for s in scores.values()),
               "samples_this_run": sum(len(r) * st["n"] for _, st, r in pending),
               "prompt_tokens_this_run": tokens["prompt"], "response_tokens_this_run": tokens["response"],
               "scores": {k: v["score"] for k, v in scores.items()},
               "generate_s": round(gen_s, 2), "wall_s": round(time.monotonic() - t_start, 2),
               **gen_stage.throughput(info, (recipe["models"]["student"].get("params_b")), tp, tokens["response"],
                                      gen_s)}
    _write_json(out_dir / "summary.json", summary)
    log(f"wrote {out_dir / 'table.md'}")
    return 0


def _settings(bench: dict, ev: dict, system_prompt: str | None, limit: int | None, scale) -> dict:
    """What a score depends on besides the model: a rerun with other settings scores again."""
    return {"temperature": float(bench.get("temperature", 0.0)), "n": int(bench.get("n", 1)),
            "top_p": float(bench.get("top_p", ev.get("top_p", 1.0))), "max_tokens": int(ev.get("max_tokens", 32768)),
            "dataset": bench.get("dataset"), "limit": limit, "scale": scale,
            "system_prompt_chars": len(system_prompt or "")}


def _previous_scores(out_dir: Path, model: str) -> dict:
    path = out_dir / "scores.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return {}
    return old.get("benchmarks", {}) if old.get("model") == model else {}


def table_md(result: dict) -> str:
    """Ours vs published, with the command that made it (open-r1 style)."""
    lines = [f"# Evaluation: {result['model']}", "",
             f"Scale: {result.get('scale')}. Score = mean accuracy over all samples x 100 (pass@1 averaged over n). "
             "Published: Sky-T1-32B-Preview, SkyThought README (ST@HEAD).", "",
             "| benchmark | ours | published | delta | samples | settings |",
             "|---|---:|---:|---:|---:|---|"]
    for name, s in result["benchmarks"].items():
        st = s["settings"]
        pub = "" if s["published"] is None else f"{s['published']:g}"
        delta = "" if s["delta"] is None else f"{s['delta']:+.1f}"
        lines.append(f"| {name} | {s['score']:.1f} | {pub} | {delta} | {s['samples']} ({s['problems']} x {st['n']}) "
                     f"| T={st['temperature']:g}, top_p={st['top_p']:g}, n={st['n']}, max_tokens={st['max_tokens']} |")
    lines += ["", f"Command: `{result['command']}`", ""]
    if result.get("scale") == "smoke":
        lines[2] += " Smoke scale: a tiny model on problems this project made; it proves the wiring, never the scores."
    return "\n".join(lines)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
