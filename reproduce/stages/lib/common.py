"""What every stage program shares: its bad-input error, reading the resolved recipe, and `main`'s manners
(one line on stderr and exit 2 for bad input, 3 over budget, 130 on Ctrl-C, argparse's own codes for
--help/usage)."""
from __future__ import annotations

import sys
from pathlib import Path

# One class each for the whole project: a value the user can fix (exit 2; a subclass may use another code),
# and a cost over the budget (exit 3). Both modules import nothing, so a node pays nothing for them.
from costmodel.errors import BadInput
from reproduce.errors import OverBudget

__all__ = ["BadInput", "OverBudget", "load_recipe", "read_jsonl", "run_main", "write_progress", "read_progress"]


def load_recipe(path: str | Path, needs: tuple[str, ...] = ()) -> dict:
    """The resolved recipe the pipeline wrote (ARTIFACTS/recipe.yaml), with the sections a stage needs."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except OSError as e:
        raise BadInput(f"--recipe {str(path)!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadInput(f"--recipe {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(recipe, dict):
        raise BadInput(f"--recipe {str(path)!r}: expected a mapping (a resolved recipe)")
    missing = [n for n in needs if n not in recipe]
    if missing:
        raise BadInput(f"--recipe {str(path)!r}: expected a resolved recipe with {', '.join(missing)} section(s)")
    return recipe


def read_jsonl(path: str | Path, required: str):
    """Records of a JSONL file, each an object with `required`; a bad line is BadInput naming file:line."""
    import json

    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise BadInput(f"{path}:{n}: not a JSON line") from None
            if not isinstance(record, dict) or record.get(required) is None:
                raise BadInput(f"{path}:{n}: expected a JSON object with {'an' if required[0] in 'aeiou' else 'a'} "
                               f"{required}")
            yield record


def run_main(name: str, parser, body, argv: list[str] | None,
             interrupted: str = "interrupted; run again to resume") -> int:
    """Parse `argv` with `parser` and call `body(args)`; map errors to exit codes."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or argparse's own usage error (exit 2)
        return int(e.code or 0)
    try:
        return body(args) or 0
    except (BadInput, OverBudget) as e:
        print(f"{name}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{name}: {interrupted}", file=sys.stderr)
        return 130


def write_progress(stage_dir: str | Path, done: float, total: float, unit: str) -> None:
    """ARTIFACTS/<stage>/progress.json `{done, total, unit, updated_at}`, replaced whole: what executors read
    to show progress and an ETA, and what the budget guard forecasts the stage's cost from."""
    import json
    import time

    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / "progress.json.tmp"
    tmp.write_text(json.dumps({"done": done, "total": total, "unit": unit, "updated_at": time.time()}) + "\n")
    tmp.replace(stage_dir / "progress.json")


def read_progress(stage_dir: str | Path) -> dict | None:
    """progress.json of a stage, or None (none yet, or cut mid-write)."""
    import json

    try:
        data = json.loads((Path(stage_dir) / "progress.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("total") else None
