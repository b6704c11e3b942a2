"""Hostile model-written code through `filter`, as root and as an ordinary user (uid 65534 via setpriv).

Each program attacks the grader or the host; the filter must reject every one, keep the correct ones, and
leave the host as it was: no files written outside the sandbox, no grader killed, no secret printed into the
output, the expected outputs out of reach, no process left behind, no socket reached.
"""
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
NONCE = secrets.token_hex(4)
SLEEP_MARK = f"600.{int(NONCE, 16)}"         # a detached grandchild's `sleep` argument, to find it afterwards
SECRET_ENV = f"planted-env-secret-{NONCE}"
SECRET_FILE = f"planted-file-secret-{NONCE}"

HOSTILE = {
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "fork_bomb_setsid": "import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
                        "    except OSError:\n        pass",
    "alloc_20g": "x = bytearray(20 << 30)\nprint(len(x))",
    "alloc_creep": "xs = []\nwhile True:\n    xs.append(bytearray(50 << 20))",
    "detached_grandchild": "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                           "        os.execv('/usr/bin/sleep', ['sleep', 'SLEEP_MARK'])\n    os._exit(0)\nprint(3)",
    "sigterm_ignorer": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1000)",
    "sigxcpu_ignorer": "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass",
    "raise_cpu_limit": "import resource\ns, h = resource.getrlimit(resource.RLIMIT_CPU)\n"
                       "resource.setrlimit(resource.RLIMIT_CPU, (h, h))\nwhile True:\n    pass",
    "spin_threads": "import threading\nfor _ in range(4):\n    threading.Thread(target=lambda: [0 for _ in iter(int, 1)])"
                    ".start()",
    "spin_children": "import os\nfor _ in range(4):\n    if os.fork() == 0:\n        while True:\n            pass\n"
                     "os.wait()\nprint(3)",
    "tcp_connect": "import socket\ns = socket.create_connection(('127.0.0.1', PORT), timeout=3)\ns.sendall(b'x')\nprint(3)",
    "unix_socket": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('SOCK')\ns.sendall(b'x')\nprint(3)",
    "abstract_socket": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(b'\\0ABSTRACT')\nprint(3)",
    "output_flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "many_files": "for i in range(100_000):\n    open(f'f{i}', 'w').close()\nprint(3)",
    "big_file": "open('big', 'wb').write(b'x' * (1 << 30))\nprint(3)",
    "delete_parent_files": "import os, shutil\nfor p in ('TRACES', 'OUTPUT'):\n    try:\n        os.remove(p)\n"
                           "    except OSError:\n        pass\nshutil.rmtree('WORK_DIR', ignore_errors=True)\nprint(3)",
    "write_markers": "for d in ('/tmp', '/var/tmp', '/dev/shm', 'WORK_DIR', 'HOME_DIR', '/usr/lib', '/etc', '/'):\n"
                     "    try:\n        open(d + '/hostile-NONCE', 'w').write('x')\n    except OSError:\n        pass\n"
                     "print(3)",
    "kill_parent": "import os\nos.kill(os.getppid(), 9)\nprint(3)",
    "kill_all": "import os\nos.kill(-1, 9)\nprint(3)",
    "kill_all_shell": "import os\nos.system('kill -9 -1')\nprint(3)",
    "kill_every_pid": "import os\nfor p in range(2, 70000):\n    try:\n        os.kill(p, 9)\n    except OSError:\n"
                      "        pass\nprint(3)",
    "read_expected": "import json\nfor line in open('TRACES'):\n    r = json.loads(line)\n    if r['id'] == 'ID':\n"
                     "        print(r['tests']['outputs'][0])",
    "read_expected_via_proc": "import os, json\nfor pid in os.listdir('/proc'):\n    try:\n"
                              "        for fd in os.listdir(f'/proc/{pid}/fd'):\n"
                              "            for line in open(f'/proc/{pid}/fd/{fd}'):\n"
                              "                r = json.loads(line)\n                if r.get('id') == 'ID':\n"
                              "                    print(r['tests']['outputs'][0])\n    except Exception:\n"
                              "        pass",
    "print_secrets": "import os, glob\nprint(dict(os.environ))\nfor p in glob.glob('/proc/*/environ') + "
                     "['HOME_DIR/.aws/credentials', '/root/.aws/credentials']:\n    try:\n"
                     "        print(open(p, 'rb').read())\n    except OSError:\n        pass",
    "shell_snoop": "import os\nos.system('cat /etc/shadow HOME_DIR/.aws/credentials 2>/dev/null; ls / /root /home')",
    "segfault": "import ctypes\nctypes.string_at(0)",
    "new_user_namespace": "import ctypes\nlibc = ctypes.CDLL(None)\nprint(3 if libc.unshare(0x10000000) == 0 else 'no')",
    "stdin_spin": "import sys\nwhile True:\n    sys.stdin.read()",
}
CORRECT = {
    "add": ("a, b = map(int, input().split())\nprint(a + b)", {"inputs": ["1 2\n"], "outputs": ["3\n"]}),
    "call_based": ("def f(x):\n    return 2 * x", {"fn_name": "f", "inputs": [[1], [5]], "outputs": [2, 10]}),
}


def fenced(code):
    return f"```python\n{code}\n```"


class Host:
    """A grader's world: a working folder with the traces, a HOME with credentials, listeners on the host."""

    def __init__(self, owner: int):
        self.dir = Path(tempfile.mkdtemp(prefix=f"hostile-{NONCE}-"))
        self.home = self.dir / "home"
        (self.home / ".aws").mkdir(parents=True)
        (self.home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET_FILE}\n")
        self.traces, self.output = self.dir / "traces.jsonl", self.dir / "graded.jsonl"
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.sock_path = f"/tmp/hostile-{NONCE}-{owner}.sock"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.sock_path)
        os.chmod(self.sock_path, 0o777)
        self.unix.listen()
        self.abstract_name = f"hostile-{NONCE}-{owner}"
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind(b"\0" + self.abstract_name.encode())
        self.abstract.listen()
        self.expected = {}
        records = []
        for i, (name, code) in enumerate(HOSTILE.items()):
            for token, value in (("TRACES", str(self.traces)), ("OUTPUT", str(self.output)),
                                 ("WORK_DIR", str(self.dir)), ("HOME_DIR", str(self.home)), ("NONCE", NONCE),
                                 ("PORT", str(self.tcp.getsockname()[1])), ("SOCK", self.sock_path),
                                 ("ABSTRACT", self.abstract_name), ("SLEEP_MARK", SLEEP_MARK), ("ID", name)):
                code = code.replace(token, value)
            # an answer no program can compute: only reading the expected outputs would give it
            self.expected[name] = f"expected-{NONCE}-{i}"
            records.append({"id": name, "domain": "code", "response": fenced(code),
                            "tests": {"inputs": ["1 2\n"], "outputs": [self.expected[name] + "\n"]}})
        for name, (code, tests) in CORRECT.items():
            records.append({"id": name, "domain": "code", "response": fenced(code), "tests": tests})
        self.traces.write_text("".join(json.dumps(r) + "\n" for r in records))
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, owner, owner)
            os.chmod(path, 0o700 if path.is_dir() else 0o600)   # the grader's own files: its uid reads them

    def markers(self) -> list[str]:
        places = ["/tmp", "/var/tmp", "/dev/shm", str(self.dir), str(self.home), "/usr/lib", "/etc", "/"]
        return [p for p in places if os.path.exists(f"{p}/hostile-{NONCE}")]

    def connections(self) -> list[str]:
        out = []
        for name, s in (("tcp", self.tcp), ("unix", self.unix), ("abstract", self.abstract)):
            s.setblocking(False)
            try:
                s.accept()
                out.append(name)
            except BlockingIOError:
                pass
        return out

    def close(self):
        for s in (self.tcp, self.unix, self.abstract):
            s.close()
        for p in [f"{d}/hostile-{NONCE}" for d in ("/tmp", "/var/tmp", "/dev/shm", "/usr/lib", "/etc", "")]:
            if os.path.exists(p):
                os.remove(p)
        os.remove(self.sock_path)
        shutil.rmtree(self.dir, ignore_errors=True)


def python_for(uid: int) -> str:
    """This interpreter if `uid` may run it (a pyenv under /root is off limits to nobody), else the system's.
    It must be able to start itself again: the filter's worker processes do."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        ok = subprocess.run(["/usr/bin/setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
                             candidate, "-c", "import os, sys; assert os.access(sys.executable, os.X_OK)"],
                            capture_output=True).returncode == 0
        if ok:
            return candidate
    pytest.fail(f"no python3 that uid {uid} can run: install python3 (the system's) for this test")


def run_filter(host: Host, as_uid: int | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(host.home), "PYTHONPATH": str(REPO),
           "AWS_SECRET_ACCESS_KEY": SECRET_ENV, "OPENAI_API_KEY": SECRET_ENV, "LANG": "C.UTF-8"}
    # default workers (this machine's CPUs: 2 here), CPU limit 1 s per test
    args = ["-m", "reproduce.stages.filter", str(host.traces), "-o", str(host.output), "--code-timeout-s", "1"]
    if as_uid is None:
        cmd = [sys.executable, *args]
    else:
        cmd = ["/usr/bin/setpriv", "--reuid", str(as_uid), "--regid", str(as_uid), "--clear-groups",
               python_for(as_uid), *args]
    return subprocess.run(cmd, cwd=host.dir, env=env, capture_output=True, text=True, timeout=300)


def leftover_processes() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if SLEEP_MARK.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


@pytest.fixture(params=["root", "nobody"])
def who(request):
    if os.geteuid() != 0:
        pytest.fail("run the hostile set as root: it drops to an ordinary user itself (setpriv)")
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap is missing: apt-get install bubblewrap (.ci/run installs it)")
    return request.param


def test_hostile_programs_are_contained(who):
    uid = None if who == "root" else NOBODY
    host = Host(0 if uid is None else uid)
    try:
        start = time.monotonic()
        done = run_filter(host, uid)
        wall = time.monotonic() - start
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        graded = {r["id"]: r for r in map(json.loads, host.output.read_text().splitlines())}
        assert set(graded) == set(HOSTILE) | set(CORRECT), "the grader did not finish every record"
        wrongly_kept = [n for n in HOSTILE if graded[n]["correct"]]
        assert not wrongly_kept, {n: graded[n]["reason"] for n in wrongly_kept}
        assert all(graded[n]["correct"] for n in CORRECT), {n: graded[n]["reason"] for n in CORRECT}
        for name in ("alloc_20g",):
            assert graded[name]["reason"].startswith("memory"), graded[name]["reason"]
        for name in ("sigterm_ignorer", "sigxcpu_ignorer", "raise_cpu_limit", "spin_threads", "stdin_spin"):
            assert graded[name]["reason"].startswith("timeout"), (name, graded[name]["reason"])
        assert graded["output_flood"]["reason"].startswith("output limit")

        text = host.output.read_text() + done.stdout + done.stderr
        assert SECRET_ENV not in text and SECRET_FILE not in text, "a secret reached the graded output"
        assert not any(host.expected[n] in graded[n]["reason"] for n in HOSTILE), "expected output was read"
        assert host.markers() == [], "files written outside the sandbox"
        assert host.traces.exists() and host.output.exists()
        assert host.connections() == [], "a host socket was reached"
        # the sandbox kills its process group as it returns; the kernel reaps it a moment later: wait for that,
        # so a slow reap under load is not read as an escape, and 10 s still catches one that lives on
        deadline = time.monotonic() + 10
        while leftover_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftover_processes() == [], "a detached process outlived its sandbox"
        # what a closing note quotes: programs contained, and the wall time of the whole set
        print(f"\n{who}: {len(HOSTILE)} hostile programs contained, {len(CORRECT)} correct kept in {wall:.1f} s "
              f"({done.stderr.strip().splitlines()[-1]})")
    finally:
        host.close()


def test_nobody_exists():
    assert pwd.getpwuid(NOBODY).pw_uid == NOBODY
