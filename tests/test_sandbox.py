"""The sandbox against hostile programs: each is a failure, in bounded time, with the host untouched."""
import os
import socket
import time

import pytest

from reproduce.stages import sandbox
from reproduce.stages.grading import grade_code

ROOT = os.geteuid() == 0
TESTS = {"inputs": ["\n"], "outputs": ["ok\n"]}


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def live_descendants() -> list[int]:
    table = sandbox._proc_table()
    me, out, stack = os.getpid(), [], [os.getpid()]
    while stack:
        parent = stack.pop()
        for pid, (ppid, _, alive) in table.items():
            if ppid == parent:
                stack.append(pid)
                if alive:
                    out.append(pid)
    return [p for p in out if p != me]


def test_runs_code_with_stdin_and_a_fresh_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-should-not-leak")
    r = sandbox.run_python("import os, sys\nprint(input()[::-1])\nprint(sorted(os.environ))", stdin="abc\n")
    assert r.ok and r.stdout.splitlines()[0] == "cba"
    assert "OPENAI_API_KEY" not in r.stdout and "sk-secret" not in r.stdout
    assert {"rlimits", "session"} <= set(r.isolation)


@pytest.mark.skipif(not ROOT, reason="dropping to an unprivileged uid needs root")
def test_isolation_applied_here():
    r = sandbox.run_python("import os; print(os.getuid())")
    assert int(r.stdout) >= sandbox.UID_BASE
    assert any(x.startswith("uid:") for x in r.isolation), r.isolation


def test_infinite_loop_times_out():
    start = time.monotonic()
    assert grade_code(fenced("while True:\n    pass"), TESTS, timeout_s=1) == (False, "timeout: test 1 of 1")
    assert time.monotonic() - start < 4


def test_fork_bomb_is_contained_and_cleaned_up():
    bomb = ("import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
            "    except OSError:\n        pass")
    before = set(live_descendants())  # e.g. an earlier test's process-pool workers, not ours to judge
    start = time.monotonic()
    ok, reason = grade_code(fenced(bomb), TESTS, timeout_s=1)
    assert not ok and reason.split(":")[0] in ("timeout", "runtime error", "killed")
    assert time.monotonic() - start < 10
    assert set(live_descendants()) - before == set(), "fork bomb processes survived"
    if ROOT:       # the uids this process hands out (other sessions may be grading at the same time)
        ours = {str(sandbox.UID_BASE + os.getpid() * 16 + slot) for slot in range(16)}
        assert not any(alive and uids[0] in ours for _, uids, alive in sandbox._proc_table().values())


def test_memory_hog_fails_fast():
    start = time.monotonic()
    ok, reason = grade_code(fenced("x = bytearray(8 << 30)\nprint('ok')"), TESTS, memory_mb=256)
    assert not ok and "MemoryError" in reason
    assert time.monotonic() - start < 5


def test_output_flood_is_capped():
    r = sandbox.run_python("while True:\n    print('x' * 1000)", timeout_s=5, max_output_bytes=100_000)
    assert r.output_capped and not r.ok and len(r.stdout) <= 100_000


def test_background_child_does_not_hold_the_run():
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('ok')"
    before = set(live_descendants())
    start = time.monotonic()
    assert grade_code(fenced(code), TESTS, timeout_s=5) == (True, "passed")
    assert time.monotonic() - start < 3
    assert set(live_descendants()) - before == set()


@pytest.mark.skipif(not ROOT, reason="without root the sandbox cannot stop writes to the caller's own folders")
def test_cannot_write_outside_its_folder(tmp_path):
    target = tmp_path / "pwned.txt"
    os.chmod(tmp_path, 0o777)                  # even a world-writable folder: the root is read-only there
    code = f"open({str(target)!r}, 'w').write('x')\nprint('ok')"
    ok, reason = grade_code(fenced(code), TESTS)
    assert not ok and reason.startswith("runtime error")
    assert not target.exists()
    # writing in its own folder (and a private /tmp) works, and leaves nothing behind on the host
    r = sandbox.run_python("open('f.txt', 'w').write('hi')\nopen('/tmp/sandbox-leak', 'w').write('x')\n"
                           "print(open('f.txt').read())")
    assert r.ok and r.stdout == "hi\n"
    assert not os.path.exists("/tmp/sandbox-leak")


def test_big_files_are_refused():
    r = sandbox.run_python("open('big', 'wb').write(b'x' * (64 << 20))", file_mb=4)
    assert not r.ok


def test_cannot_reach_the_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'hello')\nprint('ok')")
    try:
        r = sandbox.run_python(code, timeout_s=5)
        if "netns" not in r.isolation:
            pytest.skip(f"no network namespace here ({r.isolation})")
        assert not r.ok and ("unreachable" in r.stderr.lower() or "refused" in r.stderr.lower())
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_the_working_folder_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    sandbox.run_python("open('x', 'w').write('1')")
    assert list(tmp_path.iterdir()) == []
