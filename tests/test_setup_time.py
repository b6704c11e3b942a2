"""The measured stage-environment setup time the plan's startup estimate reads (costmodel/setup_time.py)."""
import json

import pytest

from costmodel import setup_time


def test_every_lock_has_a_measured_setup_with_its_source():
    from reproduce.locks import LOCKS_DIR

    for env in sorted(p.stem for p in LOCKS_DIR.glob("*.txt") if p.stem != "build"):
        seconds, source = setup_time.setup_seconds(env)
        assert 0 < seconds < 3600, env                       # a fresh node's uv install, not an hour
        assert "benchmarks/env_build.py" in source and "measured 20" in source
        assert setup_time.setup_seconds(env) == (seconds, f"{setup_time.measured(env)[1]}: {setup_time.method()}")
    hours, _ = setup_time.setup_hours("sft")
    assert hours == pytest.approx(setup_time.setup_seconds("sft")[0] / 3600)


def test_unmeasured_env_is_none_and_a_missing_file_is_no_figure(tmp_path, monkeypatch):
    assert setup_time.setup_seconds("no-such-env") is None
    monkeypatch.setattr(setup_time, "DATA", tmp_path / "absent.json")
    setup_time._load.cache_clear()
    try:
        assert setup_time.setup_hours("sft") is None
        (tmp_path / "absent.json").write_text(json.dumps({"source": "s", "envs": {
            "sft": {"uv_cold_s": 72.0, "uv_warm_s": 9.0, "venv_gb": 6.6, "measured": "2026-12-02"}}}))
        setup_time._load.cache_clear()
        assert setup_time.setup_hours("sft") == (0.02, "uv cold cache, measured 2026-12-02: s")
    finally:
        setup_time._load.cache_clear()
