"""The coupon search on its hardest inputs: many interchangeable coupons, many slots.

32 equal vouchers and ``max_coupons_per_order = 8`` is C(32, 8) = 10.5 million
subsets that all tie on total; an exact search that explored them would hang a
till. These cases check the picks (worked out by hand from the tie-breaks) on
both engines; ``bench/README.md`` has the timings.
"""

from __future__ import annotations

import pytest

import settlement

from .conftest import make_rulebook


def _rulebook(slots: int, templates: int) -> settlement.Rulebook:
    body = f"[store_defaults]\nmax_coupons_per_order = {slots}\n[[tiers]]\ncode = 'n'\nrank = 0\n"
    for i in range(templates):
        body += (f"[[coupon_templates]]\ncode = 'V{i:02d}'\nkind = 'voucher'\n"
                 "off_cents = 500\nper_order_limit = 8\n")
    return make_rulebook(body, timezone="UTC")


def _request(templates: int, same_expiry: bool) -> dict:
    coupons = []
    for i in range(32):
        # distinct expiries: C-i expires on day 1 + i % 28 at hour i // 28, so the
        # earliest eight are C-00, C-28, C-01, C-29, C-02, C-30, C-03, C-31
        until = ("2027-01-01T00:00:00Z" if same_expiry
                 else f"2027-01-{1 + i % 28:02d}T{i // 28:02d}:00:00Z")
        coupons.append({"id": f"C-{i:02d}", "template": f"V{i % templates:02d}",
                        "valid_until": until})
    return {
        "at": "2026-11-22T10:00:00Z", "store": "S", "auto_coupons": True,
        "member": {"id": "m", "tier": "n", "coupons": coupons},
        "lines": [{"sku": f"s{i}", "category": "c", "unit_price_cents": 10000, "quantity": 1}
                  for i in range(20)],
    }


@pytest.mark.parametrize("templates", [1, 32], ids=["one-template", "32-templates"])
@pytest.mark.parametrize("same_expiry", [True, False], ids=["same-expiry", "spread-expiry"])
def test_eight_of_32_equal_vouchers(engine, templates: int, same_expiry: bool) -> None:
    receipt = engine(_rulebook(8, templates), _request(templates, same_expiry))
    # Every 8-subset takes 8 * 500 = 4000 (the 200,000-cent basket covers them all);
    # the tie-breaks pick the earliest expiries, then the smallest ids.
    want = ([f"C-{i:02d}" for i in range(8)] if same_expiry
            else ["C-00", "C-01", "C-02", "C-03", "C-28", "C-29", "C-30", "C-31"])
    assert [c["id"] for c in receipt["applied_coupons"]] == want  # application order: by id
    assert receipt["coupon_discount_cents"] == 4000
    assert [c["discount_cents"] for c in receipt["applied_coupons"]] == [500] * 8
    rejected = receipt["rejected_coupons"]
    assert len(rejected) == 24 and {r["reason"] for r in rejected} == {"NOT_COMBINABLE"}


def test_run_of_one_template_applies_in_id_order(engine) -> None:
    """Run members are re-sorted only for the search: amounts follow the true (id) order."""
    rb = make_rulebook(
        "[store_defaults]\nmax_coupons_per_order = 2\n[[tiers]]\ncode = 'n'\nrank = 0\n"
        "[[coupon_templates]]\ncode = 'V'\nkind = 'voucher'\noff_cents = 700\n"
        "per_order_limit = 2\n", timezone="UTC")
    request = {
        "at": "2026-11-22T10:00:00Z", "store": "S", "auto_coupons": True,
        "member": {"id": "m", "tier": "n", "coupons": [
            {"id": "A", "template": "V", "valid_until": "2027-02-01T00:00:00Z"},
            {"id": "B", "template": "V", "valid_until": "2027-03-01T00:00:00Z"},
            {"id": "C", "template": "V", "valid_until": "2027-01-01T00:00:00Z"},
        ]},
        "lines": [{"sku": "s", "category": "c", "unit_price_cents": 1000, "quantity": 1}],
    }
    receipt = engine(rb, request)
    # C and A expire first (the search's run order is C, A); applied by id, A takes
    # min(700, 1000) = 700, then C takes min(700, 300) = 300.
    assert receipt["applied_coupons"] == [
        {"id": "A", "template": "V", "discount_cents": 700},
        {"id": "C", "template": "V", "discount_cents": 300},
    ]
    assert receipt["rejected_coupons"] == [{"id": "B", "reason": "NOT_COMBINABLE"}]
