"""Smoke test of the locust load test: seed a SQLite ledger, serve it, run
bench/locust/locustfile.py headless for a few seconds, read its CSV (< 30 s)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from .grpc_vs_floor import start_server, stop_server
from .locust.seed import seed_ledger, top_ups
from .locust.workload import DEFAULT_WEIGHTS, Checkouts, parse_weights

LOCUSTFILE = Path(__file__).resolve().parent / "locust" / "locustfile.py"


def test_locust_checkout_run_has_quotes_and_settles_without_failures(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    tokens = seed_ledger(url, 40, checkouts=2000, terminals=4)
    (tmp_path / "tokens").write_text("\n".join(tokens) + "\n")
    server, target = start_server(url, workers=1, impl="sync")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
             "-H", target, "-u", "4", "-r", "4", "-t", "5s", "--csv", str(tmp_path / "run"),
             "--token-file", str(tmp_path / "tokens"), "--members", "40", "--only-summary",
             "--exit-code-on-error", "1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        stop_server(server)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    for method in ("Quote", "Settle"):
        row = rows[f"/settlement.v1.SettlementService/{method}"]
        assert row["Type"] == "grpc"
        assert int(row["Request Count"]) > 0, row
        assert int(row["Failure Count"]) == 0, row
        assert float(row["Average Content Size"]) > 0, row  # the response's size is reported
    total = rows["Aggregated"]
    assert int(total["Failure Count"]) == 0
    quotes = int(rows["/settlement.v1.SettlementService/Quote"]["Request Count"])
    settles = int(rows["/settlement.v1.SettlementService/Settle"]["Request Count"])
    assert quotes > settles  # the 70 / 25 mix
    import sqlite3

    with sqlite3.connect(tmp_path / "ledger.db") as db:  # the 4 users were 4 tills
        tills = {t for (t,) in db.execute("SELECT DISTINCT terminal FROM settlements")}
    assert tills == {f"LOCUST-0{t}" for t in range(1, 5)}, tills


def test_weights_parse_and_refuse_nonsense() -> None:
    assert parse_weights("") == DEFAULT_WEIGHTS
    assert parse_weights("settle=100, quote=0") == {**DEFAULT_WEIGHTS, "settle": 100,
                                                    "quote": 0}
    for bad in ("ping=3", "quote=-1", "quote=0,settle=0,refund=0,member=0", "quote=x"):
        try:
            parse_weights(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_workload_is_zipf_skewed_with_baskets_of_1_to_50_lines() -> None:
    import random

    work = Checkouts(members=500, zipf_s=1.0, seed=3)
    rng = random.Random(1)
    draws = [work.member(rng) for _ in range(20_000)]
    busiest = work.by_rank[0]
    share = draws.count(busiest) / len(draws)
    assert 0.10 < share < 0.20  # 1 / H(500) = 0.147
    sizes = [len(work.basket(rng)["lines"]) for _ in range(5_000)]
    assert min(sizes) == 1 and max(sizes) <= 50 and sorted(sizes)[2500] in range(3, 8)
    spec = work.basket(random.Random(5))
    assert all(isinstance(line["unit_price_cents"], int) for line in spec["lines"])


def test_top_ups_cover_the_busiest_members_only() -> None:
    extra = top_ups(2000, 1.0, 7, 200_000)
    work = Checkouts(members=2000, zipf_s=1.0, seed=7)
    assert work.by_rank[0] in extra and work.by_rank[-1] not in extra
    assert all(isinstance(c, int) and c > 0 for c in extra.values())
    assert len(extra) < 100
