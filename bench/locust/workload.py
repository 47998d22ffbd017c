"""The checkout traffic the locust users send, as plain functions (no locust, no gRPC).

A store's tills: members drawn from a pool with Zipf-skewed activity (rank ``r`` is drawn
with weight ``1 / (r + 1) ** s``; the ranks are a seeded permutation of the member
numbers, so the busiest members are spread over tiers and coupon sets), some walk-ins,
baskets of 1-50 lines (log-normal: median 5, p90 about 14), presented coupons or
``auto_coupons``, points redemptions and stored value as tender. Every amount is integer
cents. Member numbering, cards and coupon ids are bench/ledger_vs_pgbench.py's, so the
members its ``set_up_ledger`` enrols are the ones drawn here.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from bench.ledger_vs_pgbench import catalogue, coupon_ids, member_id

DEFAULT_WEIGHTS = {"quote": 70, "settle": 25, "refund": 2, "member": 3}
"""Task weights: Quote ~70 %, Settle ~25 %, Refund and member lookups ~5 %."""

MAX_LINES = 50
WALK_IN_SHARE = 0.15
STORED_VALUE_CHOICES = (2_000, 5_000, 10_000, 30_000)
"""``pay_stored_value_cents`` a member asks for (paying part of the bill by card)."""
MAX_STORED_VALUE_CENTS = max(STORED_VALUE_CHOICES)


def parse_weights(text: str) -> dict[str, int]:
    """``"quote=70,settle=25,refund=2,member=3"`` -> weights; missing tasks keep their
    default, unknown names and negative weights are refused (ValueError)."""
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in weights:
            raise ValueError(f"unknown task {name!r} (one of {', '.join(weights)})")
        weights[name] = int(value)
        if weights[name] < 0:
            raise ValueError(f"weight of {name} is negative")
    if not any(weights.values()):
        raise ValueError("every weight is 0")
    return weights


def zipf_cumulative(members: int, s: float) -> list[float]:
    """Cumulative weights of ranks 0..members-1 under Zipf exponent ``s``."""
    return list(itertools.accumulate(1.0 / (r + 1) ** s for r in range(members)))


def zipf_share(members: int, s: float, rank: int) -> float:
    """The share of draws that go to ``rank`` (0 is the busiest)."""
    return (1.0 / (rank + 1) ** s) / zipf_cumulative(members, s)[-1]


def rank_to_member(members: int, seed: int) -> list[int]:
    """Member number of each activity rank (a seeded permutation)."""
    order = list(range(members))
    random.Random(f"ranks-{seed}").shuffle(order)
    return order


def basket_size(rng: random.Random) -> int:
    """1..50 lines, log-normal: median 5, most baskets small, a few big ones."""
    return min(MAX_LINES, max(1, int(rng.lognormvariate(math.log(5), 0.8))))


@dataclass
class Checkouts:
    """A till's supply of baskets (``spec`` dicts in the pricing contract's request shape,
    without ``at``: the server's clock prices them)."""

    members: int
    zipf_s: float = 1.0
    seed: int = 7
    catalogue_seed: int = 7

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError("members must be >= 1")
        self.items = catalogue(self.catalogue_seed)
        self.cumulative = zipf_cumulative(self.members, self.zipf_s)
        self.by_rank = rank_to_member(self.members, self.seed)

    def member(self, rng: random.Random) -> int:
        """A member number, Zipf-skewed by activity rank."""
        rank = bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1])
        return self.by_rank[min(rank, self.members - 1)]

    def basket(self, rng: random.Random) -> dict[str, Any]:
        """One checkout's basket."""
        lines = [{**item, "quantity": rng.choice((1, 1, 1, 2, 2, 3))}
                 for item in rng.sample(self.items, basket_size(rng))]
        spec: dict[str, Any] = {"lines": lines}
        if rng.random() < WALK_IN_SHARE:
            return spec
        i = self.member(rng)
        spec["member_id"] = member_id(i)
        mode = rng.random()
        if mode < 0.25:  # presented coupons (used ones come back as rejected: not an error)
            ids = coupon_ids(i)
            spec["coupon_ids"] = rng.sample(ids, rng.randint(1, len(ids)))
        elif mode < 0.40:
            spec["auto_coupons"] = True
        if rng.random() < 0.30:
            spec["redeem_points"] = rng.choice((200, 500, 1000, 2000))
        if rng.random() < 0.40:
            spec["pay_stored_value_cents"] = rng.choice(STORED_VALUE_CHOICES)
        return spec

    def lookup(self, rng: random.Random) -> dict[str, str]:
        """A member lookup: by card number (a scanned card) or by member id."""
        i = self.member(rng)
        if rng.random() < 0.7:
            return {"card_no": f"K{i:05d}"}
        return {"member_id": member_id(i)}
