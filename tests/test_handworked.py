"""Hand-worked pricing cases: every expected number is derived by hand from the contract.

Each case builds a small inline rulebook and a request, and compares the
receipt with values worked out from ``shared/spec/pricing.md`` and the
project's readings in ``docs/pricing-notes.md``. The arithmetic is written
beside each number. Nothing here was obtained by running an engine.

Calendar: 2026-11-22 is a Sunday (ISO 7), 2026-11-21 a Saturday (6),
2026-11-18 a Wednesday (3), 2026-11-23 a Monday (1). The rulebooks use
Asia/Shanghai (+08:00).
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import make_rulebook

AT = "2026-11-22T10:30:00+08:00"  # Sunday 10:30 local
WEDNESDAY = "2026-11-18T10:30:00+08:00"
SATURDAY = "2026-11-21T19:05:00+08:00"
FROM = "2026-11-01T00:00:00+08:00"
UNTIL = "2026-12-31T00:00:00+08:00"

# Tiers with item discounts: normal 0 %, silver 5 % (x1.2 points), gold 10 % (x1.5 points).
TIERS = """
[[tiers]]
code = "normal"
rank = 0

[[tiers]]
code = "silver"
rank = 1
off_bp = 500
points_multiplier_bp = 12000

[[tiers]]
code = "gold"
rank = 2
off_bp = 1000
points_multiplier_bp = 15000
"""

# The same ranks without any tier discount (keeps coupon arithmetic free of stage 1).
FLAT_TIERS = """
[[tiers]]
code = "normal"
rank = 0

[[tiers]]
code = "silver"
rank = 1
points_multiplier_bp = 12000

[[tiers]]
code = "gold"
rank = 2
points_multiplier_bp = 15000
"""

# 1 point per yuan; 20 points pay 1 yuan; points pay at most half of the discountable amount.
POINTS = """
[points]
earn_per_yuan = 1
redeem_points = 20
redeem_cents = 100
max_redeem_bp = 5000
"""

TOBACCO = """
[[categories]]
code = "tobacco"
discountable = false
earns_points = false
"""

LINE_FIELDS = ("gross_cents", "count_card_cents", "item_discount_cents", "coupon_discount_cents",
               "points_offset_cents", "rounding_cents", "net_cents")


# --------------------------------------------------------------------------
# Builders and checks.


def line(sku: str, category: str, price: int, quantity: int = 1,
         card: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"sku": sku, "category": category, "unit_price_cents": price,
                           "quantity": quantity}
    if card is not None:
        out["count_card_id"] = card
    return out


def member(tier: str = "normal", **extra: Any) -> dict[str, Any]:
    return {"id": "M1", "tier": tier, **extra}


def coupon(cid: str, template: str, until: str | None = UNTIL,
           frm: str | None = FROM) -> dict[str, Any]:
    out: dict[str, Any] = {"id": cid, "template": template}
    if frm is not None:
        out["valid_from"] = frm
    if until is not None:
        out["valid_until"] = until
    return out


def request(lines: list[dict[str, Any]], mem: dict[str, Any] | None = None, *, at: str = AT,
            store: str = "S1", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"at": at, "store": store, "lines": lines, **extra}
    if mem is not None:
        out["member"] = mem
    return out


def col(receipt: dict[str, Any], name: str) -> list[Any]:
    """One field of every receipt line."""
    return [ln[name] for ln in receipt["lines"]]


def applied(receipt: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(c["id"], c["template"], c["discount_cents"]) for c in receipt["applied_coupons"]]


def rejected(receipt: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["id"], c["reason"]) for c in receipt["rejected_coupons"]]


def check_invariants(receipt: dict[str, Any]) -> None:
    """The contract's invariants: per line, totals, payable and tender."""
    for ln in receipt["lines"]:
        taken = (ln["count_card_cents"] + ln["item_discount_cents"] + ln["coupon_discount_cents"]
                 + ln["points_offset_cents"] + ln["rounding_cents"])
        assert ln["gross_cents"] - taken == ln["net_cents"] >= 0
    for name in LINE_FIELDS[:-1]:
        assert receipt[name] == sum(col(receipt, name)), name
    assert receipt["payable_cents"] == sum(col(receipt, "net_cents"))
    assert receipt["due_cents"] + receipt["stored_value_cents"] == receipt["payable_cents"]
    assert sum(c["discount_cents"] for c in receipt["applied_coupons"]) \
        == receipt["coupon_discount_cents"]


def quote(engine, body: str, req: dict[str, Any]) -> dict[str, Any]:
    receipt = engine(make_rulebook(body), req)
    check_invariants(receipt)
    return receipt


# --------------------------------------------------------------------------
# Stage 0: count cards.


def test_count_cards_whole_receipt(engine) -> None:
    body = TIERS + POINTS + """
[[promotions]]
code = "HALF"
off_bp = 5000

[[coupon_templates]]
code = "WASHV"
kind = "voucher"
off_cents = 500
skus = ["WASH"]
"""
    mem = member("gold", points_balance=100, coupons=[coupon("W-1", "WASHV")], count_cards=[
        {"id": "K-2", "skus": ["WASH"], "uses": 5, "valid_until": UNTIL},
        {"id": "K-1", "skus": ["WASH", "WAX"], "uses": 3},
    ])
    req = request([
        line("WASH", "service", 3000, 2, card="K-2"),
        line("WAX", "service", 1500, 1, card="K-1"),
        line("WASH", "service", 3000, 1, card="K-2"),
        line("SNACK", "food", 1000),
    ], mem, coupon_ids=["W-1"], redeem_points=100)
    carded = {"item_discount_cents": 0, "item_discount_source": "", "coupon_discount_cents": 0,
              "points_offset_cents": 0, "rounding_cents": 0, "net_cents": 0}
    expected = {
        "lines": [
            {"gross_cents": 6000, "count_card_cents": 6000, **carded},  # 3000*2, paid by K-2
            {"gross_cents": 1500, "count_card_cents": 1500, **carded},
            {"gross_cents": 3000, "count_card_cents": 3000, **carded},
            {
                "gross_cents": 1000,
                "count_card_cents": 0,
                # tier 1000*1000/10000 = 100; HALF 1000*5000/10000 = 500 -> 500 wins
                "item_discount_cents": 500,
                "item_discount_source": "promotion:HALF",
                "coupon_discount_cents": 0,
                # B = 500 (carded lines are 0); cap = 500*5000//10000 = 250;
                # blocks = min(100//20=5, 100//20=5, 250//100=2) = 2 -> 200 cents, 40 points
                "points_offset_cents": 200,
                "rounding_cents": 0,
                "net_cents": 300,  # 1000 - 500 - 200
            },
        ],
        "gross_cents": 11500,  # 6000 + 1500 + 3000 + 1000
        "count_card_cents": 10500,  # 6000 + 1500 + 3000
        "item_discount_cents": 500,
        "coupon_discount_cents": 0,
        "points_offset_cents": 200,
        "rounding_cents": 0,
        "payable_cents": 300,
        "stored_value_cents": 0,
        "due_cents": 300,
        "points_redeemed": 40,  # 2 blocks * 20
        "points_redeemable_max": 40,  # min(100//20=5, 250//100=2) * 20
        "points_earned": 4,  # 300 * 1 * 15000 // 1000000 = 4.5 -> 4
        "applied_coupons": [],
        # WASHV only matches the carded WASH lines, whose current is 0
        "rejected_coupons": [{"id": "W-1", "reason": "NO_ELIGIBLE_LINES"}],
        # by id; K-2 summed over lines 0 and 2: 2 + 1 = 3
        "count_cards_used": [{"id": "K-1", "uses": 1}, {"id": "K-2", "uses": 3}],
        "rulebook_version": "t-1",
    }
    assert engine(make_rulebook(body), req) == expected


# --------------------------------------------------------------------------
# Stage 1: item discount.


def test_tier_off_bp_rounds_half_up(engine) -> None:
    req = request([line("A", "food", 899, 2), line("B", "food", 1010), line("C", "food", 1009)],
                  member("silver"))
    r = quote(engine, TIERS, req)
    assert col(r, "item_discount_cents") == [
        90,  # 1798*500/10000 = 89.9 -> 90
        51,  # 1010*500/10000 = 50.5 -> 51 (half up)
        50,  # 1009*500/10000 = 50.45 -> 50
    ]
    assert col(r, "item_discount_source") == ["tier", "tier", "tier"]
    assert col(r, "net_cents") == [1708, 959, 959]  # 1798-90, 1010-51, 1009-50
    assert r["item_discount_cents"] == 191  # 90 + 51 + 50


@pytest.mark.parametrize(("tier", "discounts", "sources"), [
    # fresh: gold override 800 -> 5850*800/10000 = 468; deli: gold override 0 -> no discount;
    # bakery (unknown category, no overrides): gold off_bp 1000 -> 2000*0.1 = 200
    ("gold", [468, 0, 200], ["tier", "", "tier"]),
    # no silver keys: silver off_bp 500 -> 5850*500/10000 = 292.5 -> 293; 2000*0.05 = 100 twice
    ("silver", [293, 100, 100], ["tier", "tier", "tier"]),
])
def test_category_tier_off_bp_override(engine, tier: str, discounts: list[int],
                                       sources: list[str]) -> None:
    body = TIERS + """
[[categories]]
code = "fresh"
tier_off_bp = { gold = 800 }

[[categories]]
code = "deli"
tier_off_bp = { gold = 0 }
"""
    req = request([line("SALMON", "fresh", 5850), line("HAM", "deli", 2000),
                   line("BREAD", "bakery", 2000)], member(tier))
    r = quote(engine, body, req)
    assert col(r, "item_discount_cents") == discounts
    assert col(r, "item_discount_source") == sources


MILK_PRICES = """
[[member_prices]]
sku = "MILK"
min_tier = "silver"
unit_price_cents = 1090

[[member_prices]]
sku = "MILK"
min_tier = "gold"
unit_price_cents = 990

[[member_prices]]
sku = "MILK"
unit_price_cents = 1190
"""


@pytest.mark.parametrize(("tier", "discount"), [
    ("normal", 400),  # only 1190 allowed: 5160 - 1190*4 = 400 (tier 0)
    ("silver", 800),  # 1090 and 1190 allowed, lowest 1090: 5160 - 4360 = 800 > tier 258
    ("gold", 1200),  # 990 lowest: 5160 - 3960 = 1200 > tier 516
])
def test_member_price_lowest_allowed_by_rank(engine, tier: str, discount: int) -> None:
    r = quote(engine, TIERS + MILK_PRICES,
              request([line("MILK", "dairy", 1290, 4)], member(tier)))  # gross 5160
    assert col(r, "item_discount_cents") == [discount]
    assert col(r, "item_discount_source") == ["member_price"]
    assert col(r, "net_cents") == [5160 - discount]


def test_member_price_above_shelf_price_is_zero(engine) -> None:
    body = TIERS + """
[[member_prices]]
sku = "X"
unit_price_cents = 1500
"""
    r = quote(engine, body, request([line("X", "food", 1290)], member("silver")))
    # member price: max(0, 1290 - 1500) = 0; tier: 1290*500/10000 = 64.5 -> 65
    assert col(r, "item_discount_cents") == [65]
    assert col(r, "item_discount_source") == ["tier"]


def test_walk_in_gets_no_member_price_nor_tier(engine) -> None:
    r = quote(engine, TIERS + MILK_PRICES, request([line("MILK", "dairy", 1290, 4)]))
    assert col(r, "item_discount_cents") == [0]
    assert col(r, "item_discount_source") == [""]
    assert r["payable_cents"] == 5160
    assert r["points_earned"] == 0


def test_promotion_by_sku(engine) -> None:
    body = """
[[promotions]]
code = "P-SKU"
off_bp = 1500
skus = ["A"]
"""
    r = quote(engine, body, request([line("A", "food", 1000), line("B", "food", 1000)]))
    assert col(r, "item_discount_cents") == [150, 0]  # 1000*1500/10000 = 150; B not named
    assert col(r, "item_discount_source") == ["promotion:P-SKU", ""]


def test_promotion_by_category(engine) -> None:
    body = """
[[promotions]]
code = "P-CAT"
off_bp = 2000
categories = ["fruit"]
"""
    r = quote(engine, body, request([line("APPLE", "fruit", 899, 3), line("MILK", "dairy", 1290)]))
    assert col(r, "item_discount_cents") == [539, 0]  # 2697*2000/10000 = 539.4 -> 539
    assert col(r, "item_discount_source") == ["promotion:P-CAT", ""]


def test_promotion_by_sku_or_category(engine) -> None:
    body = """
[[promotions]]
code = "P-MIX"
off_bp = 1000
skus = ["X"]
categories = ["fruit"]
"""
    req = request([line("X", "dairy", 1000), line("Y", "fruit", 1000), line("Z", "dairy", 1000)])
    r = quote(engine, body, req)
    assert col(r, "item_discount_cents") == [100, 100, 0]  # X by sku, Y by category, Z neither
    assert col(r, "item_discount_source") == ["promotion:P-MIX", "promotion:P-MIX", ""]


def test_promotion_without_skus_or_categories_covers_discountable_lines(engine) -> None:
    body = TOBACCO + """
[[promotions]]
code = "P-ALL"
off_bp = 1000
"""
    req = request([line("BUN", "food", 1234), line("CIG", "tobacco", 4500),
                   line("THING", "misc", 555)])  # "misc" is an unknown category: allowed
    r = quote(engine, body, req)
    assert col(r, "item_discount_cents") == [
        123,  # 1234*1000/10000 = 123.4 -> 123
        0,  # tobacco is not discountable
        56,  # 555*1000/10000 = 55.5 -> 56 (half up)
    ]
    assert col(r, "item_discount_source") == ["promotion:P-ALL", "", "promotion:P-ALL"]
    assert r["payable_cents"] == 6110  # 1111 + 4500 + 499


@pytest.mark.parametrize(("mem", "discount", "source"), [
    (member("normal"), 300, "promotion:MO"),  # 1000*3000/10000 = 300
    (None, 0, ""),  # members_only needs a member
])
def test_members_only_promotion(engine, mem: dict[str, Any] | None, discount: int,
                                source: str) -> None:
    body = TIERS + """
[[promotions]]
code = "MO"
off_bp = 3000
members_only = true
"""
    r = quote(engine, body, request([line("A", "food", 1000)], mem))
    assert col(r, "item_discount_cents") == [discount]
    assert col(r, "item_discount_source") == [source]


@pytest.mark.parametrize(("at", "discount"), [
    (AT, 200),  # Sunday (7): 1000*2000/10000 = 200
    (SATURDAY, 200),  # Saturday (6)
    (WEDNESDAY, 0),  # Wednesday (3)
    # 17:00 UTC Sunday is 01:00 Monday in Shanghai: judged in the rulebook's timezone
    ("2026-11-22T17:00:00Z", 0),
    # 20:00 UTC Saturday is 04:00 Sunday in Shanghai
    ("2026-11-21T20:00:00Z", 200),
])
def test_promotion_weekdays(engine, at: str, discount: int) -> None:
    body = """
[[promotions]]
code = "WEEKEND"
off_bp = 2000
weekdays = [6, 7]
"""
    r = quote(engine, body, request([line("A", "food", 1000)], at=at))
    assert col(r, "item_discount_cents") == [discount]


@pytest.mark.parametrize(("at", "discount"), [
    ("2026-11-22T10:00:00+08:00", 200),  # start included
    ("2026-11-22T13:59:59+08:00", 200),
    ("2026-11-22T14:00:00+08:00", 0),  # end excluded
    ("2026-11-22T09:59:59+08:00", 0),
    ("2026-11-22T02:30:00Z", 200),  # 10:30 in Shanghai
    ("2026-11-22T10:30:00Z", 0),  # 18:30 in Shanghai
])
def test_promotion_hours(engine, at: str, discount: int) -> None:
    body = """
[[promotions]]
code = "LUNCH"
off_bp = 2000
hours = ["10:00-14:00"]
"""
    r = quote(engine, body, request([line("A", "food", 1000)], at=at))
    assert col(r, "item_discount_cents") == [discount]  # 1000*2000/10000 = 200 when active


@pytest.mark.parametrize(("at", "discount"), [
    ("2026-11-22T10:30:00+08:00", 200),  # valid_from inclusive
    ("2026-11-22T10:29:59+08:00", 0),
    ("2026-11-22T23:59:59+08:00", 200),
    ("2026-11-22T15:59:59Z", 200),  # 23:59:59 local
    ("2026-11-22T16:00:00Z", 0),  # 2026-11-23 00:00 local: valid_until exclusive
])
def test_promotion_valid_from_until(engine, at: str, discount: int) -> None:
    body = """
[[promotions]]
code = "WINDOW"
off_bp = 2000
valid_from = 2026-11-22T10:30:00+08:00
valid_until = 2026-11-23
"""
    r = quote(engine, body, request([line("A", "food", 1000)], at=at))
    assert col(r, "item_discount_cents") == [discount]


@pytest.mark.parametrize(("mp_price", "discount", "source"), [
    # tier 2000*0.1 = 200; P15 2000*0.15 = 300; member price 2000 - 950*2 = 100 -> 300
    (950, 300, "promotion:P15"),
    # member price 2000 - 800*2 = 400 beats 300 and 200
    (800, 400, "member_price"),
])
def test_largest_candidate_wins_and_they_never_add(engine, mp_price: int, discount: int,
                                                   source: str) -> None:
    body = TIERS + f"""
[[member_prices]]
sku = "X"
unit_price_cents = {mp_price}

[[promotions]]
code = "P15"
off_bp = 1500
"""
    r = quote(engine, body, request([line("X", "food", 1000, 2)], member("gold")))
    assert col(r, "item_discount_cents") == [discount]
    assert col(r, "item_discount_source") == [source]
    assert col(r, "net_cents") == [2000 - discount]


def test_tie_member_price_beats_tier_and_promotion(engine) -> None:
    body = TIERS + """
[[member_prices]]
sku = "X"
unit_price_cents = 900

[[promotions]]
code = "P10"
off_bp = 1000
"""
    r = quote(engine, body, request([line("X", "food", 1000)], member("gold")))
    # member price 1000 - 900 = 100; tier 1000*0.1 = 100; P10 1000*0.1 = 100: all tie
    assert col(r, "item_discount_cents") == [100]
    assert col(r, "item_discount_source") == ["member_price"]


def test_tie_tier_beats_promotion(engine) -> None:
    body = TIERS + """
[[promotions]]
code = "P10"
off_bp = 1000
"""
    r = quote(engine, body, request([line("X", "food", 1005)], member("gold")))
    # tier 1005*1000/10000 = 100.5 -> 101; P10 the same 101: tie -> tier
    assert col(r, "item_discount_cents") == [101]
    assert col(r, "item_discount_source") == ["tier"]


def test_tie_between_promotions_goes_to_smallest_code(engine) -> None:
    body = """
[[promotions]]
code = "P-B"
off_bp = 1000

[[promotions]]
code = "P-A"
off_bp = 1000
skus = ["X"]

[[promotions]]
code = "P-C"
off_bp = 1200
skus = ["Y"]
"""
    r = quote(engine, body, request([line("X", "food", 1000), line("Y", "food", 1000)]))
    # X: P-B 100 = P-A 100 -> P-A (code order); Y: P-B 100 < P-C 120 -> P-C
    assert col(r, "item_discount_cents") == [100, 120]
    assert col(r, "item_discount_source") == ["promotion:P-A", "promotion:P-C"]


def test_non_discountable_category_gets_nothing(engine) -> None:
    body = TIERS + TOBACCO + """
[[member_prices]]
sku = "CIG"
unit_price_cents = 3000

[[promotions]]
code = "HALF"
off_bp = 5000
"""
    r = quote(engine, body, request([line("CIG", "tobacco", 4500, 2)], member("gold")))
    assert col(r, "item_discount_cents") == [0]
    assert col(r, "item_discount_source") == [""]
    assert r["payable_cents"] == 9000  # 4500*2


# --------------------------------------------------------------------------
# Stage 2: coupons, one kind at a time.


@pytest.mark.parametrize(("prices", "split"), [
    # W = 10500 >= 10000: 1500 by weights 6000/4500:
    # 1500*6000//10500 = 857 r1500; 1500*4500//10500 = 642 r9000 -> +1 to line 1
    ([6000, 4500], [857, 643]),
    # W = 10000 exactly meets the threshold: 1500*6000/10000 = 900, 1500*4000/10000 = 600
    ([6000, 4000], [900, 600]),
])
def test_threshold_coupon(engine, prices: list[int], split: list[int]) -> None:
    body = FLAT_TIERS + """
[[coupon_templates]]
code = "T100"
kind = "threshold"
threshold_cents = 10000
off_cents = 1500
"""
    req = request([line(f"S{i}", "food", p) for i, p in enumerate(prices)],
                  member(coupons=[coupon("C-1", "T100")]), coupon_ids=["C-1"])
    r = quote(engine, body, req)
    assert applied(r) == [("C-1", "T100", 1500)]
    assert col(r, "coupon_discount_cents") == split
    assert r["rejected_coupons"] == []


@pytest.mark.parametrize(("prices", "taken", "split"), [
    # W = 10500: 10500*2000/10000 = 2100, capped at 1000;
    # 1000*6000//10500 = 571 r4500; 1000*4500//10500 = 428 r6000 -> +1 to line 1
    ([6000, 4500], 1000, [571, 429]),
    ([1999], 400, [400]),  # 1999*2000/10000 = 399.8 -> 400, under the cap
])
def test_percent_coupon_with_cap(engine, prices: list[int], taken: int,
                                 split: list[int]) -> None:
    body = FLAT_TIERS + """
[[coupon_templates]]
code = "P20"
kind = "percent"
off_bp = 2000
max_off_cents = 1000
"""
    req = request([line(f"S{i}", "food", p) for i, p in enumerate(prices)],
                  member(coupons=[coupon("C-1", "P20")]), coupon_ids=["C-1"])
    r = quote(engine, body, req)
    assert applied(r) == [("C-1", "P20", taken)]
    assert col(r, "coupon_discount_cents") == split


def test_percent_coupon_without_cap_rounds_half_up(engine) -> None:
    body = FLAT_TIERS + """
[[coupon_templates]]
code = "P10"
kind = "percent"
off_bp = 1000
"""
    req = request([line("A", "food", 12345)], member(coupons=[coupon("C-1", "P10")]),
                  coupon_ids=["C-1"])
    r = quote(engine, body, req)
    assert applied(r) == [("C-1", "P10", 1235)]  # 12345*1000/10000 = 1234.5 -> 1235
    assert r["payable_cents"] == 11110  # 12345 - 1235


@pytest.mark.parametrize(("price", "taken"), [
    (300, 300),  # min(500, 300)
    (2000, 500),  # min(500, 2000)
])
def test_voucher_coupon(engine, price: int, taken: int) -> None:
    body = FLAT_TIERS + """
[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
"""
    req = request([line("A", "food", price)], member(coupons=[coupon("C-1", "V5")]),
                  coupon_ids=["C-1"])
    r = quote(engine, body, req)
    assert applied(r) == [("C-1", "V5", taken)]
    assert col(r, "net_cents") == [price - taken]


# --------------------------------------------------------------------------
# Stage 2: why a coupon is dropped.

REASON_TEMPLATES = FLAT_TIERS + TOBACCO + """
[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500

[[coupon_templates]]
code = "GOLDV"
kind = "voucher"
off_cents = 500
min_tier = "gold"

[[coupon_templates]]
code = "WKDAY"
kind = "voucher"
off_cents = 500
weekdays = [1, 2, 3, 4, 5]

[[coupon_templates]]
code = "MORN"
kind = "voucher"
off_cents = 500
hours = ["06:00-10:30"]

[[coupon_templates]]
code = "NOPE"
kind = "voucher"
off_cents = 500
skus = ["NOPE"]

[[coupon_templates]]
code = "TOBV"
kind = "voucher"
off_cents = 500
categories = ["tobacco"]

[[coupon_templates]]
code = "BIG"
kind = "threshold"
threshold_cents = 100000
off_cents = 1000
"""


def test_every_rejection_reason_in_presented_order(engine) -> None:
    mem = member("silver", coupons=[
        coupon("C-OK", "V5", frm=AT),  # valid_from == at: inclusive, usable
        coupon("C-NYV", "V5", frm="2026-11-22T10:30:01+08:00"),
        coupon("C-EXP", "V5", until=AT),  # valid_until == at: exclusive
        coupon("C-WD", "WKDAY"),  # Sunday is not 1..5
        coupon("C-HR", "MORN"),  # 10:30 is the excluded end of 06:00-10:30
        coupon("C-TIER", "GOLDV"),  # silver < gold
        coupon("C-NOEL", "NOPE"),  # no line has SKU NOPE
        coupon("C-TOB", "TOBV"),  # tobacco lines are not discountable
        coupon("C-TH", "BIG"),  # W = 2000 < 100000
        coupon("C-GHOST", "GHOST"),  # template unknown
    ])
    order = ["C-TH", "C-GHOST", "C-NOTHELD", "C-OK", "C-EXP", "C-NYV", "C-HR", "C-WD",
             "C-TIER", "C-TOB", "C-NOEL"]
    req = request([line("A", "food", 2000), line("CIG", "tobacco", 4500)], mem,
                  coupon_ids=order)
    r = quote(engine, REASON_TEMPLATES, req)
    assert applied(r) == [("C-OK", "V5", 500)]  # min(500, 2000)
    assert rejected(r) == [
        ("C-TH", "THRESHOLD_NOT_MET"),
        ("C-GHOST", "UNKNOWN_COUPON"),
        ("C-NOTHELD", "UNKNOWN_COUPON"),  # presented but not held
        ("C-EXP", "EXPIRED"),
        ("C-NYV", "NOT_YET_VALID"),
        ("C-HR", "OUTSIDE_HOURS"),
        ("C-WD", "OUTSIDE_HOURS"),
        ("C-TIER", "TIER_TOO_LOW"),
        ("C-TOB", "NO_ELIGIBLE_LINES"),
        ("C-NOEL", "NO_ELIGIBLE_LINES"),
    ]
    assert col(r, "coupon_discount_cents") == [500, 0]


def test_first_reason_that_holds_wins(engine) -> None:
    body = REASON_TEMPLATES + """
[[coupon_templates]]
code = "GOLDWK"
kind = "voucher"
off_cents = 500
min_tier = "gold"
weekdays = [1]

[[coupon_templates]]
code = "GOLDNOPE"
kind = "voucher"
off_cents = 500
min_tier = "gold"
skus = ["NOPE"]

[[coupon_templates]]
code = "THNOPE"
kind = "threshold"
threshold_cents = 100000
off_cents = 1000
skus = ["NOPE"]

[[coupon_templates]]
code = "TH0"
kind = "threshold"
threshold_cents = 100000
off_cents = 0

[[coupon_templates]]
code = "PCTTINY"
kind = "percent"
off_bp = 1000
skus = ["TINY"]

[[coupon_templates]]
code = "PCTCAP0"
kind = "percent"
off_bp = 1000
max_off_cents = 0
"""
    mem = member("silver", coupons=[
        coupon("X-1", "GHOST", until="2026-11-01T00:00:00+08:00"),  # unknown before expired
        coupon("X-2", "GOLDV", until="2026-11-01T00:00:00+08:00"),  # expired before tier
        coupon("X-3", "GOLDWK"),  # outside (Sunday) before tier too low
        coupon("X-4", "GOLDNOPE"),  # tier too low before no eligible lines
        coupon("X-5", "THNOPE"),  # no eligible lines before threshold not met
        coupon("X-6", "TH0"),  # takes nothing even if met: no eligible lines (notes)
        coupon("X-7", "PCTTINY"),  # 4*1000/10000 = 0.4 -> 0: takes nothing
        coupon("X-8", "PCTCAP0"),  # capped at 0: takes nothing
    ])
    ids = [f"X-{i}" for i in range(1, 9)]
    req = request([line("A", "food", 2000), line("TINY", "food", 4)], mem, coupon_ids=ids)
    r = quote(engine, body, req)
    assert rejected(r) == [
        ("X-1", "UNKNOWN_COUPON"),
        ("X-2", "EXPIRED"),
        ("X-3", "OUTSIDE_HOURS"),
        ("X-4", "TIER_TOO_LOW"),
        ("X-5", "NO_ELIGIBLE_LINES"),
        ("X-6", "NO_ELIGIBLE_LINES"),
        ("X-7", "NO_ELIGIBLE_LINES"),
        ("X-8", "NO_ELIGIBLE_LINES"),
    ]
    assert applied(r) == []
    assert r["payable_cents"] == 2004


def test_walk_in_presented_coupons_are_unknown(engine) -> None:
    body = REASON_TEMPLATES
    r = quote(engine, body, request([line("A", "food", 2000)], coupon_ids=["C-1", "C-2"]))
    assert rejected(r) == [("C-1", "UNKNOWN_COUPON"), ("C-2", "UNKNOWN_COUPON")]
    assert applied(r) == []
    assert r["payable_cents"] == 2000


def test_walk_in_auto_coupons_finds_nothing(engine) -> None:
    r = quote(engine, REASON_TEMPLATES, request([line("A", "food", 2000)], auto_coupons=True))
    assert r["applied_coupons"] == [] and r["rejected_coupons"] == []
    assert r["payable_cents"] == 2000


# --------------------------------------------------------------------------
# Stage 2: the subset search.

THREE_VOUCHERS = FLAT_TIERS + """
[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500

[[coupon_templates]]
code = "V3"
kind = "voucher"
off_cents = 300

[[coupon_templates]]
code = "V8"
kind = "voucher"
off_cents = 800
"""


def three_voucher_request(store: str = "S1") -> dict[str, Any]:
    mem = member(coupons=[coupon("C-a", "V5"), coupon("C-b", "V3"), coupon("C-c", "V8")])
    return request([line("A", "food", 5000)], mem, store=store,
                   coupon_ids=["C-a", "C-b", "C-c"])


def test_max_coupons_per_order_defaults_to_one(engine) -> None:
    r = quote(engine, THREE_VOUCHERS, three_voucher_request())
    assert applied(r) == [("C-c", "V8", 800)]  # the largest single coupon
    assert rejected(r) == [("C-a", "NOT_COMBINABLE"), ("C-b", "NOT_COMBINABLE")]
    assert r["payable_cents"] == 4200  # 5000 - 800


def test_max_coupons_per_order_two(engine) -> None:
    body = "[store_defaults]\nmax_coupons_per_order = 2\n" + THREE_VOUCHERS
    r = quote(engine, body, three_voucher_request())
    # best pair: 800 + 500 = 1300; applied within kind voucher by id
    assert applied(r) == [("C-a", "V5", 500), ("C-c", "V8", 800)]
    assert rejected(r) == [("C-b", "NOT_COMBINABLE")]
    assert r["coupon_discount_cents"] == 1300


@pytest.mark.parametrize(("store", "expected"), [
    ("S9", [("C-a", "V5", 500), ("C-b", "V3", 300), ("C-c", "V8", 800)]),  # override: 3
    ("S1", [("C-c", "V8", 800)]),  # defaults: 1
])
def test_store_overrides_max_coupons_per_order(engine, store: str,
                                               expected: list[tuple[str, str, int]]) -> None:
    body = ("[store_defaults]\nmax_coupons_per_order = 1\n\n"
            "[stores.S9]\nmax_coupons_per_order = 3\n" + THREE_VOUCHERS)
    r = quote(engine, body, three_voucher_request(store))
    assert applied(r) == expected
    assert r["coupon_discount_cents"] == sum(c[2] for c in expected)  # 1600 or 800


@pytest.mark.parametrize(("off_bp", "expected", "dropped"), [
    # PCT alone 10000*1200/10000 = 1200 < V5 + V8 = 1300 (PCT cannot join them)
    (1200, [("V-1", "V5", 500), ("V-2", "V8", 800)], [("P-1", "NOT_COMBINABLE")]),
    # PCT alone 10000*1500/10000 = 1500 > 1300
    (1500, [("P-1", "PCT", 1500)], [("V-1", "NOT_COMBINABLE"), ("V-2", "NOT_COMBINABLE")]),
])
def test_non_stackable_coupon_only_alone(engine, off_bp: int, expected: list[Any],
                                         dropped: list[Any]) -> None:
    body = "[store_defaults]\nmax_coupons_per_order = 3\n" + THREE_VOUCHERS + f"""
[[coupon_templates]]
code = "PCT"
kind = "percent"
off_bp = {off_bp}
max_off_cents = 5000
stackable = false
"""
    mem = member(coupons=[coupon("P-1", "PCT"), coupon("V-1", "V5"), coupon("V-2", "V8")])
    req = request([line("A", "food", 10000)], mem, coupon_ids=["P-1", "V-1", "V-2"])
    r = quote(engine, body, req)
    assert applied(r) == expected
    assert rejected(r) == dropped


@pytest.mark.parametrize(("limit_line", "expected", "dropped"), [
    # two V5 allowed: 1000 either way; sorted expiries [11-30, 12-15] beat
    # [11-30, 12-31] and [12-15, 12-31] -> C-2 and C-3, applied by id
    ("per_order_limit = 2", [("C-2", "V5", 500), ("C-3", "V5", 500)],
     [("C-1", "NOT_COMBINABLE")]),
    # default limit 1: one V5, the one expiring first (C-2, 11-30)
    ("", [("C-2", "V5", 500)], [("C-1", "NOT_COMBINABLE"), ("C-3", "NOT_COMBINABLE")]),
])
def test_per_order_limit_and_earliest_expiry(engine, limit_line: str, expected: list[Any],
                                             dropped: list[Any]) -> None:
    body = "[store_defaults]\nmax_coupons_per_order = 3\n" + FLAT_TIERS + f"""
[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
{limit_line}
"""
    mem = member(coupons=[
        coupon("C-1", "V5", until="2026-12-31T00:00:00+08:00"),
        coupon("C-2", "V5", until="2026-11-30T00:00:00+08:00"),
        coupon("C-3", "V5", until="2026-12-15T00:00:00+08:00"),
    ])
    req = request([line("A", "food", 5000)], mem, coupon_ids=["C-1", "C-2", "C-3"])
    r = quote(engine, body, req)
    assert applied(r) == expected
    assert rejected(r) == dropped


def test_tie_prefers_fewer_coupons(engine) -> None:
    body = "[store_defaults]\nmax_coupons_per_order = 2\n" + FLAT_TIERS + """
[[coupon_templates]]
code = "V10"
kind = "voucher"
off_cents = 1000

[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
per_order_limit = 2
"""
    mem = member(coupons=[
        coupon("A-1", "V5", until="2026-11-30T00:00:00+08:00"),
        coupon("A-2", "V5", until="2026-11-30T00:00:00+08:00"),
        coupon("Z-1", "V10", until="2026-12-31T00:00:00+08:00"),
    ])
    req = request([line("A", "food", 1000)], mem, coupon_ids=["A-1", "A-2", "Z-1"])
    r = quote(engine, body, req)
    # {Z-1} = 1000; {A-1, A-2} = 500 + 500 = 1000; {A-x, Z-1} = 500 + min(1000, 500) = 1000:
    # all 1000 -> fewest coupons wins over the earlier-expiring pair
    assert applied(r) == [("Z-1", "V10", 1000)]
    assert rejected(r) == [("A-1", "NOT_COMBINABLE"), ("A-2", "NOT_COMBINABLE")]
    assert r["payable_cents"] == 0


@pytest.mark.parametrize("a_until", ["2026-12-31T00:00:00+08:00", None])
def test_tie_prefers_earliest_expiry_over_smaller_id(engine, a_until: str | None) -> None:
    body = FLAT_TIERS + """
[[coupon_templates]]
code = "VA"
kind = "voucher"
off_cents = 500

[[coupon_templates]]
code = "VB"
kind = "voucher"
off_cents = 500
"""
    # A-1 expires 2026-12-31 (or never); Z-1 expires earlier, 2026-12-01: Z-1 wins the tie
    mem = member(coupons=[coupon("A-1", "VA", until=a_until),
                          coupon("Z-1", "VB", until="2026-12-01T00:00:00+08:00")])
    req = request([line("A", "food", 5000)], mem, coupon_ids=["A-1", "Z-1"])
    r = quote(engine, body, req)
    assert applied(r) == [("Z-1", "VB", 500)]
    assert rejected(r) == [("A-1", "NOT_COMBINABLE")]


@pytest.mark.parametrize(("max_coupons", "expected", "dropped"), [
    # same value, same expiry: smallest id in string order: "C-10" < "C-9"
    (1, [("C-10", "V5", 500)], [("C-9", "NOT_COMBINABLE"), ("C-11", "NOT_COMBINABLE")]),
    # pairs: sorted id lists [C-10, C-11] < [C-10, C-9] < [C-11, C-9]
    (2, [("C-10", "V5", 500), ("C-11", "V5", 500)], [("C-9", "NOT_COMBINABLE")]),
])
def test_tie_prefers_smallest_ids(engine, max_coupons: int, expected: list[Any],
                                  dropped: list[Any]) -> None:
    body = f"[store_defaults]\nmax_coupons_per_order = {max_coupons}\n" + FLAT_TIERS + """
[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
per_order_limit = 2
"""
    mem = member(coupons=[coupon("C-9", "V5"), coupon("C-10", "V5"), coupon("C-11", "V5")])
    req = request([line("A", "food", 5000)], mem, coupon_ids=["C-9", "C-10", "C-11"])
    r = quote(engine, body, req)
    assert applied(r) == expected
    assert rejected(r) == dropped


def test_application_order_threshold_percent_voucher(engine) -> None:
    body = "[store_defaults]\nmax_coupons_per_order = 3\n" + FLAT_TIERS + """
[[coupon_templates]]
code = "T100"
kind = "threshold"
threshold_cents = 10000
off_cents = 2000

[[coupon_templates]]
code = "P10"
kind = "percent"
off_bp = 1000

[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
"""
    # ids deliberately sort against kind order: A (voucher) < B (percent) < C (threshold)
    mem = member(coupons=[coupon("A-1", "V5"), coupon("B-1", "P10"), coupon("C-1", "T100")])
    req = request([line("A", "food", 10000)], mem, coupon_ids=["A-1", "B-1", "C-1"])
    r = quote(engine, body, req)
    # threshold: W 10000 >= 10000 -> 2000, current 8000; percent: 8000*0.1 = 800 -> 7200;
    # voucher 500 -> 6700. (Percent first would leave 9000 < 10000 for the threshold.)
    assert applied(r) == [("C-1", "T100", 2000), ("B-1", "P10", 800), ("A-1", "V5", 500)]
    assert r["coupon_discount_cents"] == 3300
    assert r["payable_cents"] == 6700


def test_application_within_a_kind_is_by_id(engine) -> None:
    body = "[store_defaults]\nmax_coupons_per_order = 2\n" + FLAT_TIERS + """
[[coupon_templates]]
code = "VALL"
kind = "voucher"
off_cents = 800

[[coupon_templates]]
code = "VX"
kind = "voucher"
off_cents = 500
skus = ["X"]
"""
    mem = member(coupons=[coupon("K-1", "VALL"), coupon("K-2", "VX")])
    req = request([line("X", "food", 600), line("Y", "food", 600)], mem,
                  coupon_ids=["K-2", "K-1"])
    r = quote(engine, body, req)
    # K-1 first: 800 over 600/600 -> 400 + 400, currents 200/200;
    # K-2: W = X's 200 -> min(500, 200) = 200. Total 1000 (> 800 or 500 alone).
    # (K-2 first would have given 500 + 700 = 1200: the order is by id, not by value.)
    assert applied(r) == [("K-1", "VALL", 800), ("K-2", "VX", 200)]
    assert col(r, "coupon_discount_cents") == [600, 400]
    assert col(r, "net_cents") == [0, 200]


@pytest.mark.parametrize(("price", "expected", "dropped"), [
    # 10500 - tier 1050 = 9450 < 10000, although the gross would meet it
    (10500, [], [("C-1", "THRESHOLD_NOT_MET")]),
    # 11200 - tier 1120 = 10080 >= 10000
    (11200, [("C-1", "T100", 1500)], []),
])
def test_threshold_judged_after_item_discount(engine, price: int, expected: list[Any],
                                              dropped: list[Any]) -> None:
    body = TIERS + """
[[coupon_templates]]
code = "T100"
kind = "threshold"
threshold_cents = 10000
off_cents = 1500
"""
    req = request([line("A", "food", price)], member("gold", coupons=[coupon("C-1", "T100")]),
                  coupon_ids=["C-1"])
    r = quote(engine, body, req)
    assert applied(r) == expected
    assert rejected(r) == dropped


AUTO_MEMBER = member(coupons=[
    coupon("C-z", "V5", until="2026-11-25T00:00:00+08:00"),
    coupon("C-a", "V5", until="2026-12-31T00:00:00+08:00"),
    coupon("C-m", "V5", until="2026-11-25T00:00:00+08:00"),
    coupon("C-exp", "V5", until="2026-11-01T00:00:00+08:00", frm="2026-10-01T00:00:00+08:00"),
    coupon("C-nd", "V5", until=None),
])


@pytest.mark.parametrize("extra", [{"auto_coupons": True},
                                   {"auto_coupons": True, "coupon_ids": []}])
def test_auto_coupons_candidate_order(engine, extra: dict[str, Any]) -> None:
    req = request([line("A", "food", 5000)], AUTO_MEMBER, **extra)
    r = quote(engine, THREE_VOUCHERS, req)
    # candidates by (valid_until, id): C-exp 11-01, C-m 11-25, C-z 11-25, C-a 12-31, C-nd none;
    # one coupon: all 500, C-m and C-z expire first, C-m has the smaller id
    assert applied(r) == [("C-m", "V5", 500)]
    assert rejected(r) == [("C-exp", "EXPIRED"), ("C-z", "NOT_COMBINABLE"),
                           ("C-a", "NOT_COMBINABLE"), ("C-nd", "NOT_COMBINABLE")]


def test_presented_coupons_keep_presented_order(engine) -> None:
    req = request([line("A", "food", 5000)], AUTO_MEMBER,
                  coupon_ids=["C-a", "C-nd", "C-z", "C-m", "C-exp"])
    r = quote(engine, THREE_VOUCHERS, req)
    assert applied(r) == [("C-m", "V5", 500)]
    assert rejected(r) == [("C-a", "NOT_COMBINABLE"), ("C-nd", "NOT_COMBINABLE"),
                           ("C-z", "NOT_COMBINABLE"), ("C-exp", "EXPIRED")]


def test_auto_coupons_search_the_32_valid_that_expire_soonest(engine) -> None:
    coupons = [coupon("E-0", "V5", until="2026-11-01T00:00:00+08:00",
                      frm="2026-10-01T00:00:00+08:00")]
    coupons += [coupon(f"A-{i:02d}", "V5", until="2026-12-01T00:00:00+08:00") for i in range(32)]
    coupons.append(coupon("Z-1", "V8", until="2026-12-02T00:00:00+08:00"))
    req = request([line("A", "food", 5000)], member(coupons=coupons), auto_coupons=True)
    r = quote(engine, THREE_VOUCHERS, req)
    # E-0 is expired and takes no place; the 32 valid soonest are A-00..A-31, so Z-1 (800,
    # expiring last) is left out of the search; among equal A's the smallest id wins
    assert applied(r) == [("A-00", "V5", 500)]
    assert rejected(r) == ([("E-0", "EXPIRED")]
                           + [(f"A-{i:02d}", "NOT_COMBINABLE") for i in range(1, 32)]
                           + [("Z-1", "NOT_COMBINABLE")])


@pytest.mark.parametrize(("body", "price", "expected", "dropped"), [
    # A-1 takes 3000 -> W 3000 < 5000 so B-1 would take 0: {A-1, B-1} is not a valid subset
    ("""
[[coupon_templates]]
code = "T1"
kind = "threshold"
threshold_cents = 5000
off_cents = 3000

[[coupon_templates]]
code = "T2"
kind = "threshold"
threshold_cents = 5000
off_cents = 500
""", 6000, [("A-1", "T1", 3000)], [("B-1", "NOT_COMBINABLE")]),
    # A-1 takes all 1000, B-1 would take min(500, 0) = 0
    ("""
[[coupon_templates]]
code = "T1"
kind = "voucher"
off_cents = 1000

[[coupon_templates]]
code = "T2"
kind = "voucher"
off_cents = 500
""", 1000, [("A-1", "T1", 1000)], [("B-1", "NOT_COMBINABLE")]),
])
def test_coupon_taking_zero_in_a_subset_is_not_applied(engine, body: str, price: int,
                                                       expected: list[Any],
                                                       dropped: list[Any]) -> None:
    body = "[store_defaults]\nmax_coupons_per_order = 2\n" + FLAT_TIERS + body
    mem = member(coupons=[coupon("A-1", "T1"), coupon("B-1", "T2")])
    req = request([line("A", "food", price)], mem, coupon_ids=["A-1", "B-1"])
    r = quote(engine, body, req)
    assert applied(r) == expected
    assert rejected(r) == dropped


# --------------------------------------------------------------------------
# Allocation rule.


def voucher_split(engine, off: int, prices: list[int]) -> list[int]:
    body = FLAT_TIERS + f"""
[[coupon_templates]]
code = "V"
kind = "voucher"
off_cents = {off}
"""
    req = request([line(f"S{i}", "food", p) for i, p in enumerate(prices)],
                  member(coupons=[coupon("C-1", "V")]), coupon_ids=["C-1"])
    r = quote(engine, body, req)
    assert r["coupon_discount_cents"] == off
    return col(r, "coupon_discount_cents")


def test_allocation_equal_remainders_go_to_lower_index(engine) -> None:
    # 100*1000//3000 = 33 r1000 each; 1 cent left -> line 0
    assert voucher_split(engine, 100, [1000, 1000, 1000]) == [34, 33, 33]
    # 2*100//300 = 0 r200 each; 2 cents left -> lines 0 and 1
    assert voucher_split(engine, 2, [100, 100, 100]) == [1, 1, 0]


def test_allocation_largest_remainder_and_zero_weight_lines(engine) -> None:
    # W = 700: 100*100//700 = 14 r200; 100*200//700 = 28 r400; 100*400//700 = 57 r100;
    # 1 cent left -> largest remainder 400 (line with 200); the 0-price line takes nothing
    assert voucher_split(engine, 100, [100, 0, 200, 400]) == [14, 0, 29, 57]


# --------------------------------------------------------------------------
# Stage 3: points offset.


@pytest.mark.parametrize(("price", "balance", "asked", "redeemed", "offset", "most"), [
    # B 10000, cap 5000: min(210//20=10, 1234//20=61, 5000//100=50) = 10 blocks
    (10000, 1234, 210, 200, 1000, 1000),  # max = min(61, 50)*20 = 1000
    # balance: min(1000//20=50, 333//20=16, 50) = 16 -> 320 points, 1600 cents
    (10000, 333, 1000, 320, 1600, 320),  # max = min(16, 50)*20 = 320
    # cap: 3333*5000//10000 = 1666 -> 1666//100 = 16 blocks
    (3333, 1234, 1000, 320, 1600, 320),  # max = min(61, 16)*20 = 320
    # less than one block: 19//20 = 0
    (10000, 1234, 19, 0, 0, 1000),
])
def test_points_blocks_and_limits(engine, price: int, balance: int, asked: int, redeemed: int,
                                  offset: int, most: int) -> None:
    req = request([line("A", "food", price)], member(points_balance=balance),
                  redeem_points=asked)
    r = quote(engine, FLAT_TIERS + POINTS, req)
    assert r["points_redeemed"] == redeemed
    assert r["points_offset_cents"] == offset
    assert r["points_redeemable_max"] == most
    assert col(r, "net_cents") == [price - offset]


def test_points_base_is_discountable_lines_only(engine) -> None:
    req = request([line("A", "food", 3000), line("B", "food", 1000),
                   line("CIG", "tobacco", 9000)],
                  member(points_balance=10000), redeem_points=10000)
    r = quote(engine, FLAT_TIERS + TOBACCO + POINTS, req)
    # B = 3000 + 1000 = 4000; cap = 2000; min(500, 500, 20) = 20 blocks -> 2000 cents
    assert r["points_redeemed"] == 400  # 20 * 20
    assert r["points_redeemable_max"] == 400  # min(500, 20) * 20
    assert col(r, "points_offset_cents") == [1500, 500, 0]  # 2000*3000/4000, 2000*1000/4000
    # earned on earning lines: (1500 + 500) * 1 * 10000 // 1000000 = 20 (tobacco earns none)
    assert r["points_earned"] == 20


def test_points_need_a_member(engine) -> None:
    r = quote(engine, FLAT_TIERS + POINTS,
              request([line("A", "food", 10000)], redeem_points=1000))
    assert r["points_redeemed"] == 0
    assert r["points_redeemable_max"] == 0
    assert r["points_offset_cents"] == 0
    assert r["points_earned"] == 0


def test_no_points_section_means_no_points(engine) -> None:
    req = request([line("A", "food", 10000)], member("gold", points_balance=1234),
                  redeem_points=1000)
    r = quote(engine, FLAT_TIERS, req)
    assert (r["points_redeemed"], r["points_redeemable_max"], r["points_earned"]) == (0, 0, 0)
    assert r["payable_cents"] == 10000


# --------------------------------------------------------------------------
# Stage 4: rounding.


@pytest.mark.parametrize(("prices", "split", "payable"), [
    # 3008 % 10 = 8: 8*1005//3008 = 2 r2024; 8*2003//3008 = 5 r984 -> +1 to line 0
    ([1005, 2003], [3, 5], 3000),
    ([1000, 2000], [0, 0], 3000),  # 3000 % 10 = 0
])
def test_floor_jiao(engine, prices: list[int], split: list[int], payable: int) -> None:
    body = '[store_defaults]\nrounding = "floor_jiao"\n'
    r = quote(engine, body, request([line(f"S{i}", "food", p) for i, p in enumerate(prices)]))
    assert col(r, "rounding_cents") == split
    assert r["rounding_cents"] == sum(split)
    assert r["payable_cents"] == payable


@pytest.mark.parametrize(("store", "split", "payable"), [
    # 1999 + 3000 + 0 = 4999 % 100 = 99 over 1999/3000 (the carded line has current 0):
    # 99*1999//4999 = 39 r2940; 99*3000//4999 = 59 r2059 -> +1 to line 0
    ("S9", [40, 59, 0], 4900),
    ("S1", [0, 0, 0], 4999),  # store defaults: none
])
def test_floor_yuan_store_override_skips_count_card_line(engine, store: str, split: list[int],
                                                         payable: int) -> None:
    body = '[store_defaults]\nrounding = "none"\n\n[stores.S9]\nrounding = "floor_yuan"\n' \
        + FLAT_TIERS
    mem = member(count_cards=[{"id": "K-1", "skus": ["WASH"], "uses": 1}])
    req = request([line("A", "food", 1999), line("B", "food", 3000),
                   line("WASH", "service", 500, card="K-1")], mem, store=store)
    r = quote(engine, body, req)
    assert col(r, "rounding_cents") == split
    assert r["payable_cents"] == payable
    assert r["count_card_cents"] == 500


# --------------------------------------------------------------------------
# Stage 5: stored value.


@pytest.mark.parametrize(("pay", "balance", "stored", "due"), [
    (1000, 5000, 1000, 2000),  # the request binds: min(1000, 5000, 3000)
    (3000, 700, 700, 2300),  # the balance binds: min(3000, 700, 3000)
    (5000, 5000, 3000, 0),  # payable binds: min(5000, 5000, 3000)
    (None, 5000, 0, 3000),  # nothing asked
])
def test_stored_value(engine, pay: int | None, balance: int, stored: int, due: int) -> None:
    extra = {} if pay is None else {"pay_stored_value_cents": pay}
    req = request([line("A", "food", 3000)], member(stored_value_cents=balance), **extra)
    r = quote(engine, FLAT_TIERS, req)
    assert (r["payable_cents"], r["stored_value_cents"], r["due_cents"]) == (3000, stored, due)


def test_stored_value_needs_a_member(engine) -> None:
    r = quote(engine, FLAT_TIERS,
              request([line("A", "food", 3000)], pay_stored_value_cents=1000))
    assert (r["stored_value_cents"], r["due_cents"]) == (0, 3000)


# --------------------------------------------------------------------------
# Stage 6: points earned.


def test_points_earned_skips_categories_that_do_not_earn(engine) -> None:
    body = FLAT_TIERS + TOBACCO + """
[[categories]]
code = "gift"
earns_points = false

[points]
earn_per_yuan = 2
redeem_points = 20
redeem_cents = 100
max_redeem_bp = 5000
"""
    req = request([line("A", "food", 10000), line("CARD", "gift", 5000),
                   line("CIG", "tobacco", 4500)], member("silver"))
    r = quote(engine, body, req)
    assert r["points_earned"] == 240  # base 10000 (food only) * 2 * 12000 // 1000000


MULTIPLIER_PROMOS = FLAT_TIERS + POINTS + """
[[promotions]]
code = "M2"
points_multiplier_bp = 20000

[[promotions]]
code = "M3"
points_multiplier_bp = 30000
weekdays = [3]

[[promotions]]
code = "M15"
points_multiplier_bp = 15000

[[promotions]]
code = "OFF"
off_bp = 0
"""


@pytest.mark.parametrize(("at", "earned"), [
    # Sunday: M2 and M15 active, largest 20000: 12000*20000//10000 = 24000;
    # 12345 * 1 * 24000 // 1000000 = 296.28 -> 296
    (AT, 296),
    # Wednesday: M3 active too: 12000*30000//10000 = 36000; 12345*36000/1e6 = 444.42 -> 444
    (WEDNESDAY, 444),
])
def test_points_earned_tier_times_largest_promotion(engine, at: str, earned: int) -> None:
    r = quote(engine, MULTIPLIER_PROMOS,
              request([line("A", "food", 12345)], member("silver"), at=at))
    assert r["points_earned"] == earned
    assert r["payable_cents"] == 12345  # multiplier promotions take nothing off


def test_points_multiplier_below_one_applies(engine) -> None:
    body = FLAT_TIERS + POINTS + """
[[promotions]]
code = "HALFPTS"
points_multiplier_bp = 5000
"""
    r = quote(engine, body, request([line("A", "food", 12345)], member("silver")))
    # only active multiplier 5000: 12000*5000//10000 = 6000; 12345*6000/1e6 = 74.07 -> 74
    assert r["points_earned"] == 74


@pytest.mark.parametrize(("mem", "earned"), [
    (member("normal"), 3),  # 10000*20000//10000 = 20000; 199*20000/1e6 = 3.98 -> 3
    (None, 0),  # no member, no points
])
def test_members_only_multiplier_and_floor(engine, mem: dict[str, Any] | None,
                                           earned: int) -> None:
    body = FLAT_TIERS + POINTS + """
[[promotions]]
code = "MO2"
points_multiplier_bp = 20000
members_only = true
"""
    r = quote(engine, body, request([line("A", "food", 199)], mem))
    assert r["points_earned"] == earned


def test_points_multiplier_is_floored_before_the_base(engine) -> None:
    body = POINTS + """
[[tiers]]
code = "odd"
rank = 0
points_multiplier_bp = 12345

[[promotions]]
code = "M15"
points_multiplier_bp = 15000
"""
    r = quote(engine, body, request([line("A", "food", 2_000_000)], member("odd")))
    # multiplier 12345*15000//10000 = 18517 (18517.5 floored, per pricing-notes);
    # 2000000 * 1 * 18517 // 1000000 = 37034 (flooring only at the end would give 37035)
    assert r["points_earned"] == 37034


# --------------------------------------------------------------------------
# Edge baskets and whole receipts.


def test_all_lines_non_discountable(engine) -> None:
    body = TIERS + TOBACCO + POINTS + """
[[categories]]
code = "alcohol"
discountable = false

[[promotions]]
code = "HALF"
off_bp = 5000

[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
"""
    mem = member("gold", points_balance=1000, coupons=[coupon("C-1", "V5")])
    req = request([line("CIG", "tobacco", 4500, 2), line("BEER", "alcohol", 1200)], mem,
                  coupon_ids=["C-1"], redeem_points=1000)
    r = quote(engine, body, req)
    assert col(r, "item_discount_cents") == [0, 0]
    assert col(r, "item_discount_source") == ["", ""]
    assert rejected(r) == [("C-1", "NO_ELIGIBLE_LINES")]
    # B = 0 -> cap 0 -> no blocks; max = min(1000//20, 0//100) * 20 = 0
    assert (r["points_redeemed"], r["points_redeemable_max"]) == (0, 0)
    assert r["payable_cents"] == 10200  # 9000 + 1200
    assert r["points_earned"] == 18  # alcohol earns: 1200 * 1 * 15000 // 1000000 = 18


def test_zero_price_line(engine) -> None:
    body = '[store_defaults]\nrounding = "floor_jiao"\n' + FLAT_TIERS + """
[[promotions]]
code = "P10"
off_bp = 1000

[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
"""
    req = request([line("BAG", "food", 0, 3), line("A", "food", 1005)],
                  member(coupons=[coupon("C-1", "V5")]), coupon_ids=["C-1"])
    r = quote(engine, body, req)
    # A: P10 1005*0.1 = 100.5 -> 101 -> 904; voucher 500 -> 404; floor_jiao drops 4 -> 400
    assert r["lines"][0] == {
        "gross_cents": 0, "count_card_cents": 0, "item_discount_cents": 0,
        "item_discount_source": "", "coupon_discount_cents": 0, "points_offset_cents": 0,
        "rounding_cents": 0, "net_cents": 0,
    }
    assert r["lines"][1]["item_discount_cents"] == 101
    assert r["lines"][1]["coupon_discount_cents"] == 500
    assert r["lines"][1]["rounding_cents"] == 4
    assert r["payable_cents"] == 400


def test_single_line_whole_receipt(engine) -> None:
    body = TIERS + POINTS + """
[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
"""
    mem = member("silver", points_balance=100, stored_value_cents=1000,
                 coupons=[coupon("C-1", "V5")])
    req = request([line("MILK", "dairy", 1290, 4)], mem, coupon_ids=["C-1"],
                  redeem_points=100, pay_stored_value_cents=1000)
    expected = {
        "lines": [{
            "gross_cents": 5160,  # 1290*4
            "count_card_cents": 0,
            "item_discount_cents": 258,  # 5160*500/10000 = 258
            "item_discount_source": "tier",
            "coupon_discount_cents": 500,  # min(500, 4902)
            # B = 4402, cap = 2201 -> 22 blocks; min(100//20=5, 5, 22) = 5 -> 500 cents
            "points_offset_cents": 500,
            "rounding_cents": 0,
            "net_cents": 3902,  # 5160 - 258 - 500 - 500
        }],
        "gross_cents": 5160,
        "count_card_cents": 0,
        "item_discount_cents": 258,
        "coupon_discount_cents": 500,
        "points_offset_cents": 500,
        "rounding_cents": 0,
        "payable_cents": 3902,
        "stored_value_cents": 1000,  # min(1000, 1000, 3902)
        "due_cents": 2902,
        "points_redeemed": 100,
        "points_redeemable_max": 100,  # min(5, 22) * 20
        "points_earned": 46,  # 3902 * 1 * 12000 // 1000000 = 46.824 -> 46
        "applied_coupons": [{"id": "C-1", "template": "V5", "discount_cents": 500}],
        "rejected_coupons": [],
        "count_cards_used": [],
        "rulebook_version": "t-1",
    }
    assert engine(make_rulebook(body), req) == expected


def test_full_pipeline_whole_receipt(engine) -> None:
    body = """
[store_defaults]
rounding = "floor_jiao"
max_coupons_per_order = 2

[points]
earn_per_yuan = 1
redeem_points = 100
redeem_cents = 100
max_redeem_bp = 3000
""" + TIERS + TOBACCO + """
[[coupon_templates]]
code = "T50"
kind = "threshold"
threshold_cents = 5000
off_cents = 500

[[coupon_templates]]
code = "V3"
kind = "voucher"
off_cents = 300
categories = ["snack"]
"""
    mem = member("silver", points_balance=450, stored_value_cents=10000,
                 coupons=[coupon("V-1", "V3"), coupon("T-1", "T50")])
    req = request([line("RICE", "grain", 2990, 2), line("CHIPS", "snack", 650, 3),
                   line("CIG", "tobacco", 2500)], mem, coupon_ids=["V-1", "T-1"],
                  redeem_points=450, pay_stored_value_cents=2000)
    # Stage 1 (silver 5 %): RICE 5980*0.05 = 299 -> 5681; CHIPS 1950*0.05 = 97.5 -> 98 -> 1852.
    # Stage 2, threshold first: W = 5681 + 1852 = 7533 >= 5000 -> 500:
    #   500*5681//7533 = 377 r559; 500*1852//7533 = 122 r6974 -> +1 to CHIPS: 377/123
    #   -> 5304/1729; then V3 on snack: min(300, 1729) = 300 -> CHIPS 1429.
    # Stage 3: B = 5304 + 1429 = 6733; cap = 6733*3000//10000 = 2019 -> 20 blocks;
    #   min(450//100=4, 4, 20) = 4 -> 400 cents: 400*5304//6733 = 315 r705,
    #   400*1429//6733 = 84 r6028 -> +1 to CHIPS: 315/85 -> 4989/1344.
    # Stage 4: 4989 + 1344 + 2500 = 8833 -> drop 3 over all three lines:
    #   3*4989//8833 = 1 r6134; 3*1344//8833 = 0 r4032; 3*2500//8833 = 0 r7500
    #   -> 2 cents left: CIG (7500), RICE (6134) -> 2/0/1 -> 4987/1344/2499.
    # Stage 5: min(2000, 10000, 8830) = 2000; due 6830.
    # Stage 6: base 4987 + 1344 = 6331 (tobacco earns none); 6331*1*12000//1e6 = 75.97 -> 75.
    expected = {
        "lines": [
            {"gross_cents": 5980, "count_card_cents": 0, "item_discount_cents": 299,
             "item_discount_source": "tier", "coupon_discount_cents": 377,
             "points_offset_cents": 315, "rounding_cents": 2, "net_cents": 4987},
            {"gross_cents": 1950, "count_card_cents": 0, "item_discount_cents": 98,
             "item_discount_source": "tier", "coupon_discount_cents": 423,  # 123 + 300
             "points_offset_cents": 85, "rounding_cents": 0, "net_cents": 1344},
            {"gross_cents": 2500, "count_card_cents": 0, "item_discount_cents": 0,
             "item_discount_source": "", "coupon_discount_cents": 0,
             "points_offset_cents": 0, "rounding_cents": 1, "net_cents": 2499},
        ],
        "gross_cents": 10430,  # 5980 + 1950 + 2500
        "count_card_cents": 0,
        "item_discount_cents": 397,  # 299 + 98
        "coupon_discount_cents": 800,  # 500 + 300
        "points_offset_cents": 400,
        "rounding_cents": 3,
        "payable_cents": 8830,
        "stored_value_cents": 2000,
        "due_cents": 6830,
        "points_redeemed": 400,  # 4 blocks * 100
        "points_redeemable_max": 400,  # min(450//100=4, 2019//100=20) * 100
        "points_earned": 75,
        "applied_coupons": [{"id": "T-1", "template": "T50", "discount_cents": 500},
                            {"id": "V-1", "template": "V3", "discount_cents": 300}],
        "rejected_coupons": [],
        "count_cards_used": [],
        "rulebook_version": "t-1",
    }
    receipt = engine(make_rulebook(body), req)
    assert receipt == expected
    check_invariants(receipt)
