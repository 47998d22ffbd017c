"""A mixed concurrent workload on PostgreSQL, then ``verify`` and a conservation model.

Eight threads run random settles, refunds, voids, recharges and coupon issues
against a few members (so they contend). Afterwards the journal must verify,
and each member's stored value must equal what a plain model rebuilt from the
responses the clients saw says it is: recharged - spent + refunded.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import settlement
from settlement.ledger import schema
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.errors import LedgerError
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.verify import verify

MEMBERS = [f"W{i}" for i in range(6)]
OPS = 400


@pytest.fixture
def ledger(postgres_cluster, examples_dir: Path):
    from uuid import uuid4

    name = f"w_{uuid4().hex[:12]}"
    postgres_cluster.create_database(name)
    engine = create_ledger_engine(postgres_cluster.url(dbname=name), pool_size=10)
    upgrade(engine)
    yield Ledger(engine, settlement.load_rulebook(examples_dir / "rulebook.toml"),
                 max_clock_skew_us=None)  # fixed instants
    engine.dispose()


def test_mixed_workload_conserves_money(ledger: Ledger) -> None:
    for m in MEMBERS:
        ledger.enroll("S001", f"e-{m}", member_id=m, tier=("normal", "gold")[int(m[1:]) % 2])
    lock = threading.Lock()
    settled: list[str] = []
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)  # kind -> responses
    outcomes: Counter[str] = Counter()

    def op(i: int) -> None:
        rng = random.Random(i)
        m = rng.choice(MEMBERS)
        kind = rng.choices(["settle", "recharge", "refund", "void", "coupon"],
                           [50, 15, 15, 5, 15])[0]
        try:
            if kind == "recharge":
                r = ledger.recharge("S001", f"op{i}", m, rng.randrange(1000, 60000))
            elif kind == "coupon":
                r = ledger.issue_coupon("S001", f"op{i}", m,
                                        rng.choice(["VOUCHER5", "SPEND200-20", "PCT12"]))
            elif kind == "settle":
                lines = [{"sku": f"SKU{rng.randrange(50)}",
                          "category": rng.choice(["grain", "fruit", "dairy", "tobacco"]),
                          "unit_price_cents": rng.randrange(100, 9000),
                          "quantity": rng.randrange(1, 4)} for _ in range(rng.randrange(1, 8))]
                r = ledger.settle("S001", f"op{i}", {
                    "member_id": m, "at": "2026-11-22T10:30:00+08:00", "lines": lines,
                    "auto_coupons": rng.random() < 0.5,
                    "redeem_points": rng.choice([0, 100, 1000]),
                    "pay_stored_value_cents": rng.choice([0, 500, 5000, 50000])})
                with lock:
                    settled.append(r["settlement_id"])
            else:
                with lock:
                    if not settled:
                        return
                    sid = rng.choice(settled)
                r = (ledger.void("S001", f"op{i}", sid) if kind == "void"
                     else ledger.refund("S001", f"op{i}", sid))
            with lock:
                seen[kind].append({"member": m, **r})
                outcomes[f"{kind}:ok"] += 1
        except LedgerError as exc:  # a refusal: insufficient balance, nothing left, ...
            with lock:
                outcomes[f"{kind}:{type(exc).__name__}"] += 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(op, range(OPS)))
    assert outcomes["settle:ok"] > OPS // 4, outcomes
    assert outcomes["refund:ok"] + outcomes["void:ok"] > 10, outcomes

    with ledger.engine.connect() as conn:
        assert verify(conn) is None
        owner = dict(conn.execute(select(schema.settlements.c.id,
                                         schema.settlements.c.member_id)).all())
        count = conn.execute(select(func.count()).select_from(schema.settlements)).scalar()
    assert count == outcomes["settle:ok"]  # nothing applied twice, nothing lost
    model: dict[str, int] = defaultdict(int)
    for r in seen["recharge"]:
        model[r["member"]] += r["amount_cents"] + r["bonus_cents"]
    for r in seen["settle"]:
        model[r["member"]] -= r["stored_value_cents"]
    for r in seen["refund"] + seen["void"]:
        model[owner[r["settlement_id"]]] += r["stored_value_cents"]
    for m in MEMBERS:
        state = ledger.get_member(member_id=m)
        assert state["sv_principal_cents"] + state["sv_bonus_cents"] == model[m], m
