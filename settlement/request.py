"""Quote requests: validated from the spec's JSON shape into typed objects.

:func:`parse_request` is the single source of truth for what a valid
request is and for the wording of every request error. The pure engine
prices its result; the fast engine validates on its own for speed and,
when it finds a problem, calls this function so that both raise the same
:class:`~settlement.errors.RequestError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import PlainValidator, ValidationError

from ._schema import Code, StrictModel, bounded, dotted, first_error
from .errors import RequestError
from .rulebook import Rulebook
from .timeutil import FOREVER, NEVER_BEFORE, local_weekday_minute, parse_instant

MAX_LINES = 500
MAX_QUANTITY = 9999
MAX_UNIT_PRICE = 100_000_000
MAX_AMOUNT = 10**15
MAX_PRESENTED_COUPONS = 32
MAX_HELD_COUPONS = 1000
MAX_COUNT_CARDS = 100
MAX_CARD_SKUS = 1000


def _instant(value: object) -> int:
    return parse_instant(value)


Instant = Annotated[int, PlainValidator(_instant)]
Amount = bounded(0, MAX_AMOUNT)


class _CouponIn(StrictModel):
    id: Code
    template: Code
    valid_from: Instant | None = None
    valid_until: Instant | None = None


class _CountCardIn(StrictModel):
    id: Code
    skus: list[Code]
    uses: Amount  # type: ignore[valid-type]
    valid_until: Instant | None = None


class _MemberIn(StrictModel):
    id: Code
    tier: Code
    points_balance: Amount | None = None  # type: ignore[valid-type]
    stored_value_cents: Amount | None = None  # type: ignore[valid-type]
    coupons: list[_CouponIn] | None = None
    count_cards: list[_CountCardIn] | None = None


class _LineIn(StrictModel):
    sku: Code
    category: Code
    unit_price_cents: bounded(0, MAX_UNIT_PRICE)  # type: ignore[valid-type]
    quantity: bounded(1, MAX_QUANTITY)  # type: ignore[valid-type]
    count_card_id: Code | None = None


class _RequestIn(StrictModel):
    at: Instant
    store: Code
    member: _MemberIn | None = None
    lines: list[_LineIn]
    coupon_ids: list[Code] | None = None
    auto_coupons: bool | None = None
    redeem_points: Amount | None = None  # type: ignore[valid-type]
    pay_stored_value_cents: Amount | None = None  # type: ignore[valid-type]


@dataclass(frozen=True, slots=True)
class Line:
    """One basket line."""

    sku: str
    category: str
    unit_price_cents: int
    quantity: int
    count_card_id: str | None = None


@dataclass(frozen=True, slots=True)
class Coupon:
    """A coupon the member holds; instants in epoch microseconds."""

    id: str
    template: str
    valid_from: int = NEVER_BEFORE
    valid_until: int = FOREVER


@dataclass(frozen=True, slots=True)
class CountCard:
    """A prepaid count card: ``uses`` of the listed SKUs until ``valid_until``."""

    id: str
    skus: frozenset[str]
    uses: int
    valid_until: int = FOREVER


@dataclass(frozen=True, slots=True)
class Member:
    """The member's state as the caller (or the ledger) knows it."""

    id: str
    tier: str
    points_balance: int = 0
    stored_value_cents: int = 0
    coupons: tuple[Coupon, ...] = ()
    count_cards: tuple[CountCard, ...] = ()


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    """A validated request; ``weekday``/``minute`` are ``at`` in the rulebook's timezone."""

    at: int
    weekday: int
    minute: int
    store: str
    member: Member | None
    lines: tuple[Line, ...]
    coupon_ids: tuple[str, ...]
    auto_coupons: bool
    redeem_points: int
    pay_stored_value_cents: int


def parse_request(rulebook: Rulebook, data: Any) -> QuoteRequest:
    """Validate ``data`` (the spec's JSON request) against ``rulebook``.

    Raises :class:`~settlement.errors.RequestError` for the first problem,
    naming the field.
    """
    if not isinstance(data, Mapping):
        raise RequestError("request", "must be a JSON object")
    lines = data.get("lines")
    # Checked before pydantic walks a huge list, so a 10,000-line request is
    # refused at once and with a message about the count.
    if isinstance(lines, list) and not 1 <= len(lines) <= MAX_LINES:
        raise RequestError("lines", f"must have 1..{MAX_LINES} lines, got {len(lines)}")
    member_data = data.get("member")
    if isinstance(member_data, Mapping):
        for name, limit in (("coupons", MAX_HELD_COUPONS), ("count_cards", MAX_COUNT_CARDS)):
            held = member_data.get(name)
            if isinstance(held, list) and len(held) > limit:
                raise RequestError(f"member.{name}", f"at most {limit} entries, got {len(held)}")
    presented = data.get("coupon_ids")
    if isinstance(presented, list) and len(presented) > MAX_PRESENTED_COUPONS:
        raise RequestError(
            "coupon_ids", f"at most {MAX_PRESENTED_COUPONS} coupons, got {len(presented)}")
    try:
        src = _RequestIn.model_validate(data)
    except ValidationError as exc:
        path, problem = first_error(exc, dotted)
        raise RequestError(path, problem) from None
    return _check(rulebook, src)


def _check(rulebook: Rulebook, src: _RequestIn) -> QuoteRequest:
    member = None
    if src.member is not None:
        m = src.member
        if m.tier not in rulebook.tiers:
            raise RequestError("member.tier", f"unknown tier {m.tier!r}")
        coupons = tuple(
            Coupon(c.id, c.template,
                   NEVER_BEFORE if c.valid_from is None else c.valid_from,
                   FOREVER if c.valid_until is None else c.valid_until)
            for c in m.coupons or ())
        _no_duplicates("member.coupons", [c.id for c in coupons], ".id", "coupon")
        for i, card in enumerate(m.count_cards or ()):
            if len(card.skus) > MAX_CARD_SKUS:
                raise RequestError(f"member.count_cards[{i}].skus",
                                   f"at most {MAX_CARD_SKUS} entries, got {len(card.skus)}")
        cards = tuple(
            CountCard(k.id, frozenset(k.skus), k.uses,
                      FOREVER if k.valid_until is None else k.valid_until)
            for k in m.count_cards or ())
        _no_duplicates("member.count_cards", [k.id for k in cards], ".id", "count card")
        member = Member(m.id, m.tier, m.points_balance or 0, m.stored_value_cents or 0,
                        coupons, cards)

    coupon_ids = tuple(src.coupon_ids or ())
    _no_duplicates("coupon_ids", list(coupon_ids), "", "coupon")
    auto = bool(src.auto_coupons)
    if auto and coupon_ids:
        raise RequestError("auto_coupons", "cannot be true when coupon_ids are presented")

    try:
        weekday, minute = local_weekday_minute(src.at, rulebook.zone)
    except ValueError as exc:
        raise RequestError("at", str(exc)) from None

    lines = tuple(Line(x.sku, x.category, x.unit_price_cents, x.quantity, x.count_card_id)
                  for x in src.lines)
    _check_count_cards(src.at, member, lines)
    return QuoteRequest(
        at=src.at, weekday=weekday, minute=minute, store=src.store, member=member,
        lines=lines, coupon_ids=coupon_ids, auto_coupons=auto,
        redeem_points=src.redeem_points or 0,
        pay_stored_value_cents=src.pay_stored_value_cents or 0)


def _no_duplicates(path: str, ids: list[str], suffix: str, what: str) -> None:
    seen: set[str] = set()
    for i, ident in enumerate(ids):
        if ident in seen:
            raise RequestError(f"{path}[{i}]{suffix}", f"duplicate {what} id {ident!r}")
        seen.add(ident)


def _check_count_cards(at: int, member: Member | None, lines: tuple[Line, ...]) -> None:
    cards = {k.id: k for k in member.count_cards} if member is not None else {}
    used: dict[str, int] = {}
    for i, line in enumerate(lines):
        if line.count_card_id is None:
            continue
        where = f"lines[{i}].count_card_id"
        card = cards.get(line.count_card_id)
        if card is None:
            raise RequestError(where, f"the member holds no count card {line.count_card_id!r}")
        if at >= card.valid_until:
            raise RequestError(where, f"count card {card.id!r} has expired")
        if line.sku not in card.skus:
            raise RequestError(where, f"count card {card.id!r} does not cover SKU {line.sku!r}")
        used[card.id] = used.get(card.id, 0) + line.quantity
        if used[card.id] > card.uses:
            raise RequestError(
                where, f"count card {card.id!r} has {card.uses} uses left, "
                f"the lines need {used[card.id]}")
