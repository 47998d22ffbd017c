"""Ledger operations on SQLite and PostgreSQL: enrol, recharge, coupons, settle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

import settlement
from settlement.ledger import schema
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.errors import (
    Conflict,
    IdempotencyConflict,
    InsufficientBalance,
    NotFound,
)
from settlement.ledger.journal import Transaction, account, system
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger, PriceChanged
from settlement.ledger.verify import verify
from settlement.timeutil import parse_instant

NOW = parse_instant("2026-11-22T09:00:00+08:00")
DAY = 86_400 * 1_000_000
EXTRA_RULES = """
[[recharge_rules]]
min_cents = 10000
bonus_cents = 1000
bonus_points = 50

[[recharge_rules]]
min_cents = 50000
bonus_cents = 8000
bonus_points = 300
bonus_coupons = ["VOUCHER5"]
coupon_valid_days = 10
"""


@pytest.fixture
def rulebook(examples_dir: Path) -> settlement.Rulebook:
    text = (examples_dir / "rulebook.toml").read_text()
    text = text.replace("max_redeem_bp = 5000", "max_redeem_bp = 5000\nreferral_points = 100")
    return settlement.rulebook_from_toml(text + EXTRA_RULES)


@pytest.fixture
def ledger(ledger_url: str, rulebook: settlement.Rulebook):
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    yield Ledger(engine, rulebook, clock=lambda: NOW, max_clock_skew_us=None)
    with engine.connect() as conn:
        assert verify(conn) is None  # every test leaves a journal that verifies
    engine.dispose()


def grant_points(ledger: Ledger, member: str, points: int) -> None:
    """Seed a points lot (the way a past settlement would have)."""
    with ledger.engine.begin() as conn:
        tx = Transaction("seed", member, "S001", NOW)
        tx.move(system(conn, "points_issued"), account(conn, member, "points"), points)
        lots = [(member, points, None)]
        Ledger._write_lots(conn, tx.write(conn), lots, NOW)


def spec_member(ledger: Ledger) -> None:
    """The member of the spec's example request, as database state."""
    ledger.enroll("S001", "e-1", member_id="M0001", phone="13800000001", card_no="K0001",
                  tier="gold")
    grant_points(ledger, "M0001", 1234)
    ledger.recharge("S001", "r-1", "M0001", 5000)  # below every rule: no bonus
    for cid, template, start, end in [
        ("C-1", "SPEND200-20", "2026-11-01", "2026-12-01"),
        ("C-2", "PCT12", "2026-11-01", "2026-11-30"),
        ("C-3", "VOUCHER5", "2026-11-01", "2026-11-25"),
        ("C-4", "DAIRY-30PCT", "2026-11-01", "2026-12-31"),
        ("C-5", "VOUCHER5", "2026-10-01", "2026-11-01"),
    ]:
        ledger.issue_coupon("S001", f"c-{cid}", "M0001", template, coupon_id=cid,
                            valid_from_us=parse_instant(f"{start}T00:00:00+08:00"),
                            valid_until_us=parse_instant(f"{end}T00:00:00+08:00"))
    ledger.issue_count_card("S001", "k-1", "M0001", "K-1", ["CAR-WASH"], 10,
                            parse_instant("2027-06-01T00:00:00+08:00"))


def spec_settle_request(examples_dir: Path) -> dict:
    request = json.loads((examples_dir / "request-member.json").read_text())
    del request["member"], request["store"]
    return {"member_id": "M0001", **request}


def test_enroll_lookup_and_idempotency(ledger: Ledger) -> None:
    first = ledger.enroll("S001", "k1", phone="13900000000", card_no="CARD-1")
    again = ledger.enroll("S001", "k1", phone="13900000000", card_no="CARD-1")
    assert again == first  # the stored response, nothing created twice
    with pytest.raises(IdempotencyConflict):
        ledger.enroll("S001", "k1", phone="13900000001")
    with pytest.raises(Conflict):
        ledger.enroll("S001", "k2", phone="13900000000")
    mid = first["member_id"]
    by_id = ledger.get_member(member_id=mid)
    assert ledger.get_member(phone="13900000000") == by_id
    assert ledger.get_member(card_no="CARD-1") == by_id
    assert by_id["tier"] == "normal" and by_id["points_balance"] == 0
    with pytest.raises(NotFound):
        ledger.get_member(phone="nobody")


def test_referral_points_for_both(ledger: Ledger) -> None:
    ref = ledger.enroll("S001", "k1", member_id="A")["member_id"]
    ledger.enroll("S001", "k2", member_id="B", referrer_id=ref)
    assert ledger.get_member(member_id="A")["points_balance"] == 100
    assert ledger.get_member(member_id="B")["points_balance"] == 100
    with pytest.raises(NotFound):
        ledger.enroll("S001", "k3", member_id="C", referrer_id="nobody")


def test_recharge_applies_the_best_rule(ledger: Ledger) -> None:
    ledger.enroll("S001", "k1", member_id="A")
    small = ledger.recharge("S001", "r1", "A", 9999)
    assert (small["bonus_cents"], small["bonus_points"], small["bonus_coupons"]) == (0, 0, [])
    mid = ledger.recharge("S001", "r2", "A", 20000)
    assert (mid["bonus_cents"], mid["bonus_points"]) == (1000, 50)
    big = ledger.recharge("S001", "r3", "A", 50000)
    assert (big["bonus_cents"], big["bonus_points"], len(big["bonus_coupons"])) == (8000, 300, 1)
    state = ledger.get_member(member_id="A")
    assert state["sv_principal_cents"] == 9999 + 20000 + 50000
    assert state["sv_bonus_cents"] == 1000 + 8000
    assert state["points_balance"] == 350
    assert [c["template"] for c in state["coupons"]] == ["VOUCHER5"]
    assert state["coupons"][0]["valid_until_us"] == NOW + 10 * 86_400_000_000


def test_settle_the_spec_example_against_database_state(ledger: Ledger, examples_dir: Path):
    spec_member(ledger)
    receipt = ledger.settle("S001", "s-1", spec_settle_request(examples_dir), terminal="T1")
    expected = json.loads((examples_dir / "receipt-member.json").read_text())
    sid = receipt.pop("settlement_id")
    assert receipt == expected
    state = ledger.get_member(member_id="M0001")
    assert state["points_balance"] == 1234 - 1000 + 236
    assert state["sv_principal_cents"] == 5000 - 3000
    assert [c["id"] for c in state["coupons"]] == ["C-2", "C-5"]  # C-1, C-3, C-4 redeemed
    assert state["count_cards"][0]["uses"] == 9
    assert state["cumulative_spend_cents"] == 24781
    with ledger.engine.connect() as conn:
        lines = conn.execute(select(schema.settlement_lines).where(
            schema.settlement_lines.c.settlement_id == sid)
            .order_by(schema.settlement_lines.c.line_no)).all()
    assert [ln.net_cents for ln in lines] == [2079, 1469, 9000, 8568, 3665, 0]
    assert sum(ln.sv_principal_cents for ln in lines) == 3000
    assert sum(ln.points_redeemed for ln in lines) == 1000
    assert sum(ln.points_earned for ln in lines) == 236
    assert lines[2].points_earned == 0  # tobacco earns nothing


def test_settle_retry_applies_once(ledger: Ledger, examples_dir: Path) -> None:
    spec_member(ledger)
    request = spec_settle_request(examples_dir)
    first = ledger.settle("S001", "s-1", request)
    assert ledger.settle("S001", "s-1", request) == first
    with pytest.raises(IdempotencyConflict):
        ledger.settle("S001", "s-1", {**request, "redeem_points": 0})
    state = ledger.get_member(member_id="M0001")
    assert state["points_balance"] == 470 and state["sv_principal_cents"] == 2000
    with ledger.engine.connect() as conn:
        assert len(conn.execute(select(schema.settlements.c.id)).all()) == 1


def test_changed_price_and_shortfall_change_nothing(ledger: Ledger, examples_dir: Path):
    spec_member(ledger)
    request = spec_settle_request(examples_dir)
    with pytest.raises(PriceChanged) as err:
        ledger.settle("S001", "s-1", {**request, "expected_payable_cents": 24000})
    assert err.value.receipt["payable_cents"] == 24781
    with pytest.raises(InsufficientBalance):
        ledger.settle("S001", "s-2", {**request, "pay_stored_value_cents": 6000})
    state = ledger.get_member(member_id="M0001")
    assert state["points_balance"] == 1234 and state["sv_principal_cents"] == 5000
    assert len(state["coupons"]) == 5
    # The same key works once the request is right: refusals are not stored.
    assert ledger.settle("S001", "s-1", {**request, "expected_payable_cents": 24781})


def test_stored_value_split_by_balance_proportion(ledger: Ledger) -> None:
    ledger.enroll("S001", "k1", member_id="A")
    ledger.recharge("S001", "r1", "A", 20000)  # principal 20000, bonus 1000
    receipt = ledger.settle("S001", "s1", {
        "member_id": "A", "at": "2026-11-20T10:00:00+08:00", "pay_stored_value_cents": 2100,
        "lines": [{"sku": "X", "category": "grain", "unit_price_cents": 2100, "quantity": 1}]})
    assert receipt["stored_value_cents"] == 2100 and receipt["due_cents"] == 0
    state = ledger.get_member(member_id="A")
    # bonus part = 2100 * 1000 // 21000 = 100; principal takes the rest (2000)
    assert (state["sv_principal_cents"], state["sv_bonus_cents"]) == (18000, 900)


def test_tiered_card_upgrades_from_the_next_settlement(ledger: Ledger) -> None:
    ledger.enroll("S001", "k1", member_id="A", card_type="tiered")
    basket = [{"sku": "X", "category": "grain", "unit_price_cents": 100000, "quantity": 2}]
    first = ledger.settle("S001", "s1", {"member_id": "A", "lines": basket,
                                         "at": "2026-11-20T10:00:00+08:00"})
    assert first["item_discount_cents"] == 0  # normal tier: 0 bp
    assert ledger.get_member(member_id="A")["tier"] == "silver"  # 200000 >= 200000
    second = ledger.settle("S001", "s2", {"member_id": "A", "lines": basket,
                                          "at": "2026-11-20T10:05:00+08:00"})
    assert second["item_discount_cents"] == 10000  # silver 500 bp of 200000


def test_walk_in_and_unknown_member(ledger: Ledger) -> None:
    receipt = ledger.settle("S002", "w1", {
        "at": "2026-11-21T19:05:00+08:00",
        "lines": [{"sku": "APPLE-FUJI", "category": "fruit", "unit_price_cents": 899,
                   "quantity": 2}]})
    assert receipt["payable_cents"] == 1430  # 1798 - 360 = 1438, floor_jiao -> 1430
    with pytest.raises(NotFound):
        ledger.settle("S001", "w2", {"member_id": "ghost", "lines": []})
    with pytest.raises(settlement.RequestError):
        ledger.settle("S001", "w3", {"lines": [{"sku": "X"}]})


def test_backdated_or_future_checkouts_are_refused(ledger_url: str,
                                                   rulebook: settlement.Rulebook) -> None:
    """The POS's ``at`` must be within 15 minutes of the ledger's clock by default."""
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine, rulebook, clock=lambda: NOW)  # default skew: 15 minutes
    basket = [{"sku": "X", "category": "grain", "unit_price_cents": 100, "quantity": 1}]
    for at in ("2026-11-22T08:44:59+08:00", "2026-11-22T09:15:01+08:00",
               "2026-11-01T09:00:00+08:00"):
        with pytest.raises(settlement.RequestError) as err:
            ledger.settle("S001", f"k-{at}", {"at": at, "lines": basket})
        assert err.value.field == "at"
    for at in ("2026-11-22T08:45:00+08:00", "2026-11-22T09:15:00+08:00", None):
        request = {"lines": basket} if at is None else {"at": at, "lines": basket}
        assert ledger.settle("S001", f"ok-{at}", request)["payable_cents"] == 100
    engine.dispose()


def test_many_lots_spend_in_expiry_order_beyond_the_first_page(ledger: Ledger) -> None:
    """A member with more unspent lots than a snapshot carries (LOT_PAGE): the usable total
    counts them all, expired ones do not count, and a redemption bigger than the first
    page spends across pages, earliest expiry first, no-expiry lots last."""
    from settlement.ledger.snapshot import LOT_PAGE

    ledger.enroll("S001", "e", member_id="M9")
    n = LOT_PAGE * 2 + 5
    with ledger.engine.begin() as conn:
        tx = Transaction("seed", "M9", "S001", NOW)
        tx.move(system(conn, "points_issued"), account(conn, "M9", "points"), 10 * n + 500)
        lots = [("M9", 10, NOW + DAY * (n - i)) for i in range(n)]  # later rows expire first
        lots += [("M9", 400, None), ("M9", 100, NOW - DAY)]  # no expiry; already expired
        Ledger._write_lots(conn, tx.write(conn), lots, NOW)
    state = ledger.get_member(member_id="M9")
    assert state["points_balance"] == 10 * n + 400  # the expired lot does not count
    wanted = 20 * (LOT_PAGE // 2 + 2)  # more than the first page holds; whole 20-point units
    basket = {"member_id": "M9", "at": "2026-11-22T09:00:00+08:00", "redeem_points": wanted,
              "lines": [{"sku": "X", "category": "grain", "unit_price_cents": 1_000_000,
                         "quantity": 1}]}
    receipt = ledger.settle("S001", "s", basket)
    assert receipt["points_redeemed"] == wanted
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(schema.points_lots.c.expires_us,
                                   schema.points_lots.c.remaining)
                            .where(schema.points_lots.c.member_id == "M9",
                                   schema.points_lots.c.points == 10)).all()
    spent = sorted(r.expires_us for r in rows if r.remaining == 0)
    left = sorted(r.expires_us for r in rows if r.remaining == 10)
    assert len(spent) == wanted // 10 and max(spent) < min(left)  # earliest expiry first
    after = ledger.get_member(member_id="M9")
    assert after["points_balance"] == 10 * n + 400 - wanted + receipt["points_earned"]
