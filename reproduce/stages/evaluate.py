"""Stage program `eval`: score a model on the recipe's benchmarks and compare with the published table.

    python -m reproduce.stages.evaluate --recipe ARTIFACTS/recipe.yaml --artifacts ARTIFACTS [--model PATH]

For each `eval.benchmarks` item: its problems (problems.load_benchmark; smoke: smoke_data), asked and sampled
by the published protocol (protocol.py: SkyThought's template, system prompt, temperature, top_p, n, max
tokens, each with its source) unless the recipe says otherwise (a benchmark's temperature/n/top_p/template,
eval.max_tokens, eval.system_prompt; the student's system prompt is `convert.system_prompt`, the one SFT
trained with). Generation is shared with the generate stage (vLLM on GPUs, transformers on a CPU), with
`eval.seed` and, when `eval.batch_invariant`, vLLM's batch-invariant kernels (VLLM_BATCH_INVARIANT=1,
docs.vllm.ai features/batch_invariance: the same output whatever the batch). Every sample is graded twice:
by the published scorer (math_equal.py: SkyThought's `math_equal` for math, the last-letter pick for GPQA;
livecodebench_scorer.py: SkyThought's LiveCodeBench comparison on the private tests) and by ours
(grading.grade: math-verify, our letter extraction, the sandbox for code). Score = pass@1 averaged over n x 100,
with its standard error (eval_report.py); the fraction of samples the two graders judge differently is reported.

Writes ARTIFACTS/eval/<benchmark>.jsonl (every graded sample), scores.json, table.md (ours vs published, the
protocol, and what made it: model, versions, seed, date, command) and summary.json. Resumable: a benchmark
already scored for the same model and settings is skipped.
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

from reproduce.stages.lib import eval_report, protocol
from reproduce.stages import generate as gen_stage
from reproduce.stages.lib.common import BadInput, run_main, write_progress


def log(msg: str) -> None:
    print(f"eval: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_main("eval", _parser(), lambda args: run(args, argv), argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproduce evaluate",
                                description="Score a model on the recipe's benchmarks (ours vs published).")
    p.add_argument("--recipe", required=True, help="the resolved recipe YAML")
    p.add_argument("--artifacts", required=True, help="the artifacts folder (writes eval/)")
    p.add_argument("--model", help="model folder or id (default ARTIFACTS/sft/model)")
    p.add_argument("--benchmarks", help="comma-separated names (default: all of eval.benchmarks)")
    p.add_argument("--limit", type=int, help="at most N problems per benchmark (a quick trial)")
    p.add_argument("--backend", default="auto", choices=("auto", "vllm", "transformers"))
    return p


def _grade_one(args):
    """(ours correct, ours reason, published scorer correct) for one sample."""
    from reproduce.stages.lib import math_equal
    from reproduce.stages.lib.grading import grade

    record, limits, scorer = args
    ok, reason = grade(record, **limits)
    if scorer == "math_equal":
        published = math_equal.score_math(record.get("response"), record.get("answer"),
                                          limits.get("math_timeout_s", 5))
    elif scorer == "last_letter":
        published = math_equal.score_mcq(record.get("response"), record.get("answer"))
    elif scorer == "lcb_unit_tests":            # SkyThought's LiveCodeBench comparison, on the private tests
        from reproduce.stages.lib import livecodebench_scorer

        published = livecodebench_scorer.score(record.get("response"), record,
                                               memory_mb=limits.get("code_memory_mb", 1024))[0]
    else:                                       # unit tests: our sandbox runs the same rule
        published = ok
    return ok, reason, published


def grade_all(records: list[dict], limits: dict, scorer: str = "unit_tests") -> list[tuple[bool, str, bool]]:
    """Grade in worker processes (math-verify's timeouts need a process's main thread; code runs in the
    sandbox, which wants a single-threaded parent); a handful inline."""
    if len(records) <= 8:
        return [_grade_one((r, limits, scorer)) for r in records]
    import multiprocessing as mp

    workers = max(1, min(os.cpu_count() or 1, 32))
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_grade_one, [(r, limits, scorer) for r in records], chunksize=4))


def run(args, argv) -> int:
    from reproduce.stages.lib import problems

    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit {args.limit}: expected 1 or more")
    t_start, started = time.monotonic(), _now()
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
    limits = {k: v for k, v in (recipe.get("filter") or {}).items()
              if k in ("math_timeout_s", "code_timeout_s", "code_memory_mb")}
    tp, dp = int(ev.get("tensor_parallel", 1)), int(ev.get("data_parallel", 1))
    seed, batch_invariant = int(ev.get("seed", 0)), bool(ev.get("batch_invariant", False))
    out_dir = Path(args.artifacts) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)

    command = "python -m reproduce.stages.evaluate " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    scores, tokens, gen_s = _previous_scores(out_dir, model), collections.Counter(), 0.0
    info = {"backend": None, "gpus": 0}
    pending = []
    for bench in benches:
        proto = protocol.resolve(bench, recipe)
        settings = _settings(bench, proto["ours"], system_prompt, args.limit, recipe.get("scale"), seed,
                             batch_invariant)
        if scores.get(bench["name"], {}).get("settings") == settings:
            log(f"{bench['name']}: already scored ({scores[bench['name']]['score']:.1f}); skipped")
            continue
        try:
            records = problems.load_benchmark(bench, recipe.get("scale", "full"), args.limit)
        except problems.BadSource as e:
            raise BadInput(str(e)) from None
        pending.append((bench, proto, settings, records))

    total = sum(len(recs) * settings["n"] for _, _, settings, recs in pending)   # samples still to do
    done_samples = 0
    if pending:
        write_progress(out_dir, 0, total, "samples")
        if batch_invariant:
            os.environ["VLLM_BATCH_INVARIANT"] = "1"     # read by vLLM when it starts; replicas inherit it
        render = gen_stage.chat_renderer(model)
        with gen_stage.open_backend(model, tp, dp, args.backend, seed=seed) as (info, complete):
            for bench, proto, settings, records in pending:
                ours = proto["ours"]
                sampling = {k: settings[k] for k in ("n", "temperature", "top_p", "max_tokens")}
                prompts = [render(prompt_messages(r, ours, system_prompt)) for r in records]
                t0 = time.monotonic()
                outs = complete(prompts, sampling)
                dt = time.monotonic() - t0
                gen_s += dt
                samples = [{**r, "sample": k, "response": c["text"], "prompt_tokens": c["prompt_tokens"],
                            "response_tokens": c["response_tokens"], "finish_reason": c["finish_reason"]}
                           for r, cs in zip(records, outs) for k, c in enumerate(cs)]
                published_scorer = proto["published"]["scorer"]
                for s, (ok, reason, pub_ok) in zip(samples, grade_all(samples, limits, published_scorer)):
                    s["correct"], s["reason"], s["correct_published_scorer"] = ok, reason, pub_ok
                    tokens["prompt"] += s["prompt_tokens"]
                    tokens["response"] += s["response_tokens"]
                _write_jsonl(out_dir / f"{bench['name']}.jsonl", samples)
                scores[bench["name"]] = bench_scores(bench, proto, settings, records, samples, dt)
                scores[bench["name"]]["made"] = {"date": started, "backend": info.get("backend"),
                                                 "gpu": gen_stage.gpu_name(), "command": command}
                b = scores[bench["name"]]
                _write_json(out_dir / "scores.json", {"model": model, "benchmarks": scores})  # resume point
                done_samples += len(samples)
                write_progress(out_dir, done_samples, total, "samples")
                log(f"{bench['name']}: {b['score']:.1f} ± {b['se'] or 0:.1f} ({b['scorer']}), "
                    f"{b['by_scorer'][b['ours_scorer']]['score']:.1f} ({b['ours_scorer']})"
                    + (f", published {b['published']}" if b["published"] is not None else "") + f"; {dt:.1f} s")

    order = [b["name"] for b in ev.get("benchmarks") or []]
    scores = {k: scores[k] for k in sorted(scores, key=lambda k: order.index(k) if k in order else len(order))}
    made = {"date": _now(), "seed": seed, "batch_invariant": batch_invariant,
            "published_dtype": protocol.DEFAULTS["dtype"], "environment": eval_report.environment()}
    result = {"model": model, "scale": recipe.get("scale"), "recipe": recipe.get("name"), "command": command,
              "made": made, "benchmarks": scores}
    _write_json(out_dir / "scores.json", result)
    (out_dir / "table.md").write_text(eval_report.table_md(result))
    summary = {"stage": "eval", "model": model, "benchmarks": len(scores), "benchmarks_this_run": len(pending),
               "samples": sum(s["samples"] for s in scores.values()),
               "samples_this_run": sum(len(r) * st["n"] for _, _, st, r in pending),
               "prompt_tokens_this_run": tokens["prompt"], "response_tokens_this_run": tokens["response"],
               "scores": {k: v["score"] for k, v in scores.items()},
               "beyond_2se": sorted(k for k, v in scores.items() if v.get("beyond_2se")),
               "generate_s": round(gen_s, 2), "wall_s": round(time.monotonic() - t_start, 2),
               **gen_stage.throughput(info, (recipe["models"]["student"].get("params_b")), tp, tokens["response"],
                                      gen_s)}
    _write_json(out_dir / "summary.json", summary)
    log(f"wrote {out_dir / 'table.md'}")
    return 0


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def prompt_messages(record: dict, ours: dict, system_prompt: str | None) -> list[dict]:
    """The protocol's user template (the call-based one for functional code problems, as the loader marked
    them: `user_template`, else tests with fn_name) and system prompt."""
    template = ours["template"]
    call_based = record.get("user_template", "").endswith("call_based") if record.get("user_template") \
        else bool((record.get("tests") or {}).get("fn_name"))
    if ours.get("template_call_based") and call_based:
        template = ours["template_call_based"]
    if not template:
        raise BadInput(f"no user template for {record['source']} ({record['domain']}): set the benchmark's "
                       "template or generate.user_templates")
    return gen_stage.messages({**record, "user_template": None}, system_prompt, {record["domain"]: template})


def bench_scores(bench: dict, proto: dict, settings: dict, records: list, samples: list, gen_s: float) -> dict:
    """One benchmark's scores.json entry: the published scorer's score with its SE, ours beside it, how
    often they disagree, and the delta vs published with its SE."""
    n, scorer, ours = settings["n"], proto["published"]["scorer"], proto["ours"]["scorer"]
    by_scorer = {}
    for name, key in ((scorer, "correct_published_scorer"), (ours, "correct")):
        by_scorer[name] = {**eval_report.score_with_se(eval_report.pass_rates(samples, key), n),
                           "correct": sum(bool(s[key]) for s in samples)}
    disagree = sum(bool(s["correct"]) != bool(s["correct_published_scorer"]) for s in samples)
    main = by_scorer[scorer]
    published = bench.get("published")
    return {"score": main["score"], "se": main["se"], "se_sampling": main["se_sampling"], "scorer": scorer,
            "ours_scorer": ours, "by_scorer": by_scorer,
            "disagreement": None if scorer == ours else
            {"samples": disagree, "fraction": round(disagree / len(samples), 4) if samples else 0.0},
            "published": published, **eval_report.compare(main["score"], main["se"], published, len(records)),
            "problems": len(records), "samples": len(samples), "correct": main["correct"],
            "reasons": dict(collections.Counter(s["reason"].split(":", 1)[0] for s in samples)),
            "response_tokens": sum(s["response_tokens"] for s in samples), "generate_s": round(gen_s, 2),
            "protocol": proto, "settings": settings}


def _settings(bench: dict, ours: dict, system_prompt: str | None, limit: int | None, scale, seed: int,
              batch_invariant: bool) -> dict:
    """What a score depends on besides the model: a rerun with other settings scores again."""
    return {"temperature": ours["temperature"], "n": ours["n"], "top_p": ours["top_p"],
            "max_tokens": ours["max_tokens"], "template": ours["template"],
            "template_call_based": ours.get("template_call_based"), "dataset": bench.get("dataset"),
            "limit": limit, "scale": scale, "seed": seed, "batch_invariant": batch_invariant,
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
