"""Stage program `generate`: the teacher answers every problem of the recipe's sources.

    python -m reproduce.stages.generate --recipe ARTIFACTS/recipe.yaml --artifacts ARTIFACTS [--limit N]

Reads problems (problems.load_sources; smoke: smoke_data), builds each prompt from `generate.system_prompt`
and `generate.user_templates[domain]` through the model's chat template, samples `samples_per_problem`
responses at the recipe's temperature/top_p/max_tokens, and writes ARTIFACTS/generate/shard-NNNNN.jsonl:

    {id, problem_id, sample, source, domain, prompt, response, answer | tests,
     prompt_tokens, response_tokens, finish_reason}

Backends (one code path for this stage and `evaluate`, see `open_backend`):
- vLLM when CUDA is there and vllm imports: `LLM(model, tensor_parallel_size=tp)`; with data_parallel > 1,
  one worker process per replica, each pinned to its slice of GPUs with CUDA_VISIBLE_DEVICES.
- transformers otherwise (smoke scale on a CPU): batched `generate`.
- an OpenAI-compatible API with recipe `generate.backend: api`: each response is priced and appended to
  generate/usage.jsonl as it is paid; with REPRODUCE_API_BUDGET_USD set, it stops (exit 3, shards kept) once it
  has paid that cap, or before a shard that would pass it at the $ per problem paid so far.
At smoke scale the teacher is ARTIFACTS/models/tiny-teacher, built by `tinymodel` and taught the smoke
problems (see `smoke_teacher`).

Resumable: a shard is written whole (tmp file, then rename); a rerun skips problems already in a shard.
summary.json holds counts, tokens and the tokens/s this run achieved (what the cost model calibrates on).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import re
import sys
import time
from pathlib import Path

from reproduce.stages.lib.common import BadInput, run_main, write_progress
from reproduce.stages.lib.common import load_recipe as _load

SHARD_SIZE = 512          # problems per shard: ~2.3M output tokens at full scale, a few minutes of 8 GPUs
TRANSFORMERS_BATCH = 16   # prompts per transformers.generate call


def log(msg: str) -> None:
    print(f"generate: {msg}", file=sys.stderr, flush=True)


# ---- prompts ---------------------------------------------------------------------------------------------

def messages(record: dict, system_prompt: str | None, templates: dict) -> list[dict]:
    """The chat for one record: the system prompt, then the user template the record's loader picked (its
    `user_template`, SkyThought's rule per dataset: problems.py), else its domain's, filled with the problem."""
    key = record.get("user_template") or record["domain"]
    template = templates.get(key)
    if template is None:
        raise BadInput(f"no user template {key!r} for {record.get('source')} ({record['domain']}): expected "
                       f"generate.user_templates to have it (it has {', '.join(templates)})")
    user = template.format(problem=record["problem"])
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": user}]


def smoke_teacher(recipe: dict, artifacts: str | Path) -> Path:
    """ARTIFACTS/models/tiny-teacher: a tiny model taught every smoke problem of the recipe's sources.

    Every 4th problem is taught only a wrong response and every 8th+2 both a right and a wrong one, so the
    teacher is mostly right, deterministically wrong on ~1/4 and a coin toss on another ~1/8 at T>0: the
    filter stage has real traces to keep and to reject, like QwQ's ~20-45% rejections (recipe keep_rate)."""
    from reproduce.stages.lib import problems
    from reproduce.stages.smoke import smoke_data, tinymodel

    gen = recipe["generate"]
    pairs = []
    for i, record in enumerate(r for r in problems.load_sources(recipe) if not r.get("published")):
        right, wrong = smoke_data.reference_responses(record)
        prompt = messages(record, gen.get("system_prompt"), gen["user_templates"])
        pairs += [(prompt, wrong)] if i % 4 == 0 else [(prompt, right)] + ([(prompt, wrong)] if i % 8 == 2 else [])
    return tinymodel.build_tiny_model(Path(artifacts) / "models" / "tiny-teacher", pairs, log=log)


# ---- backends --------------------------------------------------------------------------------------------

def vllm_available() -> bool:
    try:
        import torch
        if not torch.cuda.is_available():
            return False
        import vllm  # noqa: F401
        return True
    except Exception:
        return False


@contextlib.contextmanager
def open_backend(model: str, tensor_parallel: int = 1, data_parallel: int = 1, backend: str = "auto",
                 seed: int = 0, usage=None):
    """Yield `(info, complete)`; `complete(prompts, sampling) -> [[completion, ...n] per prompt]` where
    sampling = {n, temperature, top_p, max_tokens} and a completion is
    {text, prompt_tokens, response_tokens, finish_reason ("stop" | "length")}. `usage` (a rewrite.Usage): where
    the API backend logs each response as it is paid."""
    if backend == "auto":
        backend = "vllm" if vllm_available() else "transformers"
    if backend == "vllm" and data_parallel > 1:
        with _vllm_pool(model, tensor_parallel, data_parallel, seed) as complete:
            yield {"backend": "vllm", "gpus": tensor_parallel * data_parallel}, complete
    elif backend == "vllm":
        complete = _vllm_local(model, tensor_parallel, seed)
        yield {"backend": "vllm", "gpus": tensor_parallel}, complete
    elif backend == "transformers":
        complete, gpus = _transformers(model, seed)
        yield {"backend": "transformers", "gpus": gpus}, complete
    elif backend == "api":
        with _api(model, usage) as complete:
            yield {"backend": "api", "gpus": 0}, complete
    else:
        raise BadInput(f"--backend {backend!r}: expected auto, vllm, transformers or api")


API_WORKERS = 8   # requests in flight to the teacher's API


@contextlib.contextmanager
def _api(model: str, usage=None):
    """The teacher through an OpenAI-compatible API (recipe `generate.backend: api`; OPENAI_BASE_URL and
    OPENAI_API_KEY as for the rewrite). Prompts are message lists. One request per sample (DeepSeek's reasoner
    takes no `n`); a reasoning model's `reasoning_content` is kept as the trace's <think> block. Each response is
    priced at the model's token prices and logged to `usage` (generate/usage.jsonl) from its thread as it is
    paid, the rewrite's way, so the ledger and the guard see the spend while the shard is still running."""
    from concurrent.futures import ThreadPoolExecutor

    from costmodel.api_prices import token_price
    from reproduce.stages import rewrite

    try:
        token_price(model)          # a model with no price is refused before anything is paid
    except BadInput as e:
        raise BadInput(f"recipe generate.model: {e}") from None
    client, server = rewrite.make_client(model)

    def one(messages, sampling):
        resp, _ = rewrite.with_retries(lambda: client.chat.completions.create(
            model=model, messages=messages, temperature=sampling["temperature"], top_p=sampling["top_p"],
            max_tokens=sampling["max_tokens"]))
        if usage is not None:
            rewrite.paid(usage, model, resp.model_dump(), batch=False)
        choice = resp.choices[0]
        thinking = getattr(choice.message, "reasoning_content", None)
        text = (f"<think>\n{thinking}\n</think>\n\n" if thinking else "") + (choice.message.content or "")
        return {"text": text, "prompt_tokens": resp.usage.prompt_tokens,
                "response_tokens": resp.usage.completion_tokens,
                "finish_reason": "length" if choice.finish_reason == "length" else "stop"}

    def complete(prompts, sampling):
        jobs = [(i, m) for i, m in enumerate(prompts) for _ in range(sampling["n"])]
        out = [[] for _ in prompts]
        with ThreadPoolExecutor(API_WORKERS) as pool:
            for (i, _), c in zip(jobs, pool.map(lambda job: one(job[1], sampling), jobs)):
                out[i].append(c)
        return out

    try:
        yield complete
    finally:
        if server is not None:
            server.stop()


def _within_cap(usage, done: int, shard: int) -> None:
    """Before each shard of the API teacher: OverBudget (exit 3, the shards written are kept) once this run has
    paid REPRODUCE_API_BUDGET_USD, or when the next shard, at the $ per problem paid so far, would take it past.
    (The pipeline admitted the first shard on the plan's estimate, and watches the run's forecast as well.)"""
    from reproduce.errors import OverBudget
    from reproduce.stages import rewrite

    cap = rewrite.api_budget()
    rewrite.over_budget(usage, cap, f"the next shard ({shard} problems)")
    paid = usage.usd()
    if cap is None or not done or paid <= 0:
        return
    ahead = paid / done * shard
    if paid + ahead > cap:
        raise OverBudget(f"paid ${paid:.4f} for {done} problems this run; the next shard of {shard} would add "
                         f"~${ahead:.4f} (${paid / done:.6f} a problem), past the REPRODUCE_API_BUDGET_USD=${cap:g} "
                         "left for it; stopped before it (the shards written are kept: run again with more budget "
                         "to finish)")


def node_share(records: list, environ=None) -> tuple[list, int, int]:
    """This node's share of the problems when generate runs on several nodes (recipe `generate.num_nodes`,
    SkyPilot's SKYPILOT_NODE_RANK / SKYPILOT_NUM_NODES): every N-th problem from its rank. -> (share, rank, N)"""
    env = os.environ if environ is None else environ
    nodes = int(env.get("SKYPILOT_NUM_NODES", "1") or 1)
    rank = int(env.get("SKYPILOT_NODE_RANK", "0") or 0)
    return (records[rank::nodes] if nodes > 1 else records), rank, nodes


def _vllm_local(model: str, tp: int, seed: int):
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, tensor_parallel_size=tp, seed=seed)   # seed: reproducible sampling per replica

    def complete(prompts, sampling):
        params = SamplingParams(n=sampling.get("n", 1), temperature=sampling["temperature"],
                                top_p=sampling.get("top_p", 1.0), max_tokens=sampling["max_tokens"])
        results = []
        for out in llm.generate(prompts, params, use_tqdm=False):
            results.append([{"text": c.text, "prompt_tokens": len(out.prompt_token_ids),
                             "response_tokens": len(c.token_ids),
                             "finish_reason": "length" if c.finish_reason == "length" else "stop"}
                            for c in out.outputs])
        return results
    return complete


def _vllm_worker(rank: int, gpus: str, model: str, tp: int, seed: int, jobs, results) -> None:
    """One data-parallel replica: its own process, its own GPUs, vLLM imported after pinning them."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        complete = _vllm_local(model, tp, seed + rank)
        results.put((rank, "ready", None))
        while (job := jobs.get()) is not None:
            results.put((rank, "done", complete(*job)))
    except BaseException as e:                       # report, so the parent does not wait forever
        import traceback
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


@contextlib.contextmanager
def _vllm_pool(model: str, tp: int, dp: int, seed: int):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")                    # CUDA cannot be forked
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(tp * dp)]
    if len(ids) < tp * dp:
        raise BadInput(f"tensor_parallel {tp} x data_parallel {dp} needs {tp * dp} GPUs; {len(ids)} visible")
    results = ctx.Queue()
    workers = []
    for rank in range(dp):
        jobs = ctx.Queue()
        proc = ctx.Process(target=_vllm_worker,   # not a daemon: vLLM with TP > 1 starts processes of its own
                           args=(rank, ",".join(ids[rank * tp:(rank + 1) * tp]), model, tp, seed, jobs, results))
        proc.start()
        workers.append((proc, jobs))

    def collect(expect: str) -> dict:
        import queue

        got = {}
        while len(got) < dp:
            try:
                rank, kind, payload = results.get(timeout=30)
            except queue.Empty:                      # a replica killed outright (OOM) reports nothing
                dead = [r for r, (proc, _) in enumerate(workers) if not proc.is_alive() and r not in got]
                if dead:
                    raise RuntimeError(f"vLLM replica {dead[0]} exited with code {workers[dead[0]][0].exitcode}")
                continue
            if kind == "error":
                raise RuntimeError(f"vLLM replica {rank} failed: {payload}")
            assert kind == expect, (kind, expect)
            got[rank] = payload
        return got

    def complete(prompts, sampling):
        step = -(-len(prompts) // dp)
        parts = [prompts[r * step:(r + 1) * step] for r in range(dp)]
        for (_, jobs), part in zip(workers, parts):
            jobs.put((part, sampling))
        got = collect("done")
        return [c for r in range(dp) for c in got[r]]

    try:
        collect("ready")
        yield complete
    finally:
        for proc, jobs in workers:
            jobs.put(None)
        for proc, _ in workers:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()


def _transformers(model: str, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
    if device == "cpu" and sum(p.numel() for p in lm.parameters()) < 10_000_000:
        torch.set_num_threads(1)      # a tiny model: threads only add sync cost (see tinymodel.train)
    eos = {tok.eos_token_id} | set(_as_list(getattr(lm.generation_config, "eos_token_id", None)))
    eos.discard(None)
    torch.manual_seed(seed)

    def complete(prompts, sampling):
        n, temp = sampling.get("n", 1), float(sampling["temperature"])
        kwargs = dict(do_sample=True, temperature=temp, top_p=sampling.get("top_p", 1.0)) if temp > 0 else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        results = []
        for i in range(0, len(prompts), TRANSFORMERS_BATCH):
            batch = prompts[i:i + TRANSFORMERS_BATCH]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = lm.generate(**enc, max_new_tokens=sampling["max_tokens"], num_return_sequences=n,
                                  eos_token_id=sorted(eos), pad_token_id=tok.pad_token_id, **kwargs)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            for j, prompt_len in enumerate(prompt_lens):
                samples = []
                for ids in new[j * n:(j + 1) * n]:
                    stop = next((k for k, t in enumerate(ids) if t in eos), None)
                    kept = ids if stop is None else ids[:stop + 1]   # count the end token, as vLLM does
                    samples.append({"text": tok.decode(kept, skip_special_tokens=True),
                                    "prompt_tokens": int(prompt_len), "response_tokens": len(kept),
                                    "finish_reason": "length" if stop is None else "stop"})
                results.append(samples)
        return results
    return complete, (1 if device == "cuda" else 0)


def _as_list(x):
    return x if isinstance(x, (list, tuple)) else [x]


def gpu_name() -> str | None:
    """The GPU as the cost model names it (H100, H200, A100-80GB, ...), or None on a CPU."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(0)
    except Exception:
        return None
    for known in ("H200", "H100", "L40S", "L4", "A10G"):
        if known in name:
            return known
    if "A100" in name:
        return "A100-80GB" if "80" in name else "A100"
    return name


def chat_renderer(model: str):
    """prompt messages -> text, with the model's own chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def throughput(info: dict, params_b: float | None, tp: int, response_tokens: int, seconds: float) -> dict:
    """tokens/s of this run, total and per GPU (costmodel.calibration turns the summary into its figure)."""
    tok_s = response_tokens / seconds if seconds > 0 else None
    out = {"tokens_per_s": round(tok_s, 2) if tok_s else None, "gpus": info["gpus"], "gpu": gpu_name(),
           "backend": info["backend"]}
    if tok_s and info["gpus"]:
        out["tokens_per_s_per_gpu"] = round(tok_s / info["gpus"], 2)
    return out


# ---- the stage -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    return run_main("generate", _parser(), run, argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproduce generate",
                                description="Teacher traces for every problem of the recipe's sources. "
                                            "Resumable: problems already in a shard are skipped.")
    p.add_argument("--recipe", required=True, help="the resolved recipe YAML")
    p.add_argument("--artifacts", required=True, help="the artifacts folder (writes generate/)")
    p.add_argument("--limit", type=int, help="at most N problems per source (a quick trial)")
    p.add_argument("--model", help="teacher model path or id (default: recipe models.teacher; smoke: tiny-teacher)")
    p.add_argument("--backend", default="auto", choices=("auto", "vllm", "transformers", "api"),
                   help="auto: the recipe's generate.backend api, else vLLM on CUDA, else transformers")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help=f"problems per shard (default {SHARD_SIZE})")
    return p


def load_recipe(path: str) -> dict:
    return _load(path, needs=("generate", "sources"))


def read_shards(out_dir: Path) -> list[dict]:
    records = []
    for path in sorted(out_dir.glob("shard-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def write_shard(out_dir: Path, records: list[dict], prefix: str = "shard-") -> Path:
    """The next PREFIXNNNNN.jsonl, whole or not at all (tmp file, fsync, rename). Several nodes writing the same
    bucket take a prefix each (shard-n1-...), so their names never collide; readers glob shard-*.jsonl."""
    taken = [int(m.group(1)) for p in out_dir.glob(f"{prefix}*.jsonl")
             if (m := re.fullmatch(re.escape(prefix) + r"(\d+)\.jsonl", p.name))]
    path = out_dir / f"{prefix}{max(taken, default=-1) + 1:05d}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit {args.limit}: expected 1 or more")
    if args.shard_size < 1:
        raise BadInput(f"--shard-size {args.shard_size}: expected 1 or more")
    from reproduce.stages.lib import problems

    t_start = time.monotonic()
    recipe = load_recipe(args.recipe)
    gen = recipe["generate"]
    smoke = recipe.get("scale") == "smoke"
    out_dir = Path(args.artifacts) / "generate"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.tmp"):               # a shard a killed run did not finish
        stale.unlink()

    try:
        todo_all = problems.load_sources(recipe, args.limit)
    except problems.BadSource as e:
        raise BadInput(str(e)) from None
    published = [r for r in todo_all if r.get("published")]     # `traces: published` (STILL-2): no teacher, $0
    todo_all, rank, nodes = node_share([r for r in todo_all if not r.get("published")])
    prefix = f"shard-n{rank}-" if nodes > 1 else "shard-"
    done = {r.get("problem_id", r["id"]) for r in read_shards(out_dir)}
    todo = [r for r in todo_all if r["id"] not in done]
    from reproduce.recipe_schema import api_backend

    backend = "api" if args.backend == "auto" and api_backend(recipe) else args.backend
    if backend == "api":
        model = args.model or gen["model"]
    else:
        model = args.model or (str(smoke_teacher(recipe, args.artifacts)) if smoke
                               else recipe["models"]["teacher"]["id"])
    n = int(gen.get("samples_per_problem", 1))
    sampling = {"n": n, "temperature": float(gen["temperature"]), "top_p": float(gen.get("top_p", 1.0)),
                "max_tokens": int(gen["max_tokens"])}
    tp, dp = int(gen.get("tensor_parallel", 1)), int(gen.get("data_parallel", 1))
    log(f"{len(todo_all)} problems, {len(todo_all) - len(todo)} already done, {len(todo)} to go; model {model}; "
        f"n={n} T={sampling['temperature']} top_p={sampling['top_p']} max_tokens={sampling['max_tokens']}")

    info, gen_s, new_records = {"backend": None, "gpus": 0}, 0.0, 0
    tokens = collections.Counter()
    write_progress(out_dir, len(todo_all) - len(todo), len(todo_all), "problems")
    if todo:
        # an API takes messages; a local model gets them through its own chat template
        render = (lambda msgs: msgs) if backend == "api" else chat_renderer(model)
        paid = contextlib.nullcontext()
        if backend == "api":   # its payments: one priced line each in generate/usage.jsonl, as the rewrite's
            from reproduce.stages import rewrite

            paid = rewrite.Usage(str(out_dir / "usage.jsonl"))
        with paid as usage, open_backend(model, tp, dp, backend, usage=usage) as (info, complete):
            for start in range(0, len(todo), args.shard_size):
                chunk = todo[start:start + args.shard_size]
                if usage is not None:
                    _within_cap(usage, start, len(chunk))
                prompts = [render(messages(r, gen.get("system_prompt"), gen["user_templates"])) for r in chunk]
                t0 = time.monotonic()
                outs = complete(prompts, sampling)
                dt = time.monotonic() - t0
                gen_s += dt
                rows = []
                for record, prompt, samples in zip(chunk, prompts, outs):
                    if isinstance(prompt, list):    # API messages: the user turn is what convert trains on
                        prompt = prompt[-1]["content"]
                    for k, c in enumerate(samples):
                        rows.append({**_trace_fields(record, k, n), "prompt": prompt, "response": c["text"],
                                     "prompt_tokens": c["prompt_tokens"], "response_tokens": c["response_tokens"],
                                     "finish_reason": c["finish_reason"]})
                        tokens["prompt"] += c["prompt_tokens"]
                        tokens["response"] += c["response_tokens"]
                path = write_shard(out_dir, rows, prefix)
                new_records += len(rows)
                write_progress(out_dir, len(todo_all) - len(todo) + start + len(chunk), len(todo_all), "problems")
                chunk_tokens = sum(c["response_tokens"] for s in outs for c in s)
                log(f"{path.name}: {len(chunk)} problems, {chunk_tokens:,} tokens in {dt:.1f} s "
                    f"({chunk_tokens / max(dt, 1e-9):,.0f} tok/s); {start + len(chunk)}/{len(todo)}")

    if rank == 0 and [r for r in published if r["id"] not in done]:    # their own shards, beside the teacher's
        write_shard(out_dir, [published_trace(r) for r in published if r["id"] not in done], "shard-published-")
    everything = read_shards(out_dir)
    summary = {
        "stage": "generate", "model": model, "scale": recipe.get("scale"),
        "problems": len({r.get("problem_id", r["id"]) for r in everything}),
        "records": sum(not r.get("published") for r in everything),
        "published": sum(bool(r.get("published")) for r in everything),
        "problems_this_run": len(todo), "records_this_run": new_records, "skipped_problems": len(todo_all) - len(todo),
        "prompt_tokens": sum(r["prompt_tokens"] for r in everything),
        "response_tokens": sum(r["response_tokens"] for r in everything),
        "prompt_tokens_this_run": tokens["prompt"], "response_tokens_this_run": tokens["response"],
        "finish_reasons": dict(collections.Counter(r["finish_reason"] for r in everything)),
        "by_source": dict(collections.Counter(r["source"] for r in everything)),
        "sampling": sampling, "tensor_parallel": tp, "data_parallel": dp,
        "generate_s": round(gen_s, 2), "wall_s": round(time.monotonic() - t_start, 2),
        **throughput(info, (recipe["models"]["teacher"].get("params_b")), tp, tokens["response"], gen_s),
    }
    # several nodes: rank 0 writes the summary the pipeline reads, the others theirs beside it
    (out_dir / ("summary.json" if rank == 0 else f"summary-n{rank}.json")).write_text(json.dumps(summary, indent=2))
    log(f"{summary['records']} traces ({summary['response_tokens']:,} response tokens) in {len(list(out_dir.glob('shard-*.jsonl')))} "
        f"shards; this run {new_records} traces" + (f" at {summary['tokens_per_s']:,} tok/s" if summary["tokens_per_s"] else ""))
    return 0


def published_trace(record: dict) -> dict:
    """A source's published trace as a generate record: the problem as the user turn, as NovaSky mixed STILL-2's
    (ST@HEAD scripts/combine_data.py); no teacher tokens, so `summary.records` counts teacher traces only."""
    return {**_trace_fields(record, 0, 1), "prompt": record["problem"], "response": record["response"],
            "prompt_tokens": 0, "response_tokens": 0, "finish_reason": "stop", "published": True}


def _trace_fields(record: dict, k: int, n: int) -> dict:
    """The problem's fields for sample k; ids stay unique per sample (filter and convert key on id)."""
    out = {"id": record["id"] if n == 1 else f"{record['id']}#{k}", "problem_id": record["id"], "sample": k,
           "source": record["source"], "domain": record["domain"]}
    for key in ("answer", "tests"):
        if key in record:
            out[key] = record[key]
    return out


if __name__ == "__main__":
    sys.exit(main())
