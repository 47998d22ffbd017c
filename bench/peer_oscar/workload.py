"""The shared workload: one catalogue, basket line lists, and our engine's side.

Everything here is integer cents and plain data; the oscar side
(:mod:`bench.peer_oscar.oscar_side`) builds its catalogue and baskets from
the same :data:`CATALOGUE` and :class:`Line` lists.

The three offers, as our rulebook (``rulebook.toml`` beside this file) and
oscar (:mod:`bench.peer_oscar.oscar_side`) both state them:

- ``FRUIT10``: 10 % off every line of category ``fruit`` (a "9折"; our
  promotion, oscar's site offer with a percentage benefit on the fruit range);
- ``SPEND200-20``: spend 200.00, get 20.00 off (our threshold coupon, oscar's
  site offer with a value condition and an absolute benefit);
- ``VOUCHER5``: 5.00 off (our voucher coupon, oscar's voucher code).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RULEBOOK = Path(__file__).with_name("rulebook.toml")
AT = "2026-11-22T10:30:00+08:00"  # a Sunday; nothing in the rulebook depends on it
CATEGORIES = ("fruit", "dairy", "snack", "grain", "household", "drinks")
SKUS_PER_CATEGORY = 40
FRUIT_OFF_BP = 1000
THRESHOLD_CENTS = 20000
THRESHOLD_OFF_CENTS = 2000
VOUCHER_OFF_CENTS = 500
COUPON_IDS = ("C-SPEND200", "C-VOUCHER5")


@dataclass(frozen=True, order=True)
class Item:
    """A catalogue entry: one SKU, its category and shelf price."""

    sku: str
    category: str
    unit_price_cents: int


@dataclass(frozen=True)
class Line:
    """A basket line: an item and a quantity."""

    item: Item
    quantity: int

    @property
    def gross_cents(self) -> int:
        """Shelf price times quantity."""
        return self.item.unit_price_cents * self.quantity


def _catalogue() -> dict[str, Item]:
    """40 SKUs per category, seeded. 10 % of a fruit line is a half cent
    exactly when its unit price ends in 5 and its quantity is odd: the price
    of ``FRUIT-000``..``019`` never ends in 5, that of ``FRUIT-020``..``039``
    always does."""
    rng = random.Random(20261204)
    items: dict[str, Item] = {}
    for category in CATEGORIES:
        for i in range(SKUS_PER_CATEGORY):
            price = rng.randrange(150, 9000)
            if category == "fruit":
                price = price - price % 10 + (rng.choice((0, 1, 2, 3, 4, 6, 7, 8, 9))
                                              if i < 20 else 5)
            sku = f"{category.upper()}-{i:03d}"
            items[sku] = Item(sku, category, price)
    # Two items for the threshold edge case (edge_baskets).
    items["FRUIT-EDGE"] = Item("FRUIT-EDGE", "fruit", 10000)
    items["DAIRY-EDGE"] = Item("DAIRY-EDGE", "dairy", 10500)
    return items


CATALOGUE: dict[str, Item] = _catalogue()


def shared_basket(seed: int, lines: int = 20) -> list[Line]:
    """A basket of the shared workload: ``lines`` distinct SKUs, quantity 1-3,
    fruit only from the SKUs without half cents, above the threshold after the
    fruit discount (so all three offers apply, the same way in both engines)."""
    rng = random.Random(seed)
    pool = [item for item in CATALOGUE.values()
            if not item.sku.endswith("EDGE")
            and (item.category != "fruit" or int(item.sku[-3:]) < 20)]
    return [Line(item, rng.randrange(1, 4)) for item in rng.sample(pool, lines)]


def _line(sku: str, quantity: int = 1) -> Line:
    return Line(CATALOGUE[sku], quantity)


def edge_baskets() -> dict[str, list[Line]]:
    """Baskets on which the two engines are known to differ, or to agree only
    by coincidence: fractions of a cent in the percentage, and the threshold
    judged before (oscar) or after (ours) the fruit discount. And one on
    which they agree: below the threshold."""
    rng = random.Random(7)
    # Three fruit lines whose 10 % ends in half a cent: ours rounds the
    # discount half up, oscar the line's net half up: a cent per line apart.
    half_cent = [item for item in CATALOGUE.values()
                 if item.category == "fruit" and item.unit_price_cents % 10 == 5][:3]
    others = sorted(item for item in CATALOGUE.values()
                    if item.category != "fruit" and not item.sku.endswith("EDGE"))
    fractional = [Line(item, 1) for item in half_cent + rng.sample(others, 17)]
    # 205.00 at shelf prices, 195.00 after 10 % off the 100.00 of fruit.
    near = [_line("FRUIT-EDGE"), _line("DAIRY-EDGE")]
    return {"fruit 10 % ending in half a cent (20 lines)": fractional,
            "threshold met only before the fruit discount (2 lines)": near,
            "below the threshold (1 line)": [_line("SNACK-000")]}


def is_equivalent(lines: list[Line]) -> bool:
    """Whether the three offers are genuinely equivalent on this basket.

    True when no fruit line's 10 % ends in exactly half a cent (there our
    half-up discount and oscar's half-up net differ by a cent; elsewhere both
    round to the nearest cent) and the spend threshold
    is met, or missed, both on the shelf prices (oscar) and after the fruit
    discount (ours); and the voucher's 5.00 fits what is left.
    """
    gross = sum(line.gross_cents for line in lines)
    fruit = [line.gross_cents for line in lines if line.item.category == "fruit"]
    if any(g * FRUIT_OFF_BP % 10000 == 5000 for g in fruit):
        return False
    after_fruit = gross - sum((g * FRUIT_OFF_BP + 5000) // 10000 for g in fruit)
    threshold_off = THRESHOLD_OFF_CENTS if after_fruit >= THRESHOLD_CENTS else 0
    return ((gross >= THRESHOLD_CENTS) == (after_fruit >= THRESHOLD_CENTS)
            and after_fruit - threshold_off >= VOUCHER_OFF_CENTS)


def oscar_model_payable(lines: list[Line]) -> int:
    """Oscar's payable for these offers, predicted in integer cents.

    The documented rules (README): the percentage discount is an exact
    Decimal per line (fractions of a cent); each line's net is rounded half
    up, so the discount is rounded half *down*; the value condition and both
    absolute benefits see shelf prices (non-exclusive offers do not see each
    other's discounts); the absolute ones are whole cents; the voucher needs
    one item.
    """
    gross = sum(line.gross_cents for line in lines)
    fruit_off = sum((line.gross_cents * FRUIT_OFF_BP + 4999) // 10000
                    for line in lines if line.item.category == "fruit")
    threshold_off = THRESHOLD_OFF_CENTS if gross >= THRESHOLD_CENTS else 0
    voucher_off = min(VOUCHER_OFF_CENTS, gross) if lines else 0
    return gross - fruit_off - threshold_off - voucher_off


def request(lines: list[Line]) -> dict[str, Any]:
    """Our engine's request for a basket: a member of the single (0 %) tier who
    presents the spend-threshold coupon and the voucher."""
    return {
        "at": AT,
        "store": "S001",
        "member": {
            "id": "M-PEER",
            "tier": "normal",
            "coupons": [{"id": COUPON_IDS[0], "template": "SPEND200-20"},
                        {"id": COUPON_IDS[1], "template": "VOUCHER5"}],
        },
        "lines": [{"sku": line.item.sku, "category": line.item.category,
                   "unit_price_cents": line.item.unit_price_cents,
                   "quantity": line.quantity} for line in lines],
        "coupon_ids": list(COUPON_IDS),
    }
