"""The exact search for the best coupon subset (pure-Python reference).

Candidates are visited depth-first in application order (kind, then id),
so each step applies exactly one more coupon to its parent's amounts. The
search is exact; it only skips subsets that provably cannot be the
contract's pick:

* a branch whose bound (what is chosen plus the largest stand-alone takes
  still available; a coupon never takes more in a subset than alone, since
  line amounts only go down) is below the best total found;
* a branch whose bound only ties the best total and whose completions
  cannot win the tie-breaks (count, then sorted expiries, then sorted ids,
  judged on elementwise lower bounds);
* within a run of same-template neighbours, any choice but a prefix of the
  run sorted by (expiry, id): those are the same operation, so a prefix
  gives the same amounts and wins every tie-break.
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


def search_order(pool: Sequence[Candidate]) -> list[Candidate]:
    """Application order (kind, id), with each run of same-template neighbours re-sorted.

    Neighbours of one template are the same operation applied back to back,
    so which of them fill a run's places changes no amount; the contract's
    tie-breaks then prefer earliest expiry, then smallest id. Sorting a run by
    (expiry, id) and only ever taking a prefix of it is therefore exact.
    """
    order = sorted(pool, key=lambda c: (KIND_ORDER[c.template.kind], c.id))
    out: list[Candidate] = []
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and order[j].template is order[i].template:
            j += 1
        out.extend(sorted(order[i:j], key=lambda c: (c.valid_until, c.id)))
        i = j
    return out


def best_subset(
    pool: Sequence[Candidate], current: Sequence[int], max_coupons: int
) -> tuple[Candidate, ...]:
    """The subset of ``pool`` the contract picks, in application order."""
    order = search_order(pool)
    best: list = [(0, 0, [], []), ()]  # (rank key, subset)

    def bound(start: int, slots: int) -> int:
        return sum(sorted((c.alone for c in order[start:]), reverse=True)[:slots])

    def cannot_win_tie(start: int, chosen: tuple[Candidate, ...], total: int) -> bool:
        """At best a tie on total: can no completion win on count, expiries or ids?"""
        _, best_n, best_exp, best_ids = best[0]
        need = best_n - len(chosen)  # coupons to add to tie on count
        if need < 1:
            return True  # every completion has more coupons than the best
        if need > 1 and total + bound(start, need - 1) >= -best[0][0]:
            return False  # a completion with fewer coupons might reach the best total
        # Elementwise lower bounds of any completion's sorted expiries and ids.
        rest = order[start:]
        low_exp = sorted([c.valid_until for c in chosen]
                         + sorted(c.valid_until for c in rest)[:need])
        low_ids = sorted([c.id for c in chosen] + sorted(c.id for c in rest)[:need])
        return (low_exp, low_ids) >= (best_exp, best_ids)

    def visit(start: int, chosen: tuple[Candidate, ...], amounts: list[int], total: int,
              per_template: dict[str, int]) -> None:
        if chosen:
            key = _rank(chosen, total)
            if key < best[0]:
                best[0], best[1] = key, chosen
        slots = max_coupons - len(chosen)
        if slots <= 0 or (chosen and not chosen[0].template.stackable):
            return
        reach = total + bound(start, slots)
        best_total = -best[0][0]
        if reach < best_total or (reach == best_total and best[1]
                                  and cannot_win_tie(start, chosen, total)):
            return
        for j in range(start, len(order)):
            c = order[j]
            tpl = c.template
            if j > start and order[j - 1].template is tpl:
                continue  # take a run of one template only as a prefix
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
    return tuple(sorted(best[1], key=lambda c: (KIND_ORDER[c.template.kind], c.id)))
