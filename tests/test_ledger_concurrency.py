"""Concurrency on PostgreSQL, with real concurrent connections (threads, one pool).

The member-row lock serializes one member's operations; these tests race
many terminals against one member and check that exactly the right number
succeed, that nothing is applied twice, and that the journal verifies.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import settlement
import settlement.ledger.errors
from settlement.ledger import schema
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.errors import IdempotencyConflict, InsufficientBalance
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.verify import verify

AT = "2026-11-20T10:00:00+08:00"
#: Distinct keys in the retry storm (the issue: 2,000 settlements).
STORM_KEYS = int(os.environ.get("SETTLEMENT_STORM_KEYS", "2000"))


@pytest.fixture
def ledger(postgres_cluster, examples_dir: Path, request: pytest.FixtureRequest):
    from uuid import uuid4

    name = f"c_{uuid4().hex[:12]}"
    postgres_cluster.create_database(name)
    engine = create_ledger_engine(postgres_cluster.url(dbname=name), pool_size=20)
    upgrade(engine)
    rb = settlement.load_rulebook(examples_dir / "rulebook.toml")
    yield Ledger(engine, rb, max_clock_skew_us=None)  # fixed instants
    with engine.connect() as conn:
        assert verify(conn) is None
    engine.dispose()


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(0..n-1)`` on n threads released together; returns results or exceptions."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def basket(cents: int) -> list[dict[str, Any]]:
    return [{"sku": "RICE", "category": "grain", "unit_price_cents": cents, "quantity": 1}]


def test_overdraft_race(ledger: Ledger) -> None:
    """32 settlements at once, the balance covers 3: exactly 3 succeed, none overdraws."""
    ledger.enroll("S001", "e", member_id="A")
    ledger.recharge("S001", "r", "A", 10_000)
    results = race(32, lambda i: ledger.settle("S001", f"s{i}", {
        "member_id": "A", "at": AT, "lines": basket(3000), "pay_stored_value_cents": 3000}))
    ok = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, InsufficientBalance)]
    assert len(ok) == 3 and len(refused) == 29, Counter(type(r).__name__ for r in results)
    assert ledger.get_member(member_id="A")["sv_principal_cents"] == 1000


def test_one_coupon_from_16_terminals(ledger: Ledger) -> None:
    ledger.enroll("S001", "e", member_id="A")
    ledger.issue_coupon("S001", "c", "A", "VOUCHER5", coupon_id="ONLY")
    results = race(16, lambda i: ledger.settle("S001", f"s{i}", {
        "member_id": "A", "at": AT, "lines": basket(2000), "coupon_ids": ["ONLY"]}))
    assert all(isinstance(r, dict) for r in results), results
    used = [r for r in results if r["applied_coupons"]]
    assert len(used) == 1 and used[0]["coupon_discount_cents"] == 500
    others = [r["rejected_coupons"] for r in results if not r["applied_coupons"]]
    assert others == [[{"id": "ONLY", "reason": "UNKNOWN_COUPON"}]] * 15
    with ledger.engine.connect() as conn:
        row = conn.execute(select(schema.coupons).where(schema.coupons.c.id == "ONLY")).one()
    assert row.state == "redeemed" and row.settlement_id == used[0]["settlement_id"]


def test_retry_storm(ledger: Ledger) -> None:
    """Each key sent 1-5 times, some at once: one effect per key, identical responses;
    the same key with another body is refused and changes nothing."""
    ledger.enroll("S001", "e", member_id="A")
    ledger.recharge("S001", "r", "A", 10_000_000)
    rng = random.Random(7)
    keys = [f"k{i}" for i in range(STORM_KEYS)]
    sends = [k for k in keys for _ in range(rng.randint(1, 5))]
    rng.shuffle(sends)
    cents = {k: 100 + rng.randrange(5000) for k in keys}

    def send(i: int) -> Any:
        key = sends[i]
        return key, ledger.settle("S001", key, {
            "member_id": "A", "at": AT, "lines": basket(cents[key]),
            "pay_stored_value_cents": cents[key]})

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(len(sends))))
    responses: dict[str, Any] = {}
    for key, response in results:
        assert responses.setdefault(key, response) == response
    conflicting = race(8, lambda i: ledger.settle("S001", keys[i], {
        "member_id": "A", "at": AT, "lines": basket(1), "pay_stored_value_cents": 1}))
    assert all(isinstance(r, IdempotencyConflict) for r in conflicting)
    with ledger.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(schema.settlements)).scalar()
        spent = conn.execute(select(func.sum(schema.settlements.c.stored_value_cents))).scalar()
    assert count == len(keys)
    assert spent == sum(r["stored_value_cents"] for r in responses.values())
    assert ledger.get_member(member_id="A")["sv_principal_cents"] == 10_000_000 - spent


def test_concurrent_refunds_of_a_walk_in_refund_once(ledger: Ledger) -> None:
    """No member row to lock: the settlement row itself serializes its refunds."""
    receipt = ledger.settle("S001", "w", {"at": AT, "lines": basket(1000)})
    results = race(12, lambda i: ledger.refund("S001", f"f{i}", receipt["settlement_id"]))
    done = [r for r in results if isinstance(r, dict)]
    assert len(done) == 1 and done[0]["cash_cents"] == 1000, results
    assert all(isinstance(r, settlement.ledger.errors.Conflict) for r in results
               if not isinstance(r, dict))


def _terminate_ledger_connections(postgres_cluster, ledger: Ledger) -> int:
    """Kill every server process of the ledger's database (what a server restart does to
    a pool's connections). Returns how many were killed."""
    dbname = ledger.engine.url.database
    with postgres_cluster.connect("postgres", autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchone()[0]
    return int(killed)


def test_dead_pooled_connections_are_replaced_without_an_error(
        ledger: Ledger, postgres_cluster) -> None:
    """The pool does not ping before use: an operation that meets a dead connection runs
    once more on a fresh one (settle on the psycopg path, the others through SQLAlchemy),
    and nothing is applied twice."""
    ledger.enroll("S001", "e", member_id="A")
    ledger.recharge("S001", "r", "A", 10_000)
    first = ledger.settle("S001", "s0", {"member_id": "A", "at": AT, "lines": basket(1000),
                                         "pay_stored_value_cents": 1000})
    for step in range(3):
        # warm several pooled connections, then kill them all
        race(4, lambda i, step=step: ledger.get_member(member_id="A"))
        assert _terminate_ledger_connections(postgres_cluster, ledger) >= 1
        if step == 0:
            done = ledger.settle("S001", "s1", {"member_id": "A", "at": AT,
                                                "lines": basket(1000),
                                                "pay_stored_value_cents": 1000})
            assert done["stored_value_cents"] == 1000
        elif step == 1:
            assert ledger.recharge("S001", "r2", "A", 500)["amount_cents"] == 500
        else:
            assert ledger.get_member(member_id="A")["sv_principal_cents"] == 10_000 - 2000 + 500
    # a retry of the first settlement still answers from its key, applied once
    assert ledger.settle("S001", "s0", {"member_id": "A", "at": AT, "lines": basket(1000),
                                        "pay_stored_value_cents": 1000}) == first
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.settlements)).scalar() == 2


def test_a_member_locked_elsewhere_fails_fast_instead_of_hanging(
        postgres_cluster, examples_dir: Path) -> None:
    """A settle waiting for a member that a stuck transaction holds gives up after the
    engine's lock timeout, applies nothing, and succeeds on retry once the lock is gone."""
    import time
    from uuid import uuid4

    import psycopg

    name = f"c_{uuid4().hex[:12]}"
    postgres_cluster.create_database(name)
    engine = create_ledger_engine(postgres_cluster.url(dbname=name), lock_timeout_s=0.3)
    upgrade(engine)
    ledger = Ledger(engine, settlement.load_rulebook(examples_dir / "rulebook.toml"),
                    max_clock_skew_us=None)
    ledger.enroll("S001", "e", member_id="A")
    request = {"member_id": "A", "at": AT, "lines": basket(1000)}
    with engine.connect() as stuck:
        stuck.execute(select(schema.members).where(schema.members.c.id == "A")
                      .with_for_update())
        began = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            ledger.settle("S001", "k", request)
        assert time.monotonic() - began < 3
        stuck.rollback()
    assert ledger.settle("S001", "k", request)["payable_cents"] == 1000
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.settlements)).scalar() == 1
        assert verify(conn) is None
    engine.dispose()
