"""Oscar beside our engine: price agreement, per-basket time, SQL queries.

:func:`run` does it all in this process (Django is configured once per
process, so call it once); :func:`table` renders the result as markdown.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import settlement
from settlement import pricing

from . import workload
from .settings import configure

TARGET_RATIO = 1000.0
Quote = Callable[[settlement.Rulebook, dict[str, Any]], dict[str, Any]]


class Disagreement(AssertionError):
    """Oscar and our engine priced an equivalent basket differently (or
    oscar departed from the documented model of its arithmetic)."""


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(samples: list[float]) -> dict[str, float]:
    """Median, p90, min and count of timings in seconds."""
    return {"median": statistics.median(samples), "p90": percentile(samples, 0.9),
            "min": min(samples), "n": len(samples)}


def engines() -> dict[str, Quote | None]:
    """Our two implementations; ``None`` for the kernel when it is not built."""
    fast: Quote | None
    try:
        from settlement._fast import quote as fast
    except ImportError:
        fast = None
    return {"pure": pricing.quote, "fast": fast}


def time_ours(quote: Quote, rulebook: settlement.Rulebook, requests: list[dict[str, Any]],
              repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per ``quote`` call, every request ``repeats``
    times (after 3 warm-up calls each), each call timed on its own."""
    wall, cpu = [], []
    for request in requests:
        for _ in range(3):
            quote(rulebook, request)
        for _ in range(repeats):
            started, started_cpu = time.perf_counter(), time.process_time()
            quote(rulebook, request)
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started)
    return wall, cpu


def run(baskets: int = 20, repeats: int = 3, ours_repeats: int = 300,
        durable: bool = False) -> dict[str, Any]:
    """Migrate oscar into a temporary SQLite file, create the shop, check the
    prices of ``baskets`` shared baskets and the edge baskets, then time
    ``repeats`` passes over the shared baskets in oscar and ``ours_repeats``
    quotes of each in both our engines. ``durable``: SQLite with its default
    journal and fsync (see :func:`.settings.configure`).

    Raises :class:`Disagreement` when an equivalent basket's payable differs
    between oscar and ours, when our two engines differ, or when oscar's
    payable differs from :func:`workload.oscar_model_payable`.
    """
    with tempfile.TemporaryDirectory(prefix="peer-oscar-") as tmp:
        migrate_s = configure(Path(tmp), durable)
        from django.db import connection, reset_queries
        from django.test.utils import CaptureQueriesContext

        from . import oscar_side

        started = time.perf_counter()
        with warnings.catch_warnings():
            # haystack's simple backend warns on every product save.
            warnings.simplefilter("ignore", UserWarning)
            shop = oscar_side.create_shop()
        catalogue_s = time.perf_counter() - started

        rulebook = settlement.load_rulebook(workload.RULEBOOK)
        ours = engines()
        shared = {f"shared #{seed}": workload.shared_basket(seed) for seed in range(baskets)}
        cases = {**shared, **workload.edge_baskets()}

        # 1. Prices (and query counts: a separate, untimed pass).
        prices = []
        queries: dict[str, list[int]] = {"build": [], "apply": []}
        for name, lines in cases.items():
            # The query log is a deque of 9,000 entries: clear it, or the
            # counts of a long run are wrong.
            reset_queries()
            with CaptureQueriesContext(connection) as built:
                basket = oscar_side.build_basket(shop, lines)
            reset_queries()
            with CaptureQueriesContext(connection) as applied:
                oscar_side.apply_offers(shop, basket)
            oscar = oscar_side.payable_cents(basket)
            discounts = oscar_side.discounts_cents(basket)
            basket.delete()
            if name in shared:
                queries["build"].append(len(built))
                queries["apply"].append(len(applied))
            receipts = {impl: quote(rulebook, workload.request(lines))
                        for impl, quote in ours.items() if quote is not None}
            payables = {impl: r["payable_cents"] for impl, r in receipts.items()}
            equivalent = workload.is_equivalent(lines)
            row = {"basket": name, "lines": len(lines), "equivalent": equivalent,
                   "oscar_payable_cents": oscar, "oscar_discounts_cents": discounts,
                   "ours_payable_cents": payables["pure"],
                   "oscar_model_payable_cents": workload.oscar_model_payable(lines)}
            prices.append(row)
            if len(set(payables.values())) != 1:
                raise Disagreement(f"{name}: our engines differ: {payables}")
            if oscar != row["oscar_model_payable_cents"]:
                raise Disagreement(f"{name}: oscar {oscar} != model of oscar's rules "
                                   f"{row['oscar_model_payable_cents']}")
            if equivalent and oscar != payables["pure"]:
                raise Disagreement(f"{name}: equivalent basket, oscar {oscar} != ours "
                                   f"{payables['pure']}")

        # 2. Oscar's time per basket, wall and CPU (SQLite runs in this
        # process, so CPU time covers the database too; it is the figure
        # that other work on a shared machine disturbs least).
        phases: dict[str, list[float]] = {name: [] for name in (
            "build", "apply", "total", "build_cpu", "apply_cpu", "total_cpu")}
        for _ in range(repeats):
            for lines in shared.values():
                t0, c0 = time.perf_counter(), time.process_time()
                basket = oscar_side.build_basket(shop, lines)
                t1, c1 = time.perf_counter(), time.process_time()
                oscar_side.apply_offers(shop, basket)
                t2, c2 = time.perf_counter(), time.process_time()
                oscar_side.payable_cents(basket)
                t3, c3 = time.perf_counter(), time.process_time()
                basket.delete()
                for name, seconds in (("build", t1 - t0), ("apply", t2 - t1),
                                      ("total", t3 - t0), ("build_cpu", c1 - c0),
                                      ("apply_cpu", c2 - c1), ("total_cpu", c3 - c0)):
                    phases[name].append(seconds)

    # 3. Ours, same baskets.
    requests = [workload.request(lines) for lines in shared.values()]
    ours_s: dict[str, dict[str, float]] = {}
    for impl, quote in ours.items():
        if quote is not None:
            wall, cpu = time_ours(quote, rulebook, requests, ours_repeats)
            ours_s[impl] = summary(wall)
            ours_s[f"{impl}_cpu"] = summary(cpu)

    oscar_s = {name: summary(samples) for name, samples in phases.items()}
    ratios = {impl: {"total": oscar_s["total"]["median"] / ours_s[impl]["median"],
                     "apply": oscar_s["apply"]["median"] / ours_s[impl]["median"],
                     "total_cpu": (oscar_s["total_cpu"]["median"]
                                   / ours_s[f"{impl}_cpu"]["median"]),
                     "apply_cpu": (oscar_s["apply_cpu"]["median"]
                                   / ours_s[f"{impl}_cpu"]["median"])}
              for impl in ours if impl in ours_s}
    return {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "processor": _processor(),
                    "versions": {pkg: _version(pkg) for pkg in
                                 ("django-oscar", "Django", "settlement-core")},
                    "engine_fast_built": ours["fast"] is not None},
        "setup_s": {"migrate": migrate_s, "catalogue": catalogue_s},
        "sqlite": "defaults (durable)" if durable else "synchronous=OFF, journal in memory",
        "workload": {"baskets": baskets, "lines_per_basket": 20, "oscar_repeats": repeats,
                     "ours_repeats": ours_repeats, "catalogue_items": len(workload.CATALOGUE)},
        "oscar_s": oscar_s,
        "oscar_queries": {phase: {"min": min(n), "max": max(n), "median": statistics.median(n)}
                          for phase, n in queries.items()}
                         | {"total": {"min": min(map(sum, zip(*queries.values(), strict=True))),
                                      "max": max(map(sum, zip(*queries.values(), strict=True)))}},
        "ours_s": ours_s,
        "ratios": ratios,
        "target_ratio": TARGET_RATIO,
        "prices": prices,
    }


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _ms(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:,.1f} ms"
    return f"{seconds * 1e6:,.1f} µs"


def table(result: dict[str, Any]) -> str:
    """The result as two markdown tables: timings and ratios, then prices."""
    o, q, w = result["oscar_s"], result["oscar_queries"], result["workload"]
    s = result["ours_s"]
    versions = result["machine"]["versions"]
    out = [
        f"Measured {result['measured_at']} on {result['machine']['processor']} "
        f"(CPython {result['machine']['python']}, django-oscar {versions['django-oscar']}, "
        f"Django {versions['Django']}, SQLite {result['sqlite']}). "
        f"{w['baskets']} baskets of 20 lines, "
        f"three offers; oscar x{w['oscar_repeats']}, ours x{w['ours_repeats']} each. "
        f"Setup: migrate {result['setup_s']['migrate']:.1f} s, "
        f"catalogue {result['setup_s']['catalogue']:.1f} s.",
        "",
        "| per basket | median | p90 | CPU median | SQL queries |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, phase in (("oscar: build basket (20 x add_product, voucher)", "build"),
                         ("oscar: Applicator().apply", "apply"),
                         ("oscar: total (build + apply + read total)", "total")):
        out.append(f"| {label} | {_ms(o[phase]['median'])} | {_ms(o[phase]['p90'])} "
                   f"| {_ms(o[phase + '_cpu']['median'])} "
                   f"| {q[phase]['min']}-{q[phase]['max']} |")
    for impl in result["ratios"]:
        out.append(f"| ours ({impl}): settlement.quote | {_ms(s[impl]['median'])} "
                   f"| {_ms(s[impl]['p90'])} | {_ms(s[impl + '_cpu']['median'])} | 0 |")
    for impl, r in result["ratios"].items():
        met = "met" if min(r["total"], r["total_cpu"]) >= result["target_ratio"] else "missed"
        out.append(f"| ratio oscar total / ours ({impl}) | {r['total']:,.0f}x "
                   f"| apply only: {r['apply']:,.0f}x | {r['total_cpu']:,.0f}x "
                   f"(apply {r['apply_cpu']:,.0f}x) "
                   f"| target >= {result['target_ratio']:,.0f}x: {met} |")
    out += ["", "| basket | equivalent | oscar payable | ours payable | oscar, modelled | agree |",
            "| --- | --- | ---: | ---: | ---: | --- |"]
    for p in result["prices"]:
        agree = "yes" if p["oscar_payable_cents"] == p["ours_payable_cents"] else (
            f"no ({p['ours_payable_cents'] - p['oscar_payable_cents']:+d} cents)")
        out.append(f"| {p['basket']} | {'yes' if p['equivalent'] else 'no'} "
                   f"| {p['oscar_payable_cents']} | {p['ours_payable_cents']} "
                   f"| {p['oscar_model_payable_cents']} | {agree} |")
    return "\n".join(out)
