"""Shared fixtures. Tests never touch the user's ~/.sky, ~/.reproduce or ~/.aws, nor the network."""
from __future__ import annotations

import pytest


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`reproduce ARGV` in this process: (exit code, stdout, stderr). The CLI's main() always exits; an exception
    it does not turn into an exit code fails the test. (Test modules: `from conftest import cli`.)"""
    from reproduce.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def ledger_content(path) -> list[str]:
    """Every row of the ledger at PATH, read through a read-only connection. The file's bytes are not the content:
    in WAL mode a checkpoint (when some connection closes, GC's choice of moment) rewrites them unchanged."""
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A throwaway HOME: HOME, REPRODUCE_HOME and SKY_RUNTIME_DIR point into tmp_path; no cloud credentials."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("HOME", str(root))
    monkeypatch.setenv("REPRODUCE_HOME", str(root / ".reproduce"))
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(root))
    monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    monkeypatch.setenv("REPRODUCE_OFFLINE", "1")  # no live price fetches; tests that want one unset it
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    from costmodel import prices

    prices.clear_cache()
    yield root
    prices.clear_cache()


@pytest.fixture(autouse=True)
def no_cloud_metadata(monkeypatch):
    """boto3 without credentials fails at once instead of probing the EC2 metadata endpoint (seconds each)."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
