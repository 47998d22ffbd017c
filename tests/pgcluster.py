"""Throw-away PostgreSQL clusters for tests and benchmarks.

A :class:`PostgresCluster` runs ``initdb`` into a fresh temporary directory, starts the
server with ``pg_ctl`` on a free TCP port bound to 127.0.0.1 only (its unix socket lives
in the cluster's own temp dir, never in ``/var/run/postgresql``), creates the
``settlement`` database, and tears everything down again: ``pg_ctl stop -m fast`` and
removal of the directory.

PostgreSQL refuses to run as root. Tests here run as root (locally and in CI), so when
``os.geteuid() == 0`` every PostgreSQL binary is run as the ``postgres`` OS user through
``runuser -u postgres --`` and the temp dir is chowned to that user. As any other user the
binaries run directly.

Cleanup is layered so that no server outlives the test run:

* :meth:`PostgresCluster.stop` (context-manager exit, fixture teardown) -- normal path;
* an ``atexit`` hook stops every cluster still running when the interpreter exits;
* a small watchdog process per cluster (its own session, so Ctrl-C does not kill it) holds
  the read end of a pipe; when the test process dies in any way -- even ``SIGKILL`` -- the
  pipe hits EOF and the watchdog does ``pg_ctl stop -m immediate`` (then ``SIGKILL``) and
  removes the directory.

Durability. ``durable=False`` (the default, for unit tests) sets ``fsync=off`` and
``full_page_writes=off``; ``durable=True`` (benchmarks) keeps the production defaults.
``synchronous_commit`` stays ``on`` in both modes, so every commit's WAL has been
``write()``-n to the kernel before COMMIT returns. ``fsync=off`` only skips forcing the
kernel's page cache to disk, which matters for an OS crash or power loss -- not for a
process crash. ``pg_ctl stop -m immediate`` (:meth:`PostgresCluster.kill_immediate`) is a
process crash: the kernel still has the WAL, crash recovery replays it, and every
committed transaction survives :meth:`PostgresCluster.restart` even with ``fsync=off``.
(Had ``synchronous_commit`` been ``off``, the last few hundred milliseconds of commits
could still sit in shared WAL buffers and be lost; that is why it is left on.) What
``fsync=off`` does *not* model is losing the machine; drills that need that must use
``durable=True`` and real storage, and even then a CHECKPOINT is what bounds redo time.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import pytest
from psycopg import sql

REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
"""Binaries that must sit together in one directory for a cluster to be started."""

OPTIONAL_BINARIES = ("pgbench", "pg_isready", "psql")
"""Binaries looked for next to the required ones (pgbench is needed by run_pgbench only)."""

DEFAULT_DB = "settlement"
"""The database every cluster creates on start."""

SUPERUSER = "postgres"
"""Database superuser name (``initdb -U``) and, when running as root, the OS user."""

INSTALL_HINT = (
    "install the PostgreSQL server binaries: `apt-get install postgresql` (Debian/Ubuntu; "
    "they land in /usr/lib/postgresql/<major>/bin, which is searched even when not on PATH), "
    "or point SETTLEMENT_PG_BIN at a directory holding initdb, pg_ctl and postgres"
)

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 60
_MAX_PORT_ATTEMPTS = 5
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN".


class PostgresClusterError(RuntimeError):
    """A cluster could not be created, started, queried or stopped."""


# --------------------------------------------------------------------------- binaries


def _is_exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _missing_in(directory: Path, names: Sequence[str] = REQUIRED_BINARIES) -> list[str]:
    return [name for name in names if not _is_exe(directory / name)]


def _version_key(directory: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>/bin``: numeric version, highest wins."""
    parts = re.findall(r"\d+", directory.parent.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


def _candidate_bin_dirs() -> list[Path]:
    """Directories to try, in order: $SETTLEMENT_PG_BIN, PATH, /usr/lib/postgresql/*/bin.

    For every PATH entry holding an ``initdb``, the directory that ``initdb`` resolves to
    (through symlinks) is tried *before* the PATH entry itself: ``/usr/local/bin/initdb``
    is often only a symlink or wrapper, while the real install directory holds the whole
    matching set of binaries (including pgbench).
    """
    seen: set[Path] = set()
    out: list[Path] = []

    def add(directory: Path) -> None:
        if directory not in seen:
            seen.add(directory)
            out.append(directory)

    override = os.environ.get("SETTLEMENT_PG_BIN")
    if override:
        add(Path(override))
        return out  # an explicit choice is not second-guessed
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry:
            continue
        directory = Path(entry)
        initdb = directory / "initdb"
        if _is_exe(initdb):
            add(initdb.resolve().parent)
            add(directory)
    versioned = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    versioned += [Path(p) for p in glob.glob("/usr/pgsql-*/bin")]  # RHEL/PGDG layout
    for directory in sorted(versioned, key=_version_key, reverse=True):
        add(directory)
    return out


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (and normally pgbench), or None.

    Searched in order: ``$SETTLEMENT_PG_BIN`` (exclusively, if set), every PATH entry that
    has an ``initdb`` (its symlink target's directory first), then the highest
    ``/usr/lib/postgresql/*/bin``. The first directory with *all* of initdb, pg_ctl and
    postgres wins; a directory with only some of them (e.g. a lone wrapper script) is
    passed over. :func:`pg_bin_report` explains the choice.
    """
    for directory in _candidate_bin_dirs():
        if not _missing_in(directory):
            return directory
    return None


def pg_bin_report() -> str:
    """Human-readable account of the directories searched and what each lacked."""
    lines = []
    chosen = find_pg_bin()
    for directory in _candidate_bin_dirs():
        missing = _missing_in(directory, REQUIRED_BINARIES + OPTIONAL_BINARIES)
        mark = "->" if directory == chosen else "  "
        state = "complete" if not missing else "missing " + ", ".join(missing)
        lines.append(f"{mark} {directory}: {state}")
    if not lines:
        lines.append("   (no initdb on PATH and no /usr/lib/postgresql/*/bin directory)")
    head = f"PostgreSQL bin dir: {chosen}" if chosen else "PostgreSQL bin dir: NOT FOUND"
    return "\n".join([head, *lines])


def missing_prerequisites(bin_dir: Path | None = None) -> list[str]:
    """Everything that prevents starting a cluster here; empty when all is in place."""
    problems = []
    bin_dir = bin_dir if bin_dir is not None else find_pg_bin()
    if bin_dir is None:
        problems.append(
            "no directory with all of " + ", ".join(REQUIRED_BINARIES)
            + " (searched $SETTLEMENT_PG_BIN, PATH, /usr/lib/postgresql/*/bin)"
        )
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(SUPERUSER)
        except KeyError:
            problems.append(
                f"running as root but there is no '{SUPERUSER}' OS user to run the server "
                "as (apt-get install postgresql creates it; or `useradd -r postgres`)"
            )
        if shutil.which("runuser") is None:
            problems.append("running as root but `runuser` (util-linux) is not on PATH")
    return problems


def require_postgres_or_skip() -> Path:
    """Return the PostgreSQL bin dir, or skip the test loudly when it cannot be used.

    With ``SETTLEMENT_REQUIRE_POSTGRES=1`` (CI) a missing PostgreSQL is a failure instead
    of a skip, so a broken runner image cannot silently turn the database suite green.
    """
    bin_dir = find_pg_bin()
    problems = missing_prerequisites(bin_dir)
    if not problems and bin_dir is not None:
        return bin_dir
    message = (
        "PostgreSQL NOT AVAILABLE -- database tests cannot run: "
        + "; ".join(problems)
        + f". To fix: {INSTALL_HINT}.\n{pg_bin_report()}"
    )
    if os.environ.get("SETTLEMENT_REQUIRE_POSTGRES") == "1":
        pytest.fail(message + "\n(SETTLEMENT_REQUIRE_POSTGRES=1 turns this skip into a failure)")
    pytest.skip(message)
    raise AssertionError("unreachable")  # pytest.skip raises


def parse_tps(pgbench_output: str) -> float:
    """The ``tps = ...`` figure from pgbench output (PostgreSQL 14+ and older formats)."""
    match = re.search(r"^tps = ([0-9]+(?:\.[0-9]+)?)", pgbench_output, re.MULTILINE)
    if match is None:
        raise ValueError(f"no 'tps = N' line in pgbench output:\n{pgbench_output}")
    return float(match.group(1))


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """os.environ without libpq PG* variables, with a C locale for stable output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _child_pids(parent: int) -> list[int]:
    """Direct children of ``parent`` (Linux /proc); empty where /proc is unavailable."""
    children = []
    for stat_file in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat_file).read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(parent):
            children.append(int(Path(stat_file).parent.name))
    return sorted(children)


# The watchdog runs as a separate process (in its own session) and blocks reading stdin.
# EOF means the owning test process closed the pipe (normal stop) or died (any signal).
# Either way it makes sure the server is down and the directory is gone.
_WATCHDOG = r"""
import json, os, shutil, signal, subprocess, sys, time
cfg = json.loads(sys.argv[1])
sys.stdin.buffer.read()
pidfile = os.path.join(cfg["data"], "postmaster.pid")
if os.path.exists(pidfile):
    try:
        pid = int(open(pidfile).readline().strip())
    except (OSError, ValueError):
        pid = None
    subprocess.run(cfg["pg_ctl_stop"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60, check=False, cwd=cfg["base"])
    try:  # only a process still running postgres on this data dir (no PID-reuse victims)
        mine = pid and cfg["data"].encode() in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        mine = False
    if mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
shutil.rmtree(cfg["base"], ignore_errors=True)
"""

_LIVE: set[PostgresCluster] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    for cluster in list(_LIVE):
        if cluster._owner_pid != os.getpid():
            continue  # a forked child exiting must not stop its parent's cluster
        with contextlib.suppress(Exception):
            cluster.stop()


# --------------------------------------------------------------------------- cluster


class PostgresCluster:
    """A private, throw-away PostgreSQL cluster on 127.0.0.1 (context manager).

    ``durable=False`` (default) turns off fsync and full_page_writes for speed; see the
    module docstring for exactly what that does and does not risk. ``settings`` adds or
    overrides postgresql.conf parameters (values are quoted for you, e.g.
    ``{"work_mem": "64MB", "log_min_duration_statement": 0}``). ``base_parent`` is where
    the temp dir goes (default: the system temp dir, falling back to /tmp). The
    ``settlement`` database exists after :meth:`start`.
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        durable: bool = False,
        settings: dict[str, str | int] | None = None,
        base_parent: Path | None = None,
    ) -> None:
        """Configure (but do not start) a cluster; ``bin_dir`` defaults to find_pg_bin()."""
        found = bin_dir if bin_dir is not None else find_pg_bin()
        if found is None:
            raise PostgresClusterError(f"PostgreSQL binaries not found.\n{pg_bin_report()}")
        self.bin_dir: Path = found
        self.durable = durable
        self.extra_settings = dict(settings or {})
        self.base_parent = base_parent
        self.as_postgres_user = os.geteuid() == 0
        self.port: int = 0
        self.base: Path | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()

    # ---- paths & connection strings

    def _require_base(self) -> Path:
        if self.base is None:
            raise PostgresClusterError("cluster is not started")
        return self.base

    @property
    def data_dir(self) -> Path:
        """PGDATA of the cluster."""
        return self._require_base() / "data"

    @property
    def socket_dir(self) -> Path:
        """The private unix_socket_directories entry (never a shared system path)."""
        return self._require_base() / "socket"

    @property
    def log_file(self) -> Path:
        """The server log (pg_ctl -l)."""
        return self._require_base() / "server.log"

    def conninfo(self, dbname: str = DEFAULT_DB) -> str:
        """libpq conninfo for ``dbname`` over TCP on 127.0.0.1."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    @property
    def dsn(self) -> str:
        """libpq conninfo for the ``settlement`` database."""
        return self.conninfo()

    def url(self, driver: str = "postgresql+psycopg", dbname: str = DEFAULT_DB) -> str:
        """SQLAlchemy URL, e.g. ``postgresql+psycopg://postgres@127.0.0.1:PORT/settlement``."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = DEFAULT_DB, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new psycopg connection to ``dbname`` (keyword args go to psycopg.connect)."""
        return psycopg.connect(self.conninfo(dbname), connect_timeout=10, **kwargs)

    # ---- running binaries

    def _cmd(self, binary: str, *args: str) -> list[str]:
        exe = self.bin_dir / binary
        if not _is_exe(exe):
            found = shutil.which(binary)
            if found is None:
                raise PostgresClusterError(f"{binary} not found in {self.bin_dir} nor on PATH")
            exe = Path(found)
        cmd = [str(exe), *args]
        if self.as_postgres_user:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        return cmd

    def _run(
        self, binary: str, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = self._cmd(binary, *args)
        try:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=timeout, env=_clean_env(), cwd=self.base or "/", check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresClusterError(
                f"timed out after {timeout}s: {' '.join(cmd)}{self._log_tail()}"
            ) from exc
        if check and proc.returncode != 0:
            raise PostgresClusterError(
                f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}{self._log_tail()}"
            )
        return proc

    def _log_tail(self, lines: int = 40) -> str:
        if self.base is None:
            return ""
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"\n--- server log tail ({self.log_file}) ---\n" + "\n".join(text[-lines:])

    # ---- lifecycle

    def _make_base(self) -> Path:
        """A temp dir the server's OS user can write, with a short enough socket path."""
        parents = [self.base_parent] if self.base_parent else [Path(tempfile.gettempdir())]
        if Path("/tmp") not in parents:
            parents.append(Path("/tmp"))
        errors = []
        for parent in parents:
            base = Path(tempfile.mkdtemp(prefix="settlement-pg-", dir=parent))
            if len(str(base / "socket")) > _MAX_SOCKET_PATH:
                errors.append(f"{base}: unix socket path would be too long")
                shutil.rmtree(base, ignore_errors=True)
                continue
            if not self.as_postgres_user:
                return base
            shutil.chown(base, user=SUPERUSER, group=None)
            probe = subprocess.run(
                ["runuser", "-u", SUPERUSER, "--", "test", "-w", str(base)],
                stdin=subprocess.DEVNULL, capture_output=True, cwd="/", check=False,
            )
            if probe.returncode == 0:
                return base
            errors.append(f"{base}: not writable by OS user {SUPERUSER} (parent not traversable?)")
            shutil.rmtree(base, ignore_errors=True)
        raise PostgresClusterError("no usable temp dir: " + "; ".join(errors))

    def _settings(self) -> dict[str, str | int]:
        settings: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": 200,
            "shared_buffers": "256MB",
            "work_mem": "16MB",
            "maintenance_work_mem": "256MB",
            "effective_cache_size": "8GB",
            "max_worker_processes": 4,
            "max_parallel_workers": 2,
            "max_parallel_workers_per_gather": 1,
            "max_wal_size": "2GB",
            "huge_pages": "off",
            "jit": "off",
            "timezone": "UTC",
            "lc_messages": "C",
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_min_messages": "warning",
            "synchronous_commit": "on",
        }
        if self.durable:
            settings.update(fsync="on", full_page_writes="on")
        else:
            settings.update(fsync="off", full_page_writes="off")
        settings.update(self.extra_settings)
        return settings

    def _write_config(self) -> None:
        lines = [
            "{} = '{}'".format(key, str(value).replace("'", "''"))
            for key, value in self._settings().items()
        ]
        conf = self.data_dir / "settlement_test.conf"
        conf.write_text("# written by tests/pgcluster.py\n" + "\n".join(lines) + "\n")
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\ninclude 'settlement_test.conf'\n")
        if self.as_postgres_user:
            shutil.chown(conf, user=SUPERUSER, group=None)

    def _start_watchdog(self) -> None:
        base = self._require_base()
        stop_cmd = self._cmd("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate",
                             "-w", "-t", "30")
        cfg = json.dumps({"base": str(base), "data": str(self.data_dir),
                          "pg_ctl_stop": stop_cmd})
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, cfg],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd="/", start_new_session=True, env=_clean_env(),
        )

    def start(self) -> PostgresCluster:
        """initdb, start on a free 127.0.0.1 port, wait until ready, create ``settlement``."""
        if self.base is not None:
            raise PostgresClusterError("cluster already started")
        self.base = self._make_base()
        _LIVE.add(self)
        try:
            self._start_watchdog()
            self._run(
                "initdb", "-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER,
                "--no-sync", "-E", "UTF8", "--locale=C", timeout=120,
            )
            self.socket_dir.mkdir()
            if self.as_postgres_user:
                shutil.chown(self.socket_dir, user=SUPERUSER, group=None)
            self.socket_dir.chmod(0o700)
            self._write_config()
            for attempt in range(_MAX_PORT_ATTEMPTS):
                self.port = _free_port()
                try:
                    self.start_server()
                    break
                except PostgresClusterError as exc:
                    port_taken = "could not bind" in str(exc) or "in use" in str(exc)
                    if not port_taken or attempt == _MAX_PORT_ATTEMPTS - 1:
                        raise
            self.create_database(DEFAULT_DB)
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self) -> None:
        """Start the (already initialised, stopped) server on ``self.port`` and wait for it."""
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-o", f"-p {self.port}", "-w", "-t", str(int(_START_TIMEOUT)),
            timeout=_START_TIMEOUT + 30,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        """Poll with psycopg until the server accepts queries; raise with the log tail."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=5) as conn:
                    conn.execute("select 1")
                return
            except psycopg.Error as exc:
                last_error = exc
                time.sleep(0.1)
        raise PostgresClusterError(
            f"server on 127.0.0.1:{self.port} not ready after {timeout}s: "
            f"{last_error}{self._log_tail()}"
        )

    def postmaster_pid(self) -> int | None:
        """PID of the running postmaster (from postmaster.pid), or None."""
        if self.base is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first.strip())
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def _is_our_postmaster(self, pid: int) -> bool:
        """Guard against PID reuse: the process's command line names our data dir."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return not Path("/proc/self").exists()  # no /proc: trust postmaster.pid
        return str(self.data_dir).encode() in cmdline

    def server_pids(self) -> list[int]:
        """The postmaster and its direct children (backends, checkpointer, ...)."""
        pid = self.postmaster_pid()
        return [] if pid is None else [pid, *_child_pids(pid)]

    def is_running(self) -> bool:
        """Whether a postmaster for this data dir is alive."""
        return self.postmaster_pid() is not None

    def stop_server(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>`` keeping the data dir; SIGKILL if pg_ctl fails."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        proc = self._run(
            "pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w",
            "-t", str(_STOP_TIMEOUT), timeout=_STOP_TIMEOUT + 30, check=False,
        )
        if _pid_alive(pid) and self._is_our_postmaster(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.returncode != 0:
                raise PostgresClusterError(
                    f"pg_ctl stop -m {mode} failed (server SIGKILLed):\n{proc.stderr}"
                )

    def kill_immediate(self) -> None:
        """``pg_ctl stop -m immediate``: a crash, recovery runs on the next start."""
        self.stop_server("immediate")

    def restart(self, mode: str = "immediate") -> None:
        """Stop with ``mode`` (default: immediate, i.e. crash) and start on the same port."""
        self.stop_server(mode)
        self.start_server()

    def stop(self) -> None:
        """Stop the server (fast, escalating to SIGKILL) and delete the whole temp dir."""
        try:
            if self.base is not None:
                self.stop_server("fast")
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None
            if self._watchdog is not None:
                with contextlib.suppress(Exception):
                    if self._watchdog.stdin is not None:
                        self._watchdog.stdin.close()
                    self._watchdog.wait(timeout=30)
                self._watchdog = None
            _LIVE.discard(self)

    # ---- conveniences

    def create_database(self, name: str, template: str = "template0") -> str:
        """``CREATE DATABASE name`` (UTF8, from template0); returns the name."""
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} ENCODING 'UTF8'").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)`` (terminates its sessions)."""
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def run_pgbench(
        self, args: list[str], dbname: str = DEFAULT_DB, timeout: float = 600
    ) -> str:
        """Run pgbench (as the server's OS user) against ``dbname``; return its stdout.

        Host, port and user are supplied; ``args`` are pgbench options such as
        ``["-i", "-s", "1"]`` or ``["-T", "10", "-c", "2", "-b", "tpcb-like"]``.
        See :func:`parse_tps`.
        """
        proc = self._run(
            "pgbench", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
            *args, dbname, timeout=timeout,
        )
        return proc.stdout

    def __enter__(self) -> PostgresCluster:
        """Start the cluster."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the cluster and remove its directory."""
        self.stop()

    def __repr__(self) -> str:
        """Port, data dir and mode, for test output."""
        mode = "durable" if self.durable else "fsync=off"
        return f"<PostgresCluster 127.0.0.1:{self.port} {self.base} {mode}>"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A started, session-wide PostgresCluster (fsync=off); skips without PostgreSQL.

    Tests that crash or restart the server should build their own cluster rather than
    disturb this shared one.
    """
    bin_dir = require_postgres_or_skip()
    with PostgresCluster(bin_dir) as cluster:
        yield cluster
