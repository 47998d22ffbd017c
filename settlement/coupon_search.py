"""The exact search for the best coupon subset (pure-Python reference).

Candidates are visited depth-first in application order (kind, then id),
so each step applies exactly one more coupon to its parent's amounts. A
branch is cut only when an admissible bound (what is chosen so far plus the
largest stand-alone takes of the coupons still available) is strictly below
the best total found: ties are always explored, so the contract's
tie-breaks see every optimal subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .allocation import allocate, round_half_up_bp
from .rulebook import CouponTemplate

KIND_ORDER = {"threshold": 0, "percent": 1, "voucher": 2}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A coupon that passed every stand-alone check."""

    id: str
    template: CouponTemplate
    valid_until: int
    eligible: tuple[bool, ...]  # per line: discountable and matching the template
    alone: int  # what it takes applied alone


def take(template: CouponTemplate, w: int, ignore_threshold: bool = False) -> int:
    """What a coupon takes from eligible lines whose amounts sum to ``w``."""
    if template.kind == "threshold":
        if w < template.threshold_cents and not ignore_threshold:
            return 0
        return min(template.off_cents, w)
    if template.kind == "percent":
        amount = round_half_up_bp(w, template.off_bp)
        if template.max_off_cents is not None:
            amount = min(amount, template.max_off_cents)
        return amount
    return min(template.off_cents, w)


def apply_coupon(c: Candidate, current: Sequence[int]) -> tuple[int, list[int]] | None:
    """Apply ``c`` to line amounts ``current``.

    Returns ``(amount, per-line parts)``, or None when the coupon would take nothing.
    """
    weights = [cur if ok else 0 for cur, ok in zip(current, c.eligible, strict=True)]
    amount = take(c.template, sum(weights))
    if amount <= 0:
        return None
    return amount, allocate(amount, weights)


def _rank(subset: Sequence[Candidate], total: int) -> tuple:
    """Sort key of a subset: the smallest key is the contract's best."""
    expiries = sorted(c.valid_until for c in subset)
    return (-total, len(subset), expiries, sorted(c.id for c in subset))


def best_subset(
    pool: Sequence[Candidate], current: Sequence[int], max_coupons: int
) -> tuple[Candidate, ...]:
    """The subset of ``pool`` the contract picks, in application order."""
    order = sorted(pool, key=lambda c: (KIND_ORDER[c.template.kind], c.id))
    best: list = [(0, 0, [], []), ()]  # (rank key, subset)

    def bound(start: int, slots: int) -> int:
        return sum(sorted((c.alone for c in order[start:]), reverse=True)[:slots])

    def visit(start: int, chosen: tuple[Candidate, ...], amounts: list[int], total: int,
              per_template: dict[str, int]) -> None:
        if chosen:
            key = _rank(chosen, total)
            if key < best[0]:
                best[0], best[1] = key, chosen
        slots = max_coupons - len(chosen)
        if slots <= 0 or (chosen and not chosen[0].template.stackable):
            return
        if total + bound(start, slots) < -best[0][0]:
            return
        for j in range(start, len(order)):
            c = order[j]
            tpl = c.template
            if chosen and not tpl.stackable:
                continue
            if per_template.get(tpl.code, 0) >= tpl.per_order_limit:
                continue
            applied = apply_coupon(c, amounts)
            if applied is None:
                continue  # every superset applies c at this same point: all invalid
            amount, parts = applied
            counts = dict(per_template)
            counts[tpl.code] = counts.get(tpl.code, 0) + 1
            visit(j + 1, chosen + (c,), [a - p for a, p in zip(amounts, parts, strict=True)],
                  total + amount, counts)

    visit(0, (), list(current), 0, {})
    return best[1]
