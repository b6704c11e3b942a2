"""docs/cli.md is made from the commands (reproduce.cli.doc): it must be what they say now, and the README's
command table may only name commands that exist."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_current():
    from reproduce.cli import doc as clidoc

    assert (ROOT / "docs" / "cli.md").read_text() == clidoc.render(), \
        "docs/cli.md is stale: run `python -m reproduce.cli.doc > docs/cli.md`"


def test_every_command_the_readme_names_is_in_the_reference():
    reference = (ROOT / "docs" / "cli.md").read_text()
    documented = set(re.findall(r"^## `reproduce (\S+)`", reference, re.M))
    table = (ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    named = {m for m in re.findall(r"`reproduce ([a-z]+)", table)}
    assert named and named <= documented | {"generate", "filter", "rewrite", "convert", "sft", "evaluate"}


def test_every_command_has_an_example():
    from reproduce.cli import doc as clidoc

    sections = clidoc.render().split("\n## ")[1:]
    for section in sections:
        name = section.split("`")[1]
        if name.split()[-1] in ("generate", "filter", "rewrite", "convert", "sft", "evaluate"):
            continue   # the stage programs: their own --help has the examples
        assert "```\nreproduce " in section, f"{name} --help has no example"
