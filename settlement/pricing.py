"""The pure-Python reference engine: the stages of the pricing contract, in order.

Readable first: each stage of ``pricing.md`` is one block below, working on
per-line lists of integer cents. The Cython kernel in ``settlement._fast``
must produce identical receipts; the differential tests hold it to that.
"""

from __future__ import annotations

from typing import Any

from .allocation import allocate, round_half_up_bp
from .coupon_search import Candidate, apply_coupon, best_subset, take
from .request import QuoteRequest, parse_request
from .rulebook import Rulebook

#: The 32 soonest-expiring valid coupons enter the search under ``auto_coupons``.
AUTO_POOL = 32


def quote(rulebook: Rulebook, request: Any) -> dict[str, Any]:
    """Price ``request`` (the spec's JSON shape) under ``rulebook``; returns the receipt."""
    return price(rulebook, parse_request(rulebook, request))


def price(rb: Rulebook, req: QuoteRequest) -> dict[str, Any]:
    """Price an already validated request."""
    member = req.member
    tier = rb.tiers[member.tier] if member is not None else None
    store = rb.store_rules(req.store)
    lines = req.lines
    n = len(lines)
    gross = [x.unit_price_cents * x.quantity for x in lines]
    current = list(gross)
    card_cents = [0] * n
    item = [0] * n
    source = [""] * n
    coupon = [0] * n
    offset = [0] * n
    rounding = [0] * n
    categories = [rb.categories.get(x.category) for x in lines]
    discountable = [x.count_card_id is None and (c is None or c.discountable)
                    for x, c in zip(lines, categories, strict=True)]

    # 0. Count cards: the line is paid by uses of the card.
    uses: dict[str, int] = {}
    for i, x in enumerate(lines):
        if x.count_card_id is not None:
            card_cents[i], current[i] = gross[i], 0
            uses[x.count_card_id] = uses.get(x.count_card_id, 0) + x.quantity

    # 1. Item discount: the single largest candidate per line.
    active = [p for p in rb.promotions
              if p.active(req.at, req.weekday, req.minute, member is not None)]
    for i, x in enumerate(lines):
        if not discountable[i]:
            continue
        best, best_source = 0, ""
        candidates: list[tuple[int, str]] = []
        if tier is not None:
            prices = [mp.unit_price_cents for mp in rb.member_prices.get(x.sku, ())
                      if mp.min_rank <= tier.rank]
            if prices:
                candidates.append((max(0, gross[i] - min(prices) * x.quantity), "member_price"))
            cat = categories[i]
            off = cat.tier_off_bp.get(tier.code, tier.off_bp) if cat else tier.off_bp
            candidates.append((round_half_up_bp(gross[i], off), "tier"))
        for p in active:
            if p.off_bp is not None and p.matches(x.sku, x.category):
                candidates.append((round_half_up_bp(gross[i], p.off_bp), f"promotion:{p.code}"))
        for amount, name in candidates:
            if amount > best:  # strictly: on a tie the earlier source wins
                best, best_source = amount, name
        item[i], source[i] = best, best_source
        current[i] -= best

    # 2. Coupons.
    applied, rejected = _coupons(rb, req, tier.rank if tier else -1, store.max_coupons_per_order,
                                 discountable, current, coupon)

    # 3. Points offset.
    points_redeemed = redeemable_max = 0
    if member is not None and rb.points is not None:
        pts = rb.points
        base = sum(c for c, ok in zip(current, discountable, strict=True) if ok)
        cap = base * pts.max_redeem_bp // 10000
        possible = min(member.points_balance // pts.redeem_points, cap // pts.redeem_cents)
        blocks = min(req.redeem_points // pts.redeem_points, possible)
        redeemable_max = possible * pts.redeem_points
        points_redeemed = blocks * pts.redeem_points
        weights = [c if ok else 0 for c, ok in zip(current, discountable, strict=True)]
        for i, part in enumerate(allocate(blocks * pts.redeem_cents, weights)):
            offset[i] = part
            current[i] -= part

    # 4. Rounding: only ever lowers the bill.
    total = sum(current)
    dropped = {"none": 0, "floor_jiao": total % 10, "floor_yuan": total % 100}[store.rounding]
    for i, part in enumerate(allocate(dropped, current)):
        rounding[i] = part
        current[i] -= part

    # 5. Tender.
    payable = sum(current)
    stored = 0
    if member is not None:
        stored = min(req.pay_stored_value_cents, member.stored_value_cents, payable)

    # 6. Points earned.
    earned = 0
    if member is not None and tier is not None and rb.points is not None:
        earning = sum(c for c, cat in zip(current, categories, strict=True)
                      if cat is None or cat.earns_points)
        multipliers = [p.points_multiplier_bp for p in active if p.points_multiplier_bp is not None]
        multiplier = tier.points_multiplier_bp * max(multipliers, default=10000) // 10000
        earned = earning * rb.points.earn_per_yuan * multiplier // 1_000_000

    receipt_lines = [
        {
            "gross_cents": gross[i],
            "count_card_cents": card_cents[i],
            "item_discount_cents": item[i],
            "item_discount_source": source[i],
            "coupon_discount_cents": coupon[i],
            "points_offset_cents": offset[i],
            "rounding_cents": rounding[i],
            "net_cents": current[i],
        }
        for i in range(n)
    ]
    return {
        "lines": receipt_lines,
        "gross_cents": sum(gross),
        "count_card_cents": sum(card_cents),
        "item_discount_cents": sum(item),
        "coupon_discount_cents": sum(coupon),
        "points_offset_cents": sum(offset),
        "rounding_cents": sum(rounding),
        "payable_cents": payable,
        "stored_value_cents": stored,
        "due_cents": payable - stored,
        "points_redeemed": points_redeemed,
        "points_redeemable_max": redeemable_max,
        "points_earned": earned,
        "applied_coupons": applied,
        "rejected_coupons": rejected,
        "count_cards_used": [{"id": k, "uses": uses[k]} for k in sorted(uses)],
        "rulebook_version": rb.version,
    }


def _coupons(rb: Rulebook, req: QuoteRequest, rank: int, max_coupons: int,
             discountable: list[bool], current: list[int], coupon: list[int]
             ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Stage 2: check candidates alone, search the best subset, apply it in place."""
    member = req.member
    held = {c.id: c for c in member.coupons} if member is not None else {}
    if req.auto_coupons:
        ids = [c.id for c in sorted(held.values(), key=lambda c: (c.valid_until, c.id))]
    else:
        ids = list(req.coupon_ids)

    reasons: dict[str, str] = {}
    valid: list[Candidate] = []
    for cid in ids:
        c = held.get(cid)
        tpl = rb.coupon_templates.get(c.template) if c is not None else None
        if c is None or tpl is None:
            reasons[cid] = "UNKNOWN_COUPON"
        elif req.at < c.valid_from:
            reasons[cid] = "NOT_YET_VALID"
        elif req.at >= c.valid_until:
            reasons[cid] = "EXPIRED"
        elif not tpl.window.admits(req.weekday, req.minute):
            reasons[cid] = "OUTSIDE_HOURS"
        elif tpl.min_rank > rank:
            reasons[cid] = "TIER_TOO_LOW"
        else:
            eligible = tuple(ok and cur > 0 and tpl.matches(x.sku, x.category)
                             for x, ok, cur in zip(req.lines, discountable, current, strict=True))
            w = sum(cur for cur, ok in zip(current, eligible, strict=True) if ok)
            if w == 0 or take(tpl, w, ignore_threshold=True) == 0:
                reasons[cid] = "NO_ELIGIBLE_LINES"
            elif tpl.kind == "threshold" and w < tpl.threshold_cents:
                reasons[cid] = "THRESHOLD_NOT_MET"
            else:
                valid.append(Candidate(cid, tpl, c.valid_until, eligible, take(tpl, w)))

    # Valid candidates are in candidate order; under auto_coupons that is
    # expiry order, so the first AUTO_POOL are the soonest to expire.
    chosen = best_subset(valid[:AUTO_POOL], current, max_coupons)
    applied = []
    for pick in chosen:
        result = apply_coupon(pick, current)
        assert result is not None  # the search only returns subsets where every coupon takes
        amount, parts = result
        for i, part in enumerate(parts):
            coupon[i] += part
            current[i] -= part
        applied.append({"id": pick.id, "template": pick.template.code, "discount_cents": amount})
    picked = {pick.id for pick in chosen}
    rejected = [{"id": cid, "reason": reasons.get(cid, "NOT_COMBINABLE")}
                for cid in ids if cid not in picked]
    return applied, rejected
