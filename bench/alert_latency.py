"""Commit-to-WatchAlerts latency: how soon a risk console sees an alert.

    .venv/bin/python bench/alert_latency.py [--alerts 300] [--rate 20] [--workers 2]

A durable throw-away PostgreSQL cluster, ``settlement serve --workers N`` as
a separate process, one risk console streaming ``WatchAlerts``, and a till
settling, at ``--rate`` per second, baskets above the high-value threshold
(each for another member, so each opens an alert). For every alert:

- *from the call*: the console's receipt of the event minus the start of the
  Settle call that committed it: an upper bound of commit-to-delivery (the
  commit happens inside the call);
- *after the reply*: the console's receipt minus the till's receipt of the
  Settle reply (negative when the console heard first).

With two workers the console's stream and the Settle usually run in
different processes: the event crosses processes through PostgreSQL's
``NOTIFY``. Results: a markdown table on stdout, ``--json``.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.grpc_vs_floor import start_server  # noqa: E402
from bench.ledger_vs_pgbench import LEDGER_DB, log, percentile  # noqa: E402
from settlement.ledger.db import create_ledger_engine  # noqa: E402
from settlement.ledger.migrate import upgrade  # noqa: E402
from settlement.ledger.terminals import add_terminal  # noqa: E402
from settlement_pos import PosClient  # noqa: E402
from tests.pgcluster import PostgresCluster  # noqa: E402

#: Above the default high-value threshold (5,000 yuan).
BIG_CENTS = 600_000


def stats(values_ms: list[float]) -> dict[str, float]:
    """p50, p99, max of a list of milliseconds."""
    ordered = sorted(values_ms)
    return {"p50_ms": percentile(ordered, 0.50), "p99_ms": percentile(ordered, 0.99),
            "max_ms": ordered[-1]}


def measure(target: str, pos_token: str, risk_token: str, alerts: int,
            rate: float) -> dict[str, Any]:
    """Settle ``alerts`` high-value baskets at ``rate``/s while a console watches."""
    received: queue.Queue[tuple[float, str]] = queue.Queue()
    with PosClient(target, risk_token, timeout=30) as risk, \
            PosClient(target, pos_token, timeout=30) as pos:
        stream = risk.watch_alerts()
        stream.initial_metadata()  # subscribed

        def read() -> None:
            try:
                for event in stream:
                    if event.action == "opened":
                        received.put((time.perf_counter(), event.alert.settlement_id))
            except Exception:  # noqa: BLE001 - cancelled at the end
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        started: dict[str, tuple[float, float]] = {}
        next_at = time.perf_counter()
        for i in range(alerts):
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.perf_counter()))
            t0 = time.perf_counter()
            sid = pos.settle({"member_id": f"A{i}", "lines": [
                {"sku": "TV", "category": "grocery", "unit_price_cents": BIG_CENTS,
                 "quantity": 1}]}, key=f"alert-{i}").settlement_id
            started[sid] = (t0, time.perf_counter())
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 10
        while len(seen) < len(started) and time.monotonic() < deadline:
            try:
                at, sid = received.get(timeout=0.5)
            except queue.Empty:
                continue
            seen[sid] = at
        stream.cancel()
    from_call = [(seen[s] - t0) * 1000 for s, (t0, _) in started.items() if s in seen]
    after_reply = [(seen[s] - t1) * 1000 for s, (_, t1) in started.items() if s in seen]
    return {"alerts": alerts, "delivered": len(seen), "missed": len(started) - len(seen),
            "from_call": stats(from_call), "after_reply": stats(after_reply)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="settles per second")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--impl", default="sync", choices=("sync", "aio"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cluster = PostgresCluster(durable=True)
    server = None
    try:
        log("starting a durable PostgreSQL cluster")
        cluster.start()
        cluster.create_database(LEDGER_DB)
        url = cluster.url(dbname=LEDGER_DB)
        engine = create_ledger_engine(url)
        upgrade(engine)
        pos_token = add_terminal(engine, "TILL", "S001", "pos")
        risk_token = add_terminal(engine, "CONSOLE", "S001", "risk")
        engine.dispose()
        server, target = start_server(url, args.workers, args.impl)
        with PosClient(target, pos_token, timeout=30) as pos:
            for i in range(args.alerts):
                pos.enroll(key=f"enrol-{i}", member_id=f"A{i}")
        log(f"{args.alerts} alerts at {args.rate}/s")
        result = measure(target, pos_token, risk_token, args.alerts, args.rate)
        result["args"] = {k: str(v) for k, v in vars(args).items()}
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(30)
        cluster.stop()
    print("| commit-to-WatchAlerts | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("from_call", "after_reply"):
        s = result[name]
        print(f"| {name.replace('_', ' ')} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['max_ms']:.2f} |")
    print(f"delivered {result['delivered']} of {result['alerts']}, missed {result['missed']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
