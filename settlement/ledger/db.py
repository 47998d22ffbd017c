"""Which database, and how to connect to it.

``SETTLEMENT_DATABASE_URL`` (or an explicit URL) picks the database: an
embedded SQLite file by default, ``postgresql+psycopg://...`` in
production. SQLite runs in WAL mode with foreign keys on and takes its
write lock at ``BEGIN`` (``BEGIN IMMEDIATE``), so concurrent writers queue
instead of failing half-way; PostgreSQL uses psycopg 3 through SQLAlchemy's
connection pool.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.dml import Insert as SqliteInsert
from sqlalchemy.engine import make_url

DEFAULT_URL = "sqlite:///settlement.db"


def database_url(explicit: str | None = None, config: str | None = None) -> str:
    """The database URL, first found of: ``explicit``; ``SETTLEMENT_DATABASE_URL``;
    ``[database] url`` in the config file (``config``, else ``SETTLEMENT_CONFIG``); the
    SQLite default ``sqlite:///settlement.db``."""
    if explicit:
        return explicit
    if os.environ.get("SETTLEMENT_DATABASE_URL"):
        return os.environ["SETTLEMENT_DATABASE_URL"]
    path = config or os.environ.get("SETTLEMENT_CONFIG")
    if path:
        url = read_config(path).get("database", {}).get("url")
        if url is not None:
            if not isinstance(url, str) or not url:
                raise ValueError(f"config {path}: database.url must be a non-empty string")
            return url
    return DEFAULT_URL


def read_config(path: str) -> dict[str, Any]:
    """A TOML config file; ValueError naming the file when unreadable or invalid."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"config {path}: {exc}") from None


#: How long an operation waits for a lock (a member another checkout holds, SQLite's write
#: lock) before it is refused as retryable: a checkout must never hang.
LOCK_TIMEOUT_S = 5.0


def create_ledger_engine(url: str | None = None, *, pool_size: int = 10,
                         config: str | None = None,
                         lock_timeout_s: float = LOCK_TIMEOUT_S) -> Engine:
    """An engine for the ledger database at ``url`` (see :func:`database_url`). A lock
    wait longer than ``lock_timeout_s`` fails the operation (nothing is applied; the
    caller may retry with the same idempotency key)."""
    url = database_url(url, config)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, connect_args={"timeout": lock_timeout_s})
        busy_ms = int(lock_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy, not pysqlite, decide when transactions begin (the
            # documented recipe), so that BEGIN IMMEDIATE below takes effect.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if backend == "postgresql":
        # No pre-ping (a round trip per checkout): the ledger retries an operation once on
        # a fresh connection when its connection turns out dead (see Ledger).
        # lock_timeout: a member locked by a stuck transaction fails the call instead of
        # hanging the till; idle_in_transaction: a crashed client's locks do not outlive it.
        options = (f"-c lock_timeout={int(lock_timeout_s * 1000)} "
                   "-c idle_in_transaction_session_timeout=60000")
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                             connect_args={"options": options})
    raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql+psycopg")


def insert_or_nothing(conn: Connection, table: Table, **values: object) -> SqliteInsert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the connection's database. On PostgreSQL a
    concurrent insert of the same key waits for the other transaction, then does nothing."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).values(**values).on_conflict_do_nothing()  # type: ignore[return-value]
