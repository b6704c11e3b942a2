"""`reproduce`: the command line. Each noun lives in its own module of this package (reproduce/cli/NOUN.py)
and registers itself here.

Heavy imports (sky, torch, boto3, openai) happen inside commands, so `reproduce --help` stays fast.
User errors become one line and exit 2; over budget exits 3 (reproduce.errors).
"""
from __future__ import annotations

import sys

import typer

from reproduce.errors import OverBudget, UserError

app = typer.Typer(
    help="Reproduce reasoning-model recipes (Sky-T1) on the cheapest cloud GPUs, within a budget.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

@app.callback()
def _root() -> None:
    """Reproduce reasoning-model recipes (Sky-T1) on the cheapest cloud GPUs, within a budget."""


COMMAND_MODULES = ("prices", "plan", "run", "audit", "stages", "preflight", "control")


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"reproduce.cli.{name}").register(app)


_register()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    import signal

    # A closed terminal (SIGHUP) or a `kill` (SIGTERM) tears down like Ctrl-C: nothing is left running.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        if args and "--help" not in args:     # before any command prints; help needs no home
            from reproduce.paths import check_home

            check_home()
        # Without standalone mode click returns a command's exit code instead of exiting with it.
        code = app(args=argv, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except (UserError, OverBudget) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        from costmodel.errors import BadInput

        if isinstance(e, BadInput):
            typer.echo(f"error: {e}", err=True)
            sys.exit(2)
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click usage errors: exit 2, one message
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
