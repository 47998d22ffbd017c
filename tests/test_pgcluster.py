"""Real checks of the throw-away PostgreSQL harness in tests/pgcluster.py (no mocks).

The shared ``postgres_cluster`` fixture serves the read/write checks; anything that
crashes, restarts or stops a server builds a private cluster so the shared one stays
intact for the rest of the session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import tests.conftest as _conftest
from tests import pgcluster
from tests.pgcluster import PostgresCluster, parse_tps, require_postgres_or_skip

if not hasattr(_conftest, "postgres_cluster"):
    # Until tests/conftest.py imports the fixture, register it for this module only
    # (importing it here as well would start a second session cluster).
    from tests.pgcluster import postgres_cluster  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_MAJOR = os.environ.get("SETTLEMENT_PG_MAJOR", "15")


@pytest.fixture(scope="module")
def pg_bin() -> Path:
    """The PostgreSQL bin dir (skips, or fails under SETTLEMENT_REQUIRE_POSTGRES=1)."""
    return require_postgres_or_skip()


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def _postgres_processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions ``text`` (the postmaster carries ``-D <dir>``)."""
    hits = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args and "postgres" in args and int(cmdline.parent.name) != os.getpid():
            hits.append(int(cmdline.parent.name))
    return hits


# --------------------------------------------------------------------------- discovery


def test_bin_dir_has_the_server_binaries(pg_bin: Path) -> None:
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(pg_bin / name, os.X_OK), name
    assert f"PostgreSQL bin dir: {pg_bin}" in pgcluster.pg_bin_report()


def test_missing_postgres_skips_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgcluster, "find_pg_bin", lambda: None)
    monkeypatch.delenv("SETTLEMENT_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        require_postgres_or_skip()
    assert "PostgreSQL NOT AVAILABLE" in str(info.value)
    assert "apt-get install postgresql" in str(info.value)
    assert "initdb" in str(info.value)


def test_missing_postgres_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgcluster, "find_pg_bin", lambda: None)
    monkeypatch.setenv("SETTLEMENT_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception) as info:
        require_postgres_or_skip()
    assert "apt-get install postgresql" in str(info.value)
    assert "SETTLEMENT_REQUIRE_POSTGRES=1" in str(info.value)


def test_parse_tps_formats() -> None:
    pg15 = "latency average = 1.2 ms\ntps = 1660.123456 (without initial connection time)\n"
    pg13 = "tps = 812.5 (including connections establishing)\ntps = 820.0 (excluding ...)\n"
    assert parse_tps(pg15) == pytest.approx(1660.123456)
    assert parse_tps(pg13) == pytest.approx(812.5)
    with pytest.raises(ValueError):
        parse_tps("pgbench: error: connection failed")


# --------------------------------------------------------------------------- shared cluster


def test_server_version(postgres_cluster: PostgresCluster) -> None:
    with psycopg.connect(postgres_cluster.dsn) as conn:
        version = conn.execute("select version()").fetchone()[0]  # type: ignore[index]
        database = conn.execute("select current_database()").fetchone()[0]  # type: ignore[index]
    assert version.startswith(f"PostgreSQL {EXPECTED_MAJOR}."), version
    assert database == "settlement"
    binary = subprocess.run(
        [str(postgres_cluster.bin_dir / "postgres"), "--version"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert version.split()[1] == binary.split()[2], (version, binary)


def test_settings_fit_for_tests(postgres_cluster: PostgresCluster) -> None:
    with postgres_cluster.connect() as conn:

        def show(name: str) -> str:
            return str(conn.execute(f"show {name}").fetchone()[0])  # type: ignore[index]

        assert show("listen_addresses") == "127.0.0.1"
        assert show("unix_socket_directories") == str(postgres_cluster.socket_dir)
        assert show("max_connections") == "200"
        assert show("shared_buffers") == "256MB"
        assert show("fsync") == "off"  # the session cluster is non-durable
        assert show("synchronous_commit") == "on"  # see pgcluster docstring: crash-safe
        assert show("server_encoding") == "UTF8"
        assert show("lc_collate") == "C"
        port = conn.execute("select inet_server_port()").fetchone()[0]  # type: ignore[index]
    assert port == postgres_cluster.port
    assert postgres_cluster.url() == (
        f"postgresql+psycopg://postgres@127.0.0.1:{postgres_cluster.port}/settlement"
    )
    # The socket lives in the cluster's own temp dir, not /var/run/postgresql.
    socket_name = f".s.PGSQL.{postgres_cluster.port}"
    assert (postgres_cluster.socket_dir / socket_name).is_socket()
    assert not (Path("/var/run/postgresql") / socket_name).exists()


def test_sqlalchemy_roundtrip(postgres_cluster: PostgresCluster) -> None:
    engine = sa.create_engine(postgres_cluster.url())
    meta = sa.MetaData()
    table = sa.Table(
        f"roundtrip_{uuid.uuid4().hex[:8]}", meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("note", sa.Text),
    )
    try:
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [
                {"id": 1, "amount": "10.50", "note": "käse"},
                {"id": 2, "amount": "0.01", "note": None},
            ])
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.id)).all()
            total = conn.execute(sa.select(sa.func.sum(table.c.amount))).scalar_one()
        assert [(r.id, str(r.amount), r.note) for r in rows] == [
            (1, "10.50", "käse"), (2, "0.01", None),
        ]
        assert str(total) == "10.51"
    finally:
        meta.drop_all(engine)
        engine.dispose()


def test_two_concurrent_connections(postgres_cluster: PostgresCluster) -> None:
    table = f"concurrent_{uuid.uuid4().hex[:8]}"
    with postgres_cluster.connect() as a, postgres_cluster.connect() as b:
        a.execute(f"create table {table} (v int)")
        a.commit()
        pid_a = a.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        pid_b = b.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert pid_a != pid_b
        # Isolation: b does not see a's uncommitted row, then does after commit.
        a.execute(f"insert into {table} values (1)")
        assert b.execute(f"select count(*) from {table}").fetchone()[0] == 0  # type: ignore[index]
        b.commit()
        a.commit()
        assert b.execute(f"select count(*) from {table}").fetchone()[0] == 1  # type: ignore[index]
        b.commit()
        # Locking: a holds an advisory lock, b cannot take it until a lets go.
        a.execute("select pg_advisory_lock(4242)")
        assert b.execute("select pg_try_advisory_lock(4242)").fetchone()[0] is False  # type: ignore[index]
        a.execute("select pg_advisory_unlock(4242)")
        assert b.execute("select pg_try_advisory_lock(4242)").fetchone()[0] is True  # type: ignore[index]
        b.execute("select pg_advisory_unlock(4242)")
        b.commit()
        a.execute(f"drop table {table}")
        a.commit()

    # Truly in parallel: two 0.6 s sleeps on two connections finish in well under 1.2 s.
    def sleeper() -> None:
        with postgres_cluster.connect() as conn:
            conn.execute("select pg_sleep(0.6)")

    threads = [threading.Thread(target=sleeper) for _ in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert time.monotonic() - started < 1.2


def test_create_database(postgres_cluster: PostgresCluster) -> None:
    name = f"per_test_{uuid.uuid4().hex[:8]}"
    assert postgres_cluster.create_database(name) == name
    try:
        engine = sa.create_engine(postgres_cluster.url(dbname=name))
        with engine.connect() as conn:
            assert conn.execute(sa.text("select current_database()")).scalar_one() == name
            enc = conn.execute(sa.text("show server_encoding")).scalar_one()
            assert enc == "UTF8"
        engine.dispose()
    finally:
        postgres_cluster.drop_database(name)
    with postgres_cluster.connect("postgres") as conn:
        count = conn.execute(
            "select count(*) from pg_database where datname = %s", (name,)
        ).fetchone()[0]  # type: ignore[index]
    assert count == 0


def test_pgbench(postgres_cluster: PostgresCluster) -> None:
    db = postgres_cluster.create_database(f"pgbench_{uuid.uuid4().hex[:8]}")
    try:
        postgres_cluster.run_pgbench(["-i", "-s", "1", "-q"], dbname=db)
        out = postgres_cluster.run_pgbench(["-T", "2", "-c", "2", "-b", "tpcb-like"], dbname=db)
        tps = parse_tps(out)
        assert tps > 0, out
        assert "number of clients: 2" in out
    finally:
        postgres_cluster.drop_database(db)


# --------------------------------------------------------------------------- private clusters


@pytest.mark.parametrize("durable", [False, True], ids=["fsync-off", "durable"])
def test_restart_after_crash_keeps_committed_data(pg_bin: Path, durable: bool) -> None:
    # No CHECKPOINT on purpose: synchronous_commit=on means each COMMIT's WAL reached the
    # kernel before returning, so a process crash (stop -m immediate) loses nothing even
    # with fsync=off; crash recovery replays the WAL. (fsync=off only risks an OS crash.)
    with PostgresCluster(pg_bin, durable=durable, settings={"work_mem": "64MB"}) as cluster:
        conn = cluster.connect()
        assert conn.execute("show work_mem").fetchone()[0] == "64MB"  # type: ignore[index]
        assert conn.execute("show fsync").fetchone()[0] == ("on" if durable else "off")  # type: ignore[index]
        conn.execute("create table ledger (id int primary key, cents bigint)")
        conn.execute("insert into ledger select g, g * 100 from generate_series(1, 500) g")
        conn.commit()
        conn.execute("insert into ledger values (501, 1)")  # never committed
        port, pid_before = cluster.port, cluster.postmaster_pid()
        cluster.restart()  # pg_ctl stop -m immediate, then start on the same port
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")  # the old session died with the server
        conn.close()
        assert cluster.port == port
        assert cluster.postmaster_pid() not in (None, pid_before)
        with cluster.connect() as conn:
            count, total = conn.execute("select count(*), sum(cents) from ledger").fetchone()  # type: ignore[misc]
        assert (count, total) == (500, 100 * 500 * 501 // 2)
        log = cluster.log_file.read_text()
        assert "not properly shut down; automatic recovery in progress" in log

        # A clean stop/start (mode=fast) also works and needs no recovery.
        cluster.restart(mode="fast")
        with cluster.connect() as conn:
            assert conn.execute("select count(*) from ledger").fetchone()[0] == 500  # type: ignore[index]


def test_stop_leaves_no_process_and_no_directory(pg_bin: Path) -> None:
    cluster = PostgresCluster(pg_bin)
    with pytest.raises(RuntimeError, match="test body failed"), cluster:
        base, data_dir = cluster.base, str(cluster.data_dir)
        pids = cluster.server_pids()
        conn = cluster.connect()  # an open session must not block the fast stop
        assert len(pids) >= 4, pids  # postmaster + checkpointer, bgwriter, walwriter...
        raise RuntimeError("test body failed")
    conn.close()
    assert base is not None and not base.exists()
    assert cluster.base is None
    assert _wait_until(lambda: not any(pgcluster._pid_alive(p) for p in pids), 5), pids
    assert _postgres_processes_mentioning(data_dir) == []
    assert cluster not in pgcluster._LIVE


def test_watchdog_cleans_up_after_sigkill(pg_bin: Path) -> None:
    """Even a SIGKILLed test process (no atexit, no teardown) leaves no server behind."""
    script = (
        "import sys, time\n"
        "from tests.pgcluster import PostgresCluster\n"
        "c = PostgresCluster().start()\n"
        "print(c.base, c.postmaster_pid(), flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "SETTLEMENT_PG_BIN": str(pg_bin)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert len(line) == 2, f"child did not start a cluster: {line!r}"
        base, pid = Path(line[0]), int(line[1])
        assert base.exists() and pgcluster._pid_alive(pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert _wait_until(lambda: not pgcluster._pid_alive(pid), 20), "postmaster survived"
        assert _wait_until(lambda: not base.exists(), 10), f"{base} not removed"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
