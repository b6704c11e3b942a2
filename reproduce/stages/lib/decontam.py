"""Decontamination: drop training problems that overlap the recipe's eval benchmarks, and near-duplicates.

    index = BenchmarkIndex({"math500": [(id, problem text), ...], ...}, ngram=8)
    hit = index.match(training problem text)      # None, or Hit(benchmark, benchmark_id, how, ngram)
    near = NearDuplicates(jaccard=0.8); near.seen(text) -> True when a kept problem is ~the same

A training problem is contaminated when, after `normalize`, it equals a benchmark problem ("exact") or shares
any `ngram`-word sequence with one ("ngram"). The n-gram rule is open-r1's (scripts/decontaminate.py,
default 8 words, after s1's decontaminate_util.py, arXiv 2501.19393); open-r1 normalizes case and whitespace
only, we also take out LaTeX spacing and `$` delimiters so a copy whose spacing was retyped still matches.
An n-gram found in `common_ngram_problems` or more benchmark problems is boilerplate ("the input is given from
standard input in the following format") and matches nothing (0: every n-gram counts, as open-r1); a
copy of a problem made only of boilerplate is still caught by the exact rule.

Linear in the training set: benchmark n-grams go into one dict (tuple of words -> first problem), each
training problem costs one lookup per word. Near-duplicates: one-permutation MinHash over word 2-grams with LSH bands
(deterministic CRC32 hashes, so a re-run makes the same choices), confirmed on the exact Jaccard.
"""
from __future__ import annotations

import re
import unicodedata
import zlib
from array import array
from collections import Counter, namedtuple

Hit = namedtuple("Hit", "benchmark benchmark_id how ngram")

# LaTeX that changes spacing or size but not meaning; \dfrac and \tfrac are \frac (as Qwen's strip_string).
_LATEX_SPACING = re.compile(r"\\(?:[,;:!> ]|q?quad\b|enspace\b|thinspace\b|medspace\b|thickspace\b|"
                            r"hspace\*?\{[^{}]*\}|displaystyle\b|textstyle\b|left\b|right\b|big+[lr]?\b|Big+[lr]?\b)")
_SPACE_BY_SYMBOL = re.compile(r"\s+(?=[^\w\s])|(?<=[^\w\s])\s+")


def normalize(text: str | None) -> str:
    """Case, whitespace, LaTeX spacing and `$` delimiters out: the same problem retyped gives the same text."""
    text = unicodedata.normalize("NFKC", text or "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("$", " ").replace("~", " ")
    text = _LATEX_SPACING.sub(" ", text).lower()
    # Spacing around symbols is free in LaTeX and in prose ("x^2 + 1", "x^2+1"): glue symbols to neighbours.
    text = _SPACE_BY_SYMBOL.sub("", text)
    return " ".join(text.split())


_WORD = re.compile(r"\w+")


def words(text: str | None) -> list[str]:
    """The words n-grams are made of: runs of letters and digits of the normalized text; symbols separate
    them, so "f(0)? Express" and "f(0)?express" give the same words (open-r1 splits on whitespace only)."""
    return _WORD.findall(normalize(text))


class BenchmarkIndex:
    """Every n-gram of every benchmark problem, and every normalized problem, for O(1) lookups."""

    def __init__(self, benchmarks: dict[str, list[tuple[str, str]]], ngram: int = 8,
                 common_ngram_problems: int = 5):
        if ngram < 1:
            raise ValueError(f"ngram {ngram}: expected 1 or more")
        self.n = ngram
        self.exact: dict[str, tuple[str, str]] = {}
        self.grams: dict[tuple, tuple[str, str]] = {}
        self.problems = Counter()
        df: Counter = Counter()
        for name, items in benchmarks.items():
            for pid, text in items:
                self.problems[name] += 1
                norm = normalize(text)
                ws = _WORD.findall(norm)
                if not ws:
                    continue
                self.exact.setdefault(norm, (name, pid))
                for g in {tuple(ws[i:i + ngram]) for i in range(len(ws) - ngram + 1)}:
                    df[g] += 1
                    self.grams.setdefault(g, (name, pid))
        self.boilerplate = 0
        if common_ngram_problems:
            for g, count in df.items():
                if count >= common_ngram_problems:
                    del self.grams[g]
                    self.boilerplate += 1

    def match(self, text: str | None) -> Hit | None:
        norm = normalize(text)
        return self.lookup(norm, _WORD.findall(norm))

    def lookup(self, norm: str, ws: list[str]) -> Hit | None:
        """`match` on a text already normalized and split."""
        if not ws:
            return None
        exact = self.exact.get(norm)
        if exact:
            return Hit(exact[0], exact[1], "exact", None)
        grams, n = self.grams, self.n
        for i in range(len(ws) - n + 1):
            hit = grams.get(tuple(ws[i:i + n]))
            if hit:
                return Hit(hit[0], hit[1], "ngram", " ".join(ws[i:i + n]))
        return None

    def facts(self) -> dict:
        return {"ngram": self.n, "benchmark_problems": dict(self.problems), "benchmark_ngrams": len(self.grams),
                "boilerplate_ngrams_ignored": self.boilerplate}


class NearDuplicates:
    """MinHash-LSH over word 2-grams: `seen(text)` is True when an earlier kept text has Jaccard similarity
    >= `jaccard` with it; otherwise the text is remembered and False returned.

    One-permutation MinHash (Li, Owen & Zhang 2012): one hash per shingle, its top 5 bits pick one of 32 bins,
    each bin keeps its minimum: one pass over the shingles instead of 32. Bins in 8 bands of 4: a pair at
    Jaccard 0.8 shares a band with probability ~1-(1-0.8^4)^8 = 0.985, at 0.5 ~0.40; a candidate is confirmed
    on its exact Jaccard (kept shingles are stored as 4-byte hashes). With 2-grams one word changed in a
    20-word problem leaves Jaccard ~0.83 (a near-duplicate), two numbers changed ~0.68 (a new problem)."""

    BINS, BANDS = 32, 8

    def __init__(self, jaccard: float = 0.8, shingle: int = 2):
        self.jaccard, self.k = jaccard, shingle
        self.buckets: dict[tuple, int] = {}
        self.kept: list[array] = []
        self._word_hash: dict[str, int] = {}

    def shingles(self, ws: list[str]) -> set[int]:
        """Word k-gram hashes: CRC32 (deterministic, unlike Python's salted hash()) mixed by a multiply so the
        top bits are as random as the low ones; 2-grams from cached per-word CRCs (the common case, 3x faster)."""
        mask = 0xFFFFFFFF
        if self.k == 2 and len(ws) >= 2:
            cache = self._word_hash
            hs = [cache.get(w) or cache.setdefault(w, zlib.crc32(w.encode()) | 1) for w in ws]
            return {(((a * 0x9E3779B1) & mask ^ b) * 0x85EBCA77) & mask for a, b in zip(hs, hs[1:])}
        k = min(self.k, len(ws)) or 1
        return {(zlib.crc32(" ".join(ws[i:i + k]).encode()) * 0x9E3779B1) & mask
                for i in range(max(1, len(ws) - k + 1))}

    def signature(self, hashes: set[int]) -> list:
        sig = [None] * self.BINS
        for h in hashes:
            b, v = h >> 27, h & 0x7FFFFFF
            if sig[b] is None or v < sig[b]:
                sig[b] = v
        return sig

    def seen(self, text: str) -> bool:
        return self.seen_words(words(text))

    def seen_words(self, ws: list[str]) -> bool:
        hashes = self.shingles(ws)
        sig = self.signature(hashes)
        r = self.BINS // self.BANDS
        keys = [(band, *sig[band * r:(band + 1) * r]) for band in range(self.BANDS)]
        for j in {self.buckets[key] for key in keys if key in self.buckets}:
            other = self.kept[j]
            inter = sum(1 for h in other if h in hashes)
            if inter / (len(hashes) + len(other) - inter) >= self.jaccard:
                return True
        idx = len(self.kept)
        self.kept.append(array("I", hashes))
        for key in keys:
            self.buckets.setdefault(key, idx)
        return False


def strip_template(text: str, template: str | None) -> str:
    """The problem inside a user message made with `template` ("... {problem} ..."), else the text as is."""
    if not template or "{problem}" not in template:
        return text
    head, _, tail = template.replace("{{", "{").replace("}}", "}").partition("{problem}")
    if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
        return text[len(head):len(text) - len(tail)] if tail else text[len(head):]
    return text


# ---- the convert stage's screen ------------------------------------------------------------------------------

DEFAULTS = {"enabled": True, "ngram": 8, "common_ngram_problems": 5, "near_duplicates": 0.8}


def config(recipe: dict) -> dict | None:
    """`convert.decontaminate` with defaults filled in; None when off (`enabled: false`, or `false`) or the
    recipe has no eval benchmarks."""
    cfg = (recipe.get("convert") or {}).get("decontaminate", {})
    if cfg is True or cfg is None:
        cfg = {}
    if cfg is False:
        cfg = {"enabled": False}
    if not isinstance(cfg, dict):
        raise ValueError(f"convert.decontaminate={cfg!r}: expected a mapping")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"convert.decontaminate.{unknown[0]}: unknown; expected {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **cfg}
    if not cfg["enabled"] or not (recipe.get("eval") or {}).get("benchmarks"):
        return None
    return cfg


def benchmark_problems(recipe: dict, artifacts=None) -> dict[str, list[tuple[str, str]]]:
    """(id, problem) of every eval benchmark: ARTIFACTS/benchmarks/<name>.jsonl when there (written by
    `python -m reproduce.stages.lib.decontam export`, on a node with `datasets`), else problems.load_benchmark
    (smoke: smoke_data; full: the HF hub, which needs `datasets`)."""
    import json
    from pathlib import Path

    from reproduce.stages.lib import problems

    out = {}
    for bench in recipe["eval"]["benchmarks"]:
        cached = Path(artifacts) / "benchmarks" / f"{bench['name']}.jsonl" if artifacts else None
        if cached and cached.is_file():
            rows = [json.loads(line) for line in cached.read_text().splitlines() if line.strip()]
        else:
            try:
                rows = problems.load_benchmark(bench, recipe.get("scale", "full"))
            except ImportError as e:
                raise ImportError(f"benchmark {bench['name']}: loading it needs {e.name or 'datasets'}; run "
                                  "`python -m reproduce.stages.lib.decontam export --recipe R --artifacts A` where it is "
                                  "installed, or set convert.decontaminate.enabled: false") from None
        out[bench["name"]] = [(r["id"], r["problem"]) for r in rows]
    return out


class Screen:
    """Decides, record by record, whether a training trace is kept; counts why not, per source and benchmark."""

    def __init__(self, index: BenchmarkIndex, near_jaccard: float = 0.8, templates: dict | None = None):
        self.index, self.templates = index, templates or {}
        self.near = NearDuplicates(near_jaccard) if near_jaccard else None
        self.by_source: dict[str, Counter] = {}
        self.by_benchmark: dict[str, Counter] = {}
        self.pairs: dict[str, Counter] = {}
        self.dropped: list[dict] = []

    def problem_text(self, record: dict, user_text: str) -> str:
        return record.get("problem") or strip_template(user_text, self.templates.get(record.get("domain")))

    def __call__(self, record: dict, user_text: str) -> str | None:
        """None (keep), "contaminated" or "near_duplicate"."""
        source = record.get("source") or "unknown"
        counts = self.by_source.setdefault(source, Counter())
        counts["checked"] += 1
        norm = normalize(self.problem_text(record, user_text))
        ws = _WORD.findall(norm)
        hit = self.index.lookup(norm, ws)
        if hit:
            counts["contaminated"] += 1
            self.by_benchmark.setdefault(hit.benchmark, Counter())[hit.how] += 1
            self.pairs.setdefault(source, Counter())[hit.benchmark] += 1
            self.dropped.append({"id": record.get("id"), "source": source, "why": "contaminated",
                                 "benchmark": hit.benchmark, "benchmark_id": hit.benchmark_id, "how": hit.how,
                                 "ngram": hit.ngram})
            return "contaminated"
        if self.near is not None and self.near.seen_words(ws):
            counts["near_duplicates"] += 1
            self.dropped.append({"id": record.get("id"), "source": source, "why": "near_duplicate"})
            return "near_duplicate"
        counts["kept"] += 1
        return None

    def report(self) -> dict:
        """The summary's "decontamination" block."""
        def total(key):
            return sum(c[key] for c in self.by_source.values())
        return {**self.index.facts(), "near_duplicate_jaccard": self.near.jaccard if self.near else None,
                "checked": total("checked"), "contaminated": total("contaminated"),
                "near_duplicates": total("near_duplicates"), "kept": total("kept"),
                "by_source": {s: {k: c[k] for k in ("checked", "contaminated", "near_duplicates", "kept")}
                              for s, c in sorted(self.by_source.items())},
                "by_benchmark": {b: {"exact": self.by_benchmark.get(b, Counter())["exact"],
                                     "ngram": self.by_benchmark.get(b, Counter())["ngram"],
                                     "total": sum(self.by_benchmark.get(b, Counter()).values())}
                                 for b in self.index.problems},
                "source_x_benchmark": {s: dict(sorted(c.items())) for s, c in sorted(self.pairs.items())},
                "examples": [d for d in self.dropped if d["why"] == "contaminated"][:10]}


def screen_for(recipe: dict, artifacts=None) -> Screen | None:
    """The recipe's screen, or None when decontamination is off."""
    cfg = config(recipe)
    if cfg is None:
        return None
    index = BenchmarkIndex(benchmark_problems(recipe, artifacts), cfg["ngram"], cfg["common_ngram_problems"])
    return Screen(index, cfg["near_duplicates"], (recipe.get("generate") or {}).get("user_templates"))


# ---- export: benchmark problems for a controller without `datasets` -------------------------------------------

def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    from reproduce.stages.lib.common import BadInput, load_recipe, run_main

    p = argparse.ArgumentParser(prog="python -m reproduce.stages.lib.decontam",
                                description="Write ARTIFACTS/benchmarks/<name>.jsonl (id, problem) for convert's "
                                            "decontamination, where the benchmarks can be loaded.")
    p.add_argument("action", choices=("export",))
    p.add_argument("--recipe", required=True)
    p.add_argument("--artifacts", required=True)

    def body(args):
        recipe = load_recipe(args.recipe, needs=("eval",))
        try:
            found = benchmark_problems(recipe)
        except ImportError as e:
            raise BadInput(str(e)) from None
        out = Path(args.artifacts) / "benchmarks"
        out.mkdir(parents=True, exist_ok=True)
        for name, items in found.items():
            (out / f"{name}.jsonl").write_text("".join(json.dumps({"id": i, "problem": t}, ensure_ascii=False) + "\n"
                                                       for i, t in items))
            print(f"decontam: {name}: {len(items)} problems -> {out / (name + '.jsonl')}")
        return 0

    return run_main("decontam", p, body, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
