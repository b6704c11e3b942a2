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


@pytest.fixture(scope="session")
def _hub_standin(tmp_path_factory):
    """One stand-in hub per session, serving the replicas tests/fixtures/hub/build.py writes."""
    import importlib.util
    from pathlib import Path

    from hub_standin import HubStandin

    spec = importlib.util.spec_from_file_location("hub_replicas", Path(__file__).parent / "fixtures/hub/build.py")
    replicas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replicas)
    with HubStandin(replicas.build(tmp_path_factory.mktemp("hub"))) as server:
        yield server


@pytest.fixture
def hub(_hub_standin, tmp_path, monkeypatch):
    """The hub stand-in (tests/hub_standin.py) with its variables set: `hub.url`, `hub.env` (set here; every
    request of the real clients goes to it, none leaves loopback), `hub.requests` ((method, host, path), this
    test's only), `hub.token` (has access to the gated replica). HF_TOKEN is unset and the HF cache is new."""
    import socket
    import sys

    for k, v in _hub_standin.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    url = _hub_standin.url      # the libraries read HF_ENDPOINT once, at import
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    if "datasets" in sys.modules:
        from datasets import config

        monkeypatch.setattr(config, "HF_ENDPOINT", url)
        monkeypatch.setattr(config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    real_connect = socket.socket.connect

    def loopback_only(sock, address):           # a second guard: no Python socket may leave loopback
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(("127.", "::1")):
            raise OSError(f"test traffic must stay on loopback, not {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    _fresh_hf_session()
    _hub_standin.clear()
    yield _hub_standin
    _fresh_hf_session()


def _fresh_hf_session():
    """huggingface_hub keeps one HTTP client, with the proxy variables it found when it made it: drop it."""
    import sys

    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import _http

        _http.close_session()
