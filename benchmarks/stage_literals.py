"""How far the stage table (costmodel/stages.py) is from being the one home of every stage fact.

    python benchmarks/stage_literals.py [--all]

Prints, read from the source (AST, not grep):
  1. stage-name string literals per file, outside the table and outside the stage programs
     (reproduce/stages/*; --all lists those too, less each program's reads of its own recipe section);
  2. every `if <x> == "<stage>"` branch (and `in (...)` of stage names), file:line;
  3. the files a new stage must touch: its program and task YAML (the row's program and task), the table, the
     modules its row's required functions live in (and, apart, its optional ones), and every file holding a
     table keyed by every stage name (a dict, a rule list by section) that would need its entry.
"""
from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costmodel.stages import STAGES, Stage  # noqa: E402

NAMES = {s.name for s in STAGES}
TABLE = "costmodel/stages.py"
PROGRAMS = "reproduce/stages/"


def sources() -> list[Path]:
    return sorted(p for d in ("reproduce", "costmodel") for p in (ROOT / d).rglob("*.py"))


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def own_section_reads(tree: ast.AST, program: str) -> set[int]:
    """ids of the literals a stage program uses to read its own recipe section: recipe["sft"] in sft.py."""
    mine = {s.section for s in STAGES if s.program == program}
    return {id(n.slice) for n in ast.walk(tree)
            if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and n.slice.value in mine}


def literals(tree: ast.AST, skip: set[int]) -> list[ast.Constant]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in NAMES and id(n) not in skip]


def branches(tree: ast.AST) -> list[int]:
    """Lines of `if`/`elif`/ternary tests comparing a stage (a name, a kind, a section) to a stage-name literal."""
    out = []
    for n in ast.walk(tree):
        if not isinstance(n, (ast.If, ast.IfExp)):
            continue
        for c in ast.walk(n.test):
            if isinstance(c, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in c.ops):
                sides = [c.left, *c.comparators]
                named = [x for x in sides if isinstance(x, ast.Constant) and x.value in NAMES]
                # a stage's name, not LLaMA-Factory's method "sft" that happens to spell one
                if named and any(re.search(r"stage|name|kind|section", ast.unparse(x)) for x in sides
                                 if x not in named):
                    out.append(c.lineno)
    return sorted(set(out))


def full_tables(tree: ast.AST) -> list[int]:
    """Lines of literals that name every stage: a dict keyed by stage names, a tuple/list of them, or string
    keys `<section>.<key>` covering every section (a new stage would need its entry there)."""
    out = []
    sections = {s.section for s in STAGES}
    for n in ast.walk(tree):
        if isinstance(n, ast.Dict):
            keys = {k.value for k in n.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if NAMES <= keys or sections <= {k.split(".")[0] for k in keys if "." in k}:
                out.append(n.lineno)
        elif isinstance(n, (ast.Tuple, ast.List, ast.Set)):
            if NAMES <= {e.value for e in n.elts if isinstance(e, ast.Constant)}:
                out.append(n.lineno)
    return out


def row_homes() -> tuple[set[str], set[str]]:
    """(modules a new row's required functions live in, those of its optional ones): read off the rows
    (estimators, sizes: fields without a default; an API form, a handoff: fields with one)."""
    required = {f.name for f in dataclasses.fields(Stage) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    homes: tuple[set, set] = (set(), set())
    for s in STAGES:
        for key, value in vars(s).items():
            fn = getattr(value, "func", value)   # functools.partial
            for f in (fn, getattr(value, "read", None)):   # a Handoff: where its functions live
                mod = getattr(f, "__module__", None)
                if callable(f) and mod and mod.startswith(("costmodel", "reproduce")) and mod != "costmodel.stages":
                    homes[key not in required].add(mod.replace(".", "/") + ".py")
    return homes[0], homes[1] - homes[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also list the stage programs' literals")
    args = ap.parse_args()
    counts, programs, ifs, tables = collections.Counter(), collections.Counter(), [], {}
    for p in sources():
        name = rel(p)
        if name == TABLE:
            continue
        tree = ast.parse(p.read_text(), name)
        if name.startswith(PROGRAMS):
            n = len(literals(tree, own_section_reads(tree, p.stem)))
            if n:
                programs[name] = n
            continue
        if n := len(literals(tree, set())):
            counts[name] = n
        ifs += [f"{name}:{line}" for line in branches(tree)]
        if lines := full_tables(tree):
            tables[name] = lines
    print(f"stage-name literals outside {TABLE} and {PROGRAMS}*: {sum(counts.values())} in {len(counts)} files")
    for f, n in counts.most_common():
        print(f"  {n:4d}  {f}")
    print(f"in the stage programs (less their own section's reads): {sum(programs.values())} in {len(programs)} files")
    if args.all:
        for f, n in programs.most_common():
            print(f"  {n:4d}  {f}")
    print(f"`if ... == <stage>` branches outside the programs: {len(ifs)}")
    for where in ifs:
        print(f"  {where}")
    required, optional = row_homes()
    touch = ["reproduce/stages/<program>.py", "sky_tasks/<task>.yaml (a node stage)", f"{TABLE} (its row)"]
    touch += sorted(required - {TABLE})
    touch += [f"{f} (a table of every stage, line {', '.join(map(str, lines))})" for f, lines in sorted(tables.items())
              if f not in touch]
    print(f"a new stage touches {len(touch)} files (+ its section in each recipe, data):")
    for f in touch:
        print(f"  {f}")
    for f in sorted(optional - set(touch)):
        print(f"  and only if it has one: {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
