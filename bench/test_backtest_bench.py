"""Back-test throughput: the batch path against ``settlement.quote`` per request.

The same history for both: ``BENCH_BACKTEST_BASKETS`` (default 20,000) member
baskets of exactly 20 lines with presented coupons, points redemption and
stored value, from ``bench/history.py`` (seed 1, no fallback requests), under
the example rulebook. ``extra_info["baskets_per_s"]`` is baskets / median
round time. With ``--benchmark-disable`` each runs once and the totals are
checked identical (a plain correctness test).

    .venv/bin/python -m pytest bench/test_backtest_bench.py --benchmark-only \\
        --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import settlement
from settlement import backtest as bt

from .history import generate

BASKETS = int(os.environ.get("BENCH_BACKTEST_BASKETS", "20000"))
RULEBOOK = Path(__file__).resolve().parent.parent / "examples" / "rulebook.toml"
GROUP = f"back-test, {BASKETS:,} baskets of 20 lines with presented coupons"


@pytest.fixture(scope="module")
def history() -> tuple[settlement.Rulebook, list[dict[str, Any]], bt.History]:
    rulebook = settlement.load_rulebook(RULEBOOK)
    requests = list(generate(BASKETS, 20, seed=1, exotic=0.0, presented=True))
    return rulebook, requests, bt.encode_history(requests, rulebook)


@pytest.fixture(scope="module")
def reference(history: Any) -> bt.Totals:
    rulebook, requests, _ = history
    return bt.reference_totals(rulebook, requests)


def _rate(benchmark: Any) -> None:
    benchmark.extra_info["baskets"] = BASKETS
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        median = stats.stats.median
        benchmark.extra_info["baskets_per_s"] = round(BASKETS / median)
        print(f"\n{benchmark.extra_info['engine']}: {BASKETS / median:,.0f} baskets/s "
              f"(median round {median * 1e3:,.1f} ms)")


def test_batch(benchmark: Any, history: Any, reference: bt.Totals) -> None:
    """Pricing the encoded history (both rulebook index mappings and the kernel loop)."""
    if not bt.batch_available():
        pytest.skip("Cython kernel not built: no batch path")
    rulebook, _, encoded = history
    benchmark.group = GROUP
    benchmark.extra_info["engine"] = "batch"
    totals, fallback = benchmark(bt.price_history, encoded, rulebook)
    _rate(benchmark)
    assert fallback == 0
    assert totals == reference
    assert totals["baskets"] == BASKETS and totals["coupons_by_template"]


def test_quote_per_request(benchmark: Any, history: Any, reference: bt.Totals) -> None:
    """``settlement.quote`` on every request, the receipts added up (the reference path)."""
    rulebook, requests, _ = history
    benchmark.group = GROUP
    benchmark.extra_info["engine"] = f"quote ({settlement.IMPLEMENTATION})"
    totals = benchmark.pedantic(bt.reference_totals, (rulebook, requests), rounds=3,
                                iterations=1)
    _rate(benchmark)
    assert totals == reference


def test_quote_only(benchmark: Any, history: Any, reference: bt.Totals) -> None:
    """``settlement.quote`` on every request, only ``payable_cents`` kept: the per-request
    floor."""
    rulebook, requests, _ = history
    benchmark.group = GROUP
    benchmark.extra_info["engine"] = f"quote only ({settlement.IMPLEMENTATION})"
    quote = settlement.quote

    def run() -> int:
        payable = 0
        for request in requests:
            payable += quote(rulebook, request)["payable_cents"]
        return payable

    payable = benchmark.pedantic(run, rounds=3, iterations=1)
    _rate(benchmark)
    assert payable == reference["payable_cents"]


def test_encode(benchmark: Any, history: Any) -> None:
    """Validating and encoding the history into columns (once per back-test)."""
    rulebook, requests, encoded = history
    benchmark.group = GROUP
    benchmark.extra_info["engine"] = "encode"
    again = benchmark.pedantic(bt.encode_history, (requests, rulebook), rounds=3, iterations=1)
    _rate(benchmark)
    assert again.baskets == encoded.baskets == BASKETS
    assert (again.line_gross == encoded.line_gross).all()
