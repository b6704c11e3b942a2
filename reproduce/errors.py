"""Errors the CLI turns into one line and an exit code (DESIGN.md: 0 ok, 1 failure, 2 bad input, 3 over budget)."""


class UserError(Exception):
    """Bad input: a value the user can fix. Exit 2."""
    exit_code = 2


class OverBudget(Exception):
    """A plan or a running stage does not fit the budget. Exit 3."""
    exit_code = 3
