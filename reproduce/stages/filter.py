"""Stage program `filter`: rejection sampling. Grade every teacher trace; keep the correct ones.

    # in the pipeline (limits from the recipe's `filter:` section)
    python -m reproduce.stages.filter --recipe ARTIFACTS/recipe.yaml --artifacts ARTIFACTS
    # on any traces file: records with id, domain (math|code|mcq), answer or tests, response
    python -m reproduce.stages.filter traces.jsonl -o graded.jsonl --workers 8

Pipeline mode reads ARTIFACTS/generate/shard-*.jsonl and writes ARTIFACTS/filter/kept.jsonl,
rejected.jsonl (each record + `correct`, `reason`) and summary.json. Standalone mode writes every record,
graded, to one file. Both append and skip ids already graded, so an interrupted run resumes where it
stopped. Grading runs in worker processes (math-verify's timeouts need a process's main thread; code runs
in `sandbox`), one record per task.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import glob
import itertools
import json
import math
import multiprocessing
import os
import resource
import sys
import time

from reproduce.stages.lib import grading, sandbox
from reproduce.stages.lib.common import BadInput, load_recipe, read_jsonl, run_main, write_progress

DEFAULT_LIMITS = {"math_timeout_s": 5, "code_timeout_s": 10, "code_memory_mb": 1024}   # recipe defaults
MAX_TIMEOUT_S = 3600          # a longer "limit" on one test is no limit
MAX_WORKERS = 256

# Kept for now, graded on the rewritten text: QwQ's raw APPS answers pass ~25% when the last code block is
# taken, >90% after reformatting (BLOG), so grading code before the rewrite would reject good traces.
DEFERRED = "deferred: graded after the rewrite"


def main(argv: list[str] | None = None) -> int:
    return run_main("filter", _parser(), _run, argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce filter",
        description="Rejection sampling: grade traces (math-verify, sandboxed code tests, multiple choice) "
                    "and keep the correct ones. Resumable: ids already graded are skipped.")
    p.add_argument("input", nargs="?", help="standalone: a traces JSONL file (id, domain, answer|tests, response)")
    p.add_argument("-o", "--output", help="standalone: graded JSONL to write (appended to; resumes)")
    p.add_argument("--recipe", help="pipeline: the resolved recipe YAML (limits from its filter: section)")
    p.add_argument("--artifacts", help="pipeline: the artifacts folder (reads generate/, writes filter/)")
    p.add_argument("--workers", type=int, help="grading processes (default: recipe filter.cpus, at most this "
                                               "machine's CPUs; standalone: this machine's CPUs)")
    p.add_argument("--math-timeout-s", type=float, help="math-verify timeout per parse/compare (default 5)")
    p.add_argument("--code-timeout-s", type=float, help="CPU seconds per code test (default 10; a wall-clock "
                                                        "backstop of 3x + 5 s ends programs that sleep)")
    p.add_argument("--code-memory-mb", type=int, help="address-space limit for code under test (default 1024)")
    p.add_argument("--unsafe-sandbox", action="store_true",
                   help=f"run model-written code with rlimits only when bubblewrap is missing (as {sandbox.UNSAFE_ENV}=1)")
    return p


def _run(args) -> int:
    pipeline = bool(args.recipe or args.artifacts)
    if pipeline and (args.input or args.output):
        raise BadInput("give either --recipe/--artifacts (pipeline) or INPUT -o OUTPUT (standalone), not both")
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise BadInput(f"--workers {args.workers}: expected 1 to {MAX_WORKERS}")
    flags = {k: v for k, v in (("math_timeout_s", args.math_timeout_s), ("code_timeout_s", args.code_timeout_s),
                               ("code_memory_mb", args.code_memory_mb)) if v is not None}
    for key, value in flags.items():
        check_limit(key, value, f"--{key.replace('_', '-')}")
    if args.unsafe_sandbox:
        os.environ[sandbox.UNSAFE_ENV] = "1"      # the grading workers inherit it
    limits = dict(DEFAULT_LIMITS)
    deferred: set[str] = set()   # domains graded only after the rewrite (its re-check), as NovaSky did
    if pipeline:
        if not (args.recipe and args.artifacts):
            raise BadInput("pipeline mode needs both --recipe and --artifacts")
        recipe = load_recipe(args.recipe)
        section = recipe.get("filter") or {}
        if (recipe.get("rewrite") or {}).get("recheck"):
            deferred = set(section.get("grade_after_rewrite") or ())
        for key in DEFAULT_LIMITS:
            if section.get(key) is not None:
                limits[key] = check_limit(key, section[key], f"recipe filter.{key}")
        cpus = section.get("cpus")
        inputs = sorted(glob.glob(os.path.join(args.artifacts, "generate", "shard-*.jsonl")))
        if not inputs:
            raise BadInput(f"no traces: {os.path.join(args.artifacts, 'generate', 'shard-*.jsonl')} matches "
                           "nothing (run the generate stage first)")
        out_dir = os.path.join(args.artifacts, "filter")
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise BadInput(f"--artifacts {args.artifacts!r}: cannot write {out_dir} ({e.strerror})") from None
        outputs = {True: os.path.join(out_dir, "kept.jsonl"), False: os.path.join(out_dir, "rejected.jsonl")}
    else:
        if not (args.input and args.output):
            raise BadInput("standalone mode needs INPUT.jsonl and -o OUTPUT.jsonl (or use --recipe/--artifacts)")
        if not os.path.isfile(args.input):
            raise BadInput(f"input {args.input!r} is not a file")
        if os.path.exists(args.output) and os.path.samefile(args.input, args.output):
            raise BadInput(f"-o {args.output!r} is the input file: give another file to write")
        cpus = None
        inputs = [args.input]
        _check_output(args.output)
        outputs = {True: args.output, False: args.output}
    limits.update(flags)
    workers = args.workers or max(1, min(int(cpus or os.cpu_count() or 1), os.cpu_count() or 1))

    tally = Tally()
    done: set[str] = set()
    for path in set(outputs.values()):
        for record in _read_output(path):
            done.add(str(record.get("id")))
            tally.add(record, record.get("correct"), record.get("reason", ""), None)
    previous = tally.records
    pending, code = _count_pending(inputs, done, deferred)
    if code:
        sandbox.require()    # no sandbox and no opt-in: refuse (exit 2) before grading anything

    start = time.monotonic()
    files = _open_outputs(set(outputs.values()))
    bar = _progress(pending)
    try:
        passed = ((r, None, DEFERRED, None) for r in _pending(inputs, done) if r.get("domain") in deferred)
        graded = grade_all((r for r in _pending(inputs, done) if r.get("domain") not in deferred), workers, limits)
        for record, correct, reason, cpu_s in itertools.chain(passed, graded):
            record["correct"], record["reason"] = correct, reason
            f = files[outputs[correct is not False]]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()                                   # a killed run resumes from what is on disk
            tally.add(record, correct, reason, cpu_s)
            bar(1)
            if pipeline and tally.records % 50 == 0:    # what the pipeline shows and forecasts from
                write_progress(out_dir, tally.records, previous + pending, "records")
    finally:
        bar(0, close=True)
        for f in files.values():
            f.close()
    wall = time.monotonic() - start

    summary = tally.summary(graded=tally.records - previous, skipped=len(done), wall_s=wall, workers=workers,
                            limits=limits)
    if pipeline:
        write_progress(out_dir, tally.records, previous + pending, "records")
        summary["sandbox_isolation"] = list(_isolation())
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    print(f"filter: graded {summary['graded_this_run']} in {wall:.1f} s ({summary['records_per_s']} records/s, "
          f"{workers} workers); {summary['kept']} kept, {summary['rejected']} rejected in all"
          + (f"; {len(done)} already graded" if done else ""), file=sys.stderr)
    return 0


# ---- reading ----------------------------------------------------------------------------------------------

def check_limit(key: str, value, where: str):
    """A grading limit: a finite number above 0, and at most what still limits (timeouts) or exists (memory)."""
    top = physical_memory_mb() if key == "code_memory_mb" else MAX_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= top:
        unit = "MB (this machine's memory)" if key == "code_memory_mb" else "seconds"
        raise BadInput(f"{where} {value!r}: expected a number above 0 and at most {top:,} {unit}")
    return value


def physical_memory_mb() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    except (ValueError, OSError):
        return 1 << 20


def _check_output(path: str) -> None:
    """-o must be a file we can append to, and not someone's other file (a resumed run appends to our own)."""
    if os.path.isdir(path):
        raise BadInput(f"-o {path!r} is a folder: expected a file to write")
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise BadInput(f"-o {path!r}: cannot write there ({parent} is not a writable folder)")
        return
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as e:
        raise BadInput(f"-o {path!r}: cannot read it ({e.strerror})") from None
    try:
        ok = not first or {"id", "correct", "reason"} <= set(json.loads(first))
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise BadInput(f"-o {path!r} exists and is not graded output of this program: refusing to append to it")


def _open_outputs(paths) -> dict:
    files = {}
    try:
        for path in paths:
            if os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            files[path] = open(path, "a", encoding="utf-8")
    except OSError as e:
        for f in files.values():
            f.close()
        raise BadInput(f"cannot write {e.filename or path!r} ({e.strerror})") from None
    return files


def _records(path: str):
    """read_jsonl, with a binary or unreadable file as BadInput."""
    try:
        yield from read_jsonl(path, "id")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text (expected JSONL: one JSON object a line)") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read it ({e.strerror})") from None


def _count_pending(inputs, done, deferred=()) -> tuple[int, int]:
    """-> (records to grade, of which code to run now)."""
    seen, n, code = set(done), 0, 0
    for path in inputs:
        for record in _records(path):
            if str(record["id"]) not in seen:
                seen.add(str(record["id"]))
                n += 1
                code += record.get("domain") == "code" and "code" not in deferred
    return n, code


def _pending(inputs, done):
    seen = set(done)
    for path in inputs:
        for record in _records(path):
            if str(record["id"]) not in seen:      # a duplicate id is graded once
                seen.add(str(record["id"]))
                yield record


def _read_output(path: str):
    """Records already graded. A torn last line (the run was killed mid-write) is cut off."""
    if not os.path.exists(path):
        return
    good = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                break
            good += len(line)
            yield record
    if good != os.path.getsize(path):
        os.truncate(path, good)


# ---- grading, in worker processes -------------------------------------------------------------------------

class WorkersDied(BadInput):
    exit_code = 1


def _grade_one(record: dict, limits: dict):
    """-> (record, correct, reason, cpu seconds incl. the sandboxed children). Never raises."""
    if record.get("published"):                         # a published trace (STILL-2): kept as NovaSky kept it
        return record, True, "published: kept as-is, no grader", 0.0
    before = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        correct, reason = grading.grade(record, **limits)
    except sandbox.Unavailable:
        raise                                           # no sandbox: stop, do not mark code as failed
    except Exception as e:                              # a grader bug must not lose the whole run
        correct, reason = False, f"grader error: {type(e).__name__}: {str(e)[:160]}"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (time.process_time() - before[0] + after.ru_utime - before[1].ru_utime
           + after.ru_stime - before[1].ru_stime)
    return record, bool(correct), reason, round(cpu, 4)


def grade_all(records, workers: int, limits: dict):
    """Yield (record, correct, reason, cpu seconds) for each record, graded in `workers` processes (in any order):
    the filter stage's loop, and rewrite's re-check."""
    if workers > 1 and not os.access(sys.executable, os.X_OK):
        # worker processes start from sys.executable: a venv whose python lies in another user's home
        # cannot start them (multiprocessing would fail with a broken pipe and a traceback)
        print(f"filter: {sys.executable} is not executable by this user: grading in one process",
              file=sys.stderr)
        workers = 1
    if workers == 1:
        for record in records:
            yield _grade_one(record, limits)
        return
    # forkserver: workers start from a clean single-threaded process (the sandbox forks from them), with
    # the graders and math-verify (sympy: ~1 s to import) loaded once.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["reproduce.stages.lib.grading", "math_verify"])
    window = workers * 4                                # bounded: the traces file may not fit in memory
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        running = set()
        records = iter(records)
        while True:
            for record in records:
                running.add(pool.submit(_grade_one, record, limits))
                if len(running) >= window:
                    break
            if not running:
                return
            finished, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                try:
                    yield future.result()
                except cf.BrokenExecutor as e:
                    raise WorkersDied(f"a grading worker died ({e}); what was graded is kept: run again to "
                                      "resume") from None


def _isolation() -> tuple[str, ...]:
    try:
        return sandbox.run_python("pass", timeout_s=5).isolation
    except (OSError, BadInput):
        return ()


# ---- accounting -------------------------------------------------------------------------------------------

class Tally:
    """Counts for summary.json: per source and domain, kept/rejected, reason categories, CPU seconds."""

    def __init__(self):
        self.records = 0
        self.by_source = collections.defaultdict(collections.Counter)
        self.by_domain = collections.defaultdict(collections.Counter)
        self.reasons = collections.Counter()
        self.cpu = collections.Counter()
        self.cpu_n = collections.Counter()

    def add(self, record: dict, correct, reason: str, cpu_s: float | None) -> None:
        verdict = "kept" if correct is not False else "rejected"   # None: deferred to the re-check
        self.records += 1
        self.by_source[str(record.get("source", "unknown"))][verdict] += 1
        self.by_domain[str(record.get("domain", "unknown"))][verdict] += 1
        self.reasons[grading.category(reason or "")] += 1
        if cpu_s is not None:
            self.cpu[str(record.get("domain"))] += cpu_s
            self.cpu_n[str(record.get("domain"))] += 1

    def summary(self, graded: int, skipped: int, wall_s: float, workers: int, limits: dict) -> dict:
        kept = sum(c["kept"] for c in self.by_domain.values())
        table = lambda d: {k: {"kept": v["kept"], "rejected": v["rejected"]} for k, v in sorted(d.items())}  # noqa: E731
        out = {
            "stage": "filter",
            "records": self.records, "kept": kept, "rejected": self.records - kept,
            "keep_rate": round(kept / self.records, 4) if self.records else None,
            "by_source": table(self.by_source), "by_domain": table(self.by_domain),
            "reasons": dict(self.reasons.most_common()),
            "graded_this_run": graded, "skipped_already_graded": skipped,
            "wall_s": round(wall_s, 3), "records_per_s": round(graded / wall_s, 2) if wall_s > 0 else None,
            "workers": workers, "limits": limits,
            "cpu_s": {d: round(s, 3) for d, s in sorted(self.cpu.items())},
        }
        # The recipe's cost-model knobs (filter.mean_cpu_s_per_math / _code); calibration reads these.
        for domain in ("math", "code", "mcq"):
            if self.cpu_n[domain]:
                out[f"mean_cpu_s_per_{domain}"] = round(self.cpu[domain] / self.cpu_n[domain], 4)
        return out


def _progress(total: int):
    """A progress bar on stderr when it is a terminal: tqdm if installed, else a counter line."""
    if not sys.stderr.isatty() or total == 0:
        return lambda n, close=False: None
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, unit="rec", desc="filter", file=sys.stderr)

        def update(n, close=False):
            bar.update(n)
            if close:
                bar.close()
        return update
    state = {"done": 0, "start": time.monotonic()}

    def update(n, close=False):
        state["done"] += n
        rate = state["done"] / max(time.monotonic() - state["start"], 1e-9)
        sys.stderr.write(f"\rfilter {state['done']}/{total} ({rate:.1f}/s)" + ("\n" if close else ""))
        sys.stderr.flush()
    return update


if __name__ == "__main__":
    sys.exit(main())
