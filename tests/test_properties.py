"""Property-based tests of the pricing contract, run against both engines (``engine`` fixture).

Cases come from the seeded generator in :mod:`tests.randomized`; hypothesis
draws the seeds (and the subsets, permutations and extra coupons of the
metamorphic properties). Properties:

- every receipt satisfies the contract's invariants (per line, totals,
  tender, points, rounding, coupon bookkeeping);
- every receipt equals :func:`spec_quote`, a direct, deliberately naive
  reading of ``pricing.md`` + ``docs/pricing-notes.md`` (brute force over all
  coupon subsets, TOML read independently of ``settlement.rulebook``);
- ``auto_coupons`` never gives a smaller total coupon discount than any
  presented subset of the member's coupons;
- presenting one more coupon never lowers the total coupon discount and,
  without points redemption, never raises ``payable_cents``;
- the receipt does not depend on the key order of the request's objects, nor
  on the order of the member's coupons and count cards.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import tomllib
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import settlement

from . import randomized
from .conftest import make_rulebook

SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
SEEDS = st.integers(min_value=0, max_value=2**64 - 1)
REASONS = {"UNKNOWN_COUPON", "NOT_YET_VALID", "EXPIRED", "OUTSIDE_HOURS", "TIER_TOO_LOW",
           "NO_ELIGIBLE_LINES", "THRESHOLD_NOT_MET", "NOT_COMBINABLE"}
LINE_PARTS = ("count_card_cents", "item_discount_cents", "coupon_discount_cents",
              "points_offset_cents", "rounding_cents")
KIND_ORDER = {"threshold": 0, "percent": 1, "voucher": 2}
AUTO_POOL = 32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def valid_case(seed: int, **kwargs: Any) -> tuple[str, settlement.Rulebook, dict[str, Any]]:
    """A valid generated case: TOML text, the loaded rulebook, the request."""
    toml_text, request = randomized.case_for_seed(seed, invalid=False, **kwargs)
    return toml_text, settlement.rulebook_from_toml(toml_text), request


def _instant(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _micros(value: Any) -> int:
    return (_instant(value) - _EPOCH) // timedelta(microseconds=1)


# --------------------------------------------------------------------------
# Invariants.


def check_invariants(rb: settlement.Rulebook, req: dict[str, Any], r: dict[str, Any]) -> None:
    """Assert the invariants the contract states (or implies) for every receipt."""
    member = req.get("member")
    lines = req["lines"]
    assert len(r["lines"]) == len(lines)
    for i, (x, y) in enumerate(zip(lines, r["lines"], strict=True)):
        gross = x["unit_price_cents"] * x["quantity"]
        assert y["gross_cents"] == gross, i
        assert all(type(y[k]) is int and y[k] >= 0 for k in LINE_PARTS), (i, y)
        assert gross - sum(y[k] for k in LINE_PARTS) == y["net_cents"] >= 0, (i, y)
        cat = rb.categories.get(x["category"])
        if x.get("count_card_id") is not None:
            assert y["count_card_cents"] == gross and y["net_cents"] == 0, (i, y)
            assert y["item_discount_source"] == "", (i, y)
        else:
            assert y["count_card_cents"] == 0, (i, y)
        if x.get("count_card_id") is not None or (cat is not None and not cat.discountable):
            assert y["item_discount_cents"] == y["coupon_discount_cents"] == 0, (i, y)
            assert y["points_offset_cents"] == 0 and y["item_discount_source"] == "", (i, y)
        assert (y["item_discount_cents"] > 0) == (y["item_discount_source"] != ""), (i, y)
    for key in ("gross_cents", *LINE_PARTS):
        assert r[key] == sum(y[key] for y in r["lines"]), key
    payable = r["payable_cents"]
    assert payable == sum(y["net_cents"] for y in r["lines"])
    assert r["due_cents"] + r["stored_value_cents"] == payable
    assert r["due_cents"] >= 0 and r["stored_value_cents"] >= 0
    assert r["rulebook_version"] == rb.version

    # Tender.
    if member is None:
        assert r["stored_value_cents"] == 0
    else:
        assert r["stored_value_cents"] == min(req.get("pay_stored_value_cents") or 0,
                                              member.get("stored_value_cents") or 0, payable)

    # Rounding only lowers the bill, by less than one jiao / yuan, to a round amount.
    mode = rb.store_rules(req["store"]).rounding
    step = {"none": 1, "floor_jiao": 10, "floor_yuan": 100}[mode]
    assert 0 <= r["rounding_cents"] < step and payable % step == 0

    # Points.
    pts = rb.points
    if member is None or pts is None:
        assert r["points_redeemed"] == r["points_redeemable_max"] == r["points_earned"] == 0
        assert r["points_offset_cents"] == 0
    else:
        balance = member.get("points_balance") or 0
        redeemed = r["points_redeemed"]
        assert 0 <= redeemed <= r["points_redeemable_max"] <= balance
        assert redeemed <= (req.get("redeem_points") or 0)
        assert redeemed % pts.redeem_points == 0
        assert r["points_redeemable_max"] % pts.redeem_points == 0
        assert r["points_offset_cents"] == redeemed // pts.redeem_points * pts.redeem_cents
        base = sum(y["gross_cents"] - y["item_discount_cents"] - y["coupon_discount_cents"]
                   for x, y in zip(lines, r["lines"], strict=True)
                   if x.get("count_card_id") is None
                   and getattr(rb.categories.get(x["category"]), "discountable", True))
        cap = base * pts.max_redeem_bp // 10000
        assert r["points_offset_cents"] <= cap
        blocks = min(balance // pts.redeem_points, cap // pts.redeem_cents)
        assert r["points_redeemable_max"] == blocks * pts.redeem_points
    assert r["points_earned"] >= 0

    # Coupons.
    applied, rejected = r["applied_coupons"], r["rejected_coupons"]
    assert sum(a["discount_cents"] for a in applied) == r["coupon_discount_cents"]
    assert all(a["discount_cents"] > 0 for a in applied)
    assert len(applied) <= rb.store_rules(req["store"]).max_coupons_per_order
    held = {c["id"]: c for c in (member or {}).get("coupons") or ()}
    templates = [rb.coupon_templates[a["template"]] for a in applied]
    assert all(held[a["id"]]["template"] == a["template"] for a in applied)
    order = [(KIND_ORDER[t.kind], a["id"]) for a, t in zip(applied, templates, strict=True)]
    assert order == sorted(order)
    if len(applied) > 1:
        assert all(t.stackable for t in templates)
    for tpl in templates:
        assert sum(t.code == tpl.code for t in templates) <= tpl.per_order_limit
    if req.get("auto_coupons") and member is not None:
        candidates = sorted(held, key=lambda cid: (held[cid].get("valid_until") is None,
                                                   _micros(held[cid].get("valid_until")
                                                           or "1970-01-01T00:00:00Z"), cid))
    elif member is not None or req.get("coupon_ids"):
        candidates = list(req.get("coupon_ids") or ())
    else:
        candidates = []
    applied_ids = {a["id"] for a in applied}
    assert [x["id"] for x in rejected] == [c for c in candidates if c not in applied_ids]
    assert all(x["reason"] in REASONS for x in rejected)
    if member is None:
        assert not applied and all(x["reason"] == "UNKNOWN_COUPON" for x in rejected)
    if req.get("auto_coupons"):
        # Only the 32 soonest-expiring valid candidates can be applied.
        reasons = {x["id"]: x["reason"] for x in rejected}
        valid = [c for c in candidates if reasons.get(c, "NOT_COMBINABLE") == "NOT_COMBINABLE"]
        assert applied_ids <= set(valid[:AUTO_POOL])

    # Count cards.
    uses: dict[str, int] = {}
    for x in lines:
        if x.get("count_card_id") is not None:
            uses[x["count_card_id"]] = uses.get(x["count_card_id"], 0) + x["quantity"]
    assert r["count_cards_used"] == [{"id": k, "uses": uses[k]} for k in sorted(uses)]


@SETTINGS
@given(seed=SEEDS)
def test_receipt_invariants(engine, seed: int) -> None:
    _, rb, req = valid_case(seed)
    check_invariants(rb, req, engine(rb, req))



# --------------------------------------------------------------------------
# A direct reading of the contract: the oracle.


def _spread(amount: int, weights: list[int]) -> list[int]:
    """The contract's allocation rule, literally."""
    total = sum(weights)
    if amount == 0:
        return [0] * len(weights)
    parts = [amount * w // total for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(amount * weights[i] % total), i))
    for i in by_remainder[: amount - sum(parts)]:
        parts[i] += 1
    return parts


def _half_up(x: int, bp: int) -> int:
    return (x * bp + 5000) // 10000


def _rule_instant(value: Any, zone: ZoneInfo) -> datetime:
    """A rulebook bound: offset/local date-time, date or ISO string (local: rulebook's zone)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        assert isinstance(value, date)
        value = datetime(value.year, value.month, value.day)
    return value if value.tzinfo is not None else value.replace(tzinfo=zone)


def _admits(entry: dict[str, Any], weekday: int, minute: int) -> bool:
    if "weekdays" in entry and weekday not in entry["weekdays"]:
        return False
    if "hours" in entry:
        spans = []
        for text in entry["hours"]:
            a, b = text.split("-")
            spans.append((int(a[:2]) * 60 + int(a[3:]), int(b[:2]) * 60 + int(b[3:])))
        return any(lo <= minute < hi for lo, hi in spans)
    return True


def _matches(entry: dict[str, Any], line: dict[str, Any]) -> bool:
    skus, cats = entry.get("skus", []), entry.get("categories", [])
    return (not skus and not cats) or line["sku"] in skus or line["category"] in cats


def _take(tpl: dict[str, Any], w: int, ignore_threshold: bool = False) -> int:
    if tpl["kind"] == "threshold":
        return min(tpl["off_cents"], w) if ignore_threshold or w >= tpl["threshold_cents"] else 0
    if tpl["kind"] == "percent":
        amount = _half_up(w, tpl["off_bp"])
        return min(amount, tpl["max_off_cents"]) if "max_off_cents" in tpl else amount
    return min(tpl["off_cents"], w)


def spec_quote(toml_text: str, req: dict[str, Any]) -> dict[str, Any]:
    """The receipt of a valid request, computed stage by stage from ``pricing.md``.

    Independent of ``settlement``: reads the TOML itself, searches coupon
    subsets by brute force over every combination.
    """
    book = tomllib.loads(toml_text)
    zone = ZoneInfo(book["timezone"])
    tiers = {t["code"]: t for t in book.get("tiers", [])}
    cats = {c["code"]: c for c in book.get("categories", [])}
    templates = {t["code"]: t for t in book.get("coupon_templates", [])}
    store = {**book.get("store_defaults", {}), **book.get("stores", {}).get(req["store"], {})}
    rounding = store.get("rounding", "none")
    max_coupons = store.get("max_coupons_per_order", 1)
    points = book.get("points")

    at = _instant(req["at"])
    local = at.astimezone(zone)
    weekday, minute = local.isoweekday(), local.hour * 60 + local.minute
    member = req.get("member")
    tier = tiers[member["tier"]] if member else None
    rank = tier["rank"] if tier else -1

    def rank_of(code: str | None) -> int:
        return -1 if code is None else tiers[code]["rank"]

    lines = req["lines"]
    n = len(lines)
    gross = [x["unit_price_cents"] * x["quantity"] for x in lines]
    current = list(gross)
    card = [0] * n
    item, source = [0] * n, [""] * n
    coupon, offset, rounded = [0] * n, [0] * n, [0] * n
    on_card = [x.get("count_card_id") is not None for x in lines]
    discountable = [not on_card[i] and cats.get(x["category"], {}).get("discountable", True)
                    for i, x in enumerate(lines)]

    # 0. Count cards.
    for i in range(n):
        if on_card[i]:
            card[i], current[i] = gross[i], 0

    # 1. Item discount.
    def active(p: dict[str, Any]) -> bool:
        if p.get("members_only", False) and not member:
            return False
        if "valid_from" in p and at < _rule_instant(p["valid_from"], zone):
            return False
        if "valid_until" in p and at >= _rule_instant(p["valid_until"], zone):
            return False
        return _admits(p, weekday, minute)

    promotions = sorted((p for p in book.get("promotions", []) if active(p)),
                        key=lambda p: p["code"])
    for i, x in enumerate(lines):
        if not discountable[i]:
            continue
        options: list[tuple[int, str]] = []
        if tier is not None:
            prices = [mp["unit_price_cents"] for mp in book.get("member_prices", [])
                      if mp["sku"] == x["sku"] and rank_of(mp.get("min_tier")) <= rank]
            if prices:
                options.append((max(0, gross[i] - min(prices) * x["quantity"]), "member_price"))
            off = cats.get(x["category"], {}).get("tier_off_bp", {}).get(
                tier["code"], tier.get("off_bp", 0))
            options.append((_half_up(gross[i], off), "tier"))
        options += [(_half_up(gross[i], p["off_bp"]), f"promotion:{p['code']}")
                    for p in promotions if "off_bp" in p and _matches(p, x)]
        best = max((amount for amount, _ in options), default=0)
        if best > 0:
            item[i], source[i] = best, next(name for amount, name in options if amount == best)
            current[i] -= best

    # 2. Coupons.
    held = {c["id"]: c for c in (member or {}).get("coupons") or ()}

    def expiry(cid: str) -> float:
        until = held[cid].get("valid_until")
        return math.inf if until is None else _micros(until)

    if req.get("auto_coupons"):
        ids = sorted(held, key=lambda cid: (expiry(cid), cid)) if member else []
    else:
        ids = list(req.get("coupon_ids") or ())
    reasons: dict[str, str] = {}
    valid: list[str] = []
    for cid in ids:
        c = held.get(cid)
        tpl = templates.get(c["template"]) if c else None
        if c is None or tpl is None:
            reasons[cid] = "UNKNOWN_COUPON"
        elif c.get("valid_from") is not None and at < _instant(c["valid_from"]):
            reasons[cid] = "NOT_YET_VALID"
        elif c.get("valid_until") is not None and at >= _instant(c["valid_until"]):
            reasons[cid] = "EXPIRED"
        elif not _admits(tpl, weekday, minute):
            reasons[cid] = "OUTSIDE_HOURS"
        elif rank_of(tpl.get("min_tier")) > rank:
            reasons[cid] = "TIER_TOO_LOW"
        else:
            w = sum(current[i] for i, x in enumerate(lines)
                    if discountable[i] and current[i] > 0 and _matches(tpl, x))
            if w == 0 or _take(tpl, w, ignore_threshold=True) == 0:
                reasons[cid] = "NO_ELIGIBLE_LINES"
            elif tpl["kind"] == "threshold" and w < tpl["threshold_cents"]:
                reasons[cid] = "THRESHOLD_NOT_MET"
            else:
                valid.append(cid)
    pool = valid[:AUTO_POOL]

    def tpl_of(cid: str) -> dict[str, Any]:
        return templates[held[cid]["template"]]

    def run(subset: tuple[str, ...]) -> tuple[int, list[tuple[int, list[int]]]] | None:
        """Apply ``subset`` in the contract's order: (total, per coupon (amount, parts))."""
        amounts = list(current)
        total, steps = 0, []
        for cid in sorted(subset, key=lambda c: (KIND_ORDER[tpl_of(c)["kind"]], c)):
            tpl = tpl_of(cid)
            weights = [amounts[i] if discountable[i] and amounts[i] > 0 and _matches(tpl, x)
                       else 0 for i, x in enumerate(lines)]
            amount = _take(tpl, sum(weights))
            if amount <= 0:
                return None
            parts = _spread(amount, weights)
            amounts = [a - p for a, p in zip(amounts, parts, strict=True)]
            total += amount
            steps.append((amount, parts))
        return total, steps

    best_key: tuple[Any, ...] = (0, 0, [], [])
    best_subset: tuple[str, ...] = ()
    for size in range(1, min(max_coupons, len(pool)) + 1):
        for subset in itertools.combinations(pool, size):
            codes = [tpl_of(c)["code"] for c in subset]
            if size > 1 and not all(tpl_of(c).get("stackable", True) for c in subset):
                continue
            if any(codes.count(code) > tpl_of(c).get("per_order_limit", 1)
                   for c, code in zip(subset, codes, strict=True)):
                continue
            result = run(subset)
            if result is None:
                continue
            key = (-result[0], size, sorted(expiry(c) for c in subset), sorted(subset))
            if key < best_key:
                best_key, best_subset = key, subset
    applied = []
    chosen = sorted(best_subset, key=lambda c: (KIND_ORDER[tpl_of(c)["kind"]], c))
    outcome = run(best_subset)
    assert outcome is not None
    for cid, (amount, parts) in zip(chosen, outcome[1], strict=True):
        applied.append({"id": cid, "template": tpl_of(cid)["code"], "discount_cents": amount})
        for i, part in enumerate(parts):
            coupon[i] += part
            current[i] -= part
    rejected = [{"id": cid, "reason": reasons.get(cid, "NOT_COMBINABLE")}
                for cid in ids if cid not in best_subset]

    # 3. Points offset.
    redeemed = redeemable = 0
    if member and points is not None:
        rp, rc = points["redeem_points"], points["redeem_cents"]
        base = sum(c for c, ok in zip(current, discountable, strict=True) if ok)
        cap = base * points["max_redeem_bp"] // 10000
        balance = member.get("points_balance") or 0
        blocks = min((req.get("redeem_points") or 0) // rp, balance // rp, cap // rc)
        redeemed, redeemable = blocks * rp, min(balance // rp, cap // rc) * rp
        weights = [c if ok else 0 for c, ok in zip(current, discountable, strict=True)]
        offset = _spread(blocks * rc, weights)
        current = [c - o for c, o in zip(current, offset, strict=True)]

    # 4. Rounding.
    total = sum(current)
    rounded = _spread(total % {"none": 1, "floor_jiao": 10, "floor_yuan": 100}[rounding], current)
    current = [c - d for c, d in zip(current, rounded, strict=True)]

    # 5. Tender.
    payable = sum(current)
    stored = 0
    if member:
        stored = min(req.get("pay_stored_value_cents") or 0,
                     member.get("stored_value_cents") or 0, payable)

    # 6. Points earned.
    earned = 0
    if member and points is not None:
        earning = sum(c for c, x in zip(current, lines, strict=True)
                      if cats.get(x["category"], {}).get("earns_points", True))
        multipliers = [p["points_multiplier_bp"] for p in promotions
                       if "points_multiplier_bp" in p]
        multiplier = tier.get("points_multiplier_bp", 10000) * max(multipliers, default=10000)
        earned = earning * points["earn_per_yuan"] * (multiplier // 10000) // 1_000_000

    uses: dict[str, int] = {}
    for x in lines:
        if x.get("count_card_id") is not None:
            uses[x["count_card_id"]] = uses.get(x["count_card_id"], 0) + x["quantity"]
    parts = {"gross_cents": gross, "count_card_cents": card, "item_discount_cents": item,
             "coupon_discount_cents": coupon, "points_offset_cents": offset,
             "rounding_cents": rounded}
    receipt_lines = [{**{k: v[i] for k, v in parts.items()}, "net_cents": current[i]}
                     for i in range(n)]
    for i, line in enumerate(receipt_lines):
        line["item_discount_source"] = source[i]
    return {
        "lines": receipt_lines,
        **{k: sum(v) for k, v in parts.items()},
        "payable_cents": payable,
        "stored_value_cents": stored,
        "due_cents": payable - stored,
        "points_redeemed": redeemed,
        "points_redeemable_max": redeemable,
        "points_earned": earned,
        "applied_coupons": applied,
        "rejected_coupons": rejected,
        "count_cards_used": [{"id": k, "uses": uses[k]} for k in sorted(uses)],
        "rulebook_version": book["version"],
    }


def _oracle_sized(toml_text: str, req: dict[str, Any]) -> bool:
    """Whether the brute-force oracle prices this case quickly."""
    store = req["store"]
    book = tomllib.loads(toml_text)
    rules = {**book.get("store_defaults", {}), **book.get("stores", {}).get(store, {})}
    member = req.get("member") or {}
    candidates = (len(member.get("coupons") or ()) if req.get("auto_coupons")
                  else len(req.get("coupon_ids") or ()))
    size = randomized.search_size(min(candidates, AUTO_POOL), rules.get("max_coupons_per_order", 1))
    return size * len(req["lines"]) <= 200_000


@SETTINGS
@given(seed=SEEDS)
def test_receipt_is_the_contracts_reading(engine, seed: int) -> None:
    toml_text, rb, req = valid_case(seed, max_held=14)
    receipt = engine(rb, req)
    if _oracle_sized(toml_text, req):
        assert receipt == spec_quote(toml_text, req)


@SETTINGS
@given(seed=SEEDS, n_coupons=st.integers(33, 45), max_coupons=st.integers(1, 2))
def test_auto_coupons_search_only_the_32_soonest_expiring(
        engine, seed: int, n_coupons: int, max_coupons: int) -> None:
    """More usable coupons than the pool holds: the latest-expiring are never applied."""
    toml_text = (
        'version = "pool"\ntimezone = "UTC"\n'
        f"[store_defaults]\nmax_coupons_per_order = {max_coupons}\n"
        "[[tiers]]\ncode = 'n'\nrank = 0\n"
        + "".join(f"[[coupon_templates]]\ncode = 'V{k}'\nkind = 'voucher'\n"
                  f"off_cents = {100 * (k + 1)}\nper_order_limit = 2\n" for k in range(4)))
    rb = settlement.rulebook_from_toml(toml_text)
    rng = random.Random(seed)
    at = datetime(2026, 11, 20, 10, tzinfo=UTC)
    coupons = []
    for k in range(n_coupons):
        coupon = {"id": f"C{k:02d}", "template": f"V{rng.randrange(4)}"}
        if rng.random() < 0.9:
            coupon["valid_until"] = (at + timedelta(hours=rng.randint(1, 50))).isoformat()
        coupons.append(coupon)
    req = {"at": at.isoformat(), "store": "S", "auto_coupons": True,
           "member": {"id": "M", "tier": "n", "coupons": coupons},
           "lines": [{"sku": "A", "category": "c", "unit_price_cents": 5000, "quantity": 1}]}
    receipt = engine(rb, req)
    check_invariants(rb, req, receipt)
    assert receipt == spec_quote(toml_text, req)


# --------------------------------------------------------------------------
# Metamorphic properties.


def _member_case(seed: int) -> tuple[str, settlement.Rulebook, dict[str, Any]] | None:
    """A valid case with a member holding 1..32 coupons (so auto considers them all)."""
    toml_text, rb, req = valid_case(seed, member=True, max_held=32)
    coupons = req["member"].get("coupons") or []
    if not coupons:
        return None
    max_coupons = rb.store_rules(req["store"]).max_coupons_per_order
    rng = random.Random(seed)
    while (randomized.search_size(len(coupons), max_coupons) * (len(req["lines"]) + 4)
           > randomized.SEARCH_BUDGET):
        coupons.pop(rng.randrange(len(coupons)))
    req.pop("coupon_ids", None)
    req.pop("auto_coupons", None)
    return toml_text, rb, req


@SETTINGS
@given(seed=SEEDS, picks=st.lists(st.integers(0, 2**32), min_size=1, max_size=4))
def test_auto_selection_beats_every_presented_subset(engine, seed: int,
                                                     picks: list[int]) -> None:
    case = _member_case(seed)
    if case is None:
        return
    _, rb, req = case
    ids = [c["id"] for c in req["member"]["coupons"]]
    auto = engine(rb, {**req, "auto_coupons": True})
    for pick in picks:
        rng = random.Random(pick)
        subset = rng.sample(ids, rng.randint(0, len(ids)))
        presented = engine(rb, {**req, "coupon_ids": subset})
        assert auto["coupon_discount_cents"] >= presented["coupon_discount_cents"], subset
    # Presenting every coupon is the same choice; only the rejected list's order differs.
    everything = engine(rb, {**req, "coupon_ids": ids})
    assert auto["coupon_discount_cents"] == everything["coupon_discount_cents"]
    key = sorted((x["id"], x["reason"]) for x in auto["rejected_coupons"])
    assert key == sorted((x["id"], x["reason"]) for x in everything["rejected_coupons"])
    assert ({**auto, "rejected_coupons": None} == {**everything, "rejected_coupons": None})


@SETTINGS
@given(seed=SEEDS, pick=st.integers(0, 2**32), redeem=st.booleans())
def test_presenting_one_more_coupon_never_costs_more(engine, seed: int, pick: int,
                                                     redeem: bool) -> None:
    """More coupons presented: coupon total never falls; without redemption payable never rises.

    With points redemption payable *can* rise (the points cap shrinks with the
    discountable amount, see ``test_an_extra_coupon_can_cost_a_points_block``),
    so that case only checks the coupon total.
    """
    case = _member_case(seed)
    if case is None:
        return
    _, rb, req = case
    if not redeem:
        req.pop("redeem_points", None)
    ids = [c["id"] for c in req["member"]["coupons"]] + ["NOT-HELD"]
    rng = random.Random(pick)
    rng.shuffle(ids)
    k = rng.randint(0, min(len(ids), 32) - 1)
    before, extra = ids[:k], ids[k]
    after = list(before)
    after.insert(rng.randint(0, k), extra)
    r0 = engine(rb, {**req, "coupon_ids": before})
    r1 = engine(rb, {**req, "coupon_ids": after})
    assert r1["coupon_discount_cents"] >= r0["coupon_discount_cents"]
    if not r0["points_redeemed"] and not r1["points_redeemed"]:
        assert r1["payable_cents"] <= r0["payable_cents"]


def test_an_extra_coupon_can_cost_a_points_block(engine) -> None:
    """The contract's points cap: a 1-cent voucher can cost a 10-yuan points block.

    Documents why the monotonicity property above excludes redemption: this
    is what ``pricing.md`` stage 3 says, not an engine bug.
    """
    rb = make_rulebook("[points]\nearn_per_yuan = 1\nredeem_points = 100\nredeem_cents = 1000\n"
                       "max_redeem_bp = 5000\n[[tiers]]\ncode = 'n'\nrank = 0\n"
                       "[[coupon_templates]]\ncode = 'V1'\nkind = 'voucher'\noff_cents = 1\n")
    req = {"at": "2026-11-20T10:00:00+08:00", "store": "S", "redeem_points": 1000,
           "member": {"id": "m", "tier": "n", "points_balance": 1000,
                      "coupons": [{"id": "C1", "template": "V1"}]},
           "lines": [{"sku": "a", "category": "c", "unit_price_cents": 2000, "quantity": 1}]}
    without = engine(rb, {**req, "coupon_ids": []})
    with_coupon = engine(rb, {**req, "coupon_ids": ["C1"]})
    assert (without["points_offset_cents"], without["payable_cents"]) == (1000, 1000)
    assert (with_coupon["coupon_discount_cents"], with_coupon["points_offset_cents"],
            with_coupon["payable_cents"]) == (1, 0, 1999)


def _shuffled(value: Any, rng: random.Random) -> Any:
    """``value`` with every object's keys in a random order (lists keep their order)."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _shuffled(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [_shuffled(x, rng) for x in value]
    return value


@SETTINGS
@given(seed=SEEDS, order=st.integers(0, 2**32))
def test_receipt_does_not_depend_on_key_order(engine, seed: int, order: int) -> None:
    _, rb, req = valid_case(seed)
    rng = random.Random(order)
    other = _shuffled(req, rng)
    member = other.get("member")
    if isinstance(member, dict):  # the member's coupons and cards are sets, not sequences
        for name in ("coupons", "count_cards"):
            if member.get(name):
                rng.shuffle(member[name])
    assert engine(rb, other) == engine(rb, copy.deepcopy(req))
