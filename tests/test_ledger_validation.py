"""Bad input to the ledger: a RequestError naming the field, never a crash, nothing written."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

import settlement
from settlement.ledger import schema
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger

from .test_ledger_service import NOW, rulebook  # noqa: F401

LINE = {"sku": "X", "category": "grain", "unit_price_cents": 100, "quantity": 1}

CASES: list[tuple[str, str, Any]] = [
    ("store", "enroll", lambda lg: lg.enroll(5, "k", phone="1")),
    ("idempotency_key", "enroll", lambda lg: lg.enroll("S", "", phone="1")),
    ("phone", "enroll", lambda lg: lg.enroll("S", "k", phone=13800000000)),
    ("card_type", "enroll", lambda lg: lg.enroll("S", "k", card_type="platinum")),
    ("tier", "enroll", lambda lg: lg.enroll("S", "k", tier="diamond")),
    ("paid_until_us", "enroll", lambda lg: lg.enroll("S", "k", paid_until_us="2027")),
    ("amount_cents", "recharge", lambda lg: lg.recharge("S", "k", "A", True)),
    ("amount_cents", "recharge", lambda lg: lg.recharge("S", "k", "A", 0)),
    ("amount_cents", "recharge", lambda lg: lg.recharge("S", "k", "A", 10**13)),
    ("amount_cents", "recharge", lambda lg: lg.recharge("S", "k", "A", 1.5)),
    ("member_id", "recharge", lambda lg: lg.recharge("S", "k", 7, 100)),
    ("template", "issue_coupon", lambda lg: lg.issue_coupon("S", "k", "A", "NOPE")),
    ("valid_until_us", "issue_coupon",
     lambda lg: lg.issue_coupon("S", "k", "A", "VOUCHER5", valid_until_us=2**70)),
    ("skus", "issue_count_card", lambda lg: lg.issue_count_card("S", "k", "A", "K", [], 3)),
    ("skus[1]", "issue_count_card",
     lambda lg: lg.issue_count_card("S", "k", "A", "K", ["X", None], 3)),
    ("uses", "consume_count_card",
     lambda lg: lg.consume_count_card("S", "k", "A", "K", "X", -1)),
    ("request", "settle", lambda lg: lg.settle("S", "k", ["not", "a", "dict"])),
    # NUL: PostgreSQL text cannot store it (found by tests/test_grpc_hostile.py)
    ("idempotency_key", "settle", lambda lg: lg.settle("S", "\x00", {"lines": [LINE]})),
    ("phone", "enroll", lambda lg: lg.enroll("S", "k", phone="138\x00")),
    ("lines[0].sku", "settle",
     lambda lg: lg.settle("S", "k", {"lines": [{**LINE, "sku": "X\x00"}]})),
    ("coupon_ids[0]", "settle",
     lambda lg: lg.settle("S", "k", {"lines": [LINE], "coupon_ids": ["C\x00"]})),
    ("member_id", "settle", lambda lg: lg.settle("S", "k", {"member_id": 1, "lines": [LINE]})),
    ("card_no", "settle", lambda lg: lg.settle("S", "k", {"card_no": "", "lines": [LINE]})),
    ("at", "settle", lambda lg: lg.settle("S", "k", {"at": "yesterday", "lines": [LINE]})),
    ("at", "settle",
     lambda lg: lg.settle("S", "k", {"at": "2026-11-20T10:00:00", "lines": [LINE]})),
    ("expected_payable_cents", "settle", lambda lg: lg.settle(
        "S", "k", {"expected_payable_cents": "100", "lines": [LINE]})),
    ("lines[0].quantity", "settle", lambda lg: lg.settle(
        "S", "k", {"member_id": "A", "lines": [{**LINE, "quantity": 0}]})),
    ("auto_coupons", "settle", lambda lg: lg.settle(
        "S", "k", {"member_id": "A", "lines": [LINE], "coupon_ids": ["x"],
                   "auto_coupons": True})),
    ("member", "settle", lambda lg: lg.settle("S", "k", {"lines": [LINE], "member": {
        "id": "X", "tier": "gold", "stored_value_cents": 10**6}})),
    ("store", "settle", lambda lg: lg.settle("S", "k", {"lines": [LINE], "store": "S9"})),
    ("lines[0]", "refund", lambda lg: lg.refund("S", "k", "SID", [7])),
    ("lines[0].quantity", "refund",
     lambda lg: lg.refund("S", "k", "SID", [{"line_no": 0, "quantity": True}])),
    ("lines", "refund", lambda lg: lg.refund("S", "k", "SID", [])),
    ("settlement_id", "void", lambda lg: lg.void("S", "k", None)),
    ("recharge_id", "reverse_recharge", lambda lg: lg.reverse_recharge("S", "k", 3)),
    ("new_card_no", "replace_card", lambda lg: lg.replace_card("S", "k", "C", "x" * 129)),
    ("at_us", "get_member", lambda lg: lg.get_member(member_id="A", at_us="now")),
]


@pytest.fixture
def ledger(ledger_url: str, rulebook: settlement.Rulebook):  # noqa: F811
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine, rulebook, clock=lambda: NOW, max_clock_skew_us=None)
    ledger.enroll("S", "setup", member_id="A")
    yield ledger
    engine.dispose()


def rows(ledger: Ledger) -> dict[str, int]:
    with ledger.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in schema.metadata.sorted_tables}


@pytest.mark.parametrize("field,operation,call", CASES,
                         ids=[f"{op}-{field}-{i}" for i, (field, op, _) in enumerate(CASES)])
def test_bad_input_names_the_field(ledger: Ledger, field: str, operation: str, call) -> None:
    before = rows(ledger)
    with pytest.raises(settlement.RequestError) as err:
        call(ledger)
    assert err.value.field == field, str(err.value)
    assert str(err.value).startswith(f"{field}: ")
    assert rows(ledger) == before
