"""Run untrusted, model-written Python in a sandbox that holds as root and as an ordinary user.

    result = run_python("print(input()[::-1])", stdin="abc\\n", timeout_s=5, memory_mb=512)
    result.stdout == "cba\\n"; result.limit is None; result.isolation == ("bwrap", "userns", "pidns", ...)

The program runs under bubblewrap (`bwrap`, Debian/Ubuntu/Fedora package `bubblewrap`; the tool Flatpak uses)
in its own user, mount, PID, IPC, UTS and network namespaces:
- filesystem: /usr (and the /bin, /lib symlinks) read-only, a few files of /etc, fresh /proc and /dev; a private
  size-capped tmpfs for /tmp, /dev/shm and the working folder /work. Nothing else exists in there: no home, no
  grader files, no traces (so no expected outputs: they stay in the grader's memory), no /run (no unix sockets),
  no host /tmp. The program and its stdin come in through memfds, never through a file on disk.
- network: a namespace with no interfaces (no TCP, no abstract unix sockets).
- processes: PID 1 of the namespace is bwrap's; when the program ends, or we kill bwrap, the kernel kills
  every process left in the namespace. The program cannot see or signal the grader (`kill -9 -1` reaches only
  its own namespace). Run as root, the sandbox first drops to an unprivileged uid of its own.
- limits (rlimits, inherited through bwrap): CPU seconds (the intent of a timeout, independent of the machine's
  load), address space, file size, open files, processes, no core dumps. A wall-clock backstop
  (WALL_FACTOR x the CPU limit + WALL_SLACK_S) ends programs that sleep. Output is captured up to a byte cap.
- environment: PATH, HOME, LANG only: no API keys or cloud credentials.
Verdicts name the limit that ended a program (`Result.limit`: "timeout" for CPU or wall time, "memory",
"output"), however it was ended (SIGXCPU, the hard limit's SIGKILL, our own kill).

No bwrap, or no user namespaces: `require()` raises Unavailable (one line: what to install). Setting
REPRODUCE_UNSAFE_SANDBOX=1 opts in to running code with rlimits and a process session only.

Call from a single-threaded process (a multiprocessing/ProcessPool worker is): the limits are set in a
`preexec_fn`, as the subprocess docs advise.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from reproduce.stages.lib.common import BadInput

UNSAFE_ENV = "REPRODUCE_UNSAFE_SANDBOX"
INSTALL_HINT = ("install bubblewrap (apt-get install bubblewrap / dnf install bubblewrap), or set "
                f"{UNSAFE_ENV}=1 to run model-written code with rlimits only, unisolated")
PR_SET_CHILD_SUBREAPER = 36
UID_BASE = 1_500_000_000          # sandbox uids when we are root: far above any real account, below 2**32 - 1
NPROC = 64                        # processes/threads the sandbox may add (a fork bomb hits this)
TMPFS_MB = 64                     # per private mount: /work, /tmp, /dev/shm
WALL_FACTOR, WALL_SLACK_S = 3.0, 5.0   # wall backstop = 3 x CPU limit + 5 s: a loaded machine never decides
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
_slots = itertools.count()
_state: dict = {}


class Unavailable(BadInput):
    """No working sandbox on this machine, and no explicit opt-in to run code without one."""


@dataclasses.dataclass
class Result:
    returncode: int | None        # None: killed by us (wall backstop or output cap)
    stdout: str
    stderr: str
    timed_out: bool               # CPU limit or wall backstop
    output_capped: bool
    wall_s: float
    isolation: tuple[str, ...]
    cpu_s: float = 0.0            # CPU seconds of the program's processes, as last sampled
    memory_out: bool = False      # hit the address-space limit (MemoryError, or killed near it)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.limit is None

    @property
    def limit(self) -> str | None:
        """The limit that ended the program: "timeout", "memory", "output", or None."""
        if self.timed_out:
            return "timeout"
        if self.output_capped:
            return "output"
        if self.memory_out:
            return "memory"
        return None

    def why(self) -> str:
        """One short reason for a failed run."""
        if self.limit == "output":
            return "output limit"
        if self.limit:
            return self.limit
        if self.returncode is not None and self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        last = self.stderr.strip().splitlines()[-1:] or [""]
        return f"exit {self.returncode}: {last[0][:160]}".rstrip(": ")


def check_limits(timeout_s: float, memory_mb: float, file_mb: float = 16) -> None:
    """Finite, positive, and small enough to be a limit (a huge one would lift it)."""
    for name, value, top in (("timeout_s", timeout_s, 86_400), ("memory_mb", memory_mb, 1 << 20),
                             ("file_mb", file_mb, 1 << 20)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 < value <= top:
            raise ValueError(f"sandbox {name}={value!r}: expected a number above 0 and at most {top:,}")


def run_python(code: str, stdin: str | bytes = "", timeout_s: float = 10, memory_mb: int = 1024,
               max_output_bytes: int = 1 << 20, file_mb: int = 16, argv: list[str] = ()) -> Result:
    """Run `code` with Python (isolated mode) in the sandbox; feed `stdin`; capture output.

    timeout_s is CPU seconds; the wall-clock backstop is WALL_FACTOR x timeout_s + WALL_SLACK_S."""
    check_limits(timeout_s, memory_mb, file_mb)
    mode = require()
    data = stdin.encode() if isinstance(stdin, str) else stdin
    uid = _sandbox_uid(next(_slots) % 16) if os.geteuid() == 0 and mode == "bwrap" else None
    cpu = max(1, math.ceil(timeout_s))
    limits = {"cpu": cpu, "mem": int(memory_mb) << 20, "fsize": int(file_mb) << 20}
    prlimit = _prlimit() if mode == "bwrap" else None
    fds, host_dir = [], None
    try:
        stdin_fd = _memfd("stdin", data)
        fds.append(stdin_fd)
        if mode == "bwrap":
            code_fd = _memfd("prog.py", code.encode())
            fds.append(code_fd)
            python, binds = _python(uid)
            # the process limit set inside counts this sandbox's processes only (per user namespace)
            inside = [prlimit, f"--nproc={NPROC}", "--"] if prlimit else []
            cmd = _bwrap_args(code_fd, binds) + inside + [python, "-I", "-X", "utf8", "/work/prog.py", *argv]
            cwd, pass_fds, isolation = "/", (code_fd,), ("bwrap", "userns", "mountns", "pidns", "ipcns",
                                                         "netns", "ro-system", "tmpfs", "rlimits", "env")
        else:
            host_dir = tempfile.mkdtemp(prefix="sandbox-")
            with open(os.path.join(host_dir, "prog.py"), "w") as f:
                f.write(code)
            cmd = [sys.executable, "-I", "-X", "utf8", "prog.py", *argv]
            cwd, pass_fds, isolation = host_dir, (), ("rlimits", "session", "env", "UNSAFE: no namespaces")
        if uid is not None:
            isolation += (f"uid:{uid}",)
            if host_dir:
                os.chown(host_dir, uid, uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/work" if mode == "bwrap" else cwd,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        before = set(_children(os.getpid()))
        with _subreaper():
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    cwd=cwd, start_new_session=True, pass_fds=pass_fds, close_fds=True,
                                    preexec_fn=_limits_then_uid(limits, uid, nproc=prlimit is None))
            for fd in fds:
                os.close(fd)
            fds = []

            def kill():
                _signal(-proc.pid, signal.SIGKILL)     # bwrap leads its session; its PID 1 then takes the rest
                kill_tree(proc.pid, before)            # and anything that slipped to us as an orphan

            wall_limit = WALL_FACTOR * cpu + WALL_SLACK_S
            out, err, wall_out, capped, sampled = _collect(proc, start + wall_limit, max_output_bytes, kill)
            wall = time.monotonic() - start
        rc = _exit_code(proc.returncode, mode)
        timed_out = wall_out or rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and sampled["cpu_max"] >= cpu - 0.05)
        stderr = err.decode("utf-8", "replace")
        memory_out = not timed_out and (_memory_error(stderr) or (
            rc == -signal.SIGKILL and sampled["vm_max"] >= 0.9 * limits["mem"]))
        return Result(None if (wall_out or capped) else rc, out.decode("utf-8", "replace"), stderr, timed_out,
                      capped, wall, isolation, round(sampled["cpu"], 3), memory_out)
    finally:
        for fd in fds:
            os.close(fd)
        if host_dir:
            shutil.rmtree(host_dir, ignore_errors=True)


# ---- is there a sandbox here? -----------------------------------------------------------------------------

def require() -> str:
    """"bwrap" when the sandbox works here, "unsafe" when the user opted in to none; else raise Unavailable.
    Probed once per process (a ~20 ms bwrap run)."""
    if "mode" not in _state:
        problem = _probe()
        if problem is None:
            _state["mode"] = "bwrap"
        elif os.environ.get(UNSAFE_ENV) == "1":
            _state["mode"] = "unsafe"
        else:
            _state["mode"] = Unavailable(f"no sandbox for model-written code: {problem}; {INSTALL_HINT}")
    if isinstance(_state["mode"], Exception):
        raise _state["mode"]
    return _state["mode"]


def _probe() -> str | None:
    """None if bwrap runs a program in fresh namespaces here, else what went wrong."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed"
    uid = _sandbox_uid(15) if os.geteuid() == 0 else None
    try:
        python, binds = _python(uid)
    except Unavailable as e:
        return str(e)
    code_fd = _memfd("prog.py", b"import os; print(os.getpid())")
    try:
        done = subprocess.run(_bwrap_args(code_fd, binds) + [python, "-I", "/work/prog.py"], pass_fds=(code_fd,),
                              capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
                              preexec_fn=_limits_then_uid(None, uid), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bwrap did not run ({type(e).__name__}: {e})"
    finally:
        os.close(code_fd)
    if done.returncode != 0 or done.stdout.strip() != "2":     # pid 2: bwrap's init is 1 in a new PID namespace
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"bwrap failed here (exit {done.returncode}: {last[:200]}; are unprivileged user namespaces enabled?)"
    return None


def _python(uid: int | None) -> tuple[str, list[str]]:
    """A Python the sandbox can run, and any folder to bind for it. SANDBOX_PYTHON overrides.

    The code under test gets the standard library (what APPS/TACO need): a system Python under /usr is bound
    anyway; a Python elsewhere (pyenv, conda) is bound read-only at its own prefix if the sandbox's uid can
    read it (a home folder of 0700 cannot be, run as root)."""
    explicit = os.environ.get("SANDBOX_PYTHON")
    base = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    candidates = [explicit] if explicit else [base, *SYSTEM_PYTHONS]
    for path in candidates:
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            continue
        if any(real.startswith(d + "/") for d in SYSTEM_DIRS):
            return real, []
        prefix = os.path.dirname(os.path.dirname(real))        # PREFIX/bin/python3.x
        if _readable_by(prefix, uid):
            return real, [prefix]
    raise Unavailable(f"no Python for the sandbox (tried {', '.join(p for p in candidates if p)}): set "
                      "SANDBOX_PYTHON to a python3 the sandbox can read, e.g. /usr/bin/python3")


def _readable_by(path: str, uid: int | None) -> bool:
    if uid is None:
        return os.access(path, os.R_OK | os.X_OK)
    # every folder above must be searchable by "others" (the sandbox uid is no owner or group of anything)
    parts = os.path.abspath(path).split("/")
    return all(os.stat("/".join(parts[:i]) or "/").st_mode & 0o001 for i in range(2, len(parts) + 1))


def _bwrap_args(code_fd: int, binds: list[str]) -> list[str]:
    size = str(TMPFS_MB << 20)
    args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/work",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "LC_ALL", "C.UTF-8", "--hostname", "sandbox"]
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--size", str(1 << 20), "--tmpfs", "/etc"]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--remount-ro", "/etc"]
    for path in binds:
        args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
             "--size", size, "--tmpfs", "/tmp", "--size", size, "--perms", "0700", "--tmpfs", "/work",
             "--perms", "0600", "--file", str(code_fd), "/work/prog.py", "--remount-ro", "/", "--chdir", "/work", "--"]
    return args


# ---- the child's limits -----------------------------------------------------------------------------------

def _sandbox_uid(slot: int) -> int:
    """A uid of its own for each concurrent sandbox of this process (root only)."""
    return UID_BASE + (os.getpid() * 16 + slot) % 2_000_000_000


def _prlimit() -> str | None:
    """util-linux's prlimit, to set the process limit inside the namespace (where it counts only the
    sandbox's processes); None: RLIMIT_NPROC is set outside, counted against all of the uid's processes."""
    path = shutil.which("prlimit", path="/usr/bin:/bin")
    return path if path and os.path.realpath(path).startswith("/usr/") else None


def _limits_then_uid(limits: dict | None, uid: int | None, nproc: bool = True):
    """The preexec_fn: rlimits (inherited through bwrap by the program), then the sandbox uid when root."""
    def setup() -> None:
        if limits:
            resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))   # SIGXCPU, then SIGKILL
            resource.setrlimit(resource.RLIMIT_AS, (limits["mem"], limits["mem"]))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if nproc:   # counted per real uid: a uid of its own when we are root; else ours, so add to what it runs
                n = NPROC if uid is not None else _tasks_of(os.getuid()) + NPROC
                resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
    return setup


def _tasks_of(uid: int) -> int:
    tasks = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    tasks += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return tasks


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at its start."""
    fd = os.memfd_create(name, 0)            # no MFD_CLOEXEC: it is handed to the child
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _exit_code(rc: int, mode: str) -> int:
    """bwrap reports a program killed by signal N as exit 128 + N; give it back as -N, like subprocess."""
    if mode == "bwrap" and 128 < rc < 128 + 65:
        return -(rc - 128)
    return rc


def _memory_error(stderr: str) -> bool:
    tail = stderr[-2000:]
    return "MemoryError" in tail or "Cannot allocate memory" in tail or "std::bad_alloc" in tail


# ---- watching, collecting, killing ------------------------------------------------------------------------

def _collect(proc: subprocess.Popen, deadline: float, cap: int, kill):
    """Read stdout/stderr until the program exits, the deadline, or `cap` bytes; then `kill()` what is left.
    Samples the CPU time and address space of the program's processes as it goes (to name the limit that
    ended it). -> (stdout, stderr, timed out, capped, {"cpu", "cpu_max", "vm_max"})."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for pipe in bufs:
        os.set_blocking(pipe.fileno(), False)
        sel.register(pipe, selectors.EVENT_READ)
    timed_out = capped = False
    exited_at = None
    cpu: dict[int, float] = {}
    sampled = {"cpu": 0.0, "cpu_max": 0.0, "vm_max": 0}
    try:
        while sel.get_map():
            now = time.monotonic()
            if exited_at is None:
                _sample(proc.pid, cpu, sampled)
            if proc.poll() is not None and exited_at is None:
                exited_at = now
                kill()                                  # leftovers: after this the pipes hit EOF
            if exited_at is not None and now - exited_at > 1.0:
                break                                   # something we could not kill holds a pipe
            if now >= deadline and exited_at is None:
                timed_out = True
                break
            for key, _ in sel.select(min(max(deadline - now, 0.0), 0.05)):
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                bufs[key.fileobj] += chunk
                capped = capped or len(bufs[key.fileobj]) > cap
            if capped:
                break
    finally:
        kill()
        proc.wait()
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    sampled["cpu"] = sum(cpu.values())
    return bytes(bufs[proc.stdout][:cap]), bytes(bufs[proc.stderr][:cap]), timed_out, capped, sampled


_TICK = os.sysconf("SC_CLK_TCK")


def _sample(root: int, cpu: dict, sampled: dict) -> None:
    """CPU seconds (utime + stime) and address space of every live process under `root`."""
    stack = _children(root)
    while stack:
        pid = stack.pop()
        fields = _stat(pid)
        if not fields or fields[0] == b"Z":
            continue
        try:
            seconds = (int(fields[11]) + int(fields[12])) / _TICK     # stat fields 14, 15 (after "pid (comm)")
            vsize = int(fields[20])                                   # stat field 23
        except (IndexError, ValueError):
            continue
        cpu[pid] = max(cpu.get(pid, 0.0), seconds)
        sampled["cpu_max"] = max(sampled["cpu_max"], seconds)
        sampled["vm_max"] = max(sampled["vm_max"], vsize)
        stack.extend(_children(pid))


def kill_tree(spare: int, exclude: set[int], rounds: int = 50) -> None:
    """SIGKILL every descendant of this process except the subtrees of `exclude` (children we had before
    the sandbox started), and reap the orphans `_subreaper` handed us. `spare` is the sandbox's main process,
    killed here but reaped by Popen."""
    me = os.getpid()
    for _ in range(rounds):
        stack = [c for c in _children(me) if c not in exclude]
        alive = []
        while stack:
            pid = stack.pop()
            state = _state_of(pid)
            if state is None:
                continue                                 # gone already
            if state != "Z":
                alive.append(pid)
                stack.extend(_children(pid))
            elif pid != spare and _parent(pid) == me:
                _reap(pid)
        if not alive:
            return
        for pid in alive:                               # stop first so none forks while we go round
            _signal(pid, signal.SIGSTOP)
        for pid in alive:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.002)


def _children(pid: int) -> list[int]:
    """Child pids from /proc/PID/task/*/children (Linux >= 3.5), else from a scan of /proc."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue                                 # the thread ended
            return [c for c, (ppid, _, _) in proc_table().items() if ppid == pid]
        except OSError:
            pass
    return out


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()      # [state, ppid, ...]; comm may hold spaces
    except OSError:
        return None


def _state_of(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0].decode() if fields else None


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def proc_table() -> dict[int, tuple[int, list[str], bool]]:
    """pid -> (parent pid, [real, effective, saved uid], alive (not a zombie)) from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status", "rb") as f:
                    fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
                table[int(name)] = (int(fields[b"PPid"]), fields[b"Uid"].decode().split()[:3],
                                    not fields[b"State"].strip().startswith(b"Z"))
            except (OSError, KeyError, ValueError):
                pass
    return table


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@contextlib.contextmanager
def _subreaper():
    """While a sandbox runs, orphans of its processes (bwrap's PID 1 once bwrap is gone) are re-parented to
    us instead of PID 1, so kill_tree can kill and reap them (a container's PID 1 often reaps nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ok = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield ok
    finally:
        if ok:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
