"""Problems for the teacher (recipe `sources`) and the benchmarks (recipe `eval.benchmarks`), as records:

    {id, source, domain (math|code|mcq), problem, answer}          math, mcq (answer: the gold text / letter)
    {id, source, domain: code, problem, tests, user_template}       tests: {inputs, outputs[, fn_name]}

`problem` is the body SkyThought's handler put into its prompt (for code: the statement with the starter code
joined as that handler joined it); `user_template` names the recipe's `generate.user_templates` entry the
handler's rule picks for the row (APPS: `code` or `code_call_based` by fn_name; TACO: `taco` or
`taco_call_based` by starter code or fn_name; LiveCodeBench: stdin or functional). The texts themselves are
data: prompts.yaml, with their commits. `tests` is the layout `grading.grade_code` runs: stdin strings and
expected stdout (APPS/TACO), or with `fn_name` argument lists and return values (call-based). At
`scale: smoke` every source and benchmark comes from `smoke_data` (no hub). At full scale the rows come from
the HF hub with `datasets`; each dataset has a *transform* (rows in the dataset's own columns -> records) kept
apart from the download, so tests can run the transforms on rows they build. Filters and splits follow SkyThought (shared/reference/sky-t1.md).
"""
from __future__ import annotations

import base64
import io
import json
import pickle
import random
import sys
import zlib
from typing import Iterable, Mapping

from reproduce.stages.lib.grading import extract_boxed
from reproduce.stages.smoke import smoke_data



class BadSource(Exception):
    """A recipe names a dataset or filter this module does not know: one line, exit 2."""


# ---- entry points --------------------------------------------------------------------------------------------

def load_sources(recipe: dict, limit: int | None = None) -> list[dict]:
    """Every teacher problem of the recipe, source by source (at most `limit` per source)."""
    out = []
    for src in recipe["sources"]:
        n = int(src.get("problems") or 0)
        if limit is not None:
            n = min(n, limit) if n else limit
        if recipe.get("scale") == "smoke":
            out += smoke_data.problems(src["name"], src["domain"], n)
        else:
            records = load_hub_source(src)
            out += records[:limit] if limit is not None else records
    return out


def load_benchmark(bench: dict, scale: str = "full", limit: int | None = None) -> list[dict]:
    """One `eval.benchmarks` item's problems."""
    if scale == "smoke":
        n = int(bench["problems"])  # the recipe's smoke block sets eval.benchmarks.*.problems
        return smoke_data.problems(bench["name"], bench["domain"], min(n, limit or n))
    records = load_hub_benchmark(bench)
    return records[:limit] if limit is not None else records


# ---- hub loaders (GPU/CPU nodes with internet; never in tests) ---------------------------------------------

def _hub(dataset: str, split: str, subset: str | None = None, **kwargs):
    from datasets import load_dataset

    print(f"problems: loading {dataset}" + (f"/{subset}" if subset else "") + f" [{split}]", file=sys.stderr)
    return load_dataset(dataset, subset, split=split, **kwargs)


def numina_labels() -> dict[str, float]:
    """Difficulty per NuminaMath problem text: NovaSky's GPT-4o-mini labels on the AoPS 1-10 scale
    (`NovaSky-AI/labeled_numina_difficulty_859K`, column `gpt_difficulty_parsed`; ST@HEAD numina_handler.py)."""
    return {row["problem"]: row["gpt_difficulty_parsed"]
            for row in _hub("NovaSky-AI/labeled_numina_difficulty_859K", "train")}


def _numina(src: dict, rows) -> list[dict]:
    flt = src.get("filter") or {}
    labels = numina_labels() if flt.get("difficulty") else None
    return numina_records(rows, src["name"], flt, labels)


# Datasets of a known shape: dataset id -> (load kwargs, transform(src, rows)). Any other dataset is described by
# the source itself (`fields`, `answer_from`, `filter`) and read by `table_records`: no code for a new dataset.
LOADERS = {
    "AI-MO/NuminaMath-CoT": ({}, _numina),
    "codeparrot/apps": ({"trust_remote_code": True}, lambda src, rows: apps_records(rows, src["name"])),
    "BAAI/TACO": ({"trust_remote_code": True},
                  lambda src, rows: taco_records(rows, src["name"], src.get("filter") or {})),
}
FIELDS = {"math": ("problem", "answer"), "mcq": ("problem", "answer"), "code": ("problem", "tests")}
FILTER_KEYS = ("equals", "contains", "end")


def check_source(src: dict) -> None:
    """A source the generic reader can load: its fields name the columns its domain needs, its filter uses
    known keys. Known datasets (LOADERS) need neither. Raises BadSource (one line)."""
    if src["dataset"] in LOADERS:
        return
    need = FIELDS.get(src.get("domain"), ("problem", "answer"))
    fields = src.get("fields") or {}
    missing = [f for f in need if f not in fields]
    if missing:
        raise BadSource(f"source {src.get('name')!r}: dataset {src['dataset']!r} has no loader built in, so it needs "
                        f"`fields` naming the columns of {', '.join(need)} (missing {', '.join(missing)}); "
                        f"built-in: {', '.join(LOADERS)}")
    bad = sorted(set(src.get("filter") or {}) - set(FILTER_KEYS))
    if bad:
        raise BadSource(f"source {src.get('name')!r}: filter key {bad[0]!r} is unknown for a generic dataset; "
                        f"expected {', '.join(FILTER_KEYS)} (equals/contains: {{column: value}}, end: first N rows)")


def table_records(rows: Iterable[Mapping], src: dict) -> list[dict]:
    """Rows of any dataset -> records, as the source describes them: `fields` maps our record keys (problem,
    answer | tests, starter_code, id) to its columns; `answer_from: boxed` takes the answer column's last
    \\boxed{}; `filter: {equals: {col: v}, contains: {col: text}, end: N}`. Code tests are APPS-layout JSON."""
    check_source(src)
    fields, flt, name, domain = src["fields"], src.get("filter") or {}, src["name"], src["domain"]
    out = []
    for i, row in enumerate(rows):
        if flt.get("end") and i >= int(flt["end"]):
            break
        if any(row.get(c) != v for c, v in (flt.get("equals") or {}).items()):
            continue
        if any(str(v) not in str(row.get(c) or "") for c, v in (flt.get("contains") or {}).items()):
            continue
        rid = f"{name}-{row[fields['id']] if 'id' in fields else i}"
        problem = row.get(fields["problem"])
        if not problem:
            continue
        if domain == "code":
            tests = apps_tests(row.get(fields["tests"]))
            if tests is None:
                continue
            starter = row.get(fields["starter_code"]) if "starter_code" in fields else None
            out.append(_apps_record(rid, name, str(problem), starter, tests))
            continue
        answer = row.get(fields["answer"])
        answer = extract_boxed(str(answer)) if src.get("answer_from") == "boxed" else answer
        if answer is None or str(answer).strip() == "":
            continue
        out.append({"id": rid, "source": name, "domain": domain, "problem": str(problem), "answer": str(answer)})
    return out


def load_hub_source(src: dict) -> list[dict]:
    dataset = src["dataset"]
    if dataset in LOADERS:
        kwargs, transform = LOADERS[dataset]
        return transform(src, _hub(dataset, src["split"], src.get("subset"), **kwargs))
    check_source(src)
    return table_records(_hub(dataset, src["split"], src.get("subset")), src)


def load_hub_benchmark(bench: dict) -> list[dict]:
    dataset, name = bench["dataset"], bench["name"]
    if dataset == "qq8933/MATH500":
        return math500_records(_hub(dataset, bench["split"]), name)
    if dataset == "AI-MO/aimo-validation-aime":
        return aime_records(_hub(dataset, bench["split"]), name, year=bench.get("year", "2024"))
    if dataset == "Idavidrein/gpqa":
        return gpqa_records(_hub(dataset, bench["split"], bench.get("subset", "gpqa_diamond")), name)
    if dataset == "livecodebench/code_generation_lite":
        difficulty = bench.get("difficulty") or name.rsplit("_", 1)[-1]       # livecodebench_easy -> easy
        rows = _hub(dataset, bench["split"], version_tag=bench.get("version", "release_v2"), trust_remote_code=True)
        return livecodebench_records(rows, name, difficulty)
    if dataset == "Hothan/OlympiadBench":
        return olympiadbench_records(_hub(dataset, bench["split"], bench.get("subset")), name)
    raise BadSource(f"benchmark {name!r}: dataset {dataset!r} has no loader; expected one of qq8933/MATH500, "
                    "AI-MO/aimo-validation-aime, Idavidrein/gpqa, livecodebench/code_generation_lite, "
                    "Hothan/OlympiadBench")


# ---- transforms: dataset rows -> records ---------------------------------------------------------------------

def numina_records(rows: Iterable[Mapping], name: str, flt: Mapping,
                   labels: Mapping[str, float] | None = None) -> list[dict]:
    """NuminaMath-CoT rows (problem, solution, source, messages) -> math records.

    Filters, in order: `source` equal; the first `end` rows of that source (olympiads: 20,000; whether
    SkyThought cut before or after its other filters is UNVERIFIED, sky-t1.md); `solution_contains`
    ("boxed"); `difficulty: [lo, hi]` inclusive (ST@#25) looked up in `labels` by problem text; a problem
    with no label is dropped, as SkyThought's pandas `.map(diff_dict)` does. The answer is the solution's
    last \\boxed{}.
    """
    lo_hi = flt.get("difficulty")
    if lo_hi is not None and labels is None:
        raise BadSource(f"source {name!r}: a difficulty filter needs difficulty labels")
    out, seen_source = [], 0
    for i, row in enumerate(rows):
        if flt.get("source") and row.get("source") != flt["source"]:
            continue
        seen_source += 1
        if flt.get("end") and seen_source > int(flt["end"]):
            break
        solution = row.get("solution") or ""
        if flt.get("solution_contains") and flt["solution_contains"] not in solution:
            continue
        if lo_hi is not None:
            level = labels.get(row["problem"])
            if level is None or not (lo_hi[0] <= float(level) <= lo_hi[1]):
                continue
        answer = extract_boxed(solution)
        if not answer:
            continue
        out.append({"id": f"{name}-{i}", "source": name, "domain": "math", "problem": row["problem"],
                    "answer": answer})
    return out


def apps_tests(input_output) -> dict | None:
    """APPS/TACO `input_output` (a JSON string: inputs, outputs, optional fn_name) -> tests, or None."""
    try:
        io_ = json.loads(input_output) if isinstance(input_output, str) else dict(input_output or {})
    except ValueError:
        return None
    inputs, outputs = io_.get("inputs") or [], io_.get("outputs") or []
    if not inputs or len(inputs) != len(outputs):
        return None
    tests = {"inputs": inputs, "outputs": outputs}
    if io_.get("fn_name"):
        tests["fn_name"] = io_["fn_name"]
    return tests


def _apps_record(rid: str, name: str, question: str, starter_code, tests: dict) -> dict:
    """SkyThought's APPS prompt (ST@init APPSTaskHandler.generate_prompt): the instruction by whether the tests
    have fn_name, then the question, then "\n" + starter code whenever the row has the field (codeparrot/apps
    stores "" for none, and "" still adds the newline). No QUESTION/ANSWER wrapper."""
    body = question + ("\n" + starter_code if starter_code is not None else "")
    return {"id": rid, "source": name, "domain": "code", "problem": body, "tests": tests,
            "user_template": "code_call_based" if tests.get("fn_name") else "code"}


def apps_records(rows: Iterable[Mapping], name: str) -> list[dict]:
    """codeparrot/apps rows (problem_id, question, input_output, starter_code, difficulty, ...) -> code
    records; rows without usable tests are skipped (a sample could never pass them)."""
    out = []
    for row in rows:
        tests = apps_tests(row.get("input_output"))
        if tests is None:
            continue
        out.append(_apps_record(f"{name}-{row['problem_id']}", name, row["question"], row.get("starter_code"), tests))
    return out


def _taco_record(rid: str, name: str, row: Mapping, tests: dict) -> dict:
    """SkyThought's TACO prompt (ST@init TACOTaskHandler.generate_prompt): "\nQUESTION:\n" + question + starter
    code (joined as is) + "Use Standard Input format" only when there is neither starter code nor fn_name, else
    "Use Call-Based format", + "\nANSWER:\n". No stdin instruction: the wrapper is the whole prompt."""
    starter = row.get("starter_code") or ""
    call_based = bool(starter) or bool(tests.get("fn_name"))
    return {"id": rid, "source": name, "domain": "code", "problem": row["question"] + starter, "tests": tests,
            "user_template": "taco_call_based" if call_based else "taco"}


def taco_records(rows: Iterable[Mapping], name: str, flt: Mapping) -> list[dict]:
    """BAAI/TACO rows (question, input_output, starter_code, difficulty, ...) -> code records.
    `filter: {difficulty: MEDIUM}` keeps that difficulty (ST@init `--source MEDIUM --filter-difficulty`)."""
    out = []
    for i, row in enumerate(rows):
        if flt.get("difficulty") and row.get("difficulty") != flt["difficulty"]:
            continue
        tests = apps_tests(row.get("input_output"))
        if tests is None:
            continue
        out.append(_taco_record(f"{name}-{i}", name, row, tests))
    return out


def math500_records(rows: Iterable[Mapping], name: str) -> list[dict]:
    """qq8933/MATH500 rows (problem, solution, answer, subject, level, unique_id) -> math records."""
    return [{"id": f"{name}-{i}", "source": name, "domain": "math", "problem": row["problem"],
             "answer": str(row["answer"])} for i, row in enumerate(rows)]


def aime_records(rows: Iterable[Mapping], name: str, year: str = "2024") -> list[dict]:
    """AI-MO/aimo-validation-aime rows (id, problem, solution, answer, url); AIME24 = url contains "2024"."""
    return [{"id": f"{name}-{row.get('id', i)}", "source": name, "domain": "math", "problem": row["problem"],
             "answer": str(row["answer"])} for i, row in enumerate(rows) if year in (row.get("url") or "")]


def gpqa_records(rows: Iterable[Mapping], name: str, seed: int = 0) -> list[dict]:
    """Idavidrein/gpqa rows (Question, Correct Answer, Incorrect Answer 1-3) -> mcq records.

    The four answers are shuffled (SkyThought uses an unseeded random.shuffle of the same list; we seed it so
    reruns and resumed runs ask the same question, and with the global RNG seeded alike both draw the same
    orders) and listed "A) .., B) .., C) .., D) .." after the question and a newline, as they are, unstripped
    (ST@init GPQADiamondTaskHandler.get_multiple_choice_answers); the answer is the correct one's letter."""
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(rows):
        choices = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"],
                   row["Incorrect Answer 3"]]
        order = list(range(4))
        rng.shuffle(order)
        listing = ", ".join(f"{letter}) {choices[k]}" for letter, k in zip("ABCD", order))
        out.append({"id": f"{name}-{row.get('Record ID', i)}", "source": name, "domain": "mcq",
                    "problem": f"{row['Question']}\n{listing}", "answer": "ABCD"[order.index(0)]})
    return out


class _StrOnly(pickle.Unpickler):
    """LiveCodeBench pickles a JSON string; refuse anything that would import code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from dataset test cases")


def decode_lcb_tests(blob) -> list[dict]:
    """LiveCodeBench test cases: a JSON list, or base64(zlib(pickle(JSON string))) for private ones."""
    if isinstance(blob, list):
        return blob
    try:
        return json.loads(blob)
    except ValueError:
        text = _StrOnly(io.BytesIO(zlib.decompress(base64.b64decode(blob)))).load()
        return json.loads(text)


def livecodebench_records(rows: Iterable[Mapping], name: str, difficulty: str | None) -> list[dict]:
    """livecodebench/code_generation_lite rows (question_title, question_content, question_id, starter_code,
    difficulty, public_test_cases, private_test_cases, metadata) -> code records, as SkyThought scored them
    (ST@init util/livecodebench/testing_util.py map_to_example): the prompt body is question_content alone
    (no starter code), stdin vs functional is whether a *public* test has testtype stdin, and the tests graded
    are the private ones only.

    `lcb` keeps those tests as the dataset has them, for SkyThought's own comparison (livecodebench_scorer);
    `tests` is the same cases in our layout for our grader: stdin text, or for functional problems each input
    one JSON value per line (the arguments) and the output one JSON value, `fn_name` from metadata's func_name."""
    out = []
    for row in rows:
        if difficulty and row.get("difficulty") != difficulty:
            continue
        is_stdin = any(c.get("testtype") == "stdin" for c in decode_lcb_tests(row["public_test_cases"]))
        cases = decode_lcb_tests(row["private_test_cases"])
        if is_stdin:
            tests = {"inputs": [c["input"] for c in cases], "outputs": [c["output"] for c in cases]}
        else:
            meta = json.loads(row.get("metadata") or "{}")
            tests = {"fn_name": meta.get("func_name"),
                     "inputs": [[json.loads(line) for line in c["input"].split("\n") if line.strip()]
                                for c in cases],
                     "outputs": [json.loads(c["output"]) for c in cases]}
        out.append({"id": f"{name}-{row['question_id']}", "source": name, "domain": "code",
                    "problem": row["question_content"], "tests": tests,
                    "user_template": "code" if is_stdin else "code_call_based",
                    "lcb": {"is_stdin": is_stdin, "cases": cases}})
    return out


def olympiadbench_records(rows: Iterable[Mapping], name: str) -> list[dict]:
    """Hothan/OlympiadBench OE_TO_maths_en_COMP rows (id, question, final_answer: list of "$...$") -> math
    records; the first final answer is the gold, without its $ delimiters."""
    out = []
    for i, row in enumerate(rows):
        finals = row.get("final_answer") or []
        if not finals:
            continue
        answer = str(finals[0]).strip().strip("$").strip()
        out.append({"id": f"{name}-{row.get('id', i)}", "source": name, "domain": "math",
                    "problem": row["question"], "answer": answer})
    return out
