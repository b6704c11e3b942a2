"""`reproduce filter|generate|rewrite|convert|evaluate ...`: the stage programs, reachable from the CLI.

Each stage is its own program (`python -m reproduce.stages.<name>`, argparse) so the nodes can run it
without the controller; these commands hand their arguments straight through.
"""
from __future__ import annotations

import typer

from costmodel.stages import STAGES

PROGRAMS = {s.program: s.help for s in STAGES}   # `reproduce evaluate` runs the eval stage's program


def register(app: typer.Typer) -> None:
    for name, help_text in PROGRAMS.items():
        app.command(name, help=f"{help_text[0].upper()}{help_text[1:]}. (`reproduce {name} --help` for its options.)",
                    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                      "help_option_names": []},
                    add_help_option=False)(_runner(name))


def _runner(name: str):
    def run(ctx: typer.Context) -> None:
        import importlib

        module = importlib.import_module(f"reproduce.stages.{name}")
        code = module.main(list(ctx.args))
        raise typer.Exit(code or 0)

    run.__name__ = name
    return run
