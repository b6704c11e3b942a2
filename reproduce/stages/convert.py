"""convert: kept, rewritten traces -> ShareGPT records + dataset_info.json for LLaMA-Factory.

    python -m reproduce.stages.convert --recipe A/recipe.yaml --artifacts A [--input FILE]

Reads `A/rewrite/rewritten.jsonl` (id, source, domain, prompt, response, rewritten, recheck_correct) and
writes `A/convert/train.json`, `A/convert/dataset_info.json` and `A/convert/summary.json`. NovaSky's
convert_to_data.py kept only traces still correct after the GPT-4o-mini rewrite; so do we:
- `recheck_correct` true  -> the rewritten text is trained on;
- `recheck_correct` false -> dropped (the rewrite broke the answer);
- `recheck_correct` null (re-check off) -> the rewritten text, or the filter-kept response if none.
Identical problems (same prompt, whitespace aside) keep their first trace only (recipe `convert.dedupe`).
Decontamination (recipe `convert.decontaminate`, reproduce/stages/lib/decontam.py): a problem that overlaps an eval
benchmark (8-word n-gram or the same normalized text) or nearly duplicates a kept one is dropped; the counts per
source and benchmark go to summary.json "decontamination", the dropped ids to `convert/dropped.jsonl`.
The user turn is the user message the teacher was asked (as SkyThought's `"prompt": conversations[idx][1]
["content"]`), taken out of the chat-rendered prompt generate stores.
Cheap and deterministic: a re-run rebuilds the same files.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from reproduce.stages.lib.common import BadInput, load_recipe, run_main


def dataset_info_entry(file_name: str = "train.json", ranking: bool = False) -> dict:
    """NovaSky's "Sky-T1" entry (skythought/train/LLaMA-Factory/data/dataset_info.json), with the file name.
    Tags must name the roles the records use: LLaMA-Factory 0.9.5 defaults to human/gpt and silently skips
    records whose roles do not match ("Skipping this abnormal example"), so user/assistant are spelled out.
    `ranking`: preference pairs in LLaMA-Factory's sharegpt ranking layout (its data/README.md), a `chosen` and a
    `rejected` assistant message after the conversation."""
    entry = {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "user", "assistant_tag": "assistant"},
    }
    if ranking:
        entry["ranking"] = True
        entry["columns"].update(chosen="chosen", rejected="rejected")
    return entry


PREFERENCE_METHODS = ("dpo", "simpo")


def preference_pairs(records, system_prompt: str, pairs: dict, screen=None) -> tuple[list[dict], dict]:
    """Kept traces -> one chosen/rejected pair per problem (recipe `convert.pairs`): of a problem's distinct
    trainable answers (as `to_sharegpt` picks them) the shortest or longest by characters is chosen, the other
    end rejected; a problem with fewer than `min_correct` answers makes no pair. Sky-T1-32B-Flash: shortest
    correct chosen, longest correct rejected, at least two correct (SkyThought recipes/sky-t1-flash/README.md)."""
    groups: dict[str, list] = {}
    counts = Counter()
    for rec, item, user in _trainable(records, system_prompt, counts):
        groups.setdefault(" ".join(user.split()), []).append((user, item["conversations"][1]["value"], rec))
    out, per_source, per_domain = [], Counter(), Counter()
    for items in groups.values():
        user, _, rec = items[0]
        why = screen(rec, user) if screen is not None else None
        if why:
            counts[why] += 1
            continue
        answers = sorted({a for _, a, _ in items}, key=lambda a: (len(a), a))
        if len(answers) < int(pairs.get("min_correct", 2)):
            counts["too_few_answers"] += 1
            continue
        end = {"shortest": answers[0], "longest": answers[-1]}
        out.append({"system": system_prompt, "conversations": [{"from": "user", "value": user}],
                    "chosen": {"from": "assistant", "value": end[pairs.get("chosen", "shortest")]},
                    "rejected": {"from": "assistant", "value": end[pairs.get("rejected", "longest")]}})
        counts["traces_paired"] += len(items)
        per_source[rec.get("source") or "unknown"] += 1
        per_domain[rec.get("domain") or "unknown"] += 1
    summary = {"records_in": counts["records_in"], "records_out": len(out), "pairs": len(out),
               "problems": len(groups), "too_few_answers": counts["too_few_answers"],
               "traces_paired": counts["traces_paired"], "from_rewritten": 0, "from_original": 0,
               "dropped_recheck": counts["dropped_recheck"], "dropped_empty": counts["dropped_empty"],
               "duplicates": 0, "contaminated": counts["contaminated"], "near_duplicates": counts["near_duplicate"],
               "per_source": dict(sorted(per_source.items())), "per_domain": dict(sorted(per_domain.items())),
               "chars": sum(len(r["system"]) + len(r["conversations"][0]["value"]) + len(r["chosen"]["value"])
                            + len(r["rejected"]["value"]) for r in out)}
    return out, summary


_CHATML_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


def user_message(record: dict) -> str | None:
    """The user turn: `user` when the record has it, else the last ChatML user turn of the rendered `prompt`
    (Qwen/QwQ's template), else `prompt` as it is (already a bare message)."""
    if record.get("user"):
        return record["user"]
    prompt = record.get("prompt")
    turns = _CHATML_USER.findall(prompt or "")
    return turns[-1] if turns else prompt


def _trainable(records, system_prompt, counts: Counter):
    """(record, ShareGPT item, user text) of every record that makes a training example; the others counted
    as dropped (failed the re-check, or empty)."""
    for rec in records:
        counts["records_in"] += 1
        item = to_sharegpt(rec, system_prompt)
        if item is None:
            counts["dropped_recheck" if rec.get("recheck_correct") is False else "dropped_empty"] += 1
            continue
        yield rec, item, item["conversations"][0]["value"]


def to_sharegpt(record: dict, system_prompt: str) -> dict | None:
    """One trace -> one ShareGPT record, or None when it must not be trained on."""
    check = record.get("recheck_correct")
    rewritten = record.get("rewritten")
    if check is False:
        return None
    answer = rewritten or record.get("response")  # re-check passed or was off: the rewrite wins
    user = user_message(record)
    if not answer or not user:
        return None
    return {"system": system_prompt,
            "conversations": [{"from": "user", "value": user},
                              {"from": "assistant", "value": answer}]}


def convert(records, system_prompt: str, dedupe: bool = True, screen=None) -> tuple[list[dict], dict]:
    """`screen(record, user_text)` (decontam.Screen) returns why a record must go ("contaminated",
    "near_duplicate") or None; it keeps its own counts."""
    out, seen = [], set()
    counts = Counter()
    per_source, per_domain = Counter(), Counter()
    for rec, item, user in _trainable(records, system_prompt, counts):
        key = " ".join(user.split())
        if dedupe and key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        why = screen(rec, user) if screen is not None else None
        if why:
            counts[why] += 1
            continue
        out.append(item)
        counts["rewritten" if rec.get("rewritten") else "original"] += 1
        per_source[rec.get("source") or "unknown"] += 1
        per_domain[rec.get("domain") or "unknown"] += 1
    summary = {"records_in": counts["records_in"], "records_out": len(out),
               "from_rewritten": counts["rewritten"], "from_original": counts["original"],
               "dropped_recheck": counts["dropped_recheck"], "dropped_empty": counts["dropped_empty"],
               "duplicates": counts["duplicates"], "contaminated": counts["contaminated"],
               "near_duplicates": counts["near_duplicate"],
               "per_source": dict(sorted(per_source.items())), "per_domain": dict(sorted(per_domain.items())),
               "chars": sum(len(m["value"]) for r in out for m in r["conversations"]) + sum(len(r["system"]) for r in out)}
    return out, summary


def read_jsonl(path: Path):
    """Records, one JSON object a line; a JSON list, binary or unreadable file is BadInput naming file:line."""
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        raise BadInput(f"{path}:{n}: not a JSON line") from None
                    if not isinstance(record, dict):
                        raise BadInput(f"{path}:{n}: a JSON {type(record).__name__}, expected one JSON object a "
                                       "line (JSONL)")
                    yield record
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text (expected JSONL)") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read it ({e.strerror})") from None


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1 if isinstance(data, dict) else None) + "\n")
    tmp.rename(path)


def decontamination_screen(recipe: dict, artifacts: Path):
    """decontam.Screen for the recipe's eval benchmarks, or None when `convert.decontaminate.enabled` is false."""
    from reproduce.stages.lib import decontam, problems

    try:
        return decontam.screen_for(recipe, artifacts)
    except (ValueError, ImportError, problems.BadSource) as e:
        raise BadInput(str(e)) from None


def run(recipe_path: Path, artifacts: Path, input_path: Path | None = None) -> dict:
    recipe = load_recipe(recipe_path)
    conv = recipe.get("convert") or {}
    if not conv.get("dataset_name") or "system_prompt" not in conv:
        raise BadInput(f"--recipe {recipe_path}: needs convert.dataset_name and convert.system_prompt")
    source = input_path or artifacts / "rewrite" / "rewritten.jsonl"
    if not source.is_file():
        raise BadInput(f"{source} is missing: run the rewrite stage first (or pass --input FILE.jsonl)")

    start = time.time()
    screen = decontamination_screen(recipe, artifacts)
    method = (recipe.get("sft") or {}).get("method", "sft")
    ranking = method in PREFERENCE_METHODS
    if ranking:
        records, summary = preference_pairs(read_jsonl(source), conv["system_prompt"], conv.get("pairs") or {},
                                            screen)
    else:
        records, summary = convert(read_jsonl(source), conv["system_prompt"], conv.get("dedupe", True), screen)
    if not records and ranking:
        raise BadInput(f"{source}: no preference pair ({summary['records_in']} traces over {summary['problems']} "
                       f"problems; a pair needs {(conv.get('pairs') or {}).get('min_correct', 2)} distinct kept "
                       "answers to one problem: raise generate.samples_per_problem)")
    if not records:
        raise BadInput(f"{source}: no record left to train on ({summary['records_in']} read)")
    out = artifacts / "convert"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train.json", records)
    write_json(out / "dataset_info.json", {conv["dataset_name"]: dataset_info_entry("train.json", ranking)})
    if screen is not None:
        summary["decontamination"] = screen.report()
        (out / "dropped.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in screen.dropped))
    summary = {"stage": "convert", "dataset_name": conv["dataset_name"], "method": method, "input": str(source),
               **summary,
               "wall_s": round(time.time() - start, 3)}
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reproduce convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True, type=Path, help="the resolved recipe (ARTIFACTS/recipe.yaml)")
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts folder")
    parser.add_argument("--input", type=Path, help="records to convert (default ARTIFACTS/rewrite/rewritten.jsonl)")
    return run_main("convert", parser, _main, argv)


def _main(args) -> int:
    s = run(args.recipe, args.artifacts, args.input)
    sources = ", ".join(f"{k} {v}" for k, v in s["per_source"].items())
    if s["method"] in PREFERENCE_METHODS:
        print(f"convert: {s['pairs']} {s['method']} pairs from {s['records_in']} traces of {s['problems']} problems "
              f"({s['too_few_answers']} with too few answers, {s['contaminated']} overlap a benchmark) -> "
              f"{args.artifacts / 'convert' / 'train.json'}; {sources}")
        return 0
    print(f"convert: {s['records_out']} of {s['records_in']} records ({s['duplicates']} duplicates, "
          f"{s['contaminated']} overlap a benchmark, {s['near_duplicates']} near-duplicates, "
          f"{s['dropped_recheck']} failed the re-check) -> {args.artifacts / 'convert' / 'train.json'}; {sources}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
