"""django-oscar's side: catalogue, the three offers, baskets, and pricing.

Call :func:`bench.peer_oscar.settings.configure` first (it sets up Django);
this module imports oscar's models lazily through :func:`models`.

Money crosses the boundary exactly: cents -> ``Decimal(cents).scaleb(-2)``
and back with :func:`to_cents`, which refuses anything finer than a cent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from .settings import CURRENCY
from .workload import (
    CATALOGUE,
    FRUIT_OFF_BP,
    THRESHOLD_CENTS,
    THRESHOLD_OFF_CENTS,
    VOUCHER_OFF_CENTS,
    Line,
)

VOUCHER_CODE = "VOUCHER5"


def money(cents: int) -> Decimal:
    """Integer cents as an exact two-place Decimal (``1290`` -> ``12.90``)."""
    return Decimal(cents).scaleb(-2)


def to_cents(amount: Decimal) -> int:
    """A Decimal amount as integer cents; raises if it is not whole cents."""
    cents = amount.scaleb(2)
    if cents != cents.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of cents")
    return int(cents)


def models() -> SimpleNamespace:
    """Oscar's model and helper classes (after Django is configured)."""
    from django.contrib.auth import get_user_model
    from oscar.core.loading import get_class, get_model

    return SimpleNamespace(
        User=get_user_model(),
        ProductClass=get_model("catalogue", "ProductClass"),
        Product=get_model("catalogue", "Product"),
        Category=get_model("catalogue", "Category"),
        ProductCategory=get_model("catalogue", "ProductCategory"),
        Partner=get_model("partner", "Partner"),
        StockRecord=get_model("partner", "StockRecord"),
        Range=get_model("offer", "Range"),
        Condition=get_model("offer", "Condition"),
        Benefit=get_model("offer", "Benefit"),
        ConditionalOffer=get_model("offer", "ConditionalOffer"),
        Voucher=get_model("voucher", "Voucher"),
        Basket=get_model("basket", "Basket"),
        Selector=get_class("partner.strategy", "Selector"),
        Applicator=get_class("offer.applicator", "Applicator"),
    )


@dataclass
class Shop:
    """What a basket needs: the models, the customer and the voucher."""

    m: SimpleNamespace
    user: Any
    voucher: Any


def create_shop() -> Shop:
    """Create the catalogue (every :data:`CATALOGUE` item with a category and
    a stock record at its price), the two ranges, the two site offers, the
    voucher offer with its voucher, and a customer.

    All three offers are non-exclusive (oscar's default is exclusive: an item
    discounted by one offer could not count towards or be discounted by
    another), so that they stack as our rulebook's do. Priorities give our
    stage order (percentage, threshold, voucher).
    """
    m = models()
    product_class = m.ProductClass.objects.create(name="Groceries", track_stock=False)
    partner = m.Partner.objects.create(name="Store S001")
    categories = {code: m.Category.add_root(name=code.capitalize())
                  for code in sorted({item.category for item in CATALOGUE.values()})}
    for item in CATALOGUE.values():
        product = m.Product.objects.create(product_class=product_class, title=item.sku,
                                           upc=item.sku, structure="standalone")
        m.ProductCategory.objects.create(product=product, category=categories[item.category])
        m.StockRecord.objects.create(product=product, partner=partner, partner_sku=item.sku,
                                     price=money(item.unit_price_cents),
                                     price_currency=CURRENCY, num_in_stock=1_000_000)

    fruit = m.Range.objects.create(name="Fruit")
    fruit.included_categories.add(categories["fruit"])
    everything = m.Range.objects.create(name="Everything", includes_all_products=True)

    def offer(name: str, kind: str, priority: int, condition: Any, benefit: Any) -> Any:
        return m.ConditionalOffer.objects.create(
            name=name, offer_type=kind, exclusive=False, priority=priority,
            condition=condition, benefit=benefit)

    offer("FRUIT10", m.ConditionalOffer.SITE, 30,
          m.Condition.objects.create(range=fruit, type=m.Condition.COUNT, value=1),
          m.Benefit.objects.create(range=fruit, type=m.Benefit.PERCENTAGE,
                                   value=Decimal(FRUIT_OFF_BP).scaleb(-2)))
    offer("SPEND200-20", m.ConditionalOffer.SITE, 20,
          m.Condition.objects.create(range=everything, type=m.Condition.VALUE,
                                     value=money(THRESHOLD_CENTS)),
          m.Benefit.objects.create(range=everything, type=m.Benefit.FIXED,
                                   value=money(THRESHOLD_OFF_CENTS)))
    voucher_offer = offer(
        "VOUCHER5", m.ConditionalOffer.VOUCHER, 10,
        m.Condition.objects.create(range=everything, type=m.Condition.COUNT, value=1),
        m.Benefit.objects.create(range=everything, type=m.Benefit.FIXED,
                                 value=money(VOUCHER_OFF_CENTS)))
    now = dt.datetime.now(dt.UTC)
    voucher = m.Voucher.objects.create(
        name="5 off", code=VOUCHER_CODE, usage=m.Voucher.MULTI_USE,
        start_datetime=now - dt.timedelta(days=1), end_datetime=now + dt.timedelta(days=365))
    voucher.offers.add(voucher_offer)
    user = m.User.objects.create_user(username="member", email="member@example.com",
                                      password=None)
    return Shop(m, user, voucher)


def build_basket(shop: Shop, lines: list[Line]) -> Any:
    """A saved oscar basket of the customer with these lines and the voucher:
    the products looked up by SKU (one query), then ``add_product`` per line,
    as a shop's add-to-basket view would."""
    m = shop.m
    products = {p.upc: p for p in m.Product.objects.filter(
        upc__in=[line.item.sku for line in lines])}
    basket = m.Basket.objects.create(owner=shop.user)
    basket.strategy = m.Selector().strategy(user=shop.user)
    for line in lines:
        basket.add_product(products[line.item.sku], line.quantity)
    basket.vouchers.add(shop.voucher)
    return basket


def apply_offers(shop: Shop, basket: Any) -> None:
    """Oscar's offer engine on the basket: ``Applicator().apply``."""
    shop.m.Applicator().apply(basket, shop.user)


def payable_cents(basket: Any) -> int:
    """The basket's total after discounts (tax-free strategy: incl = excl)."""
    return to_cents(basket.total_incl_tax)


def discounts_cents(basket: Any) -> dict[str, int]:
    """Total discount per offer name, in cents."""
    return {d["name"]: to_cents(d["discount"])
            for d in basket.offer_discounts + basket.voucher_discounts}
