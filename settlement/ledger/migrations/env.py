"""Alembic environment for the ledger (runs from ``settlement migrate``)."""

from __future__ import annotations

from alembic import context

from settlement.ledger.db import create_ledger_engine
from settlement.ledger.schema import metadata

config = context.config


def run_migrations_online() -> None:
    """Apply migrations on a live connection (given by the caller, or from the URL)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_ledger_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `settlement migrate`")
run_migrations_online()
