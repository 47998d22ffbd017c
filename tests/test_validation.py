"""Request validation: every rule of the contract's "Validation" list, on both engines.

Each invalid request must raise :class:`settlement.RequestError` (exactly that
type, never a ``TypeError``/``KeyError``/``OverflowError``/... and never a
price) whose ``field`` is the offending path and whose ``str()`` starts with
that path (``docs/pricing-notes.md``: ``"<field path>: <problem>"``). Every
test takes the ``engine`` fixture, so the pure reference and the Cython
kernel are held to the same rules; a last test checks that both word every
error identically.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import settlement
from settlement import RequestError, pricing

from .conftest import LOCAL_EXAMPLES, SHARED_EXAMPLES, make_rulebook, require_fast

_EXAMPLES = SHARED_EXAMPLES if SHARED_EXAMPLES.is_dir() else LOCAL_EXAMPLES
#: The spec's member request: six lines (line 5 is paid by count card K-1 with
#: 10 uses), five coupons C-1..C-5, ``auto_coupons: true``.
BASE: dict[str, Any] = json.loads((_EXAMPLES / "request-member.json").read_text())
SIMPLE_LINE = {"sku": "RICE-5KG", "category": "grain", "unit_price_cents": 6990, "quantity": 1}

Mutation = Callable[[Any], Any]


# --------------------------------------------------------------------------
# Building requests: a mutation of a fresh copy of the spec's member request.


def _walk(request: Any, path: str) -> tuple[Any, str | int]:
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = request
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


def setv(path: str, value: Any) -> Mutation:
    """Set ``path`` (dotted, list indexes as numbers: ``lines.1.quantity``) to ``value``."""

    def mutate(request: Any) -> Any:
        node, key = _walk(request, path)
        node[key] = value
        return request

    return mutate


def drop(path: str) -> Mutation:
    """Delete the field at ``path``."""

    def mutate(request: Any) -> Any:
        node, key = _walk(request, path)
        del node[key]
        return request

    return mutate


def chain(*mutations: Mutation) -> Mutation:
    def mutate(request: Any) -> Any:
        for m in mutations:
            request = m(request)
        return request

    return mutate


def append(path: str, value: Any) -> Mutation:
    """Append ``value`` to the list at ``path``."""

    def mutate(request: Any) -> Any:
        node, key = _walk(request, path)
        node[key].append(value)
        return request

    return mutate


def whole(value: Any) -> Mutation:
    """Replace the whole request."""
    return lambda _request: value


def presented(*ids: str) -> Mutation:
    """Present ``coupon_ids`` instead of ``auto_coupons``."""
    return chain(drop("auto_coupons"), setv("coupon_ids", list(ids)))


def add_line(**fields: Any) -> Mutation:
    def mutate(request: Any) -> Any:
        request["lines"].append({**SIMPLE_LINE, **fields})
        return request

    return mutate


def simple_lines(n: int) -> Mutation:
    return setv("lines", [dict(SIMPLE_LINE) for _ in range(n)])


def build(mutation: Mutation) -> Any:
    return mutation(copy.deepcopy(BASE))


def deep_list(depth: int) -> Any:
    out: Any = []
    for _ in range(depth):
        out = [out]
    return out


def deep_dict(depth: int) -> Any:
    out: Any = {}
    for _ in range(depth):
        out = {"x": out, "y": [1, "a", None]}
    return out


#: Deeper than the interpreter's recursion limit, shallow enough for any C stack.
DEPTH = 10_000


def raised_by(engine: Callable[..., Any], rulebook: settlement.Rulebook, request: Any
              ) -> RequestError:
    """The RequestError ``engine`` raises for ``request``; fails on a price or another error."""
    try:
        receipt = engine(rulebook, request)
    except RequestError as exc:
        assert type(exc) is RequestError, f"{type(exc).__name__} is not RequestError itself"
        return exc
    except Exception as exc:  # noqa: BLE001 - the point: nothing but RequestError
        pytest.fail(f"raised {type(exc).__name__}: {str(exc)[:300]} instead of RequestError")
    pytest.fail(f"accepted an invalid request (payable_cents={receipt.get('payable_cents')})")


def check_rejected(engine: Callable[..., Any], rulebook: settlement.Rulebook, request: Any,
                   field: str, problem: str | None = None) -> RequestError:
    err = raised_by(engine, rulebook, request)
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: "), str(err)
    assert err.problem and str(err) == f"{field}: {err.problem}"
    if problem is not None:
        assert problem in err.problem, str(err)
    return err


def check_priced(receipt: Any) -> None:
    assert isinstance(receipt, dict)
    total = sum(line["net_cents"] for line in receipt["lines"])
    assert receipt["payable_cents"] == total >= 0
    assert receipt["due_cents"] + receipt["stored_value_cents"] == receipt["payable_cents"]


# --------------------------------------------------------------------------
# The contract's rules, one invalid request each: (id, mutation, field, problem).

RULES: list[tuple[str, Mutation, str, str | None]] = [
    # 1..500 lines
    ("lines-0", setv("lines", []), "lines", "must have 1..500 lines, got 0"),
    ("lines-501", simple_lines(501), "lines", "must have 1..500 lines, got 501"),
    # quantity 1..9999
    ("quantity-0", setv("lines.1.quantity", 0), "lines[1].quantity", None),
    ("quantity-10000", setv("lines.1.quantity", 10000), "lines[1].quantity", None),
    ("quantity-negative", setv("lines.3.quantity", -1), "lines[3].quantity", None),
    # unit price 0..100000000
    ("price-negative", setv("lines.0.unit_price_cents", -1), "lines[0].unit_price_cents", None),
    ("price-too-high", setv("lines.4.unit_price_cents", 100_000_001),
     "lines[4].unit_price_cents", None),
    # unknown tier
    ("unknown-tier", setv("member.tier", "platinum"), "member.tier", "platinum"),
    ("tier-wrong-case", setv("member.tier", "Gold"), "member.tier", "Gold"),
    # duplicate ids
    ("dup-coupon_ids", presented("C-1", "C-2", "C-1"), "coupon_ids[2]", "duplicate"),
    ("dup-coupon_ids-adjacent", presented("C-9", "C-9"), "coupon_ids[1]", "duplicate"),
    ("dup-member-coupons", setv("member.coupons.3.id", "C-2"), "member.coupons[3].id",
     "duplicate"),
    ("dup-count-cards",
     append("member.count_cards", {"id": "K-1", "skus": ["X"], "uses": 1}),
     "member.count_cards[1].id", "duplicate"),
    # both coupon_ids and auto_coupons
    ("coupon_ids-with-auto", setv("coupon_ids", ["C-1"]), "auto_coupons", None),
    # negative amounts or points
    ("redeem_points-negative", setv("redeem_points", -1), "redeem_points", None),
    ("pay_stored_value-negative", setv("pay_stored_value_cents", -1),
     "pay_stored_value_cents", None),
    ("points_balance-negative", setv("member.points_balance", -1), "member.points_balance",
     None),
    ("stored_value-negative", setv("member.stored_value_cents", -1),
     "member.stored_value_cents", None),
    ("card-uses-negative", setv("member.count_cards.0.uses", -1), "member.count_cards[0].uses",
     None),
    # instants
    ("at-naive", setv("at", "2026-11-22T10:30:00"), "at", "timezone"),
    ("at-date-only", setv("at", "2026-11-22"), "at", None),
    ("at-garbage", setv("at", "yesterday at noon"), "at", None),
    ("at-empty", setv("at", ""), "at", None),
    ("at-bad-month", setv("at", "2026-13-22T10:30:00+08:00"), "at", None),
    ("at-bad-offset", setv("at", "2026-11-22T10:30:00+24:00"), "at", None),
    ("coupon-valid_until-naive", setv("member.coupons.1.valid_until", "2026-11-30T00:00:00"),
     "member.coupons[1].valid_until", "timezone"),
    ("coupon-valid_from-naive", setv("member.coupons.0.valid_from", "2026-11-01T00:00:00"),
     "member.coupons[0].valid_from", "timezone"),
    ("coupon-valid_from-garbage", setv("member.coupons.4.valid_from", "last month"),
     "member.coupons[4].valid_from", None),
    ("card-valid_until-naive", setv("member.count_cards.0.valid_until", "2027-06-01T00:00:00"),
     "member.count_cards[0].valid_until", "timezone"),
    # count cards
    ("card-not-held", setv("lines.5.count_card_id", "K-9"), "lines[5].count_card_id", "K-9"),
    ("card-without-member", drop("member"), "lines[5].count_card_id", "K-1"),
    ("card-null-member", setv("member", None), "lines[5].count_card_id", "K-1"),
    ("card-member-holds-none", setv("member.count_cards", []), "lines[5].count_card_id", "K-1"),
    ("card-expired-at-valid_until", setv("at", "2027-06-01T00:00:00+08:00"),
     "lines[5].count_card_id", "expired"),
    ("card-expired-same-instant-in-utc", setv("at", "2027-05-31T16:00:00Z"),
     "lines[5].count_card_id", "expired"),
    ("card-expired-after", setv("at", "2027-07-01T00:00:00+08:00"), "lines[5].count_card_id",
     "expired"),
    ("card-wrong-sku", setv("lines.5.sku", "CAR-WAX"), "lines[5].count_card_id", "CAR-WAX"),
    ("card-uses-one-line", setv("lines.5.quantity", 11), "lines[5].count_card_id", "uses"),
    ("card-uses-across-two-lines",
     chain(setv("member.count_cards.0.uses", 5), setv("lines.5.quantity", 3),
           add_line(sku="CAR-WASH", category="service", quantity=3, count_card_id="K-1")),
     "lines[6].count_card_id", "uses"),
    ("card-uses-zero", setv("member.count_cards.0.uses", 0), "lines[5].count_card_id", "uses"),
    # unknown fields
    ("unknown-top-level", setv("discount_cents", 100), "discount_cents", "unknown field"),
    ("unknown-in-line", setv("lines.2.discount_cents", 1), "lines[2].discount_cents",
     "unknown field"),
    ("unknown-in-member", setv("member.level", 3), "member.level", "unknown field"),
    ("unknown-in-coupon", setv("member.coupons.3.off_cents", 500),
     "member.coupons[3].off_cents", "unknown field"),
    ("unknown-in-count-card", setv("member.count_cards.0.price", 1),
     "member.count_cards[0].price", "unknown field"),
    ("typo-auto_coupon", chain(drop("auto_coupons"), setv("auto_coupon", True)),
     "auto_coupon", "unknown field"),
    # missing required fields
    ("missing-at", drop("at"), "at", "missing"),
    ("missing-store", drop("store"), "store", "missing"),
    ("missing-lines", drop("lines"), "lines", "missing"),
    ("missing-sku", drop("lines.2.sku"), "lines[2].sku", "missing"),
    ("missing-category", drop("lines.2.category"), "lines[2].category", "missing"),
    ("missing-unit_price", drop("lines.0.unit_price_cents"), "lines[0].unit_price_cents",
     "missing"),
    ("missing-quantity", drop("lines.4.quantity"), "lines[4].quantity", "missing"),
    ("missing-member-id", drop("member.id"), "member.id", "missing"),
    ("missing-member-tier", drop("member.tier"), "member.tier", "missing"),
    ("missing-coupon-id", drop("member.coupons.2.id"), "member.coupons[2].id", "missing"),
    ("missing-coupon-template", drop("member.coupons.2.template"),
     "member.coupons[2].template", "missing"),
    ("missing-card-id", drop("member.count_cards.0.id"), "member.count_cards[0].id",
     "missing"),
    ("missing-card-skus", drop("member.count_cards.0.skus"), "member.count_cards[0].skus",
     "missing"),
    ("missing-card-uses", drop("member.count_cards.0.uses"), "member.count_cards[0].uses",
     "missing"),
    # the project's limits (docs/pricing-notes.md)
    ("coupon_ids-33", presented(*(f"X{i}" for i in range(33))), "coupon_ids", "33"),
    ("member-coupons-1001",
     setv("member.coupons", [{"id": f"c{i}", "template": "VOUCHER5"} for i in range(1001)]),
     "member.coupons", "1001"),
    ("count-cards-101",
     setv("member.count_cards", [{"id": f"k{i}", "skus": [], "uses": 1} for i in range(101)]),
     "member.count_cards", "101"),
    ("card-skus-1001", setv("member.count_cards.0.skus", [f"s{i}" for i in range(1001)]),
     "member.count_cards[0].skus", "1001"),
    ("redeem_points-over-1e15", setv("redeem_points", 10**15 + 1), "redeem_points", None),
    ("stored_value-over-1e15", setv("member.stored_value_cents", 10**15 + 1),
     "member.stored_value_cents", None),
    ("empty-store", setv("store", ""), "store", None),
    ("empty-member-id", setv("member.id", ""), "member.id", None),
    ("empty-coupon-id", presented(""), "coupon_ids[0]", None),
    ("empty-count_card_id", setv("lines.5.count_card_id", ""), "lines[5].count_card_id", None),
]


@pytest.mark.parametrize(("mutation", "field", "problem"),
                         [pytest.param(*case[1:], id=case[0]) for case in RULES])
def test_rule_violation_names_the_field(engine, demo_rulebook, mutation, field, problem) -> None:
    check_rejected(engine, demo_rulebook, build(mutation), field, problem)


# --------------------------------------------------------------------------
# Garbage: wrong JSON types, absurd numbers, junk structures. Always a RequestError.

NAN, INF = float("nan"), float("inf")
WRONG_INTS = [("str", "5"), ("float", 1.0), ("bool", True), ("null", None), ("list", [5]),
              ("object", {"v": 5}), ("1e30", 10**30), ("-1e30", -(10**30)), ("2^63", 2**63),
              ("2^64", 2**64), ("-2^63", -(2**63)), ("nan", NAN), ("inf", INF), ("-inf", -INF),
              ("str-NaN", "NaN"), ("str-Infinity", "Infinity"), ("float-5.5", 5.5)]

GARBAGE: list[tuple[str, Mutation, str]] = [
    *[(f"quantity-{name}", setv("lines.1.quantity", v), "lines[1].quantity")
      for name, v in WRONG_INTS],
    *[(f"unit_price-{name}", setv("lines.0.unit_price_cents", v), "lines[0].unit_price_cents")
      for name, v in WRONG_INTS],
    *[(f"redeem_points-{name}", setv("redeem_points", v), "redeem_points")
      for name, v in WRONG_INTS if v is not None],
    *[(f"points_balance-{name}", setv("member.points_balance", v), "member.points_balance")
      for name, v in WRONG_INTS if v is not None],
    *[(f"card-uses-{name}", setv("member.count_cards.0.uses", v), "member.count_cards[0].uses")
      for name, v in WRONG_INTS],
    ("pay_stored_value-2^63", setv("pay_stored_value_cents", 2**63), "pay_stored_value_cents"),
    ("pay_stored_value-nan", setv("pay_stored_value_cents", NAN), "pay_stored_value_cents"),
    ("stored_value-float", setv("member.stored_value_cents", 5000.0),
     "member.stored_value_cents"),
    # strings
    ("sku-empty", setv("lines.0.sku", ""), "lines[0].sku"),
    ("sku-129-chars", setv("lines.0.sku", "S" * 129), "lines[0].sku"),
    ("sku-1MB", setv("lines.0.sku", "S" * 1_000_000), "lines[0].sku"),
    ("sku-int", setv("lines.0.sku", 42), "lines[0].sku"),
    ("sku-null", setv("lines.0.sku", None), "lines[0].sku"),
    ("sku-list", setv("lines.0.sku", ["MILK-1L"]), "lines[0].sku"),
    ("category-129-chars", setv("lines.3.category", "c" * 129), "lines[3].category"),
    ("category-bool", setv("lines.3.category", False), "lines[3].category"),
    ("store-null", setv("store", None), "store"),
    ("store-int", setv("store", 1), "store"),
    ("member-id-int", setv("member.id", 1), "member.id"),
    ("member-id-null", setv("member.id", None), "member.id"),
    ("tier-null", setv("member.tier", None), "member.tier"),
    ("tier-list", setv("member.tier", ["gold"]), "member.tier"),
    ("coupon-template-int", setv("member.coupons.0.template", 7), "member.coupons[0].template"),
    ("count_card_id-int", setv("lines.5.count_card_id", 1), "lines[5].count_card_id"),
    ("card-skus-string", setv("member.count_cards.0.skus", "CAR-WASH"),
     "member.count_cards[0].skus"),
    ("card-skus-int-entry", setv("member.count_cards.0.skus", ["CAR-WASH", 5]),
     "member.count_cards[0].skus[1]"),
    # lone surrogates: what json.loads makes of "\\ud800"; not text, cannot be printed as UTF-8
    ("sku-lone-surrogate", setv("lines.0.sku", json.loads('"\\ud800"')), "lines[0].sku"),
    ("category-lone-surrogate", setv("lines.2.category", "tobacco\udc80"), "lines[2].category"),
    ("store-lone-surrogate", setv("store", "S\ud800"), "store"),
    ("member-id-lone-surrogate", setv("member.id", "\udfff"), "member.id"),
    ("coupon-id-lone-surrogate", setv("member.coupons.0.id", "C\ud800"), "member.coupons[0].id"),
    ("coupon_ids-lone-surrogate", presented("C-1", "\ud800"), "coupon_ids[1]"),
    ("card-sku-lone-surrogate", setv("member.count_cards.0.skus", ["CAR-WASH", "\ud800"]),
     "member.count_cards[0].skus[1]"),
    ("at-lone-surrogate-20-chars", setv("at", "2026-11-22T02:30:00\ud800"), "at"),
    ("at-lone-surrogate-25-chars", setv("at", "2026-11-22T10:30:00+08:0\ud800"), "at"),
    # instants
    ("at-null", setv("at", None), "at"),
    ("at-int", setv("at", 1_764_000_000), "at"),
    ("at-huge-int", setv("at", 10**30), "at"),
    ("at-float-nan", setv("at", NAN), "at"),
    ("at-bool", setv("at", True), "at"),
    ("at-list", setv("at", ["2026-11-22T10:30:00+08:00"]), "at"),
    ("at-object", setv("at", {"iso": "2026-11-22T10:30:00+08:00"}), "at"),
    ("at-str-NaN", setv("at", "NaN"), "at"),
    ("at-zone-name", setv("at", "2026-11-22T10:30:00[Asia/Shanghai]"), "at"),
    ("at-year-10000", setv("at", "10000-01-01T00:00:00+00:00"), "at"),
    ("at-naive-datetime-object", setv("at", datetime(2026, 11, 22, 10, 30)), "at"),
    ("coupon-valid_until-int", setv("member.coupons.0.valid_until", 10**30),
     "member.coupons[0].valid_until"),
    ("coupon-valid_until-nan", setv("member.coupons.0.valid_until", NAN),
     "member.coupons[0].valid_until"),
    ("card-valid_until-garbage", setv("member.count_cards.0.valid_until", "soon"),
     "member.count_cards[0].valid_until"),
    # booleans
    ("auto_coupons-str", setv("auto_coupons", "true"), "auto_coupons"),
    ("auto_coupons-int", setv("auto_coupons", 1), "auto_coupons"),
    ("auto_coupons-list", setv("auto_coupons", [True]), "auto_coupons"),
    # containers
    ("lines-object", setv("lines", {"0": SIMPLE_LINE}), "lines"),
    ("lines-string", setv("lines", "MILK-1L x4"), "lines"),
    ("lines-null", setv("lines", None), "lines"),
    ("lines-int", setv("lines", 6), "lines"),
    ("line-list", setv("lines.0", ["MILK-1L", "dairy", 1290, 4]), "lines[0]"),
    ("line-null", setv("lines.2", None), "lines[2]"),
    ("line-string", setv("lines.2", "CIG-ZH"), "lines[2]"),
    ("member-list", setv("member", [BASE["member"]]), "member"),
    ("member-string", setv("member", "M0001"), "member"),
    ("member-int", setv("member", 1), "member"),
    ("member-coupons-object", setv("member.coupons", {"C-1": "SPEND200-20"}), "member.coupons"),
    ("member-coupon-string", setv("member.coupons.0", "C-1"), "member.coupons[0]"),
    ("member-count_cards-string", setv("member.count_cards", "K-1"), "member.count_cards"),
    ("coupon_ids-string", chain(drop("auto_coupons"), setv("coupon_ids", "C-1")), "coupon_ids"),
    ("coupon_ids-int-entry", presented("C-1", 2), "coupon_ids[1]"),  # type: ignore[arg-type]
    ("coupon_ids-null-entry", presented("C-1", None), "coupon_ids[1]"),  # type: ignore[arg-type]
    ("coupon_ids-33-known-ids", presented(*(f"C-{i}" for i in range(33))), "coupon_ids"),
    ("coupon_ids-33-with-auto", setv("coupon_ids", [f"C-{i}" for i in range(33)]),
     "coupon_ids"),
    # the request itself
    ("request-list", whole([BASE]), "request"),
    ("request-empty-list", whole([]), "request"),
    ("request-string", whole(json.dumps(BASE)), "request"),
    ("request-bytes", whole(json.dumps(BASE).encode()), "request"),
    ("request-None", whole(None), "request"),
    ("request-int", whole(0), "request"),
    ("request-float-nan", whole(NAN), "request"),
    ("request-empty-object", whole({}), "at"),
    # deep nesting junk
    ("deep-list-unknown-field", setv("junk", deep_list(DEPTH)), "junk"),
    ("deep-dict-unknown-field", setv("junk", deep_dict(DEPTH)), "junk"),
    ("deep-list-at", setv("at", deep_list(DEPTH)), "at"),
    ("deep-dict-sku", setv("lines.0.sku", deep_dict(DEPTH)), "lines[0].sku"),
    ("deep-list-quantity", setv("lines.0.quantity", deep_list(DEPTH)), "lines[0].quantity"),
    ("deep-list-line", setv("lines.0", deep_list(DEPTH)), "lines[0]"),
    ("deep-list-lines", setv("lines", deep_list(DEPTH)), "lines[0]"),
    ("deep-dict-in-line", setv("lines.1.extra", deep_dict(DEPTH)), "lines[1].extra"),
    ("deep-list-coupon_ids", chain(drop("auto_coupons"), setv("coupon_ids", deep_list(DEPTH))),
     "coupon_ids[0]"),
    ("deep-dict-coupon-valid_from", setv("member.coupons.0.valid_from", deep_dict(DEPTH)),
     "member.coupons[0].valid_from"),
    ("deep-list-card-skus", setv("member.count_cards.0.skus", deep_list(DEPTH)),
     "member.count_cards[0].skus[0]"),
]


@pytest.mark.parametrize(("mutation", "field"),
                         [pytest.param(*case[1:], id=case[0]) for case in GARBAGE])
def test_garbage_is_a_request_error(engine, demo_rulebook, mutation, field) -> None:
    check_rejected(engine, demo_rulebook, build(mutation), field)


def test_request_types_and_messages(engine, demo_rulebook) -> None:
    """A few exact messages: the wording is part of the API the POS shows."""
    cases = [
        (setv("lines", []), "lines: must have 1..500 lines, got 0"),
        (setv("member.tier", "platinum"), "member.tier: unknown tier 'platinum'"),
        (presented("C-1", "C-1"), "coupon_ids[1]: duplicate coupon id 'C-1'"),
        (setv("junk", 1), "junk: unknown field"),
        (drop("at"), "at: required field is missing"),
        (whole([]), "request: must be a JSON object"),
        (setv("lines.5.count_card_id", "K-9"),
         "lines[5].count_card_id: the member holds no count card 'K-9'"),
        (setv("at", "2027-06-01T00:00:00+08:00"),
         "lines[5].count_card_id: count card 'K-1' has expired"),
        (setv("lines.5.quantity", 11),
         "lines[5].count_card_id: count card 'K-1' has 10 uses left, the lines need 11"),
    ]
    for mutation, message in cases:
        err = raised_by(engine, demo_rulebook, build(mutation))
        assert str(err) == message
        assert isinstance(err, settlement.InvalidInput) and isinstance(err, ValueError)


def test_ten_thousand_lines_are_refused_at_once(engine, demo_rulebook) -> None:
    full = build(setv("lines", [dict(SIMPLE_LINE, quantity=i % 9999 + 1) for i in range(10_000)]))
    junk = build(setv("lines", [{"sku": i, "quantity": "x"} for i in range(10_000)]))
    for request in (full, junk):
        start = time.perf_counter()
        check_rejected(engine, demo_rulebook, request, "lines",
                       "must have 1..500 lines, got 10000")
        assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------
# What the rules must not refuse.

ACCEPTED: list[tuple[str, Mutation]] = [
    ("spec-example", lambda r: r),
    ("quantity-1", setv("lines.1.quantity", 1)),
    ("quantity-9999", setv("lines.1.quantity", 9999)),
    ("price-0", setv("lines.0.unit_price_cents", 0)),
    ("price-100000000", setv("lines.0.unit_price_cents", 100_000_000)),
    ("lines-1", simple_lines(1)),
    ("lines-500", simple_lines(500)),
    ("lines-500-at-the-maxima",
     setv("lines", [dict(SIMPLE_LINE, unit_price_cents=100_000_000, quantity=9999)] * 500)),
    ("auto-with-empty-coupon_ids", setv("coupon_ids", [])),
    ("auto-false-with-coupon_ids", chain(setv("auto_coupons", False), setv("coupon_ids", ["C-1"]))),
    ("coupon_ids-32", presented(*(f"X{i}" for i in range(32)))),
    ("sku-128-chars", setv("lines.2.sku", "S" * 128)),
    ("unknown-category", setv("lines.3.category", "no-such-category")),
    ("unicode-codes", chain(setv("lines.3.sku", "大米-5kg"), setv("store", "上海-01"))),
    ("card-valid-1us-before-expiry", setv("at", "2027-05-31T23:59:59.999999+08:00")),
    ("card-uses-exactly-spent",
     chain(setv("member.count_cards.0.uses", 6), setv("lines.5.quantity", 3),
           add_line(sku="CAR-WASH", category="service", quantity=3, count_card_id="K-1"))),
    ("card-without-valid_until", drop("member.count_cards.0.valid_until")),
    ("card-null-valid_until", setv("member.count_cards.0.valid_until", None)),
    ("amounts-at-1e15",
     chain(setv("redeem_points", 10**15), setv("pay_stored_value_cents", 10**15),
           setv("member.points_balance", 10**15), setv("member.stored_value_cents", 10**15),
           setv("member.count_cards.0.uses", 10**15))),
    ("amounts-zero",
     chain(setv("redeem_points", 0), setv("pay_stored_value_cents", 0),
           setv("member.points_balance", 0), setv("member.stored_value_cents", 0))),
    ("optional-nulls",
     chain(setv("auto_coupons", None), setv("coupon_ids", None), setv("redeem_points", None),
           setv("pay_stored_value_cents", None), setv("member.points_balance", None),
           setv("member.stored_value_cents", None), setv("member.coupons", None),
           setv("lines.5.count_card_id", None), setv("member.count_cards", None))),
    ("optional-absent",
     chain(drop("auto_coupons"), drop("redeem_points"), drop("pay_stored_value_cents"),
           drop("member.points_balance"), drop("member.stored_value_cents"),
           drop("member.coupons"))),
    ("coupon-unbounded-validity",
     chain(drop("member.coupons.0.valid_from"), setv("member.coupons.1.valid_until", None))),
    ("no-member-no-card",
     chain(drop("member"), setv("lines", BASE["lines"][:5]), setv("coupon_ids", []),
           drop("auto_coupons"))),
    ("no-member-redeem-and-pay-ignored",
     chain(drop("member"), setv("lines", BASE["lines"][:5]))),
    ("at-utc-z", setv("at", "2026-11-22T02:30:00Z")),
    ("at-negative-offset", setv("at", "2026-11-21T21:30:00-05:00")),
    ("at-fractional-seconds", setv("at", "2026-11-22T10:30:00.123456+08:00")),
    ("at-aware-datetime",
     setv("at", datetime(2026, 11, 22, 10, 30, tzinfo=timezone(timedelta(hours=8))))),
    ("coupon-instants-aware-datetimes",
     setv("member.coupons.0.valid_until", datetime(2026, 12, 1, tzinfo=UTC))),
]


@pytest.mark.parametrize("mutation", [pytest.param(m, id=name) for name, m in ACCEPTED])
def test_valid_request_is_priced(engine, demo_rulebook, mutation) -> None:
    check_priced(engine(demo_rulebook, build(mutation)))


def test_presented_and_unknown_coupons_are_not_errors(engine, demo_rulebook) -> None:
    """32 unknown presented ids are a valid request: each is rejected UNKNOWN_COUPON."""
    ids = [f"X{i:02d}" for i in range(32)]
    receipt = engine(demo_rulebook, build(presented(*ids)))
    assert receipt["rejected_coupons"] == [{"id": i, "reason": "UNKNOWN_COUPON"} for i in ids]
    assert receipt["applied_coupons"] == []


def test_without_member_redeem_and_stored_value_are_ignored(engine, demo_rulebook) -> None:
    request = build(chain(drop("member"), setv("lines", BASE["lines"][:5]),
                          setv("redeem_points", 10**15), setv("pay_stored_value_cents", 10**15)))
    receipt = engine(demo_rulebook, request)
    check_priced(receipt)
    assert receipt["points_redeemed"] == 0
    assert receipt["stored_value_cents"] == 0
    assert receipt["due_cents"] == receipt["payable_cents"]


def test_validation_does_not_touch_the_request(engine, demo_rulebook) -> None:
    request = build(setv("lines.1.quantity", 0))
    snapshot = copy.deepcopy(request)
    raised_by(engine, demo_rulebook, request)
    assert request == snapshot


def test_card_expiry_is_an_instant_whatever_the_rulebook_timezone(engine) -> None:
    """``valid_until`` is an instant: 00:00+08:00 is 16:00Z the day before, in any zone."""
    for zone in ("Asia/Shanghai", "America/New_York", "UTC"):
        rb = make_rulebook('[[tiers]]\ncode = "x"\nrank = 0\n', timezone=zone)
        card = {"id": "K", "skus": ["WASH"], "uses": 1, "valid_until": "2027-06-01T00:00:00+08:00"}
        request = {
            "at": "2027-05-31T16:00:00Z", "store": "S1",
            "member": {"id": "M", "tier": "x", "count_cards": [card]},
            "lines": [dict(SIMPLE_LINE, sku="WASH", count_card_id="K")],
        }
        check_rejected(engine, rb, request, "lines[0].count_card_id", "expired")
        request["at"] = "2027-05-31T15:59:59.999999Z"
        receipt = engine(rb, request)
        assert receipt["count_cards_used"] == [{"id": "K", "uses": 1}]


# --------------------------------------------------------------------------
# Both engines word every error the same way.


def test_pure_and_fast_errors_are_identical(demo_rulebook) -> None:
    fast = require_fast()
    cases = [(name, m) for name, m, *_ in RULES] + [(name, m) for name, m, _ in GARBAGE]
    assert len(cases) >= 40
    mismatches = []
    for name, mutation in cases:
        outcomes = []
        for quote in (pricing.quote, fast):
            try:
                quote(demo_rulebook, build(mutation))
            except RequestError as exc:
                outcomes.append((type(exc).__name__, exc.field, str(exc)))
            except Exception as exc:  # noqa: BLE001 - reported below
                outcomes.append((type(exc).__name__, None, str(exc)[:200]))
            else:
                outcomes.append(("accepted", None, ""))
        if outcomes[0] != outcomes[1]:
            mismatches.append(f"{name}: pure {outcomes[0]!r} != fast {outcomes[1]!r}")
    assert not mismatches, "\n".join(mismatches[:20]) + f"\n({len(mismatches)} mismatches)"


def test_pure_and_fast_agree_on_the_edge_requests_they_accept(demo_rulebook) -> None:
    fast = require_fast()
    for name, mutation in ACCEPTED:
        assert fast(demo_rulebook, build(mutation)) == pricing.quote(
            demo_rulebook, build(mutation)), name


def test_nan_never_reaches_the_money_path(engine, demo_rulebook) -> None:
    """Every numeric field refuses NaN, whatever JSON parser produced it."""
    for path in ("lines.0.quantity", "lines.0.unit_price_cents", "redeem_points",
                 "pay_stored_value_cents", "member.points_balance",
                 "member.stored_value_cents", "member.count_cards.0.uses"):
        request = build(setv(path, math.nan))
        err = raised_by(engine, demo_rulebook, request)
        parts = [f"[{p}]" if p.isdigit() else f".{p}" for p in path.split(".")]
        assert err.field == "".join(parts).lstrip(".")
