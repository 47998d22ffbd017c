"""Journal, idempotency and verify on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select, text, update

from settlement.ledger import schema
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.errors import IdempotencyConflict, InsufficientBalance
from settlement.ledger.idempotency import claim, record, request_hash
from settlement.ledger.journal import Transaction, account, balance, system
from settlement.ledger.migrate import upgrade
from settlement.ledger.verify import verify


@pytest.fixture
def engine(ledger_url: str):
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def grant(engine, member: str, points: int) -> int:
    with engine.begin() as conn:
        tx = Transaction("grant", member, "S1", 1)
        tx.move(system(conn, "points_issued"), account(conn, member, "points"), points)
        tx_id = tx.write(conn)
        conn.execute(insert(schema.points_lots).values(
            member_id=member, points=points, remaining=points, tx_id=tx_id, created_us=1))
        return tx_id


def test_moves_balance_and_verify(engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(schema.members).values(id="M1", tier="normal", card_type="free",
                                                   created_us=0))
    grant(engine, "M1", 120)
    with engine.connect() as conn:
        assert balance(conn, "M1", "points") == 120
        per_tx = conn.execute(text(
            "SELECT tx_id, SUM(amount) FROM journal_postings GROUP BY tx_id")).all()
        assert [total for _, total in per_tx] == [0]
        assert verify(conn) is None


def test_overdraft_is_refused_and_changes_nothing(engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(schema.members).values(id="M1", tier="normal", card_type="free",
                                                   created_us=0))
    grant(engine, "M1", 50)
    with pytest.raises(InsufficientBalance) as err, engine.begin() as conn:
        tx = Transaction("spend", "x", "S1", 2)
        tx.move(account(conn, "M1", "points"), system(conn, "points_redeemed"), 80)
        tx.write(conn)
    assert err.value.short_by == 30 and err.value.kind == "points"
    with engine.connect() as conn:
        assert balance(conn, "M1", "points") == 50
        assert conn.execute(text("SELECT COUNT(*) FROM journal_transactions")).scalar() == 1
        assert verify(conn) is None


def test_moves_are_checked(engine) -> None:
    with engine.begin() as conn:
        points = account(conn, "M1", "points")
        cash = account(conn, "M1", "sv_principal")
        tx = Transaction("bad", "x", "S1", 1)
        with pytest.raises(ValueError):
            tx.move(points, cash, 5)
        with pytest.raises(ValueError):
            tx.move(points, system(conn, "points_issued"), -5)
        with pytest.raises(ValueError):
            account(conn, "M1", "gold_bars")


def test_verify_reports_tampering(engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(schema.members).values(id="M1", tier="normal", card_type="free",
                                                   created_us=0))
    grant(engine, "M1", 40)
    with engine.begin() as conn:
        conn.execute(update(schema.accounts).where(schema.accounts.c.owner == "M1")
                     .values(balance=41))
        problem = verify(conn)
        assert problem is not None and "balance differs" in problem
        conn.execute(update(schema.accounts).where(schema.accounts.c.owner == "M1")
                     .values(balance=40))
        assert verify(conn) is None
        acc = conn.execute(select(schema.accounts.c.id)
                           .where(schema.accounts.c.owner == "M1")).scalar_one()
        conn.execute(insert(schema.journal_postings).values(
            tx_id=1, account_id=acc, asset="points", amount=3))
        problem = verify(conn)
        assert problem is not None and "does not sum to zero" in problem


def test_verify_reports_references_without_foreign_keys(engine) -> None:
    """Postings and settlement lines carry no foreign keys (migration 0002): verify finds a
    posting without its transaction or account, and a line without its settlement."""
    with engine.begin() as conn:
        conn.execute(insert(schema.members).values(id="M1", tier="normal", card_type="free",
                                                   created_us=0))
    tx_id = grant(engine, "M1", 40)
    with engine.connect() as conn:
        assert verify(conn) is None
    acc = account_id(engine, "M1")
    cases = [
        (insert(schema.journal_postings), [
            {"tx_id": tx_id + 1000, "account_id": acc, "asset": "points", "amount": 3},
            {"tx_id": tx_id + 1000, "account_id": acc, "asset": "points", "amount": -3}],
         "belongs to no transaction"),
        (insert(schema.journal_postings), [
            {"tx_id": tx_id, "account_id": acc + 1000, "asset": "points", "amount": 3},
            {"tx_id": tx_id, "account_id": acc, "asset": "points", "amount": -3}],
         "account does not exist"),
        (insert(schema.settlement_lines), [{
            "settlement_id": "S-none", "line_no": 0, "sku": "X", "category": "c",
            "unit_price_cents": 1, "quantity": 1, "gross_cents": 1, "count_card_cents": 0,
            "item_discount_cents": 0, "item_discount_source": "", "coupon_discount_cents": 0,
            "points_offset_cents": 0, "rounding_cents": 0, "net_cents": 1,
            "sv_principal_cents": 0, "sv_bonus_cents": 0, "points_redeemed": 0,
            "points_earned": 0}],
         "belongs to no settlement"),
    ]
    for statement, rows, expected in cases:
        with engine.connect() as conn:
            conn.execute(statement, rows)
            problem = verify(conn)
            assert problem is not None and expected in problem, problem
            conn.rollback()


def account_id(engine, member: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(schema.accounts.c.id).where(
            schema.accounts.c.owner == member, schema.accounts.c.kind == "points")).scalar_one())


def test_idempotency_claim_replay_conflict(engine) -> None:
    digest = request_hash("settle", {"a": 1, "b": [1, 2]})
    assert digest == request_hash("settle", {"b": [1, 2], "a": 1})  # canonical: key order
    with engine.begin() as conn:
        assert claim(conn, "S1", "k1", "settle", digest, 1) is None
        record(conn, "S1", "k1", {"settlement_id": "X", "payable_cents": 10})
    with engine.begin() as conn:
        assert claim(conn, "S1", "k1", "settle", digest, 2) == {
            "settlement_id": "X", "payable_cents": 10}
        with pytest.raises(IdempotencyConflict):
            claim(conn, "S1", "k1", "settle", request_hash("settle", {"a": 2}), 3)
        with pytest.raises(IdempotencyConflict):
            claim(conn, "S1", "k1", "refund", digest, 3)
        assert claim(conn, "S2", "k1", "settle", digest, 3) is None  # keys are per store


def test_a_failed_operation_releases_its_key(engine) -> None:
    digest = request_hash("settle", {"a": 1})
    with pytest.raises(RuntimeError), engine.begin() as conn:
        assert claim(conn, "S1", "k1", "settle", digest, 1) is None
        raise RuntimeError("the operation failed after claiming")
    with engine.begin() as conn:
        assert claim(conn, "S1", "k1", "settle", digest, 2) is None
