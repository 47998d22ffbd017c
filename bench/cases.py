"""Deterministic benchmark baskets: ``case(lines, coupons, ...)`` -> request dict."""

from __future__ import annotations

import random
from pathlib import Path

RULEBOOK = Path(__file__).with_name("rulebook.toml")
CATEGORIES = ["dairy", "fruit", "fresh", "snack", "grain", "tobacco", "household", "drinks"]
TEMPLATES = ["SPEND100-10", "SPEND200-25", "PCT10", "PCT12-SOLO", "DAIRY-30PCT", "FRESH-5",
             "VOUCHER5", "VOUCHER8-GOLD"]


def case(lines: int, coupons: str = "none", held: int = 0, seed: int = 7) -> dict:
    """A member checkout of ``lines`` lines with points and stored value.

    ``coupons``: ``"none"``, ``"presented"`` (3 coupon_ids) or ``"auto"``
    (the engine picks among ``held`` coupons).
    """
    rng = random.Random(seed * 1000 + lines)
    basket = []
    for i in range(lines):
        basket.append({
            "sku": f"SKU-{i:04d}",
            "category": CATEGORIES[rng.randrange(len(CATEGORIES))],
            "unit_price_cents": rng.randrange(150, 9000),
            "quantity": rng.randrange(1, 4),
        })
    wallet = []
    for i in range(max(held, 3 if coupons == "presented" else 0)):
        wallet.append({
            "id": f"C-{i:03d}",
            "template": TEMPLATES[i % len(TEMPLATES)],
            "valid_from": "2026-11-01T00:00:00+08:00",
            "valid_until": f"2026-12-{1 + i % 28:02d}T00:00:00+08:00",
        })
    request = {
        "at": "2026-11-22T10:30:00+08:00",
        "store": "S001",
        "member": {
            "id": "M0001",
            "tier": "gold",
            "points_balance": 5000,
            "stored_value_cents": 20000,
            "coupons": wallet,
        },
        "lines": basket,
        "redeem_points": 400,
        "pay_stored_value_cents": 5000,
    }
    if coupons == "presented":
        request["coupon_ids"] = ["C-000", "C-002", "C-006"]
    elif coupons == "auto":
        request["auto_coupons"] = True
    return request
