"""Seeded generator of random (rulebook, request) pairs covering the whole pricing contract.

``random_case(random.Random(seed))`` always returns the same
``(rulebook TOML text, request dict)`` for the same seed. The rulebooks are
always valid; about 5 % of the requests are invalid in one or two ways (a bad
field) so that error equivalence of the engines is exercised too.

Every knob of the contract is drawn: 1-4 tiers with ranks, categories
(``discountable``/``earns_points`` false, ``tier_off_bp``), member prices,
item-discount and points-multiplier promotions (skus, categories,
members-only, weekdays, hours, validity windows in every TOML form), coupon
templates of all three kinds (caps, non-stackable, ``min_tier``,
``per_order_limit``, skus/categories, weekdays/hours), an optional
``[points]`` section, store overrides of rounding and coupon count, members
with coupons (unknown templates, expired, not yet valid), count cards,
presented or automatic coupons, points redemption, stored value, and ``at``
instants chosen so that windows are both hit and missed, sometimes exactly
on a boundary.

The size of the coupon search is bounded (see :data:`SEARCH_BUDGET`) so the
pure-Python reference prices every case in a few milliseconds.
"""

from __future__ import annotations

import copy
import json
import math
import random
import tomllib
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "CATEGORIES",
    "SKUS",
    "case_for_seed",
    "invalidate",
    "random_case",
    "random_request_for",
    "random_rulebook",
    "search_size",
]

SKUS = ["MILK-1L", "APPLE", "RICE-5KG", "SALMON", "CIG", "CAR-WASH", "BREAD", "EGG-12",
        "TEA", "WINE", "DIAPER", "苹果"]
CATEGORIES = ["dairy", "fruit", "grain", "fresh", "tobacco", "service", "bakery", "drinks",
              "baby"]
#: Categories lines may name that the rulebook never defines (no overrides).
UNKNOWN_CATEGORIES = ["misc", "unlisted"]
TIER_CODES = ["normal", "silver", "gold", "platinum", "diamond"]
TIMEZONES = ["Asia/Shanghai", "UTC", "America/New_York", "Europe/London", "Asia/Kolkata",
             "Australia/Lord_Howe"]
#: ``at`` falls in [START, END): spans the autumn DST changes of New York and London.
START = datetime(2026, 10, 20, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
OFFSETS = [timedelta(hours=8), timedelta(0), timedelta(hours=-5), timedelta(hours=5, minutes=45),
           timedelta(hours=-9, minutes=-30), timedelta(hours=14)]
#: Upper bound on ``sum(C(candidates, k) for k <= max_coupons) * (lines + 4)``, the size of
#: the exact coupon search, so the pure reference stays fast on every generated case.
SEARCH_BUDGET = 400_000


def case_for_seed(seed: int, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """``random_case`` with a fresh ``random.Random(seed)``."""
    return random_case(random.Random(seed), **kwargs)


def random_case(rng: random.Random, *, invalid: bool | None = None, member: bool | None = None,
                max_held: int = 40) -> tuple[str, dict[str, Any]]:
    """A random ``(rulebook TOML, request)``.

    ``invalid`` forces (True) or forbids (False) a bad field in the request;
    by default about 5 % of the cases have one. ``member`` forces a member
    to be present or absent. ``max_held`` caps the member's coupons.
    """
    toml_text = random_rulebook(rng)
    if invalid is None:
        invalid = rng.random() < 0.05
    request = random_request_for(rng, toml_text, member=member, max_held=max_held)
    if invalid:
        request = invalidate(rng, request, toml_text)
    return toml_text, request


# --------------------------------------------------------------------------
# Small helpers.


def _q(text: str) -> str:
    """A TOML basic string."""
    return json.dumps(text, ensure_ascii=False)


def _list(items: list[Any]) -> str:
    return "[" + ", ".join(_q(x) if isinstance(x, str) else str(x) for x in items) + "]"


def _pick_bp(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.7:
        return rng.choice([300, 500, 800, 1000, 1200, 1500, 2000, 2500, 3000, 5000])
    if r < 0.97:
        return rng.randint(1, 9999)
    return 10000


def _sample(rng: random.Random, pool: list[str], lo: int, hi: int) -> list[str]:
    return rng.sample(pool, rng.randint(lo, min(hi, len(pool))))


def _hours(rng: random.Random) -> list[str]:
    """1-3 ``HH:MM-HH:MM`` windows (possibly overlapping, possibly ending at 24:00)."""
    out = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        start = rng.choice([rng.randrange(0, 24) * 60, rng.randrange(0, 1440)])
        end = rng.choice([start + rng.randint(1, 600), 1440, start + 60])
        end = min(end, 1440)
        if start >= end:
            start, end = 0, 1440
        out.append(f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}")
    return out


def _weekdays(rng: random.Random) -> list[int]:
    days = rng.sample(range(1, 8), rng.randint(1, 6))
    return days if rng.random() < 0.5 else sorted(days)


def _window_lines(rng: random.Random, p_weekdays: float, p_hours: float) -> list[str]:
    out = []
    if rng.random() < p_weekdays:
        out.append(f"weekdays = {_list(_weekdays(rng))}")
    if rng.random() < p_hours:
        out.append(f"hours = {_list(_hours(rng))}")
    return out


def _max_coupons(rng: random.Random) -> int:
    """Mostly 0..4; rarely up to the rulebook limit of 8."""
    return rng.choice([0, 1, 1, 2, 2, 3, 3, 4]) if rng.random() < 0.97 else rng.randint(5, 8)


def _random_instant(rng: random.Random) -> datetime:
    span = int((END - START).total_seconds()) // 60
    return START + timedelta(minutes=rng.randrange(span))


def _toml_moment(rng: random.Random, instant: datetime, zone: ZoneInfo) -> str:
    """``instant`` in one of the forms a rulebook accepts for a promotion bound."""
    local = instant.astimezone(zone)
    form = rng.randrange(6)
    if form == 0:  # TOML offset date-time
        return local.isoformat()
    if form == 1:  # TOML local date-time (read in the rulebook's timezone)
        return local.replace(tzinfo=None).isoformat()
    if form == 2:  # TOML local date (midnight in the rulebook's timezone)
        return local.date().isoformat()
    if form == 3:  # ISO string with an offset
        return _q(instant.astimezone(timezone(rng.choice(OFFSETS))).isoformat())
    if form == 4:  # naive ISO string (read in the rulebook's timezone)
        return _q(local.replace(tzinfo=None).isoformat())
    return _q(local.date().isoformat())


# --------------------------------------------------------------------------
# Rulebooks.


def random_rulebook(rng: random.Random) -> str:
    """A valid random rulebook, as TOML text."""
    zone_name = rng.choice(TIMEZONES)
    zone = ZoneInfo(zone_name)
    out = [f"version = {_q('rb-' + str(rng.randrange(10**6)))}", f"timezone = {_q(zone_name)}"]

    defaults = []
    if rng.random() < 0.6:
        defaults.append(f"rounding = {_q(rng.choice(['none', 'floor_jiao', 'floor_yuan']))}")
    if rng.random() < 0.8:
        defaults.append(f"max_coupons_per_order = {_max_coupons(rng)}")
    if defaults or rng.random() < 0.3:
        out += ["", "[store_defaults]", *defaults]
    for code in _sample(rng, ["S001", "S002", "S003"], 0, 3):
        out += ["", f"[stores.{code}]"]
        if rng.random() < 0.7:
            out.append(f"rounding = {_q(rng.choice(['none', 'floor_jiao', 'floor_yuan']))}")
        if rng.random() < 0.6:
            out.append(f"max_coupons_per_order = {_max_coupons(rng)}")

    if rng.random() < 0.8:
        r = rng.random()
        redeem_points = rng.choice([1, 10, 20, 100]) if r < 0.95 else rng.choice([10**9, 7])
        out += ["", "[points]",
                f"earn_per_yuan = {rng.choice([0, 1, 1, 2, 5] if r < 0.97 else [1000])}",
                f"redeem_points = {redeem_points}",
                f"redeem_cents = {rng.choice([1, 50, 100, 100, 1000, 3])}",
                f"max_redeem_bp = {rng.choice([0, 2000, 5000, 10000, rng.randint(0, 10000)])}"]

    tiers = rng.sample(TIER_CODES, rng.randint(1, 4))
    ranks = rng.sample(range(0, 6) if rng.random() < 0.7 else range(0, 1001), len(tiers))
    for code, rank in zip(tiers, ranks, strict=True):
        out += ["", "[[tiers]]", f"code = {_q(code)}", f"rank = {rank}"]
        if rng.random() < 0.85:
            out.append(f"off_bp = {_pick_bp(rng)}")
        if rng.random() < 0.8:
            mult = rng.choice([10000, 12000, 15000, 20000, 0, rng.randint(0, 100000)])
            out.append(f"points_multiplier_bp = {mult}")
        if rng.random() < 0.5:
            out.append(f"upgrade_at_cents = {rng.randint(0, 10**6)}")

    for code in _sample(rng, CATEGORIES, 0, 5):
        out += ["", "[[categories]]", f"code = {_q(code)}"]
        if rng.random() < 0.35:
            out.append(f"discountable = {rng.choice(['false', 'false', 'true'])}")
        if rng.random() < 0.35:
            out.append(f"earns_points = {rng.choice(['false', 'false', 'true'])}")
        if rng.random() < 0.5:
            overrides = _sample(rng, tiers, 0, 3)
            body = ", ".join(f"{t} = {_pick_bp(rng)}" for t in overrides)
            out.append(f"tier_off_bp = {{ {body} }}")

    for _ in range(rng.choice([0, 1, 2, 3, 4, 6])):
        out += ["", "[[member_prices]]", f"sku = {_q(rng.choice(SKUS))}"]
        if rng.random() < 0.6:
            out.append(f"min_tier = {_q(rng.choice(tiers))}")
        out.append(f"unit_price_cents = {rng.choice([rng.randint(0, 20000), rng.randint(0, 500)])}")

    for code in rng.sample(["P-FRUIT", "P-ALL", "P-MEMBER", "P-NIGHT", "P-X2", "P-A", "P-Z"],
                           rng.choice([0, 1, 1, 2, 2, 3, 4])):
        out += ["", "[[promotions]]", f"code = {_q(code)}"]
        if rng.random() < 0.75:
            out.append(f"off_bp = {_pick_bp(rng)}")
            if rng.random() < 0.5:
                out.append(f"skus = {_list(_sample(rng, SKUS, 0, 4))}")
            if rng.random() < 0.5:
                out.append(f"categories = {_list(_sample(rng, CATEGORIES + ['misc'], 0, 3))}")
        else:
            out.append(f"points_multiplier_bp = {rng.choice([0, 15000, 20000, 30000, 100000])}")
        if rng.random() < 0.3:
            out.append(f"members_only = {rng.choice(['true', 'true', 'false'])}")
        frm = until = None
        if rng.random() < 0.3:
            frm = _random_instant(rng)
        if rng.random() < 0.3:
            until = _random_instant(rng)
        if frm is not None and until is not None and frm >= until:
            frm, until = until, frm
        if frm is not None and until is not None and (
                _toml_date_floor(frm, zone) >= _toml_date_floor(until, zone)):
            until = until + timedelta(days=2)  # so that date forms stay ordered too
        if frm is not None:
            out.append(f"valid_from = {_toml_moment(rng, frm, zone)}")
        if until is not None:
            out.append(f"valid_until = {_toml_moment(rng, until, zone)}")
        out += _window_lines(rng, 0.3, 0.3)

    kinds = ["threshold", "percent", "voucher"]
    for k in range(rng.choice([0, 1, 2, 3, 4, 5, 6, 7])):
        code = rng.choice(["T", "PCT", "V", "券"]) + f"-{k}"
        kind = rng.choice(kinds)
        out += ["", "[[coupon_templates]]", f"code = {_q(code)}", f"kind = {_q(kind)}"]
        if kind == "threshold":
            thresholds = [0, 1000, 5000, 10000, 30000, 10**5, 10**6, 10**7]
            out.append(f"threshold_cents = {rng.choice(thresholds)}")
            out.append(f"off_cents = {rng.choice([0, 100, 500, 1000, 2000, 3000, 10**12])}")
        elif kind == "percent":
            out.append(f"off_bp = {_pick_bp(rng)}")
            if rng.random() < 0.5:
                out.append(f"max_off_cents = {rng.choice([0, 500, 1000, 2000, 5000, 10**12])}")
        else:
            out.append(f"off_cents = {rng.choice([0, 1, 300, 500, 1000, 5000, 10**12])}")
        if rng.random() < 0.3:
            out.append(f"skus = {_list(_sample(rng, SKUS, 1, 4))}")
        if rng.random() < 0.3:
            out.append(f"categories = {_list(_sample(rng, CATEGORIES, 1, 3))}")
        if rng.random() < 0.2:
            out.append("stackable = false")
        elif rng.random() < 0.1:
            out.append("stackable = true")
        if rng.random() < 0.25:
            out.append(f"min_tier = {_q(rng.choice(tiers))}")
        if rng.random() < 0.5:
            out.append(f"per_order_limit = {rng.randint(1, 3) if rng.random() < 0.95 else 8}")
        out += _window_lines(rng, 0.15, 0.15)
    return "\n".join(out) + "\n"


def _toml_date_floor(instant: datetime, zone: ZoneInfo) -> date:
    return instant.astimezone(zone).date()


# --------------------------------------------------------------------------
# Requests.


class _Book:
    """What a request generator needs to know of a rulebook (read from its TOML)."""

    def __init__(self, toml_text: str) -> None:
        data = tomllib.loads(toml_text)
        self.zone = ZoneInfo(data["timezone"])
        self.tiers = [t["code"] for t in data.get("tiers", [])]
        self.templates = [t["code"] for t in data.get("coupon_templates", [])]
        self.points = data.get("points")
        defaults = data.get("store_defaults", {})
        default_max = defaults.get("max_coupons_per_order", 1)
        self.stores = {code: s.get("max_coupons_per_order", default_max)
                       for code, s in data.get("stores", {}).items()}
        self.default_max = default_max
        self.boundaries = self._boundaries(data)

    def max_coupons(self, store: str) -> int:
        return self.stores.get(store, self.default_max)

    def _boundaries(self, data: dict[str, Any]) -> list[datetime]:
        """Instants at which some promotion or template window opens or closes."""
        out: list[datetime] = []
        days = [START.date() + timedelta(days=d) for d in range((END - START).days)]
        for section in ("promotions", "coupon_templates"):
            for entry in data.get(section, []):
                for name in ("valid_from", "valid_until"):
                    value = entry.get(name)
                    if value is not None:
                        out.append(_as_instant(value, self.zone))
                for window in entry.get("hours", []):
                    for part in window.split("-"):
                        hh, mm = (int(x) for x in part.split(":"))
                        day = days[len(out) % len(days)]
                        local = datetime(day.year, day.month, day.day, tzinfo=self.zone)
                        out.append((local + timedelta(minutes=hh * 60 + mm)).astimezone(UTC))
        return out


def _as_instant(value: Any, zone: ZoneInfo) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=zone)).astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=zone).astimezone(UTC)


def _iso(rng: random.Random, instant: datetime) -> Any:
    """``instant`` as an ISO string with a random offset (rarely: an aware datetime, or one of
    the other ISO 8601 spellings ``datetime.fromisoformat`` accepts)."""
    shown = instant.astimezone(timezone(rng.choice(OFFSETS)))
    r = rng.random()
    if r < 0.02:
        return shown
    if r < 0.05:
        return _exotic_iso(rng, shown)
    text = shown.isoformat()
    if r < 0.15 and shown.utcoffset() == timedelta(0):
        text = text.replace("+00:00", "Z")
    return text


def _exotic_iso(rng: random.Random, dt: datetime) -> str:
    """The same instant, spelled in a less common ISO 8601 form."""
    offset = dt.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    hh, mm = divmod(minutes, 60)
    form = rng.randrange(6)
    if form == 0 and not dt.microsecond:  # basic format
        return dt.strftime("%Y%m%dT%H%M%S") + f"{sign}{hh:02d}{mm:02d}"
    if form == 1:  # space separator
        return dt.isoformat(sep=" ")
    if form == 2:  # milliseconds
        return dt.isoformat(timespec="milliseconds")
    if form == 3:  # microseconds always shown
        return dt.isoformat(timespec="microseconds")
    if form == 4:  # "-00:00" for UTC, or an offset with seconds (same instant)
        if offset == timedelta(0):
            return dt.replace(tzinfo=None).isoformat() + "-00:00"
        return dt.astimezone(timezone(timedelta(hours=3, minutes=7, seconds=30))).isoformat()
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def search_size(candidates: int, max_coupons: int) -> int:
    """Number of subsets the exact coupon search may visit (no pruning)."""
    return sum(math.comb(candidates, k) for k in range(0, min(candidates, max_coupons) + 1))


def _ids(rng: random.Random, prefix: str, n: int) -> list[str]:
    """``n`` distinct ids whose string order differs from their numeric order."""
    style = rng.random()
    if style < 0.6:
        nums = rng.sample(range(1, 200), n)
        return [f"{prefix}-{k}" for k in nums]
    if style < 0.8:
        nums = rng.sample(range(1, 200), n)
        return [f"{prefix.lower()}{k:03d}" for k in nums]
    marks = ["", "Ä", "券", "\U0001f39f", "z", "-"]
    out: set[str] = set()
    while len(out) < n:
        out.add(f"{rng.choice(marks)}{prefix}{rng.randrange(60)}{rng.choice(marks)}")
    ids = sorted(out)  # not the set's order: that depends on PYTHONHASHSEED
    rng.shuffle(ids)
    return ids


def _amount(rng: random.Random, typical: int) -> int:
    r = rng.random()
    if r < 0.15:
        return 0
    if r < 0.95:
        return rng.randint(0, typical)
    return rng.choice([10**15, rng.randint(0, 10**15)])


def random_request_for(rng: random.Random, rulebook_toml: str, *, member: bool | None = None,
                       max_held: int = 40) -> dict[str, Any]:
    """A random valid request for the rulebook given as TOML text."""
    book = _Book(rulebook_toml)

    # When: anywhere in the period, or exactly on a window boundary (or one microsecond off).
    r = rng.random()
    if book.boundaries and r < 0.25:
        at = rng.choice(book.boundaries)
        at += rng.choice([timedelta(0), timedelta(0), timedelta(microseconds=-1),
                          timedelta(minutes=-1)])
    elif r < 0.99:
        at = _random_instant(rng)
        if rng.random() < 0.2:
            at += timedelta(seconds=rng.randrange(60), microseconds=rng.randrange(10**6))
    else:  # local mean time (offsets with seconds), old DST rules, the far future
        at = datetime(rng.choice([1850, 1890, 1900, 1901, 1919, 1942, 2040, 2099, 2500]),
                      rng.randint(1, 12), rng.randint(1, 28), tzinfo=UTC)
        at += timedelta(minutes=rng.randrange(1440), seconds=rng.randrange(60))

    store = rng.choice(list(book.stores) + ["S001", "S-OTHER"])
    req: dict[str, Any] = {"at": _iso(rng, at), "store": store}

    # Lines.
    r = rng.random()
    if r < 0.02:
        n_lines = rng.randint(100, 400)
    elif r < 0.4:
        n_lines = rng.randint(1, 5)
    else:
        n_lines = rng.randint(1, 30)
    skus = SKUS[: rng.randint(3, len(SKUS))]
    cats = CATEGORIES + UNKNOWN_CATEGORIES
    lines = []
    huge = rng.random() < 0.02  # the extreme amounts: exact big-integer arithmetic
    for _ in range(n_lines):
        sku = rng.choice(skus)
        if rng.random() < 0.7:
            category = cats[SKUS.index(sku) % len(cats)]
        else:
            category = rng.choice(cats)
        r = rng.random()
        if huge:
            price = rng.choice([10**8, rng.randint(10**7, 10**8)])
        elif r < 0.05:
            price = 0
        elif r < 0.9:
            price = rng.randint(0, 20000)
        elif r < 0.98:
            price = rng.randint(0, 10**6)
        else:
            price = rng.randint(0, 10**8)
        if huge:
            quantity = rng.choice([9999, rng.randint(1, 9999)])
        else:
            quantity = rng.randint(1, 20) if rng.random() < 0.92 else rng.randint(1, 9999)
        line: dict[str, Any] = {"sku": sku, "category": category,
                                "unit_price_cents": price, "quantity": quantity}
        if rng.random() < 0.03:
            line["count_card_id"] = None
        lines.append(line)
    req["lines"] = lines

    has_member = rng.random() < 0.85 if member is None else member
    max_coupons = book.max_coupons(store)
    if has_member:
        mem, held_ids = _member(rng, book, at, lines, max_held)
        req["member"] = mem
        _coupon_choice(rng, req, held_ids, max_coupons, n_lines)
        if book.points is not None or rng.random() < 0.3:
            r = rng.random()
            balance = mem.get("points_balance") or 0
            if r < 0.6:
                req["redeem_points"] = rng.randint(0, balance + 100)
            elif r < 0.7:
                req["redeem_points"] = 10**15
            elif r < 0.8:
                req["redeem_points"] = None
        if rng.random() < 0.5:
            stored = mem.get("stored_value_cents") or 0
            req["pay_stored_value_cents"] = rng.choice(
                [rng.randint(0, stored + 1000), 10**15, 0])
    else:
        r = rng.random()
        if r < 0.1:
            req["coupon_ids"] = _ids(rng, "C", rng.randint(1, 3))
        elif r < 0.15:
            req["auto_coupons"] = True
        if rng.random() < 0.1:
            req["redeem_points"] = rng.randint(0, 1000)
        if rng.random() < 0.1:
            req["pay_stored_value_cents"] = rng.randint(0, 1000)
        if rng.random() < 0.05:
            req["member"] = None
    return req


def _member(rng: random.Random, book: _Book, at: datetime, lines: list[dict[str, Any]],
            max_held: int) -> tuple[dict[str, Any], list[str]]:
    mem: dict[str, Any] = {"id": f"M{rng.randrange(10**5):05d}", "tier": rng.choice(book.tiers)}
    if rng.random() < 0.9:
        mem["points_balance"] = _amount(rng, 20000)
    elif rng.random() < 0.3:
        mem["points_balance"] = None  # null: not given, 0
    if rng.random() < 0.8:
        mem["stored_value_cents"] = _amount(rng, 100000)
    elif rng.random() < 0.3:
        mem["stored_value_cents"] = None

    # Coupons: of known and unknown templates; valid, expired, not yet valid, unbounded.
    # A "rich" member holds many usable coupons of a few templates: a big exact search.
    rich = rng.random() < 0.15
    n_held = min(max_held, rng.choice([0, rng.randint(0, 6), rng.randint(1, 12),
                                       rng.randint(0, 40)] if not rich else [rng.randint(8, 40)]))
    held_ids = _ids(rng, "C", n_held)
    coupons = []
    templates = book.templates or ["NO-SUCH"]
    if rich:
        templates = rng.sample(templates, min(len(templates), rng.randint(1, 3)))
    for cid in held_ids:
        coupon: dict[str, Any] = {
            "id": cid,
            "template": rng.choice(templates) if rng.random() < 0.92 else "NO-SUCH-TPL",
        }
        if rich and rng.random() < 0.9:
            if rng.random() < 0.5:
                coupon["valid_until"] = _iso(rng, at + timedelta(days=rng.choice([1, 2, 30])))
            coupons.append(coupon)
            continue
        r = rng.random()
        if r < 0.45:
            coupon["valid_from"] = _iso(rng, at - timedelta(minutes=rng.randint(1, 60 * 24 * 30)))
        elif r < 0.5:
            coupon["valid_from"] = _iso(rng, at)
        elif r < 0.6:
            coupon["valid_from"] = _iso(rng, at + rng.choice(
                [timedelta(microseconds=1), timedelta(days=rng.randint(1, 9))]))
        elif r < 0.65:
            coupon["valid_from"] = None
        r = rng.random()
        if r < 0.6:
            # A few shared expiries so the tie-break on expiry instants matters.
            coupon["valid_until"] = _iso(rng, at + rng.choice(
                [timedelta(days=1), timedelta(days=7), timedelta(hours=rng.randint(1, 900)),
                 timedelta(microseconds=1)]))
        elif r < 0.68:
            coupon["valid_until"] = _iso(rng, at)
        elif r < 0.8:
            coupon["valid_until"] = _iso(rng, at - timedelta(hours=rng.randint(1, 900)))
        elif r < 0.85:
            coupon["valid_until"] = None
        coupons.append(coupon)
    if coupons or rng.random() < 0.5:
        mem["coupons"] = coupons
    elif rng.random() < 0.3:
        mem["coupons"] = None

    # Count cards, used validly by some lines.
    cards = []
    for cid in _ids(rng, "K", rng.choice([0, 0, 1, 2, 3])):
        card: dict[str, Any] = {"id": cid, "skus": _sample(rng, SKUS, 0, 4),
                                "uses": rng.choice([0, rng.randint(1, 30), 10**15])}
        r = rng.random()
        if r < 0.5:
            card["valid_until"] = _iso(rng, at + timedelta(days=rng.randint(1, 300)))
        elif r < 0.6:
            card["valid_until"] = _iso(rng, at - timedelta(days=rng.randint(0, 30)))
        elif r < 0.65:
            card["valid_until"] = None
        cards.append(card)
    if cards:
        mem["count_cards"] = cards
        left = {c["id"]: c["uses"] for c in cards}
        for line in lines:
            if rng.random() > 0.3:
                continue
            for c in cards:
                expired = c.get("valid_until") is not None and _parse(c["valid_until"]) <= at
                if (line["sku"] in c["skus"] and not expired
                        and left[c["id"]] >= line["quantity"]):
                    line["count_card_id"] = c["id"]
                    left[c["id"]] -= line["quantity"]
                    break
    elif rng.random() < 0.2:
        mem["count_cards"] = [] if rng.random() < 0.5 else None
    return mem, held_ids


def _parse(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _coupon_choice(rng: random.Random, req: dict[str, Any], held_ids: list[str],
                   max_coupons: int, n_lines: int) -> None:
    """Present coupons or ask for automatic selection, within the search budget."""

    def fits(candidates: int) -> bool:
        return search_size(candidates, max_coupons) * (n_lines + 4) <= SEARCH_BUDGET

    r = rng.random()
    member = req["member"]
    if r < 0.45 and held_ids:
        # auto_coupons: every held coupon is a candidate; trim the member's coupons to fit.
        coupons = member.get("coupons") or []
        while coupons and not fits(min(len(coupons), 32)):
            coupons.pop(rng.randrange(len(coupons)))
        req["auto_coupons"] = True
        if rng.random() < 0.1:
            req["coupon_ids"] = [] if rng.random() < 0.7 else None
    elif r < 0.9:
        pool = list(held_ids)
        presented = rng.sample(pool, rng.randint(len(pool) // 2, len(pool)))
        unknown = [x for x in _ids(rng, "X", rng.choice([0, 0, 0, 1, 2])) if x not in pool]
        presented += unknown
        rng.shuffle(presented)
        presented = presented[:32]
        while presented and not fits(len(presented)):
            presented.pop(rng.randrange(len(presented)))
        req["coupon_ids"] = presented
        if rng.random() < 0.1:
            req["auto_coupons"] = False if rng.random() < 0.7 else None
    elif rng.random() < 0.5:
        req["auto_coupons"] = False


# --------------------------------------------------------------------------
# Invalid requests.


def invalidate(rng: random.Random, request: dict[str, Any], rulebook_toml: str = "",
               ) -> dict[str, Any]:
    """A copy of ``request`` with one (sometimes two) bad fields."""
    req = copy.deepcopy(request)
    rng.choice(_MUTATIONS)(rng, req)
    if rng.random() < 0.2:
        try:  # a second problem: which one is reported first must agree too
            rng.choice(_MUTATIONS)(rng, req)
        except (KeyError, IndexError, TypeError, AttributeError):
            pass  # the first mutation broke what this one edits; the request is invalid anyway
    return req


def _some_line(rng: random.Random, req: dict[str, Any]) -> dict[str, Any]:
    lines = req.get("lines")
    if not isinstance(lines, list) or not lines or not isinstance(lines[0], dict):
        return {}  # an earlier mutation already broke the lines
    return rng.choice(lines)


def _bad_quantity(rng: random.Random, req: dict[str, Any]) -> None:
    _some_line(rng, req)["quantity"] = rng.choice([0, -1, 10000, True, 1.0, "2", None, 2**64])


def _bad_price(rng: random.Random, req: dict[str, Any]) -> None:
    _some_line(rng, req)["unit_price_cents"] = rng.choice(
        [-1, 100_000_001, 1.5, float("nan"), "100", False])


def _bad_line_field(rng: random.Random, req: dict[str, Any]) -> None:
    line = _some_line(rng, req)
    r = rng.randrange(5)
    if r == 0:
        line.pop("sku", None)
        line.setdefault("unit_price_cents", 1)  # a missing sku, whatever else is there
    elif r == 1:
        line["sku"] = ""
    elif r == 2:
        line["discount_cents"] = 5
    elif r == 3:
        line["category"] = 7
    else:
        line["sku"] = "x" * 129


def _bad_line_count(rng: random.Random, req: dict[str, Any]) -> None:
    if rng.random() < 0.4:
        req["lines"] = []
    elif rng.random() < 0.5:
        req["lines"] = (req["lines"] * 501)[:501]
    else:
        req["lines"] = {"0": req["lines"][0]}


def _bad_tier(rng: random.Random, req: dict[str, Any]) -> None:
    if isinstance(req.get("member"), dict):
        req["member"]["tier"] = rng.choice(["no-such-tier", "GOLD"])
    else:
        req["member"] = {"id": "M1", "tier": "no-such-tier"}


def _bad_member_field(rng: random.Random, req: dict[str, Any]) -> None:
    mem = req.get("member")
    if not isinstance(mem, dict):
        req["member"] = mem = {"id": "M1", "tier": "normal"}
    r = rng.randrange(6)
    if r == 0:
        mem.pop("id", None)
    elif r == 1:
        mem["points_balance"] = rng.choice([-1, 10**15 + 1, "10", 1e3])
    elif r == 2:
        mem["stored_value_cents"] = rng.choice([-5, 2.0, True])
    elif r == 3:
        mem["level"] = "gold"
    elif r == 4:
        mem["coupons"] = [{"id": "C1"}]
    else:
        mem["coupons"] = [{"id": "C1", "template": "T", "valid_until": "2026-11-20T10:00:00"}]


def _duplicate_ids(rng: random.Random, req: dict[str, Any]) -> None:
    mem = req.get("member")
    r = rng.randrange(3)
    if r == 0 and isinstance(mem, dict) and mem.get("coupons"):
        mem["coupons"].append(dict(rng.choice(mem["coupons"])))
    elif r == 1 and isinstance(mem, dict) and mem.get("count_cards"):
        mem["count_cards"].insert(0, dict(rng.choice(mem["count_cards"])))
    else:
        ids = list(req.get("coupon_ids") or ["C-1"])
        ids.insert(rng.randrange(len(ids) + 1), rng.choice(ids))
        req["coupon_ids"] = ids
        req.pop("auto_coupons", None)


def _both_coupon_modes(rng: random.Random, req: dict[str, Any]) -> None:
    req["coupon_ids"] = list(req.get("coupon_ids") or ["C-1"])
    req["auto_coupons"] = True


def _too_many_presented(rng: random.Random, req: dict[str, Any]) -> None:
    req["coupon_ids"] = [f"Z{k}" for k in range(33)]
    req.pop("auto_coupons", None)


def _negative_amount(rng: random.Random, req: dict[str, Any]) -> None:
    field = rng.choice(["redeem_points", "pay_stored_value_cents"])
    req[field] = rng.choice([-1, -(10**15), 10**15 + 1, 1.0, "5"])


def _bad_at(rng: random.Random, req: dict[str, Any]) -> None:
    req["at"] = rng.choice([
        "2026-11-20T10:00:00", "2026-11-20", "yesterday", 1700000000, None,
        datetime(2026, 11, 20, 10, 0), "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
    ])


def _bad_count_card(rng: random.Random, req: dict[str, Any]) -> None:
    line = _some_line(rng, req)
    mem = req.get("member")
    cards = mem.get("count_cards") if isinstance(mem, dict) else None
    r = rng.randrange(4)
    if r == 0 or not isinstance(cards, list) or not cards:
        line["count_card_id"] = "K-unknown"
        return
    card = rng.choice(cards)
    line["count_card_id"] = card["id"]
    sku = line.get("sku")
    quantity = line.get("quantity")
    if r == 1:
        card["valid_until"] = req.get("at")  # expired: at >= valid_until
        card["skus"] = list(card["skus"]) + [sku]
    elif r == 2:
        card["skus"] = [s for s in card["skus"] if s != sku]
    else:
        card["skus"] = list(card["skus"]) + [sku]
        card["valid_until"] = None
        card["uses"] = quantity - 1 if type(quantity) is int and quantity >= 1 else 0


def _bad_top_level(rng: random.Random, req: dict[str, Any]) -> None:
    r = rng.randrange(5)
    if r == 0:
        req["discount"] = 1
    elif r == 1:
        req.pop("store")
    elif r == 2:
        req["store"] = ""
    elif r == 3:
        req["auto_coupons"] = rng.choice(["yes", 1])
    else:
        req["coupon_ids"] = "C-1"


def _hostile_shape(rng: random.Random, req: dict[str, Any]) -> None:
    """Shapes JSON cannot produce but a Python caller can: the engines must still agree."""
    r = rng.randrange(6)
    line = _some_line(rng, req)
    if r == 0:
        line[1] = 2  # a non-string key
    elif r == 1:  # a lone surrogate (not encodable as UTF-8) in a code or an instant
        if rng.random() < 0.5:
            line["sku"] = "SKU\ud800"
        else:
            req["at"] = str(req.get("at"))[:24] + "\udfff"
    elif r == 2:
        req["lines"] = tuple(req["lines"]) if isinstance(req.get("lines"), list) else ()
    elif r == 3 and isinstance(req.get("lines"), list) and req["lines"]:
        req["lines"][rng.randrange(len(req["lines"]))] = rng.choice([1, [], None, "x"])
    elif r == 4:
        req["member"] = rng.choice([[], "M1", 0])
    else:
        req["at"] = rng.choice([b"2026-11-20T10:00:00+08:00", 1.5e9, ["2026-11-20T10:00:00Z"]])


_MUTATIONS = [
    _bad_quantity, _bad_price, _bad_line_field, _bad_line_count, _bad_tier, _bad_member_field,
    _duplicate_ids, _both_coupon_modes, _too_many_presented, _negative_amount, _bad_at,
    _bad_count_card, _bad_top_level, _hostile_shape,
]
