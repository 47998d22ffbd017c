"""Engine benchmarks (pytest-benchmark): pure vs fast on the same baskets, one run.

Run ``make bench`` (or ``pytest bench --benchmark-only``); ``bench/report.py``
turns the JSON into the table of ``bench/README.md``.
"""

from __future__ import annotations

import pytest

from .cases import case

SHAPES = [
    (1, "none", 0),
    (5, "none", 0),
    (20, "none", 0),
    (50, "none", 0),
    (1, "presented", 3),
    (5, "presented", 3),
    (20, "presented", 3),
    (50, "presented", 3),
    (20, "auto", 8),
    (50, "auto", 8),
    (20, "auto", 32),
    (50, "auto", 32),
]


@pytest.mark.parametrize("lines,coupons,held", SHAPES,
                         ids=[f"{n}lines-{c}{h if c == 'auto' else ''}" for n, c, h in SHAPES])
def test_quote(benchmark, rulebook, engine, lines, coupons, held) -> None:
    name, quote = engine
    request = case(lines, coupons, held)
    benchmark.group = f"{lines} lines, {coupons}{'-' + str(held) if coupons == 'auto' else ''}"
    benchmark.extra_info["engine"] = name
    receipt = benchmark(quote, rulebook, request)
    assert receipt["payable_cents"] + receipt["coupon_discount_cents"] \
        + receipt["item_discount_cents"] + receipt["points_offset_cents"] \
        + receipt["rounding_cents"] + receipt["count_card_cents"] == receipt["gross_cents"]
    if coupons != "none":
        assert receipt["applied_coupons"], "the benchmark basket must exercise coupons"
    assert receipt["points_redeemed"] > 0
