"""The rulebook: loaded from TOML, validated, compiled once.

``load_rulebook(path)`` returns an immutable :class:`Rulebook`. Every field
error names the section, the entry and the field, e.g.
``coupon_templates[2] (PCT12).off_bp: must be ...``. The engines keep their
own compiled form of a rulebook in ``Rulebook.compiled`` (built on first
use by an engine, never per quote).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from ._schema import Bp, Code, StrictModel, bounded, dotted, first_error
from .errors import RulebookError
from .timeutil import FOREVER, NEVER_BEFORE, local_instant
from .watchdog import Watchdog, WatchdogIn, compile_watchdog

ROUNDING_MODES = ("none", "floor_jiao", "floor_yuan")
COUPON_KINDS = ("threshold", "percent", "voucher")
MAX_COUPONS_LIMIT = 8
MAX_TIERS = 64
_CENTS = bounded(0, 10**12)
_MULT = bounded(0, 100_000)
_WINDOW = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")

# --------------------------------------------------------------------------
# The TOML shape (strict pydantic models).


class _StoreRulesIn(StrictModel):
    rounding: Literal["none", "floor_jiao", "floor_yuan"] | None = None
    max_coupons_per_order: bounded(0, MAX_COUPONS_LIMIT) | None = None  # type: ignore[valid-type]


class _PointsIn(StrictModel):
    earn_per_yuan: bounded(0, 1000)  # type: ignore[valid-type]
    redeem_points: bounded(1, 10**9)  # type: ignore[valid-type]
    redeem_cents: bounded(1, 10**9)  # type: ignore[valid-type]
    max_redeem_bp: Bp
    expiry_days: bounded(1, 36500) | None = None  # type: ignore[valid-type]
    referral_points: bounded(0, 10**9) = 0  # type: ignore[valid-type]


class _RechargeRuleIn(StrictModel):
    min_cents: bounded(1, 10**12)  # type: ignore[valid-type]
    bonus_cents: _CENTS = 0  # type: ignore[valid-type]
    bonus_points: bounded(0, 10**9) = 0  # type: ignore[valid-type]
    bonus_coupons: list[Code] = []
    coupon_valid_days: bounded(1, 3650) = 30  # type: ignore[valid-type]


class _TierIn(StrictModel):
    code: Code
    rank: bounded(0, 1000)  # type: ignore[valid-type]
    off_bp: Bp = 0
    points_multiplier_bp: _MULT = 10_000  # type: ignore[valid-type]
    upgrade_at_cents: _CENTS = 0  # type: ignore[valid-type]


class _CategoryIn(StrictModel):
    code: Code
    discountable: bool = True
    earns_points: bool = True
    tier_off_bp: dict[Code, Bp] = {}


class _MemberPriceIn(StrictModel):
    sku: Code
    min_tier: Code | None = None
    unit_price_cents: _CENTS  # type: ignore[valid-type]


# Validated in _compile (local_instant), so an error names the field, not a union member.
_Moment = Any


class _PromotionIn(StrictModel):
    code: Code
    off_bp: Bp | None = None
    points_multiplier_bp: _MULT | None = None  # type: ignore[valid-type]
    skus: list[Code] = []
    categories: list[Code] = []
    members_only: bool = False
    valid_from: _Moment | None = None
    valid_until: _Moment | None = None
    weekdays: list[bounded(1, 7)] | None = None  # type: ignore[valid-type]
    hours: list[str] | None = None


class _CouponTemplateIn(StrictModel):
    code: Code
    kind: Literal["threshold", "percent", "voucher"]
    threshold_cents: _CENTS | None = None  # type: ignore[valid-type]
    off_cents: _CENTS | None = None  # type: ignore[valid-type]
    off_bp: Bp | None = None
    max_off_cents: _CENTS | None = None  # type: ignore[valid-type]
    skus: list[Code] = []
    categories: list[Code] = []
    stackable: bool = True
    min_tier: Code | None = None
    per_order_limit: bounded(1, MAX_COUPONS_LIMIT) = 1  # type: ignore[valid-type]
    weekdays: list[bounded(1, 7)] | None = None  # type: ignore[valid-type]
    hours: list[str] | None = None


class _RulebookIn(StrictModel):
    version: Code
    timezone: Code
    store_defaults: _StoreRulesIn = _StoreRulesIn()
    stores: dict[Code, _StoreRulesIn] = {}
    points: _PointsIn | None = None
    tiers: list[_TierIn] = []
    categories: list[_CategoryIn] = []
    member_prices: list[_MemberPriceIn] = []
    promotions: list[_PromotionIn] = []
    coupon_templates: list[_CouponTemplateIn] = []
    recharge_rules: list[_RechargeRuleIn] = []
    watchdog: WatchdogIn = WatchdogIn()


# --------------------------------------------------------------------------
# The compiled, immutable rulebook the engines read.


@dataclass(frozen=True, slots=True)
class Window:
    """When a rule applies: ISO weekdays and ``[start, end)`` minute-of-day ranges."""

    weekdays: frozenset[int] | None = None
    hours: tuple[tuple[int, int], ...] | None = None

    def admits(self, weekday: int, minute: int) -> bool:
        """True when the local weekday and minute of day fall in the window."""
        if self.weekdays is not None and weekday not in self.weekdays:
            return False
        if self.hours is not None:
            return any(start <= minute < end for start, end in self.hours)
        return True


@dataclass(frozen=True, slots=True)
class Tier:
    """A membership tier."""

    code: str
    rank: int
    off_bp: int
    points_multiplier_bp: int
    upgrade_at_cents: int


@dataclass(frozen=True, slots=True)
class Category:
    """Per-category switches and tier overrides (unknown categories have none)."""

    code: str
    discountable: bool = True
    earns_points: bool = True
    tier_off_bp: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemberPrice:
    """A member unit price for a SKU, for tiers of rank ``min_rank`` and up."""

    sku: str
    min_rank: int
    unit_price_cents: int


@dataclass(frozen=True, slots=True)
class Promotion:
    """An automatic promotion: an item discount or an order-level points multiplier."""

    code: str
    off_bp: int | None
    points_multiplier_bp: int | None
    skus: frozenset[str]
    categories: frozenset[str]
    members_only: bool
    valid_from: int
    valid_until: int
    window: Window

    def active(self, at: int, weekday: int, minute: int, has_member: bool) -> bool:
        """Active at instant ``at`` (local ``weekday``/``minute``) for this customer."""
        if self.members_only and not has_member:
            return False
        return self.valid_from <= at < self.valid_until and self.window.admits(weekday, minute)

    def matches(self, sku: str, category: str) -> bool:
        """Whether the promotion covers a line (no skus and no categories: every line)."""
        if not self.skus and not self.categories:
            return True
        return sku in self.skus or category in self.categories


@dataclass(frozen=True, slots=True)
class CouponTemplate:
    """A coupon template; ``min_rank`` is -1 when any tier may use it."""

    code: str
    kind: str
    threshold_cents: int
    off_cents: int
    off_bp: int
    max_off_cents: int | None
    skus: frozenset[str]
    categories: frozenset[str]
    stackable: bool
    min_rank: int
    per_order_limit: int
    window: Window

    def matches(self, sku: str, category: str) -> bool:
        """Whether a (discountable) line is eligible for this template."""
        if not self.skus and not self.categories:
            return True
        return sku in self.skus or category in self.categories


@dataclass(frozen=True, slots=True)
class PointsRules:
    """Earning and redemption of points; lots expire ``expiry_days`` after they are earned."""

    earn_per_yuan: int
    redeem_points: int
    redeem_cents: int
    max_redeem_bp: int
    expiry_days: int | None = None
    referral_points: int = 0


@dataclass(frozen=True, slots=True)
class RechargeRule:
    """Pay at least ``min_cents``, get a bonus (stored value, points, coupons)."""

    min_cents: int
    bonus_cents: int
    bonus_points: int
    bonus_coupons: tuple[str, ...]
    coupon_valid_days: int


@dataclass(frozen=True, slots=True)
class StoreRules:
    """Store-level settings (defaults, possibly overridden per store)."""

    rounding: str
    max_coupons_per_order: int


@dataclass(frozen=True)
class Rulebook:
    """A validated rulebook. Build it with :func:`load_rulebook` or :func:`rulebook_from_toml`."""

    version: str
    timezone: str
    zone: ZoneInfo
    store_defaults: StoreRules
    stores: Mapping[str, StoreRules]
    points: PointsRules | None
    tiers: Mapping[str, Tier]
    categories: Mapping[str, Category]
    member_prices: Mapping[str, tuple[MemberPrice, ...]]
    promotions: tuple[Promotion, ...]
    coupon_templates: Mapping[str, CouponTemplate]
    #: The ``[watchdog]`` section (its documented defaults when the section is absent).
    watchdog: Watchdog
    #: Sorted by ``min_cents``; the best match is the largest not above the amount.
    recharge_rules: tuple[RechargeRule, ...] = ()
    source: str = "<rulebook>"
    #: Per-engine compiled forms, filled by the engines on first use.
    compiled: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def store_rules(self, store: str) -> StoreRules:
        """The settings in force at ``store``."""
        return self.stores.get(store, self.store_defaults)

    def recharge_rule(self, amount_cents: int) -> RechargeRule | None:
        """The rule for a recharge of ``amount_cents``: the largest ``min_cents`` not above it."""
        best = None
        for rule in self.recharge_rules:
            if rule.min_cents <= amount_cents:
                best = rule
        return best


# --------------------------------------------------------------------------
# Loading.


def load_rulebook(path: str | Path) -> Rulebook:
    """Read, validate and compile the TOML rulebook at ``path``.

    Raises :class:`~settlement.errors.RulebookError` naming the section,
    entry and field of the first problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulebookError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RulebookError(str(path), "is not UTF-8 text") from None
    return rulebook_from_toml(text, source=str(path))


def rulebook_from_toml(text: str, source: str = "<rulebook>") -> Rulebook:
    """Validate and compile a rulebook given as TOML text."""
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer past Python's digit limit
        raise RulebookError(source, f"invalid TOML: {exc}") from None
    except RecursionError:
        raise RulebookError(source, "invalid TOML: nested too deeply") from None
    return rulebook_from_mapping(data, source=source)


def rulebook_from_mapping(data: Mapping[str, Any], source: str = "<rulebook>") -> Rulebook:
    """Validate and compile a rulebook already parsed into plain Python data."""
    try:
        parsed = _RulebookIn.model_validate(data)
    except ValidationError as exc:
        path, problem = first_error(exc, lambda loc: _label(data, loc))
        raise RulebookError(path, problem) from None
    return _compile(parsed, data, source)


def _label(data: Any, loc: tuple[Any, ...]) -> str:
    """Field path with the entry's code: ``coupon_templates[2] (PCT12).off_bp``."""
    out = dotted(loc)
    if len(loc) >= 2 and isinstance(loc[1], int) and isinstance(data, Mapping):
        section = data.get(loc[0])
        if isinstance(section, list) and loc[1] < len(section):
            entry = section[loc[1]]
            code = entry.get("code", entry.get("sku")) if isinstance(entry, dict) else None
            if isinstance(code, str) and code:
                head = f"{loc[0]}[{loc[1]}] ({code})"
                rest = dotted(loc[2:]) if len(loc) > 2 else ""
                out = head + ("." + rest if rest and not rest.startswith("[") else rest)
    return out


def _entry(section: str, index: int, code: str) -> str:
    return f"{section}[{index}] ({code})"


def _window(where: str, weekdays: list[int] | None, hours: list[str] | None) -> Window:
    if weekdays is not None and not weekdays:
        raise RulebookError(f"{where}.weekdays", "must not be empty (leave it out for every day)")
    spans: list[tuple[int, int]] | None = None
    if hours is not None:
        if not hours:
            raise RulebookError(f"{where}.hours", "must not be empty (leave it out for all day)")
        spans = []
        for i, text in enumerate(hours):
            match = _WINDOW.fullmatch(text)
            bad = RulebookError(
                f"{where}.hours[{i}]",
                f"{text!r} must be 'HH:MM-HH:MM' with start before end, within 00:00-24:00 "
                "(split a window over midnight in two)",
            )
            if not match:
                raise bad
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start >= end:
                raise bad
            spans.append((start, end))
    return Window(
        weekdays=frozenset(weekdays) if weekdays is not None else None,
        hours=tuple(spans) if spans is not None else None,
    )


def _unique(section: str, codes: list[str]) -> None:
    seen: set[str] = set()
    for i, code in enumerate(codes):
        if code in seen:
            raise RulebookError(f"{_entry(section, i, code)}.code", f"duplicate code {code!r}")
        seen.add(code)


def _compile(src: _RulebookIn, raw: Mapping[str, Any], source: str) -> Rulebook:
    try:
        zone = ZoneInfo(src.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise RulebookError("timezone", f"unknown IANA timezone {src.timezone!r}") from None

    if len(src.tiers) > MAX_TIERS:
        raise RulebookError("tiers", f"at most {MAX_TIERS} tiers, got {len(src.tiers)}")
    _unique("tiers", [t.code for t in src.tiers])
    ranks: set[int] = set()
    for i, t in enumerate(src.tiers):
        if t.rank in ranks:
            raise RulebookError(f"{_entry('tiers', i, t.code)}.rank", f"duplicate rank {t.rank}")
        ranks.add(t.rank)
    tiers = {t.code: Tier(t.code, t.rank, t.off_bp, t.points_multiplier_bp, t.upgrade_at_cents)
             for t in src.tiers}

    def rank_of(where: str, code: str | None) -> int:
        if code is None:
            return -1
        if code not in tiers:
            raise RulebookError(where, f"unknown tier {code!r}")
        return tiers[code].rank

    defaults = StoreRules(
        src.store_defaults.rounding or "none",
        1 if src.store_defaults.max_coupons_per_order is None
        else src.store_defaults.max_coupons_per_order,
    )
    stores = {
        code: StoreRules(
            s.rounding or defaults.rounding,
            defaults.max_coupons_per_order if s.max_coupons_per_order is None
            else s.max_coupons_per_order,
        )
        for code, s in src.stores.items()
    }

    _unique("categories", [c.code for c in src.categories])
    categories = {}
    for i, c in enumerate(src.categories):
        for tier_code in c.tier_off_bp:
            rank_of(f"{_entry('categories', i, c.code)}.tier_off_bp.{tier_code}", tier_code)
        categories[c.code] = Category(c.code, c.discountable, c.earns_points, dict(c.tier_off_bp))

    member_prices: dict[str, list[MemberPrice]] = {}
    for i, mp in enumerate(src.member_prices):
        rank = rank_of(f"{_entry('member_prices', i, mp.sku)}.min_tier", mp.min_tier)
        member_prices.setdefault(mp.sku, []).append(MemberPrice(mp.sku, rank, mp.unit_price_cents))

    _unique("promotions", [p.code for p in src.promotions])
    promotions = []
    for i, p in enumerate(src.promotions):
        where = _entry("promotions", i, p.code)
        if (p.off_bp is None) == (p.points_multiplier_bp is None):
            raise RulebookError(
                f"{where}.off_bp", "set exactly one of off_bp and points_multiplier_bp")
        if p.points_multiplier_bp is not None and (p.skus or p.categories):
            raise RulebookError(
                f"{where}.{'skus' if p.skus else 'categories'}",
                "a points_multiplier_bp promotion is order-level: "
                "it cannot name skus or categories",
            )
        bounds = []
        for name, value, default in (("valid_from", p.valid_from, NEVER_BEFORE),
                                     ("valid_until", p.valid_until, FOREVER)):
            try:
                bounds.append(default if value is None else local_instant(value, zone))
            except ValueError as exc:
                raise RulebookError(f"{where}.{name}", str(exc)) from None
        if bounds[0] >= bounds[1]:
            raise RulebookError(f"{where}.valid_until", "must be after valid_from")
        promotions.append(Promotion(
            p.code, p.off_bp, p.points_multiplier_bp, frozenset(p.skus), frozenset(p.categories),
            p.members_only, bounds[0], bounds[1], _window(where, p.weekdays, p.hours)))
    promotions.sort(key=lambda p: p.code)

    _unique("coupon_templates", [c.code for c in src.coupon_templates])
    templates = {}
    needs = {"threshold": ("threshold_cents", "off_cents"), "percent": ("off_bp",),
             "voucher": ("off_cents",)}
    allowed = {"threshold": {"threshold_cents", "off_cents"},
               "percent": {"off_bp", "max_off_cents"}, "voucher": {"off_cents"}}
    for i, ct in enumerate(src.coupon_templates):
        where = _entry("coupon_templates", i, ct.code)
        for name in needs[ct.kind]:
            if getattr(ct, name) is None:
                raise RulebookError(f"{where}.{name}", f"required for kind {ct.kind!r}")
        for name in ("threshold_cents", "off_cents", "off_bp", "max_off_cents"):
            if getattr(ct, name) is not None and name not in allowed[ct.kind]:
                raise RulebookError(f"{where}.{name}", f"not used by kind {ct.kind!r}")
        templates[ct.code] = CouponTemplate(
            ct.code, ct.kind, ct.threshold_cents or 0, ct.off_cents or 0, ct.off_bp or 0,
            ct.max_off_cents, frozenset(ct.skus), frozenset(ct.categories), ct.stackable,
            rank_of(f"{where}.min_tier", ct.min_tier), ct.per_order_limit,
            _window(where, ct.weekdays, ct.hours))

    points = None
    if src.points is not None:
        pt = src.points
        points = PointsRules(pt.earn_per_yuan, pt.redeem_points, pt.redeem_cents,
                             pt.max_redeem_bp, pt.expiry_days, pt.referral_points)

    recharge_rules = []
    seen_min: set[int] = set()
    for i, rr in enumerate(src.recharge_rules):
        where = f"recharge_rules[{i}]"
        if rr.min_cents in seen_min:
            raise RulebookError(f"{where}.min_cents", f"duplicate min_cents {rr.min_cents}")
        seen_min.add(rr.min_cents)
        for j, code in enumerate(rr.bonus_coupons):
            if code not in templates:
                raise RulebookError(f"{where}.bonus_coupons[{j}]",
                                    f"unknown coupon template {code!r}")
        recharge_rules.append(RechargeRule(rr.min_cents, rr.bonus_cents, rr.bonus_points,
                                           tuple(rr.bonus_coupons), rr.coupon_valid_days))
    recharge_rules.sort(key=lambda rule: rule.min_cents)

    return Rulebook(
        version=src.version, timezone=src.timezone, zone=zone, store_defaults=defaults,
        stores=stores, points=points, tiers=tiers, categories=categories,
        member_prices={k: tuple(v) for k, v in member_prices.items()},
        promotions=tuple(promotions), coupon_templates=templates,
        recharge_rules=tuple(recharge_rules), source=source,
        watchdog=compile_watchdog(src.watchdog, zone, _spans))


def _spans(where: str, hours: list[str]) -> tuple[tuple[int, int], ...]:
    """``"HH:MM-HH:MM"`` strings as minute spans; errors name ``where[i]``."""
    try:
        spans = _window("", None, hours).hours
    except RulebookError as exc:
        raise RulebookError(where + exc.field.removeprefix(".hours"), exc.problem) from None
    assert spans is not None
    return spans
