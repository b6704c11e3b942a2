"""Run untrusted, model-written Python in a separate, limited process.

    result = run_python("print(input()[::-1])", stdin="abc\\n", timeout_s=5, memory_mb=512)
    result.stdout == "cba\\n"; result.isolation == ("rlimits", "session", "netns", "mountns", ...)

Layers, each applied where the OS allows and named in `Result.isolation` (nothing fails if one is missing):
- rlimits: CPU seconds, address space (memory), file size, open files, no core dumps, process count.
- session: the child leads its own session/process group; the whole group is SIGKILLed on timeout.
- uid:N (when we are root): the child runs as an unprivileged uid of its own, unique per concurrent run.
  RLIMIT_NPROC then holds (root ignores it), it cannot write to root-owned paths, and on exit every process
  of that uid is SIGKILLed, including ones that left the process group with setsid().
- netns: a fresh network namespace with no interfaces up, so no sockets reach anything.
- mountns, ro-root, tmpfs: a private mount namespace; `/` remounted read-only, fresh size-capped tmpfs on
  /tmp, /var/tmp and /dev/shm; the working folder lives on that tmpfs and vanishes with the namespace.
  Without mountns the working folder is a throwaway folder on disk, deleted afterwards.
- env: built from scratch (PATH, HOME, LANG): no API keys or cloud credentials are inherited.
- stdout/stderr are captured up to a byte cap; a program that prints past it is killed.
Not covered: reading world-readable files. Use a container/VM on top if that matters.

The child is set up by `preexec_fn` (Python in the forked child): call from a single-threaded process
(a multiprocessing/ProcessPool worker is), as the subprocess docs advise.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CLONE_NEWNS = 0x00020000
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18

UID_BASE = 1_500_000_000          # sandbox uids: far above any real account, below 2**32 - 1
NPROC = 64                        # processes/threads the sandbox uid may hold (a fork bomb hits this)
TMPFS_MB = 64                     # per mount: the working folder and /tmp inside the namespace
_slots = itertools.count()


@dataclasses.dataclass
class Result:
    returncode: int | None        # None: killed by us (timeout or output cap)
    stdout: str
    stderr: str
    timed_out: bool
    output_capped: bool
    wall_s: float
    isolation: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_capped

    def why(self) -> str:
        """One short reason for a failed run."""
        if self.timed_out:
            return "timeout"
        if self.output_capped:
            return "output limit"
        if self.returncode is not None and self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        last = self.stderr.strip().splitlines()[-1:] or [""]
        return f"exit {self.returncode}: {last[0][:160]}".rstrip(": ")


def run_python(code: str, stdin: str | bytes = "", timeout_s: float = 10, memory_mb: int = 1024,
               max_output_bytes: int = 1 << 20, file_mb: int = 16, argv: list[str] = ()) -> Result:
    """Run `code` with a Python interpreter (isolated mode) in the sandbox; feed `stdin`; capture output."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    uid = UID_BASE + os.getpid() * 16 + next(_slots) % 16 if os.geteuid() == 0 else None
    libc = ctypes.CDLL(None, use_errno=True)
    host_dir = tempfile.mkdtemp(prefix="sandbox-")
    report_r, report_w = os.pipe()
    try:
        work = os.path.join(host_dir, "work")     # used when no private tmpfs could be mounted
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "prog.py"), "w") as f:
            f.write(code)
        with open(os.path.join(host_dir, "stdin"), "wb") as f:
            f.write(data)
        if uid is not None:
            os.chmod(host_dir, 0o711)
            os.chown(work, uid, uid)
        setup = _child_setup(code.encode(), uid, report_w, timeout_s, memory_mb, file_mb)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

        before = set(_children(os.getpid()))
        with _subreaper(libc) as reaper, open(os.path.join(host_dir, "stdin"), "rb") as stdin_file:
            start = time.monotonic()
            # Relative script path: resolved in the folder the child chdir()s to (tmpfs or `work`).
            proc = subprocess.Popen([interpreter(uid), "-I", "-X", "utf8", "prog.py", *argv], stdin=stdin_file,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=work,
                                    start_new_session=True, preexec_fn=setup, close_fds=True)
            os.close(report_w)
            report_w = None

            def kill():
                _killpg(proc.pid)                     # pgid == pid (start_new_session)
                kill_tree(proc.pid, before)
                if uid is not None and not reaper:
                    kill_uid(uid)                     # orphans that went to PID 1 (root only)

            out, err, timed_out, capped = _collect(proc, start + timeout_s, max_output_bytes, kill)
            wall = time.monotonic() - start
        with os.fdopen(report_r, "rb") as f:
            report_r, isolation = None, tuple(x for x in f.read().decode().split(",") if x)
        return Result(None if (timed_out or capped) else proc.returncode, out.decode("utf-8", "replace"),
                      err.decode("utf-8", "replace"), timed_out, capped, wall, isolation)
    finally:
        for fd in (report_r, report_w):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(host_dir, ignore_errors=True)


_interpreters: dict = {}


def interpreter(uid: int | None) -> str:
    """A Python the sandbox uid can execute: this one, else the system's (a venv under /root is off limits).

    SANDBOX_PYTHON overrides. The untrusted code gets the standard library, which is what APPS/TACO need.
    """
    if os.environ.get("SANDBOX_PYTHON"):
        return os.environ["SANDBOX_PYTHON"]
    if uid is None:
        return sys.executable
    if "path" not in _interpreters:
        candidates = [sys.executable, getattr(sys, "_base_executable", ""), shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")]
        _interpreters["path"] = next((c for c in candidates if c and _can_exec_as(c, uid)), sys.executable)
    return _interpreters["path"]


def _can_exec_as(path: str, uid: int) -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            os._exit(0 if os.access(path, os.X_OK) and os.access(os.path.realpath(path), os.R_OK) else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _collect(proc: subprocess.Popen, deadline: float, cap: int, kill):
    """Read stdout/stderr until the program exits, the deadline, or `cap` bytes; then `kill()` what is left
    (helpers it forked keep the pipes open, so EOF alone would wait for them until the deadline)."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for pipe in bufs:
        os.set_blocking(pipe.fileno(), False)
        sel.register(pipe, selectors.EVENT_READ)
    timed_out = capped = False
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
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
    return bytes(bufs[proc.stdout][:cap]), bytes(bufs[proc.stderr][:cap]), timed_out, capped


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_uid(uid: int, rounds: int = 50) -> None:
    """SIGKILL every process of `uid` (root only): a forked helper takes the uid and calls kill(-1).
    kill(-1) reports success whenever any other process exists, so /proc tells us when none is left.
    Needed only where `_subreaper` failed (else nothing the sandbox starts can leave our process tree)."""
    for _ in range(rounds):
        if not any(alive and str(uid) in uids for _, uids, alive in _proc_table().values()):
            return
        pid = os.fork()
        if pid == 0:                                   # helper: never returns into the caller's code
            try:
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)            # spares the caller itself
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.002)


def kill_tree(spare: int, exclude: set[int], rounds: int = 50) -> None:
    """SIGKILL every descendant of this process except the subtrees of `exclude` (children we had before
    the sandbox started), and reap the orphans `_subreaper` handed us. Works without root: a program that
    setsid()s out of its process group is still our descendant. `spare` is the sandbox's main process,
    killed here but reaped by Popen."""
    me = os.getpid()
    for _ in range(rounds):
        stack = [c for c in _children(me) if c not in exclude]
        alive = []
        while stack:
            pid = stack.pop()
            state = _state(pid)
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
            return [c for c, (ppid, _, _) in _proc_table().items() if ppid == pid]
        except OSError:
            pass
    return out


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()      # [state, ppid, ...]; comm may hold spaces
    except OSError:
        return None


def _state(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0].decode() if fields else None


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _proc_table() -> dict[int, tuple[int, list[str], bool]]:
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
def _subreaper(libc):
    """While a sandbox runs, orphans of its processes are re-parented to us instead of PID 1, so kill_uid
    can reap them (a container's PID 1 often reaps nothing, and a fork bomb would leave hundreds)."""
    ok = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield ok
    finally:
        if ok:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _child_setup(code: bytes, uid: int | None, report_fd: int, timeout_s: float, memory_mb: int,
                 file_mb: int):
    """The preexec_fn: runs in the forked child before exec. Each layer is best effort and reported."""
    def setup() -> None:
        applied = []

        def layer(name, fn):
            try:
                fn()
                applied.append(name)
            except Exception:
                pass

        libc = ctypes.CDLL(None, use_errno=True)
        cpu = int(timeout_s) + 1
        mem = memory_mb << 20
        layer("rlimits", lambda: (
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1)),
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem)),
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20)),
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)),
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))))
        applied.append("session")                      # start_new_session=True did setsid()
        if uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))   # counted against the new uid
            layer("netns", lambda: _unshare(libc, CLONE_NEWNET))
            if _try(lambda: _unshare(libc, CLONE_NEWNS)):
                applied.append("mountns")
                _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)      # nothing leaks back to the host
                layer("ro-root", lambda: _mount(libc, None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY))
                for path in ("/var/tmp", "/dev/shm"):
                    if os.path.isdir(path):
                        _try(lambda p=path: _tmpfs(libc, p, "mode=1777"))
                if _try(lambda: _tmpfs(libc, "/tmp", "mode=1777")):
                    applied.append("tmpfs")
                    os.mkdir("/tmp/work", 0o700)
                    with open("/tmp/work/prog.py", "wb") as f:
                        f.write(code)
                    os.chown("/tmp/work", uid, uid)
                    os.chdir("/tmp/work")
            layer(f"uid:{uid}", lambda: (os.setgroups([]), os.setgid(uid), os.setuid(uid)))
        else:
            # Not root: a user namespace may still let us have a network namespace of our own.
            layer("netns", lambda: _userns_netns(libc))
            layer("rlimits-nproc", _nproc_for_user)
        os.write(report_fd, ",".join(applied).encode())
    return setup


def _try(fn) -> bool:
    try:
        fn()
        return True
    except Exception:
        return False


def _unshare(libc, flags: int) -> None:
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def _tmpfs(libc, path: str, opts: str) -> None:
    _mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={TMPFS_MB}m,nr_inodes=4096,{opts}")


def _userns_netns(libc) -> None:
    uid, gid = os.getuid(), os.getgid()
    _unshare(libc, CLONE_NEWUSER | CLONE_NEWNET)
    for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _nproc_for_user() -> None:
    """RLIMIT_NPROC counts all of this user's tasks: allow what it has now plus NPROC more."""
    uid, tasks = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    tasks += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    resource.setrlimit(resource.RLIMIT_NPROC, (tasks + NPROC, tasks + NPROC))
