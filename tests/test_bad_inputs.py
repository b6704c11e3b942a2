"""Careless or hostile input to filter, convert and audit: one line, exit 2, no traceback, nothing written.

(Stage programs name themselves in the line, `filter: ...`, as every stage program does; the CLI proper says
`error: ...`.)"""
import json

import pytest

from conftest import cli, ledger_content

GOOD = {"id": "a", "domain": "mcq", "answer": "A", "response": r"\boxed{A}"}


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def traces(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    return path


@pytest.mark.parametrize("flag, value, message", [
    ("--code-timeout-s", "nan", "expected a number above 0"),
    ("--code-timeout-s", "inf", "expected a number above 0"),
    ("--code-timeout-s", "0", "expected a number above 0"),
    ("--code-timeout-s", "-1", "expected a number above 0"),
    ("--code-timeout-s", "1e9", "at most 3,600 seconds"),
    ("--math-timeout-s", "nan", "expected a number above 0"),
    ("--code-memory-mb", "99999999999", "this machine's memory"),
    ("--code-memory-mb", "0", "expected a number above 0"),
    ("--code-memory-mb", "-5", "expected a number above 0"),
    ("--workers", "100000", "--workers 100000: expected 1 to"),
])
def test_filter_limits_that_would_not_limit(home, capsys, tmp_path, traces, flag, value, message):
    out = tmp_path / "out.jsonl"
    code, _, err = cli(capsys, "filter", str(traces), "-o", str(out), flag, value)
    assert code == 2 and message in one_line(err) and err.startswith("filter: ")
    assert not out.exists()


def test_filter_binary_input(home, capsys, tmp_path):
    binary = tmp_path / "in.jsonl"
    binary.write_bytes(bytes(range(256)) * 10)
    code, _, err = cli(capsys, "filter", str(binary), "-o", str(tmp_path / "out.jsonl"))
    assert code == 2 and "not UTF-8 text" in one_line(err)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("where, message", [
    (lambda t: t, "is a folder"),
    (lambda t: "/dev/null/graded.jsonl", "cannot write there"),
    (lambda t: "/proc/self/nope/graded.jsonl", "cannot write"),
])
def test_filter_output_that_cannot_be_written(home, capsys, tmp_path, traces, where, message):
    code, _, err = cli(capsys, "filter", str(traces), "-o", str(where(tmp_path)))
    assert code == 2 and message in one_line(err)


def test_filter_refuses_to_append_to_a_foreign_file(home, capsys, tmp_path, traces):
    precious = tmp_path / "notes.txt"
    precious.write_bytes(b"my notes, not JSON\n\x00\x01")
    code, _, err = cli(capsys, "filter", str(traces), "-o", str(precious))
    assert code == 2 and "not graded output" in one_line(err)
    assert precious.read_bytes() == b"my notes, not JSON\n\x00\x01"
    code, _, err = cli(capsys, "filter", str(traces), "-o", str(traces))
    assert code == 2 and "is the input file" in one_line(err)


@pytest.mark.parametrize("content, message", [
    (json.dumps([GOOD, GOOD]) + "\n", "a JSON list, expected one JSON object a line"),
    (bytes(range(256)), "not UTF-8 text"),
    ('"just a string"\n', "a JSON str"),
])
def test_convert_input_that_is_not_jsonl(home, capsys, tmp_path, content, message):
    from reproduce import recipe as recipes

    (tmp_path / "recipe.yaml").write_text(recipes.dump(recipes.load(scale="smoke")))
    src = tmp_path / "in.jsonl"
    if isinstance(content, bytes):
        src.write_bytes(content)
    else:
        src.write_text(content)
    code, _, err = cli(capsys, "convert", "--recipe", str(tmp_path / "recipe.yaml"), "--artifacts", str(tmp_path),
                    "--input", str(src))
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "convert" / "train.json").exists()


def test_audit_plot_into_a_missing_folder_or_onto_a_folder(home, capsys, tmp_path):
    cli(capsys, "all", "--budget", "5000", "--backend", "sim", "-y")
    ledger = home / ".reproduce" / "ledger.db"
    before = ledger_content(ledger)
    for target, message in ((tmp_path / "missing" / "spend.png", "does not exist"),
                            (tmp_path, "expected a file name ending in .png"),
                            (tmp_path / "dir.png", "is a folder")):
        if target.name == "dir.png":
            target.mkdir()
        code, _, err = cli(capsys, "audit", "--plot", str(target))
        assert code == 2 and err.startswith("error: ") and message in one_line(err), err
    assert ledger_content(ledger) == before
    assert not (tmp_path / "missing").exists()


def test_filter_without_a_sandbox_refuses_code_unless_opted_in(home, capsys, tmp_path, monkeypatch):
    from reproduce.stages.lib import sandbox

    code_record = {"id": "c", "domain": "code", "tests": {"inputs": ["\n"], "outputs": ["ok\n"]},
                   "response": "```python\nprint('ok')\n```"}
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(code_record) + "\n" + json.dumps(GOOD) + "\n")
    monkeypatch.setenv("PATH", str(tmp_path))              # no bwrap here
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_state", {})
    code, _, err = cli(capsys, "filter", str(src), "-o", str(out), "--workers", "1")
    assert code == 2 and "install bubblewrap" in one_line(err) and sandbox.UNSAFE_ENV in err
    assert not out.exists() or out.read_text() == ""          # nothing graded unsafely
    monkeypatch.setattr(sandbox, "_state", {})
    code, _, err = cli(capsys, "filter", str(src), "-o", str(out), "--workers", "1", "--unsafe-sandbox")
    assert code == 0, err
    graded = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["correct"] for r in graded] == [True, True]
    # a math/mcq-only file needs no sandbox at all
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_state", {})
    only_mcq = tmp_path / "mcq.jsonl"
    only_mcq.write_text(json.dumps(GOOD) + "\n")
    code, _, err = cli(capsys, "filter", str(only_mcq), "-o", str(tmp_path / "mcq-out.jsonl"), "--workers", "1")
    assert code == 0, err
