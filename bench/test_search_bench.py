"""The coupon search's hardest shapes: 32 equal vouchers competing for 3 or 8 slots.

Without tie-aware pruning, 8 slots is C(32, 8) = 10.5 million tying subsets
(about 1.4 s per quote in the kernel, minutes in pure Python, measured before
the pruning landed); see bench/README.md.
"""

from __future__ import annotations

import pytest

import settlement


def _case(slots: int, templates: int) -> tuple[settlement.Rulebook, dict]:
    body = (f'version = "worst"\ntimezone = "UTC"\n[store_defaults]\n'
            f"max_coupons_per_order = {slots}\n[[tiers]]\ncode = 'n'\nrank = 0\n")
    for i in range(templates):
        body += (f"[[coupon_templates]]\ncode = 'V{i:02d}'\nkind = 'voucher'\n"
                 "off_cents = 500\nper_order_limit = 8\n")
    request = {
        "at": "2026-11-22T10:00:00Z", "store": "S", "auto_coupons": True,
        "member": {"id": "m", "tier": "n", "coupons": [
            {"id": f"C-{i:02d}", "template": f"V{i % templates:02d}",
             "valid_until": f"2027-01-{1 + i % 28:02d}T{i // 28:02d}:00:00Z"}
            for i in range(32)]},
        "lines": [{"sku": f"s{i}", "category": "c", "unit_price_cents": 10000, "quantity": 1}
                  for i in range(20)],
    }
    return settlement.rulebook_from_toml(body), request


@pytest.mark.parametrize("slots", [3, 8])
@pytest.mark.parametrize("templates", [1, 32], ids=["1tpl", "32tpl"])
def test_equal_vouchers(benchmark, engine, slots: int, templates: int) -> None:
    name, quote = engine
    rulebook, request = _case(slots, templates)
    benchmark.group = f"20 lines, 32 equal vouchers ({templates} template(s)), {slots} slots"
    benchmark.extra_info["engine"] = name
    receipt = benchmark(quote, rulebook, request)
    assert receipt["coupon_discount_cents"] == 500 * slots
