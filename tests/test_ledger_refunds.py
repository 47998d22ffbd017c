"""Refunds, voids, recharge reversal, cards and points expiry, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

import settlement
from settlement.ledger import schema
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.errors import Conflict, InsufficientBalance
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import DAY_US, Ledger
from settlement.ledger.verify import verify

from .test_ledger_service import NOW, rulebook, spec_member, spec_settle_request  # noqa: F401

BALANCES = ("points_balance", "points_debt", "sv_principal_cents", "sv_bonus_cents",
            "cumulative_spend_cents", "tier")


@pytest.fixture
def ledger(ledger_url: str, rulebook: settlement.Rulebook):  # noqa: F811
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    clock = {"now": NOW}
    ledger = Ledger(engine, rulebook, clock=lambda: clock["now"], max_clock_skew_us=None)
    ledger.clock_state = clock  # type: ignore[attr-defined]
    yield ledger
    with engine.connect() as conn:
        assert verify(conn) is None
    engine.dispose()


def snapshot(ledger: Ledger, member: str) -> dict:
    state = ledger.get_member(member_id=member)
    return {**{k: state[k] for k in BALANCES}, "coupons": state["coupons"],
            "count_cards": state["count_cards"]}


def test_full_refund_restores_every_balance(ledger: Ledger, examples_dir: Path) -> None:
    spec_member(ledger)
    before = snapshot(ledger, "M0001")
    receipt = ledger.settle("S001", "s1", spec_settle_request(examples_dir))
    refund = ledger.refund("S001", "f1", receipt["settlement_id"])
    assert refund["net_cents"] == 24781
    assert refund["stored_value_cents"] == 3000 and refund["cash_cents"] == 21781
    assert (refund["points_returned"], refund["points_taken_back"]) == (1000, 236)
    assert refund["coupons_returned"] == ["C-1", "C-3", "C-4"]
    assert snapshot(ledger, "M0001") == before
    with pytest.raises(Conflict):
        ledger.refund("S001", "f2", receipt["settlement_id"])  # nothing left to refund
    assert ledger.refund("S001", "f1", receipt["settlement_id"]) == refund  # a retry


def test_expired_coupon_does_not_come_back(ledger: Ledger, examples_dir: Path) -> None:
    spec_member(ledger)
    receipt = ledger.settle("S001", "s1", spec_settle_request(examples_dir))
    ledger.clock_state["now"] = NOW + 5 * DAY_US  # type: ignore[attr-defined]  # C-3 expired
    refund = ledger.refund("S001", "f1", receipt["settlement_id"])
    assert refund["coupons_returned"] == ["C-1", "C-4"]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_partial_refunds_return_exactly_the_original(ledger: Ledger, examples_dir: Path,
                                                      data: st.DataObject) -> None:
    member = f"P{uuid.uuid4().hex[:12]}"  # examples share the database: a fresh member each
    ledger.enroll("S001", f"e-{member}", member_id=member, tier="gold")
    ledger.recharge("S001", f"r-{member}", member, 5000)
    quantities = data.draw(st.lists(st.integers(1, 7), min_size=1, max_size=4))
    request = {"member_id": member, "at": "2026-11-22T10:30:00+08:00",
               "pay_stored_value_cents": 4000, "redeem_points": 0,
               "lines": [{"sku": f"X{i}", "category": "grain", "unit_price_cents": 997 + 31 * i,
                          "quantity": q} for i, q in enumerate(quantities)]}
    receipt = ledger.settle("S001", f"s-{member}", request)
    sid = receipt["settlement_id"]
    left = dict(enumerate(quantities))
    got: dict[int, dict[str, int]] = {i: {} for i in left}
    step = 0
    while any(left.values()):
        picks = [i for i, k in left.items() if k]
        chosen = data.draw(st.lists(st.sampled_from(picks), min_size=1, unique=True))
        plan = [{"line_no": i, "quantity": data.draw(st.integers(1, left[i]))} for i in chosen]
        refund = ledger.refund("S001", f"f-{member}-{step}", sid, plan)
        step += 1
        for line in refund["lines"]:
            left[line["line_no"]] -= line["quantity"]
            for k, v in line.items():
                if k not in ("line_no", "quantity"):
                    got[line["line_no"]][k] = got[line["line_no"]].get(k, 0) + v
    with pytest.raises(Conflict):
        ledger.refund("S001", f"f-{member}-more", sid)
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(schema.settlement_lines).where(
            schema.settlement_lines.c.settlement_id == sid)).all()
    for r in rows:
        assert got[r.line_no] == {
            "net_cents": r.net_cents, "coupon_discount_cents": r.coupon_discount_cents,
            "points_offset_cents": r.points_offset_cents,
            "sv_principal_cents": r.sv_principal_cents, "sv_bonus_cents": r.sv_bonus_cents,
            "points_returned": r.points_redeemed, "points_taken_back": r.points_earned}
    state = ledger.get_member(member_id=member)
    assert state["sv_principal_cents"] == 5000 and state["cumulative_spend_cents"] == 0


def test_refund_quantities_are_checked(ledger: Ledger) -> None:
    ledger.enroll("S001", "e", member_id="A")
    receipt = ledger.settle("S001", "s", {"member_id": "A", "at": "2026-11-20T10:00:00+08:00",
                                          "lines": [{"sku": "X", "category": "grain",
                                                     "unit_price_cents": 100, "quantity": 3}]})
    sid = receipt["settlement_id"]
    for bad in ([{"line_no": 0, "quantity": 4}], [{"line_no": 1, "quantity": 1}],
                [{"line_no": 0, "quantity": 0}],
                [{"line_no": 0, "quantity": 1}, {"line_no": 0, "quantity": 1}]):
        with pytest.raises(ValueError):
            ledger.refund("S001", "f", sid, bad)
    ledger.refund("S001", "f1", sid, [{"line_no": 0, "quantity": 2}])
    with pytest.raises(ValueError):
        ledger.refund("S001", "f2", sid, [{"line_no": 0, "quantity": 2}])
    with pytest.raises(Conflict):
        ledger.void("S001", "v", sid)  # partly refunded: no void


def test_void(ledger: Ledger, examples_dir: Path) -> None:
    spec_member(ledger)
    before = snapshot(ledger, "M0001")
    receipt = ledger.settle("S001", "s1", spec_settle_request(examples_dir))
    assert ledger.void("S001", "v1", receipt["settlement_id"])["voided"]
    assert snapshot(ledger, "M0001") == before
    with pytest.raises(Conflict):
        ledger.refund("S001", "f1", receipt["settlement_id"])


def test_clawed_back_points_become_a_debt_then_are_repaid(ledger: Ledger) -> None:
    ledger.enroll("S001", "e", member_id="A", tier="gold")
    basket = [{"sku": "X", "category": "grain", "unit_price_cents": 20000, "quantity": 1}]
    first = ledger.settle("S001", "s1", {"member_id": "A", "at": "2026-11-20T10:00:00+08:00",
                                         "lines": basket})
    # gold: 20000 - 2000 = 18000 payable -> 180 * 1.5 = 270 points
    assert first["points_earned"] == 270
    ledger.settle("S001", "s2", {"member_id": "A", "at": "2026-11-20T10:01:00+08:00",
                                 "redeem_points": 260, "lines": basket})  # spends 260 of 270
    # s2: 13 blocks = 260 points (1300 cents off), earns (18000 - 1300) / 100 * 1.5 = 250
    refund = ledger.refund("S001", "f1", first["settlement_id"])
    # balance 270 - 260 + 250 = 260 of the 270 to take back: 10 become a debt
    assert refund["points_taken_back"] == 270 and refund["points_debt_added"] == 10
    state = ledger.get_member(member_id="A")
    assert state["points_balance"] == 0 and state["points_debt"] == 10
    ledger.settle("S001", "s3", {"member_id": "A", "at": "2026-11-20T10:02:00+08:00",
                                 "lines": basket})
    assert ledger.get_member(member_id="A")["points_debt"] == 0


def test_reverse_recharge(ledger: Ledger) -> None:
    ledger.enroll("S001", "e", member_id="A")
    before = snapshot(ledger, "A")
    rid = ledger.recharge("S001", "r1", "A", 50_000)["recharge_id"]
    ledger.reverse_recharge("S001", "x1", rid)
    after = snapshot(ledger, "A")
    assert after == before  # principal, bonus, points back; the bonus coupon voided
    with pytest.raises(Conflict):
        ledger.reverse_recharge("S001", "x2", rid)
    rid2 = ledger.recharge("S001", "r2", "A", 20_000)["recharge_id"]
    ledger.settle("S001", "s1", {"member_id": "A", "at": "2026-11-20T10:00:00+08:00",
                                 "pay_stored_value_cents": 100,
                                 "lines": [{"sku": "X", "category": "grain",
                                            "unit_price_cents": 100, "quantity": 1}]})
    with pytest.raises(Conflict):
        ledger.reverse_recharge("S001", "x3", rid2)


def test_lost_and_replaced_cards(ledger: Ledger) -> None:
    ledger.enroll("S001", "e", member_id="A", card_no="OLD")
    ledger.recharge("S001", "r", "A", 1000)
    basket = {"at": "2026-11-20T10:00:00+08:00",
              "lines": [{"sku": "X", "category": "grain", "unit_price_cents": 100,
                         "quantity": 1}]}
    ledger.report_lost("S001", "l1", "OLD")
    with pytest.raises(Conflict):
        ledger.settle("S001", "s1", {"card_no": "OLD", **basket})
    new = ledger.replace_card("S001", "c1", "OLD", "NEW")
    assert new == {"card_no": "NEW", "member_id": "A", "replaces": "OLD"}
    receipt = ledger.settle("S001", "s2", {"card_no": "NEW", "pay_stored_value_cents": 100,
                                           **basket})
    assert receipt["stored_value_cents"] == 100
    assert ledger.get_member(card_no="NEW")["sv_principal_cents"] == 900
    with pytest.raises(Conflict):
        ledger.settle("S001", "s3", {"card_no": "OLD", **basket})


def test_points_expire_by_job(ledger_url: str, examples_dir: Path) -> None:
    text = (examples_dir / "rulebook.toml").read_text().replace(
        "max_redeem_bp = 5000", "max_redeem_bp = 5000\nexpiry_days = 30")
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    clock = {"now": NOW}
    ledger = Ledger(engine, settlement.rulebook_from_toml(text), clock=lambda: clock["now"],
                    max_clock_skew_us=None)
    ledger.enroll("S001", "e", member_id="A", tier="gold")
    ledger.settle("S001", "s1", {"member_id": "A", "at": "2026-11-20T10:00:00+08:00",
                                 "lines": [{"sku": "X", "category": "grain",
                                            "unit_price_cents": 20000, "quantity": 1}]})
    assert ledger.get_member(member_id="A")["points_balance"] == 270
    assert ledger.expire_points() == {"points_expired": 0, "members": 0}
    clock["now"] = NOW + 30 * DAY_US
    assert ledger.get_member(member_id="A")["points_balance"] == 0  # not usable any more
    assert ledger.get_member(member_id="A")["points_total"] == 270  # until the job runs
    assert ledger.expire_points() == {"points_expired": 270, "members": 1}
    assert ledger.get_member(member_id="A")["points_total"] == 0
    assert ledger.expire_points() == {"points_expired": 0, "members": 0}
    with pytest.raises(InsufficientBalance), engine.begin() as conn:
        from settlement.ledger.journal import Transaction, account, system

        tx = Transaction("t", "t", None, 0)
        tx.move(account(conn, "A", "points"), system(conn, "points_redeemed"), 1)
        tx.write(conn)
    with engine.connect() as conn:
        assert verify(conn) is None
    engine.dispose()


def test_consume_count_card(ledger: Ledger) -> None:
    ledger.enroll("S001", "e", member_id="A")
    ledger.issue_count_card("S001", "k", "A", "WASH", ["CAR-WASH"], 3,
                            valid_until_us=NOW + DAY_US)
    assert ledger.consume_count_card("S001", "u1", "A", "WASH", "CAR-WASH", 2)["uses_left"] == 1
    assert ledger.consume_count_card("S001", "u1", "A", "WASH", "CAR-WASH", 2)["uses_left"] == 1
    with pytest.raises(InsufficientBalance):
        ledger.consume_count_card("S001", "u2", "A", "WASH", "CAR-WASH", 2)
    with pytest.raises(Conflict):
        ledger.consume_count_card("S001", "u3", "A", "WASH", "HAIRCUT")
    ledger.clock_state["now"] = NOW + DAY_US  # type: ignore[attr-defined]
    with pytest.raises(Conflict):
        ledger.consume_count_card("S001", "u4", "A", "WASH", "CAR-WASH")
    assert ledger.get_member(member_id="A")["count_cards"][0]["uses"] == 1
