"""Where `reproduce` keeps things. Run state (ledger, artifacts) lives in REPRODUCE_HOME (costmodel.ledger.home,
default ~/.reproduce); what every run of this user can share (stage environments, tokenizers) in the per-user
cache below, so a fresh REPRODUCE_HOME (a test, a trial run) never rebuilds gigabytes."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path:
    """$XDG_CACHE_HOME/reproduce (default ~/.cache/reproduce)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reproduce"


def check_home() -> None:
    """REPRODUCE_HOME must be a folder, or a path one can make: checked before any command prints, so a home that
    is a file is one line up front, not an error after a whole plan. Makes nothing (the ledger does, when used)."""
    from costmodel.ledger import home

    from reproduce.errors import UserError

    path = home()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return
    if existing == path:
        raise UserError(f"{path} is a file, not a folder: point REPRODUCE_HOME at a folder")
    raise UserError(f"cannot make the folder {path} ({existing} is a file): point REPRODUCE_HOME at a folder")
