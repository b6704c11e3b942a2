"""The published prompts (prompts.yaml): NovaSky's system prompts and SkyThought's user prompts, each the exact
text their code sent, with the commit and file it is copied from.

    prompts.text("sky_t1")                 -> the system prompt Sky-T1 was trained with
    prompts.render("taco_stdin", body)     -> the user message SkyThought sent for that problem body
    prompts.template("math500")            -> the same as a str.format template ({problem}), as recipes hold them
    prompts.source("math500")              -> "NovaSky-AI/SkyThought@54a495f:skythought/tools/util/task_handlers.py ..."
"""
from __future__ import annotations

import functools
from pathlib import Path

FIELD = "{problem}"


@functools.cache
def published() -> dict[str, dict]:
    import yaml

    return yaml.safe_load((Path(__file__).with_name("prompts.yaml")).read_text(encoding="utf-8"))


def text(name: str) -> str:
    return published()[name]["text"]


def source(name: str) -> str:
    return published()[name]["source"]


def render(name: str, problem: str) -> str:
    """The user message, with `problem` put in place of {problem} (no other brace is a field)."""
    return text(name).replace(FIELD, problem)


def template(name: str) -> str:
    """The text as a str.format template, as generate.messages reads recipe templates: literal braces doubled."""
    head, _, tail = text(name).partition(FIELD)
    escape = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
    return escape(head) + FIELD + escape(tail)
