"""The ledger: append-only accounting in SQLite, safe for two writers, never overwrites a file it cannot read."""
import multiprocessing
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import cli
from costmodel import ledger as ledger_mod
from costmodel.ledger import Ledger, LedgerError, SCHEMA_VERSION


def _run(led, run_id="r1", budget=100.0):
    led.create_run(run_id, recipe="rec", scale="full", backend="sim", budget=budget, simulated=True,
                   artifacts="/tmp/a", recipe_yaml="name: rec\n", plan={"stages": []}, at=1000.0)


def _attempt(led, run_id, stage, cost, event="finished", api=(), at=2000.0, **extra):
    attempt = led.add_stage_row(run_id, stage, "started", at=at, state="PENDING", kind="gpu", gpus=8,
                                price_per_hour=16.8, cloud="aws", region="us-east-1")
    fields = dict(state="SUCCEEDED" if event == "finished" else event.upper(), kind="gpu", gpus=8, nodes=1,
                  price_per_hour=16.8, price_source="snapshot", cloud="aws", region="us-east-1",
                  instance_type="p5.48xlarge", hours=cost / 16.8, gpu_hours=8 * cost / 16.8, compute_usd=cost,
                  preemptions=1, **extra)
    if event == "finished":
        led.finish_stage(run_id, stage, attempt, at=at + 10, api_usage=list(api), **fields)
    else:
        led.add_stage_row(run_id, stage, event, at=at + 10, attempt=attempt, **fields)
    return attempt


def test_stage_rows_attempts_and_audit_add_up(home):
    with Ledger() as led:
        assert led.path == home / ".reproduce" / "ledger.db"
        _run(led)
        led.add_stage_row("r1", "sft", "planned", at=1000.0, kind="gpu", gpus=8, hours=2.0, gpu_hours=16.0,
                          compute_usd=33.6, api_usd=0.0)
        _attempt(led, "r1", "sft", 10.0, event="cancelled")
        _attempt(led, "r1", "sft", 21.0, api=[{"model": "gpt-4o-mini", "batch": True, "prompt_tokens": 1000,
                                              "cached_tokens": 100, "completion_tokens": 500, "usd": 0.25}])
        a = led.audit("r1")
    sft = a["stages"][0]
    assert sft["stage"] == "sft" and sft["actual"]["state"] == "finished"
    assert sft["actual"]["attempts"] == 2
    assert sft["actual"]["compute_usd"] == pytest.approx(31.0)      # both attempts were billed
    assert sft["actual"]["api_usd"] == pytest.approx(0.25)
    assert sft["actual"]["preemptions"] == 2
    assert sft["actual"]["arithmetic"] == "8 x $2.10/h x 0.60 h = $10.00 + 8 x $2.10/h x 1.25 h = $21.00"
    t = a["totals"]
    assert t["actual_usd"] == pytest.approx(31.25) and t["planned_usd"] == pytest.approx(33.6)
    assert t["headroom_usd"] == pytest.approx(100 - 31.25) and t["within_budget"]
    assert sum(c["compute_usd"] for c in a["by_cloud"]) == pytest.approx(t["compute_usd"])
    assert a["by_model"] == [{"model": "gpt-4o-mini", "batch": True, "records": 1, "prompt_tokens": 1000,
                              "cached_tokens": 100, "completion_tokens": 500, "usd": 0.25}]


def test_correction_is_a_new_row_and_replaces_the_terminal_row(home):
    with Ledger() as led:
        _run(led)
        attempt = _attempt(led, "r1", "eval", 5.0)
        before = led.db.execute("SELECT COUNT(*) FROM stage_rows").fetchone()[0]
        led.correct("r1", "eval", attempt, reason="cloud bill said $6", compute_usd=6.0)
        assert led.db.execute("SELECT COUNT(*) FROM stage_rows").fetchone()[0] == before + 1
        old = led.db.execute("SELECT compute_usd FROM stage_rows WHERE event = 'finished'").fetchone()[0]
        assert old == 5.0                                   # the original stays as written
        assert led.spent("r1") == pytest.approx(6.0)
        assert led.finished_stages("r1") == {"eval"}
        assert led.audit("r1")["stages"][0]["actual"]["message"] == "correction: cloud bill said $6"


def test_open_attempt_counts_its_last_progress(home):
    with Ledger() as led:
        _run(led)
        attempt = led.add_stage_row("r1", "generate", "started", at=1.0, state="PENDING")
        led.add_stage_row("r1", "generate", "progress", at=2.0, attempt=attempt, state="RUNNING", compute_usd=3.0)
        led.add_stage_row("r1", "generate", "progress", at=3.0, attempt=attempt, state="RUNNING", compute_usd=4.5)
        assert led.spent("r1") == 4.5
        assert [a["attempt"] for a in led.open_attempts("r1")] == [attempt]
        assert led.finished_stages("r1") == set()


def test_unknown_event_or_field_is_refused(home):
    with Ledger() as led:
        _run(led)
        with pytest.raises(ValueError, match="stage event 'done'"):
            led.add_stage_row("r1", "sft", "done", at=1.0)
        with pytest.raises(ValueError, match="unknown stage row fields"):
            led.add_stage_row("r1", "sft", "progress", at=1.0, dollars=3)


def _writer(path, n, who):
    led = Ledger(path)
    for i in range(n):
        led.add_api_usage("shared", "rewrite", [{"model": "gpt-4o-mini", "prompt_tokens": 1, "usd": 0.001}],
                          at=float(i))
        led.add_event("shared", "rewrite", "api_batch", ok=True, reason=f"{who}-{i}", numbers={"i": i})
    led.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "state" / "ledger.db"      # does not exist yet: the processes race to create it
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), 150, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Ledger(path) as led:
        assert led.db.execute("SELECT COUNT(*) FROM api_usage").fetchone()[0] == 600
        assert led.db.execute("SELECT COUNT(DISTINCT reason) FROM events").fetchone()[0] == 600
        assert led.db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert led.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert led.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_corrupt_file_is_a_clear_error_and_left_untouched(home):
    path = home / ".reproduce" / "ledger.db"
    path.parent.mkdir(parents=True)
    junk = b"this is not a database\x00" * 300
    path.write_bytes(junk)
    with pytest.raises(LedgerError, match="not a SQLite database.*left untouched"):
        Ledger()
    assert path.read_bytes() == junk
    assert not (path.parent / "ledger.db-wal").exists()


def test_damaged_sqlite_pages_are_a_clear_error(home):
    path = home / ".reproduce" / "ledger.db"
    with Ledger() as led:
        _run(led)
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)          # header intact, schema page destroyed
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match="left untouched"):
        Ledger()
    assert path.read_bytes() == bytes(data)


def test_newer_schema_is_refused_and_left_untouched(home):
    path = home / ".reproduce" / "ledger.db"
    with Ledger() as led:
        _run(led)
        led.db.execute("INSERT INTO schema_version VALUES (99, 0)")
        led.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="schema version 99, newer"):
        Ledger()
    assert path.read_bytes() == before


def test_foreign_sqlite_file_is_refused(home):
    path = home / ".reproduce" / "ledger.db"
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="not a reproduce ledger"):
        Ledger()


def test_migrates_a_version_1_ledger_keeping_its_rows(home, monkeypatch):
    monkeypatch.setattr(ledger_mod, "SCHEMA_VERSION", 1)
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", {1: ledger_mod.MIGRATIONS[1]})
    with Ledger() as led:
        _run(led)
        assert "calibration" not in {r[0] for r in led.db.execute("SELECT name FROM sqlite_master")}
    monkeypatch.undo()
    monkeypatch.setenv("REPRODUCE_HOME", str(home / ".reproduce"))
    with Ledger() as led:
        assert led.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert led.run("r1")["budget"] == 100.0
        assert led.calibration_rows() == []
        assert led.lease("r1") is None


def test_cli_reports_a_corrupt_ledger_in_one_line(home, capsys):
    path = home / ".reproduce" / "ledger.db"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 100)
    code, _, err = cli(capsys, "runs")
    assert code == 2
    assert err.count("\n") == 1 and "not a SQLite database" in err and "Traceback" not in err


# ---- impossible money ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("compute_usd", -14.58), ("compute_usd", float("nan")),
                                          ("hours", float("inf")), ("gpu_hours", -1.0), ("api_usd", float("-inf")),
                                          ("price_per_hour", -2.0), ("preemptions", -1)])
def test_impossible_stage_amounts_are_refused_and_nothing_is_written(home, field, value):
    with Ledger() as led:
        _run(led)
        attempt = led.add_stage_row("r1", "generate", "started", at=1.0, state="PENDING")
        before = led.db.execute("SELECT COUNT(*) FROM stage_rows").fetchone()[0]
        with pytest.raises(ledger_mod.BadInput, match=f"{field} = .*(finite|negative)"):
            led.finish_stage("r1", "generate", attempt, at=2.0, state="SUCCEEDED", **{field: value})
        with pytest.raises(ledger_mod.BadInput):
            led.add_stage_row("r1", "generate", "progress", at=2.0, attempt=attempt, **{field: value})
        assert led.db.execute("SELECT COUNT(*) FROM stage_rows").fetchone()[0] == before


@pytest.mark.parametrize("row", [{"usd": -0.5}, {"usd": float("nan")}, {"prompt_tokens": -10},
                                 {"completion_tokens": float("inf")}, {"cached_tokens": 1.5}])
def test_impossible_api_usage_is_refused(home, row):
    with Ledger() as led:
        _run(led)
        with pytest.raises(ledger_mod.BadInput, match="nothing was recorded"):
            led.add_api_usage("r1", "rewrite", [{"model": "gpt-4o-mini", **row}], at=1.0)
        # a correction carries a delta: negative is fine, NaN is not
        led.add_api_usage("r1", "rewrite", [{"model": "gpt-4o-mini", "kind": "correction", "usd": -0.1}], at=1.0)
        with pytest.raises(ledger_mod.BadInput):
            led.add_api_usage("r1", "rewrite", [{"model": "m", "kind": "correction", "usd": float("nan")}], at=1.0)
        assert tuple(led.db.execute("SELECT COUNT(*), SUM(usd) FROM api_usage").fetchone()) == (1, -0.1)


def test_impossible_budget_and_float_noise(home):
    with Ledger() as led:
        with pytest.raises(ledger_mod.BadInput, match="budget"):
            _run(led, budget=float("nan"))
        assert led.runs() == []
        _run(led)
        attempt = led.add_stage_row("r1", "eval", "started", at=1.0)
        led.finish_stage("r1", "eval", attempt, at=2.0, state="SUCCEEDED", compute_usd=-1e-12)   # float noise
        assert led.spent("r1") == 0.0


# ---- the state folder and the file ---------------------------------------------------------------------------

def test_unusable_homes_are_one_line_errors(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder_db = tmp_path / "h2"
    (folder_db / "ledger.db").mkdir(parents=True)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    cases = {str(afile): "is a file, not a folder", str(afile / "sub"): "cannot make the folder",
             str(folder_db): "is a folder, not a SQLite file"}
    if os.geteuid() != 0:
        os.chmod(readonly, 0o500)
        cases[str(readonly)] = "not writable"
    for home_dir, message in cases.items():
        monkeypatch.setenv("REPRODUCE_HOME", home_dir)
        code, _, err = cli(capsys, "runs")
        assert code == 2, (home_dir, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert afile.read_text() == "x" and list((folder_db / "ledger.db").iterdir()) == []


def test_a_read_only_mount_is_one_line(tmp_path, monkeypatch):
    """A real read-only mount (root can write anywhere else): a private mount namespace of `unshare`."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
              f"REPRODUCE_HOME={ro}/home {sys.executable} -m reproduce runs")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True)
    if "mount" in done.stderr and done.returncode != 2:
        pytest.skip(f"cannot make a read-only mount here: {done.stderr.strip()}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


# ---- one run, one owner --------------------------------------------------------------------------------------

def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_second_claimant_is_told_who_owns_the_run(home):
    import socket

    me = {"pid": os.getpid(), "host": socket.gethostname()}
    other = {"pid": os.getppid(), "host": socket.gethostname()}        # alive: our parent
    with Ledger() as led:
        _run(led)
        led.claim_run("r1", me)
        led.claim_run("r1", me)                                        # re-entrant for its owner
        with pytest.raises(ledger_mod.LeaseHeld, match=f"pid {os.getpid()} on host {me['host']}"):
            led.claim_run("r1", other)
        led.release_run("r1", me)
        led.claim_run("r1", other)                                     # released: free to take
        assert led.lease("r1")["pid"] == os.getppid() and led.lease("r1")["live"]
        reasons = [e["reason"] for e in led.events("r1", "lease")]
    assert reasons == ["claimed", "released", "claimed"]


def test_a_stale_lease_is_taken_over_and_recorded(home, monkeypatch):
    import socket

    host = socket.gethostname()
    with Ledger() as led:
        _run(led)
        _run(led, "r2")
        led.claim_run("r1", {"pid": _dead_pid(), "host": host})            # the controller was SIGKILLed
        led.claim_run("r1", {"pid": os.getpid(), "host": host})
        led.claim_run("r2", {"pid": 4242, "host": "elsewhere"})            # another host: only its heartbeat counts
        with pytest.raises(ledger_mod.LeaseHeld):
            led.claim_run("r2", {"pid": os.getpid(), "host": host})
        led.db.execute("UPDATE leases SET heartbeat_at = heartbeat_at - ? WHERE run_id = 'r2'",
                       (ledger_mod.LEASE_STALE_S + 1,))
        led.claim_run("r2", {"pid": os.getpid(), "host": host})
        took = [e for e in led.events("r1", "lease") + led.events("r2", "lease") if e["reason"].startswith("took")]
    assert len(took) == 2
    assert "is not running" in took[0]["reason"] and "no heartbeat for" in took[1]["reason"]
    assert took[1]["numbers"]["was_host"] == "elsewhere"


def test_a_taken_over_owner_learns_it_at_its_next_heartbeat(home, monkeypatch):
    import socket

    host = socket.gethostname()
    monkeypatch.setattr(ledger_mod, "HEARTBEAT_EVERY_S", 0.0)
    with Ledger() as a, Ledger() as b:
        _run(a)
        a.claim_run("r1", {"pid": 4242, "host": "elsewhere"})
        a.heartbeat("r1", {"pid": 4242, "host": "elsewhere"})
        b.claim_run("r1", {"pid": os.getpid(), "host": host}, stale_s=-1)   # thought dead
        with pytest.raises(ledger_mod.LeaseLost, match=f"pid {os.getpid()}"):
            a.heartbeat("r1", {"pid": 4242, "host": "elsewhere"})
        a.release_run("r1", {"pid": 4242, "host": "elsewhere"})             # not its lease any more: no-op
        assert b.lease("r1")["pid"] == os.getpid() and b.lease("r1")["released_at"] is None


def _claim_in_process(path, run_id, barrier, results):
    import socket

    led = Ledger(path)
    barrier.wait()
    try:
        led.claim_run(run_id, {"pid": os.getpid(), "host": socket.gethostname()})
        results.put("won")
        barrier.wait()           # hold the lease while the other tries
    except ledger_mod.LeaseHeld:
        results.put("held")
        barrier.wait()


def test_two_claimants_at_once_exactly_one_wins(home):
    with Ledger() as led:
        _run(led)
        path = led.path
    ctx = multiprocessing.get_context("fork")
    for trial in range(10):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_claim_in_process, args=(path, "r1", barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert sorted(results.get(timeout=5) for _ in procs) == ["held", "won"], trial


@pytest.mark.parametrize("guarded", [True, False])
def test_a_second_ledger_in_one_process_keeps_the_first_ones_locks(home, monkeypatch, guarded):
    """A process with the ledger open opens it again (calibration while re-planning); another process then
    opens and closes it. Unguarded (the header read outside SQLite each time), the plain close() drops our
    POSIX lock on the file, the other process takes itself for the last user and deletes the WAL we are
    writing to: under load a resumed run lost every commit after that (seen in test_fault_injection)."""
    class Forgetful(dict):
        def get(self, *a):
            return 0

    if not guarded:
        monkeypatch.setattr(ledger_mod, "_OPEN", Forgetful())
    led = Ledger()
    _run(led)
    Ledger(led.path).close()                               # a second connection, in this process
    subprocess.run([sys.executable, "-c", "import sys; from costmodel.ledger import Ledger; "
                    "Ledger(sys.argv[1]).close()", str(led.path)], check=True, timeout=60)   # another process
    wal_kept = os.path.exists(str(led.path) + "-wal")
    led.add_event("r1", None, "run", ok=True, reason="after")
    led.close()
    assert wal_kept is guarded                            # unguarded: deleted while we still had it open
    with Ledger(led.path) as again:
        assert [e["reason"] for e in again.events("r1", "run")] == ["after"]
