"""Problems for the teacher (recipe `sources`) and the benchmarks (recipe `eval.benchmarks`), as records:

    {id, source, domain (math|code|mcq), problem, answer}          math, mcq (answer: the gold text / letter)
    {id, source, domain: code, problem, tests, user_template}       tests: {inputs, outputs[, fn_name]}

`problem` is the body SkyThought's handler put into its prompt (for code: the statement with the starter code
joined as that handler joined it); `user_template` names the recipe's `generate.user_templates` entry the
handler's rule picks for the row (APPS: `code` or `code_call_based` by fn_name; TACO: `taco` or
`taco_call_based` by starter code or fn_name; LiveCodeBench: stdin or functional). The texts themselves are
data: prompts.yaml, with their commits. `tests` is the layout `grading.grade_code` runs: stdin strings and
expected stdout (APPS/TACO), or with `fn_name` argument lists and return values (call-based). At
`scale: smoke` every source and benchmark comes from `smoke_data` (no hub). At full scale the rows are streamed
from the HF hub's data files (reproduce.stages.lib.hub: never a loading script); each dataset has a *transform*
(rows in the dataset's own columns -> records) kept apart from the download, so tests can run the transforms on
rows they build. Filters and splits follow SkyThought (shared/reference/sky-t1.md). A source's `problems` is a
cap: at most that many of the records its filter keeps are sent, the first in the dataset's order (the plan
prices that many). A `traces: published` source's records carry their published trace as `response`.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import pickle
import random
import sys
import zlib
from typing import Iterable, Mapping

from reproduce.stages.lib import hub
from reproduce.stages.lib.grading import extract_boxed
from reproduce.stages.lib.hub import BadSource, Gated  # noqa: F401  (re-exported: stages catch problems.BadSource)
from reproduce.stages.smoke import smoke_data


# ---- entry points --------------------------------------------------------------------------------------------

def load_sources(recipe: dict, limit: int | None = None) -> list[dict]:
    """Every teacher problem of the recipe, source by source: at most `problems` (the cap) and `limit` each.
    At full scale each dataset is streamed once for all the sources that read it (the three NuminaMath ones)."""
    caps = {}
    for src in recipe["sources"]:
        n = int(src.get("problems") or 0)
        caps[src["name"]] = (min(n, limit) if n else limit) if limit is not None else (n or None)
    if recipe.get("scale") == "smoke":
        return [p for src in recipe["sources"]
                for p in (smoke_published(src["name"], src["domain"], caps[src["name"]] or 0)
                          if src.get("traces") == "published"
                          else smoke_data.problems(src["name"], src["domain"], caps[src["name"]] or 0))]
    found: dict[str, list[dict]] = {}
    for group in _groups(recipe["sources"]):
        found.update(_load_group(group, caps))
    out = []
    for src in recipe["sources"]:
        recs, cap = found[src["name"]], caps[src["name"]]
        if cap is not None and len(recs) > cap:
            print(f"problems: {src['name']}: {len(recs):,} pass its filter; sources.{src['name']}.problems caps "
                  f"them at {cap:,}", file=sys.stderr)
        elif cap is not None and len(recs) < cap and limit is None:
            print(f"problems: {src['name']}: {len(recs):,} pass its filter, fewer than the "
                  f"{cap:,} the plan priced", file=sys.stderr)
        out += recs[:cap] if cap is not None else recs
    return out


def smoke_published(name: str, domain: str, n: int) -> list[dict]:
    """Smoke scale's stand-in for a `traces: published` source: records with a trace already in the Sky-T1
    thought/solution format, as STILL-2's `combined_text` is."""
    return [{"id": f"{name}-{k:04d}", "source": name, "domain": domain, "published": True,
             "problem": f"Smoke {domain} question {k}: which is heavier, {k + 1} kg of iron or {k + 1} kg of wool?",
             "response": f"<|begin_of_thought|>\n\nBoth weigh {k + 1} kg.\n\n<|end_of_thought|>\n\n"
                         f"<|begin_of_solution|>\n\nNeither: both are {k + 1} kg.\n\n<|end_of_solution|>"}
            for k in range(n)]


def load_benchmark(bench: dict, scale: str = "full", limit: int | None = None) -> list[dict]:
    """One `eval.benchmarks` item's problems."""
    if scale == "smoke":
        n = int(bench["problems"])  # the recipe's smoke block sets eval.benchmarks.*.problems
        return smoke_data.problems(bench["name"], bench["domain"], min(n, limit or n))
    records = load_hub_benchmark(bench)
    return records[:limit] if limit is not None else records


def peek_source(src: dict, n: int = 3, scan: int = 2000) -> list[dict]:
    """The first `n` records of a source through its transform, reading at most `scan` rows (a preflight: no
    full download). NuminaMath's difficulty filter is a second dataset: peek reads its first row (access and
    columns) and does not apply it."""
    if src["dataset"] == NUMINA:
        labels = _label_item()
        next(iter(hub.rows(labels, LABEL_COLUMNS)), None)
        flt = {k: v for k, v in (src.get("filter") or {}).items() if k != "difficulty"}
        rows = itertools.islice(hub.rows(_item(src), NUMINA_COLUMNS), scan)
        return numina_records(rows, src["name"], flt)[:n]
    return _source_records(src, itertools.islice(hub.rows(_item(src)), scan))[:n]


def peek_benchmark(bench: dict, n: int = 3, scan: int = 2000) -> list[dict]:
    """The first `n` problems of a benchmark, reading at most `scan` rows."""
    return load_hub_benchmark(bench, lambda item: itertools.islice(hub.rows(item), scan))[:n]


def row_count(item: dict) -> int | None:
    """Rows of a source's or benchmark's split as the hub reports them (parquet footers, the file's or the
    parquet conversion's), None if unknown. Reads no rows."""
    return hub.row_count(_item(item))


# ---- where an item's rows are: recipe keys -> a hub item -----------------------------------------------------

NUMINA = "AI-MO/NuminaMath-CoT"
NUMINA_COLUMNS = ("source", "problem", "solution")
LABELS = "NovaSky-AI/labeled_numina_difficulty_859K"    # ST@HEAD numina_handler.py get_difficulty_dict
LABEL_COLUMNS = ("problem", "gpt_difficulty_parsed")
# LiveCodeBench's version tags -> its files: the hub script code_generation_lite.py's ALLOWED_FILES (quoted by
# opencompass/opencompass opencompass/datasets/livecodebench.py VERSION_FILES, read 2026-12-07); release_v2 is
# 511 problems (LiveCodeBench/LiveCodeBench@28fef95 README).
LCB_FILES = {f"release_v{k}": [f"test{i if i > 1 else ''}.jsonl" for i in range(1, k + 1)] for k in range(1, 7)}
LCB_FILES["release_latest"] = LCB_FILES["release_v6"]
ITEM_KEYS = ("dataset", "revision", "split", "subset", "files", "format", "gated")


def _item(src: dict) -> dict:
    """A recipe source/benchmark -> what hub.rows reads. LiveCodeBench's `version` names its files."""
    item = {k: src[k] for k in ITEM_KEYS if src.get(k) is not None}
    if src.get("dataset") == "livecodebench/code_generation_lite" and not item.get("files"):
        version = src.get("version", "release_v2")
        if version not in LCB_FILES:
            raise BadSource(f"benchmark {src.get('name')!r}: version {version!r} unknown; expected one of "
                            f"{', '.join(LCB_FILES)}")
        item.update(files=LCB_FILES[version], format="json")
    return item


def _label_item() -> dict:
    """NovaSky pushed it with push_to_hub: parquet under data/ (UNVERIFIED; if no file matches, the repo's own
    layout is read, all columns)."""
    return {"dataset": LABELS, "split": "train", "files": ["data/train-*.parquet"]}


def _groups(sources: list[dict]) -> list[list[dict]]:
    """Sources that read the same rows (NuminaMath's three), in recipe order: each group is streamed once."""
    groups: dict[tuple, list[dict]] = {}
    for src in sources:
        key = tuple(str(_item(src).get(k)) for k in ITEM_KEYS) if src["dataset"] == NUMINA else (id(src),)
        groups.setdefault(key, []).append(src)
    return list(groups.values())


def load_hub_source(src: dict) -> list[dict]:
    """Every record of one source (no cap), streamed from the hub."""
    if src["dataset"] not in LOADERS:
        check_source(src)               # before any request
    return _load_group([src], {src["name"]: None})[src["name"]]


def _load_group(group: list[dict], caps: Mapping[str, int | None]) -> dict[str, list[dict]]:
    if group[0]["dataset"] == NUMINA:
        return numina_sources(hub.rows(_item(group[0]), NUMINA_COLUMNS), group, caps, numina_labels)
    src = group[0]
    if src["dataset"] not in LOADERS:
        check_source(src)
    return {src["name"]: _source_records(src, hub.rows(_item(src)))}


def _source_records(src: dict, rows: Iterable[Mapping]) -> list[dict]:
    if src["dataset"] in LOADERS:
        return LOADERS[src["dataset"]](src, rows)
    check_source(src)
    return table_records(rows, src)


def numina_labels(problems: set[str] | None = None) -> dict[str, float]:
    """Difficulty per NuminaMath problem text: NovaSky's GPT-4o-mini labels on the AoPS 1-10 scale
    (`NovaSky-AI/labeled_numina_difficulty_859K`, column `gpt_difficulty_parsed`; ST@HEAD numina_handler.py),
    streamed with its two columns and kept only for `problems` (the candidates), so 859K texts never sit in RAM."""
    out = {}
    for row in hub.rows(_label_item(), LABEL_COLUMNS):
        if problems is None or row["problem"] in problems:
            out[row["problem"]] = row["gpt_difficulty_parsed"]
    return out


# Datasets of a known shape: dataset id -> transform(src, rows). Any other dataset is described by the source
# itself (`fields`, `answer_from`, `filter`) and read by `table_records`: no code for a new dataset.
LOADERS = {
    NUMINA: lambda src, rows: numina_records(rows, src["name"], src.get("filter") or {},
                                             numina_labels() if (src.get("filter") or {}).get("difficulty")
                                             else None),
    "codeparrot/apps": lambda src, rows: apps_records(rows, src["name"]),
    "BAAI/TACO": lambda src, rows: taco_records(rows, src["name"], src.get("filter") or {}),
    "RUC-AIBOX/long_form_thought_data_5k": lambda src, rows: still2_records(rows, src["name"],
                                                                           src.get("filter") or {}),
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


MATH500 = ("qq8933/MATH500", "di-zhang-fdu/MATH500", "HuggingFaceH4/MATH-500")   # qq8933 redirects to di-zhang-fdu


def load_hub_benchmark(bench: dict, read=None) -> list[dict]:
    """A benchmark's records; `read(item)` gives the rows (default: all of them, streamed)."""
    dataset, name = bench["dataset"], bench["name"]
    transforms = {
        **{m: lambda rows: math500_records(rows, name) for m in MATH500},
        "AI-MO/aimo-validation-aime": lambda rows: aime_records(rows, name, year=bench.get("year", "2024")),
        "Idavidrein/gpqa": lambda rows: gpqa_records(rows, name),
        "livecodebench/code_generation_lite": lambda rows: livecodebench_records(
            rows, name, bench.get("difficulty") or name.rsplit("_", 1)[-1]),     # livecodebench_easy -> easy
        "Hothan/OlympiadBench": lambda rows: olympiadbench_records(rows, name),
    }
    if dataset in transforms:
        return transforms[dataset]((read or hub.rows)(_item(bench)))
    raise BadSource(f"benchmark {name!r}: dataset {dataset!r} has no loader; expected one of "
                    f"{', '.join(MATH500)}, AI-MO/aimo-validation-aime, Idavidrein/gpqa, "
                    "livecodebench/code_generation_lite, Hothan/OlympiadBench")


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
    src = {"name": name, "filter": dict(flt)}
    if flt.get("difficulty") is not None and labels is None:
        raise BadSource(f"source {name!r}: a difficulty filter needs difficulty labels")
    return numina_sources(rows, [src], {name: None}, lambda problems: labels)[name]


def numina_sources(rows: Iterable[Mapping], sources: list[dict], caps: Mapping[str, int | None],
                   labels_for) -> dict[str, list[dict]]:
    """One pass over NuminaMath rows for several sources (numina_records' filters per source), then the
    difficulty labels of the candidates only (`labels_for(problem texts) -> {problem: level}`, one more pass).
    The pass stops once every source without a difficulty filter has its cap and every source is past its
    `end`, so a capped or `--limit`ed run reads only the head of the dataset."""
    state = {s["name"]: {"flt": s.get("filter") or {}, "seen": 0, "out": [], "done": False} for s in sources}
    for i, row in enumerate(rows):
        for name, st in state.items():
            flt = st["flt"]
            if st["done"] or (flt.get("source") and row.get("source") != flt["source"]):
                continue
            st["seen"] += 1
            if flt.get("end") and st["seen"] > int(flt["end"]):
                st["done"] = True
                continue
            solution = row.get("solution") or ""
            if flt.get("solution_contains") and flt["solution_contains"] not in solution:
                continue
            answer = extract_boxed(solution)
            if not answer:
                continue
            st["out"].append({"id": f"{name}-{i}", "source": name, "domain": "math", "problem": row["problem"],
                              "answer": answer})
            cap = caps.get(name)
            if cap is not None and flt.get("difficulty") is None and len(st["out"]) >= cap:
                st["done"] = True
        if all(st["done"] for st in state.values()):
            break
    graded = [st for st in state.values() if st["flt"].get("difficulty") is not None]
    if graded:
        labels = labels_for({r["problem"] for st in graded for r in st["out"]})
        for st in graded:
            lo, hi = st["flt"]["difficulty"]
            st["out"] = [r for r in st["out"] if labels.get(r["problem"]) is not None
                         and lo <= float(labels[r["problem"]]) <= hi]
    return {name: st["out"] for name, st in state.items()}


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


def still2_records(rows: Iterable[Mapping], name: str, flt: Mapping) -> list[dict]:
    """RUC-AIBOX/long_form_thought_data_5k rows (question, combined_text, domain) -> records with the published
    trace as `response` (`traces: published`: no teacher). NovaSky kept every domain but code (ST@HEAD
    scripts/combine_data.py: `if domain != "code"`); `filter: {domains: [...]}` keeps only those instead (the
    Bespoke-Stratos recipe kept puzzle, physics, biology, chemistry). Their domain is none our grader checks."""
    keep = set(flt.get("domains") or ())
    out = []
    for i, row in enumerate(rows):
        domain = row.get("domain")
        if (keep and domain not in keep) or (not keep and domain == "code"):
            continue
        out.append({"id": f"{name}-{i}", "source": name, "domain": str(domain), "problem": row["question"],
                    "response": row["combined_text"], "published": True})
    return out
