"""REPRODUCE_HOME is checked before any command prints: a home that is a file is one line and exit 2, up front."""
from __future__ import annotations

import pytest

from conftest import cli


@pytest.mark.parametrize("argv", [["plan"], ["all", "--budget", "450", "--backend", "sim", "-y"], ["runs"],
                                  ["prices", "H100:8"]])
@pytest.mark.parametrize("below", ["", "sub"])
def test_a_home_that_is_a_file_is_reported_first(home, tmp_path, monkeypatch, capsys, argv, below):
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("REPRODUCE_HOME", str(afile / below) if below else str(afile))
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == "", out[:300]                  # nothing of a plan before the error
    assert err.count("\n") == 1 and err.startswith("error: ") and str(afile) in err, err
    assert ("cannot make the folder" if below else "is a file, not a folder") in err
    assert afile.read_text() == "x"


def test_help_needs_no_home(home, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("REPRODUCE_HOME", str(tmp_path / "afile"))
    code, out, _ = cli(capsys, "plan", "--help")
    assert code == 0 and "Usage:" in out


def test_a_home_not_made_yet_is_fine_and_is_not_made_by_the_check(home, tmp_path, monkeypatch, capsys):
    from reproduce.paths import check_home

    monkeypatch.setenv("REPRODUCE_HOME", str(tmp_path / "new" / "home"))
    check_home()
    assert not (tmp_path / "new").exists()
