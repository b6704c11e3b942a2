"""Recipes are data: a YAML file, plus `--set dotted.key=value` overrides and a scale.

A recipe is a plain nested dict. `load()` returns it with overrides applied and checked, so everything
downstream (plan, stages, task rendering) reads one dict and never re-parses flags.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from reproduce.errors import UserError

RECIPES_DIR = Path(__file__).parent / "recipes"
SCALES = ("full", "smoke")


def available() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


DEFAULT = "sky-t1-32b-preview"


def load(name_or_path: str | None = None, sets: list[str] = (), scale: str = "full") -> dict:
    """The recipe with its variant, smoke keys and `--set` overrides applied, every value checked
    (reproduce.recipe_schema): a bad one is a UserError naming the key, the value and where it came from."""
    from reproduce import recipe_schema

    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}: expected one of {', '.join(SCALES)}")
    name_or_path = name_or_path or DEFAULT
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        hint = difflib.get_close_matches(str(name_or_path), available(), n=1)
        raise UserError(f"unknown recipe {name_or_path!r}: expected a file or one of {', '.join(available())}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    origins: dict[str, str] = {}
    recipe = _read(path, origins=origins)
    smoke = recipe.pop("smoke", {}) or {}
    if not isinstance(smoke, dict):
        raise UserError(f"recipe {path}: `smoke:` must be a mapping of dotted.key: value")
    if scale == "smoke":
        for key, value in smoke.items():
            set_key(recipe, key, value, origin=f"smoke: of {path.name}")
            origins[key] = f"smoke: of {path.name}"
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected dotted.key=value, e.g. sft.num_train_epochs=6")
        set_key(recipe, key.strip(), parse_value(raw), origin="--set")
        origins[key.strip()] = "--set"
    recipe["scale"] = scale
    recipe["source_file"] = str(path)
    recipe_schema.check(recipe, origin=lambda key: _origin(origins, key, path))
    return recipe


def _origin(origins: dict, key: str, path: Path) -> str:
    """Where `key` got its value: the last override that set it or a section above it, else the file."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        for k, where in origins.items():
            kp = k.split(".")
            if len(kp) == n and all(a == b or a == "*" for a, b in zip(kp, parts)):
                return f"from {where}"
    return f"in {path.name}"


def _read(path: Path, depth: int = 0, origins: dict | None = None) -> dict:
    """A recipe file, or a variant: `base: NAME` + `set: {dotted.key: value}` (+ its own `smoke:` keys)
    so a variant states only what it changes."""
    try:
        recipe = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"recipe {path}: not a text file (expected UTF-8 YAML)") from None
    except OSError as e:
        raise UserError(f"recipe {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(recipe, dict):
        raise UserError(f"recipe {path}: expected a mapping of sections, got {type(recipe).__name__}")
    if "base" not in recipe:
        return recipe
    if "set" in recipe and not isinstance(recipe["set"], dict):
        raise UserError(f"recipe {path}: `set:` must be a mapping of dotted.key: value")
    if depth > 4:
        raise UserError(f"recipe {path}: `base:` chain is too deep (a cycle?)")
    base_path = RECIPES_DIR / f"{recipe['base']}.yaml"
    if not base_path.is_file():
        raise UserError(f"recipe {path}: base {recipe['base']!r} not found; expected one of {', '.join(available())}")
    merged = _read(base_path, depth + 1, origins)
    smoke = recipe.get("smoke") or {}
    if not isinstance(smoke, dict):
        raise UserError(f"recipe {path}: `smoke:` must be a mapping of dotted.key: value")
    smoke = {**(merged.pop("smoke", {}) or {}), **smoke}
    for key, value in (recipe.get("set") or {}).items():
        set_key(merged, str(key), value, origin=f"set: of {path.name}")
        if origins is not None:
            origins[str(key)] = f"set: of {path.name}"
    merged.update({k: v for k, v in recipe.items() if k not in ("base", "set", "smoke")})
    merged["smoke"] = smoke
    return merged


def parse_value(raw: str):
    """`6` -> int, `1e-5` -> float, `true` -> bool, `[a, b]` -> list, anything else -> str."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def set_key(recipe: dict, dotted: str, value, origin: str = "--set") -> None:
    """Set an existing key. `sources.*.problems` sets it in every list item; `sources.apps.problems`
    picks the item whose `name` is `apps`; a number picks by position. Values are checked afterwards, all
    at once, by reproduce.recipe_schema."""
    parts = dotted.split(".")
    targets = [recipe]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt = []
        for node in targets:
            if isinstance(node, list):
                items = _list_items(node, part, dotted, origin)
                if last:
                    raise UserError(f"{origin} {dotted}: cannot replace a whole list item")
                nxt.extend(items)
            elif isinstance(node, dict):
                if part not in node:
                    raise UserError(f"unknown key {dotted!r} ({origin}){_nearest(recipe, dotted)}")
                if last:
                    node[part] = value
                else:
                    nxt.append(node[part])
            else:
                raise UserError(f"unknown key {dotted!r} ({origin}): {'.'.join(parts[:i])} is a value, not a section")
        targets = nxt


def _list_items(node: list, part: str, dotted: str, origin: str = "--set") -> list:
    if part == "*":
        return node
    if part.isdigit() and int(part) < len(node):
        return [node[int(part)]]
    named = [x for x in node if isinstance(x, dict) and x.get("name") == part]
    if not named:
        names = [x.get("name") for x in node if isinstance(x, dict)]
        raise UserError(f"{origin} {dotted}: no item named {part!r}; expected *, an index or one of {names}")
    return named


def _nearest(recipe: dict, dotted: str) -> str:
    hint = difflib.get_close_matches(dotted, list(all_keys(recipe)), n=1, cutoff=0.5)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def all_keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            yield key
            yield from all_keys(v, key + ".")
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict) and "name" in item:
                yield from all_keys(item, f"{prefix}{item['name']}.")


def dump(recipe: dict) -> str:
    return yaml.safe_dump(copy.deepcopy(recipe), sort_keys=False)


def variants_of(name: str) -> list[str]:
    """Shipped recipes whose `base:` is `name`."""
    out = []
    for other in available():
        try:
            text = yaml.safe_load((RECIPES_DIR / f"{other}.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(text, dict) and text.get("base") == name:
            out.append(other)
    return out
