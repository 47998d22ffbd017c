"""Realistic, reproducible quote-request histories for the back-test (JSONL).

    python bench/history.py --baskets 20000 --lines 20 --seed 1 -o history.jsonl

A month (November 2026, Asia/Shanghai, 07:00-23:00) of checkouts in three
stores under the example rulebook (``examples/rulebook.toml``): a catalogue
of SKUs in its categories (dairy with the member-priced ``MILK-1L``, fruit
for the weekend promotion, fresh with tier overrides, tobacco that is not
discountable, grain, snacks, drinks, household, and a ``CAR-WASH`` service
for count cards); members with tiers (normal / silver / gold) whose activity
is Zipf-skewed; walk-ins; basket sizes 1-50 (skewed small) or exactly
``--lines``; wallets of coupons from the rulebook's templates with validity
windows (some expired or not yet valid), some of them presented; points
redemption and stored value. The same seed gives the same file.

``--exotic`` is the share of requests the back-test's batch encoding does not
hold (a member's ``auto_coupons``, a count-card line): they exercise its
fallback. ``--presented`` forces coupons to be presented on every member
basket (the benchmark's shape).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

TZ = timezone(timedelta(hours=8))  # Asia/Shanghai has no DST
MONTH_START = datetime(2026, 11, 1, tzinfo=TZ)
STORES = ["S001", "S002", "S003"]
TIERS = [("normal", 60), ("silver", 30), ("gold", 10)]
TEMPLATES = ["SPEND200-20", "PCT12", "VOUCHER5", "DAIRY-30PCT"]
# category: (SKUs, lowest and highest unit price in cents)
CATALOGUE = {
    "dairy": (40, 350, 3500),
    "fruit": (40, 300, 4000),
    "fresh": (40, 800, 12000),
    "tobacco": (15, 1500, 9000),
    "grain": (25, 500, 12000),
    "snack": (60, 200, 2500),
    "drinks": (50, 250, 1800),
    "household": (30, 600, 8000),
}


def catalogue(rng: random.Random) -> list[tuple[str, str, int]]:
    """``(sku, category, unit_price_cents)``; ``MILK-1L`` is the example's member price."""
    items = [("MILK-1L", "dairy", 1290)]
    for cat, (count, low, high) in CATALOGUE.items():
        for k in range(count):
            items.append((f"{cat.upper()}-{k:04d}", cat, rng.randrange(low, high + 1)))
    return items


def _zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1 / (k ** s) for k in range(1, n + 1)]
    return list(itertools.accumulate(weights))


def _pick(rng: random.Random, cdf: list[float]) -> int:
    return bisect.bisect_left(cdf, rng.random() * cdf[-1])


def _iso(dt: datetime) -> str:
    return dt.isoformat()


def generate(baskets: int, lines: int | None = None, seed: int = 0, exotic: float = 0.03,
             presented: bool = False, walkin: float = 0.25) -> Iterator[dict[str, Any]]:
    """Yield ``baskets`` quote requests (see the module docstring)."""
    rng = random.Random(seed)
    items = catalogue(rng)
    item_cdf = _zipf_cdf(len(items), 0.9)  # popular SKUs sell more
    rng.shuffle(items)
    n_members = max(20, baskets // 15)
    member_cdf = _zipf_cdf(n_members, 1.1)
    tier_cdf = list(itertools.accumulate(w for _, w in TIERS))
    members: list[dict[str, Any]] = []
    for m in range(n_members):
        tier = TIERS[bisect.bisect_left(tier_cdf, rng.random() * tier_cdf[-1])][0]
        members.append({"id": f"M{m:06d}", "tier": tier,
                        "points_balance": int(rng.paretovariate(1.3) * 200) - 200,
                        "stored_value_cents": rng.choice([0, 0, 5000, 10000, 30000, 100000])})
    size_cdf = _zipf_cdf(50, 0.8)
    coupon_serial = itertools.count()
    for _ in range(baskets):
        at = MONTH_START + timedelta(days=rng.randrange(30), hours=rng.randrange(7, 23),
                                     minutes=rng.randrange(60), seconds=rng.randrange(60))
        n_lines = lines if lines is not None else 1 + _pick(rng, size_cdf)
        basket: list[dict[str, Any]] = []
        for _ in range(n_lines):
            sku, cat, price = items[_pick(rng, item_cdf)]
            basket.append({"sku": sku, "category": cat, "unit_price_cents": price,
                           "quantity": 1 if rng.random() < 0.7 else rng.randrange(2, 6)})
        request: dict[str, Any] = {"at": _iso(at), "store": rng.choice(STORES), "lines": basket}
        if rng.random() < walkin and not presented:
            if rng.random() < 0.05:  # a walk-in presenting a coupon: UNKNOWN_COUPON
                request["coupon_ids"] = [f"X-{next(coupon_serial)}"]
            yield request
            continue
        base = members[_pick(rng, member_cdf)]
        member: dict[str, Any] = {"id": base["id"], "tier": base["tier"],
                                  "points_balance": max(0, base["points_balance"]
                                                        + rng.randrange(-50, 50)),
                                  "stored_value_cents": base["stored_value_cents"]}
        wallet = []
        for _ in range(rng.randrange(1 if presented else 0, 7)):
            start = at + timedelta(days=rng.randrange(-40, 5))
            wallet.append({"id": f"{base['id']}-C{next(coupon_serial)}",
                           "template": rng.choice(TEMPLATES),
                           "valid_from": _iso(start),
                           "valid_until": _iso(start + timedelta(days=rng.choice([7, 14, 30])))})
        if presented:
            wallet[0]["valid_from"] = _iso(at - timedelta(days=1))  # at least one usable
            wallet[0]["valid_until"] = _iso(at + timedelta(days=7))
        member["coupons"] = wallet
        request["member"] = member
        roll = rng.random()
        if roll < exotic / 2:
            request["auto_coupons"] = True
        elif roll < exotic:
            member["count_cards"] = [{"id": f"{base['id']}-K", "skus": ["CAR-WASH"],
                                      "uses": 10, "valid_until": _iso(at + timedelta(days=90))}]
            if lines is not None:
                basket.pop()  # keep exactly ``lines`` lines
            basket.append({"sku": "CAR-WASH", "category": "service",
                           "unit_price_cents": 3000, "quantity": 1,
                           "count_card_id": f"{base['id']}-K"})
        if wallet and "auto_coupons" not in request and (presented or rng.random() < 0.5):
            chosen = rng.sample(wallet, min(len(wallet), rng.randrange(1, 4)))
            if presented and wallet[0] not in chosen:
                chosen[0] = wallet[0]
            request["coupon_ids"] = [c["id"] for c in chosen]
        if member["points_balance"] >= 20 and rng.random() < 0.3:
            request["redeem_points"] = rng.choice([member["points_balance"], 100, 200, 1000])
        if member["stored_value_cents"] and rng.random() < 0.6:
            request["pay_stored_value_cents"] = rng.choice([member["stored_value_cents"], 5000,
                                                            2000])
        yield request


def write_jsonl(requests: Iterator[dict[str, Any]], out: Any) -> int:
    """Write one compact JSON request per line; returns how many."""
    count = 0
    for request in requests:
        out.write(json.dumps(request, separators=(",", ":"), ensure_ascii=False))
        out.write("\n")
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baskets", type=int, default=10000)
    parser.add_argument("--lines", type=int, help="exactly this many lines per basket "
                        "(default: 1-50, skewed small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exotic", type=float, default=0.03,
                        help="share of auto_coupons / count-card requests (fallback)")
    parser.add_argument("--presented", action="store_true",
                        help="every basket a member's, presenting coupons")
    parser.add_argument("-o", "--output", default="-", help="JSONL file (default stdout)")
    args = parser.parse_args(argv)
    if args.lines is not None and not 1 <= args.lines <= 500:
        parser.error("--lines must be 1..500")
    requests = generate(args.baskets, args.lines, args.seed, args.exotic, args.presented)
    if args.output == "-":
        write_jsonl(requests, sys.stdout)
    else:
        with Path(args.output).open("w", encoding="utf-8") as out:
            write_jsonl(requests, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
