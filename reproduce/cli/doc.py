"""The CLI reference, docs/cli.md, made from the commands themselves (their options, help and examples), so the
docs cannot drift from the code: tests/test_clidoc.py fails when the checked-in file is not what this prints.

    python -m reproduce.cli.doc > docs/cli.md
"""
from __future__ import annotations


def render() -> str:
    import typer

    from reproduce.cli import app

    root = typer.main.get_command(app)
    lines = ["# CLI reference", "",
             "Made by `python -m reproduce.cli.doc > docs/cli.md` from the commands' own options and help; "
             "`tests/test_clidoc.py` checks it is current.", ""]
    for name in sorted(root.commands):
        cmd = root.commands[name]
        if cmd.hidden:
            continue
        lines += [f"## `reproduce {name}`", "", (cmd.help or "").strip().split("\n\n")[0], ""]
        params = [p for p in cmd.params if not getattr(p, "hidden", False) and p.name != "help"]
        if params:
            lines += ["| option | value | default | what |", "|---|---|---|---|"]
            for p in params:
                flags = ", ".join(f"`{o}`" for o in p.opts) if p.param_type_name == "option" else f"`{p.name.upper()}`"
                value = "" if getattr(p, "is_flag", False) else (p.metavar or getattr(getattr(p, "type", None), "name", "TEXT").upper())
                default = p.show_default if isinstance(getattr(p, "show_default", None), str) else p.default
                default = "" if default is None or default is False or default in ((), []) \
                    or getattr(p, "is_flag", False) else default
                what = " ".join((getattr(p, "help", None) or "").split()).replace("|", "\\|")
                lines.append(f"| {flags} | {str(value).replace('|', chr(92) + '|')} | {default} | {what} |")
            lines.append("")
        if cmd.epilog:
            examples = [x.strip() for x in cmd.epilog.splitlines() if x.strip().startswith("reproduce ")]
            lines += ["```", *examples, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
