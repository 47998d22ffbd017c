"""The ledger schema: migrations apply on SQLite and PostgreSQL and match ``schema.py``."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select, update
from sqlalchemy.exc import IntegrityError

from settlement.ledger import schema
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.migrate import alembic_config, current_revision, upgrade

HEAD = "0005"


@pytest.fixture
def engine(ledger_url: str):
    engine = create_ledger_engine(ledger_url)
    yield engine
    engine.dispose()


def test_migrations_create_every_table(engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == HEAD
    tables = set(inspect(engine).get_table_names())
    assert set(schema.metadata.tables) <= tables
    upgrade(engine)  # a second run is a no-op
    assert current_revision(engine) == HEAD


def test_schema_module_matches_the_migrations(engine) -> None:
    """Autogenerate finds nothing to do: schema.py and the migration history agree."""
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, schema.metadata) == []


def test_downgrade_to_base_and_back(engine) -> None:
    from alembic import command

    upgrade(engine)
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert not set(schema.metadata.tables) & set(inspect(engine).get_table_names())
    upgrade(engine)
    assert current_revision(engine) == HEAD


def foreign_keys(engine, table: str) -> set[str]:
    return {fk["name"] for fk in inspect(engine).get_foreign_keys(table)}


def test_0002_drops_the_per_row_foreign_keys_and_keeps_the_rows(engine) -> None:
    """From 0001 (with rows) to 0002 and back: the three references lose and regain their
    foreign keys; nothing else changes and the rows stay."""
    from alembic import command

    upgrade(engine, "0001")
    assert "fk_journal_postings_tx_id_journal_transactions" in foreign_keys(
        engine, "journal_postings")
    assert "fk_settlement_lines_settlement_id_settlements" in foreign_keys(
        engine, "settlement_lines")
    with engine.begin() as conn:
        conn.execute(insert(schema.accounts).values(id=1, owner="M1", asset="points",
                                                    kind="points", balance=0))
        conn.execute(insert(schema.journal_transactions).values(id=1, kind="k", ref="r",
                                                                created_us=0))
        conn.execute(insert(schema.journal_postings).values(tx_id=1, account_id=1,
                                                            asset="points", amount=0 + 5))
    upgrade(engine)
    assert current_revision(engine) == HEAD
    assert foreign_keys(engine, "journal_postings") == set()
    assert foreign_keys(engine, "settlement_lines") == set()
    with engine.connect() as conn:
        assert conn.execute(select(schema.journal_postings.c.amount)).scalar_one() == 5
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    assert foreign_keys(engine, "journal_postings") == {
        "fk_journal_postings_tx_id_journal_transactions",
        "fk_journal_postings_account_id_accounts"}


def test_member_accounts_can_never_go_negative(engine) -> None:
    """The database itself refuses an overdraft; system accounts cache no balance."""
    upgrade(engine)
    accounts = schema.accounts
    with engine.begin() as conn:
        conn.execute(insert(accounts), [
            {"owner": "M1", "asset": "points", "kind": "points", "balance": 5},
            {"owner": schema.SYSTEM, "asset": "points", "kind": "points_issued",
             "balance": None},
        ])
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(update(accounts).where(accounts.c.owner == "M1").values(balance=-1))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(update(accounts).where(accounts.c.owner == schema.SYSTEM).values(balance=0))
    with engine.connect() as conn:
        balances = dict(conn.execute(select(accounts.c.owner, accounts.c.balance)).all())
    assert balances == {"M1": 5, schema.SYSTEM: None}


def test_postings_of_zero_are_refused(engine) -> None:
    """(A posting to an unknown account is no longer refused by a foreign key, migration
    0002: ``verify`` reports it, see test_ledger_journal.)"""
    upgrade(engine)
    with engine.begin() as conn:
        tx = conn.execute(insert(schema.journal_transactions).values(
            kind="test", ref="r", created_us=0)).inserted_primary_key[0]
    with engine.begin() as conn:
        account = conn.execute(insert(schema.accounts).values(
            owner="M1", asset="points", kind="points", balance=0)).inserted_primary_key[0]
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(schema.journal_postings).values(
            tx_id=tx, account_id=account, asset="points", amount=0))


def test_settlement_migrate_command(tmp_path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/cli.db"
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "settlement", "migrate", "--database-url", url],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"revision {HEAD}" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "settlement", "migrate", "--database-url", "mysql://x/y"],
        capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unsupported database" in bad.stderr
