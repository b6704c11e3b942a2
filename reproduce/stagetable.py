"""The stage table, as the CLI reads it: costmodel.stages (its one home, where the cost model reads it too),
with the CLI's error for an unknown stage name and the programs' names.

    from reproduce.stagetable import STAGES, stage
    for s in STAGES: print(s.name, s.where, s.mode)
    stage("sft").needs          # ('convert',): the stages whose outputs it reads
"""
from __future__ import annotations

from costmodel.stages import CONTROLLER, CPU, GPU, GPU_STAGES, NAMES, STAGES, Stage, later  # noqa: F401
from costmodel import stages as _table


def stage(name: str) -> Stage:
    from costmodel.errors import BadInput
    from reproduce.errors import UserError

    try:
        return _table.stage(name)
    except BadInput as e:
        raise UserError(str(e)) from None


def by_program(name: str) -> str:
    """A stage's name given it or its program's (`evaluate` -> `eval`); UserError on neither."""
    for s in STAGES:
        if name in (s.name, s.program):
            return s.name
    return stage(name).name
