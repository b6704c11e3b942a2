"""Where `reproduce` keeps things. Run state (ledger, artifacts) lives in REPRODUCE_HOME (costmodel.ledger.home,
default ~/.reproduce); what every run of this user can share (stage environments, tokenizers) in the per-user
cache below, so a fresh REPRODUCE_HOME (a test, a trial run) never rebuilds gigabytes."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path:
    """$XDG_CACHE_HOME/reproduce (default ~/.cache/reproduce)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reproduce"
