"""The gRPC API beside its floors, in one run on one machine.

    .venv/bin/python bench/grpc_vs_floor.py [--seconds 4] [--workers 2] [--members 2000]

One durable PostgreSQL cluster (tests/pgcluster.py) holds the ledger and a
pgbench database; ``settlement serve --workers N`` runs on it as a separate
process. Measured, all through the same server stack (auth included) and the
same Python client (settlement_pos.PosClient's stubs):

1. latency at low load: one connection, one call at a time, alternating call
   by call ``Ping`` (an empty RPC), ``Quote`` of a walk-in 20-line basket (no
   database) and ``Quote`` of a member's basket of up to 10 lines (reads the
   member): p50, p99;
2. throughput, closed loop, ``--clients`` connections from 4 client processes:
   Ping, Quote (walk-in), Settle;
3. pgbench tpcb-like, ``--clients`` clients, before and after the Settle pass;
4. Settle at a fixed rate of 80 % of its closed-loop maximum: latency measured
   from each call's scheduled start, so a stall is not hidden (coordinated
   omission).

Results go to stdout as a markdown table and to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

import settlement  # noqa: E402
from bench.ledger_vs_pgbench import (  # noqa: E402
    LEDGER_DB,
    RULEBOOK,
    catalogue,
    checkpoint,
    log,
    make_request,
    percentile,
    pgbench_run,
    set_up_ledger,
    start_with_pgbench,
)
from settlement.ledger.db import create_ledger_engine  # noqa: E402
from settlement.ledger.terminals import add_terminal  # noqa: E402
from settlement.v1 import settlement_pb2 as pb  # noqa: E402
from settlement_pos import PosClient, basket  # noqa: E402
from tests.pgcluster import PostgresCluster  # noqa: E402


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving(target: str) -> bool:
    """Whether the server at ``target`` answers health checks with SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=1)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def start_server(url: str, workers: int, impl: str,
                 threads: int = 16) -> tuple[subprocess.Popen[bytes], str]:
    """``settlement serve`` (the fast engine) on a free loopback port, once it is SERVING."""
    target = f"127.0.0.1:{free_port()}"
    log(f"settlement serve --impl {impl} --workers {workers} on {target}")
    server = subprocess.Popen(
        [sys.executable, "-m", "settlement", "serve", "--listen", target, "--rulebook",
         str(RULEBOOK), "--database-url", url, "--workers", str(workers),
         "--threads", str(threads), "--impl", impl],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "SETTLEMENT_IMPL": "fast"})
    deadline = time.monotonic() + 60
    while not serving(target):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the server did not start")
        time.sleep(0.2)
    return server, target


def requests_for(kind: str, seed: int, members: int) -> Any:
    """An endless supply of (method name, request) for ``kind``."""
    rng = random.Random(seed)
    items = catalogue(7)
    walk_in = pb.QuoteRequest(basket=basket({"lines": [
        {**item, "quantity": 1 + i % 3} for i, item in enumerate(items[:20])]}))
    n = 0
    while True:
        n += 1
        if kind == "ping":
            yield "Ping", pb.PingRequest()
        elif kind == "quote":
            yield "Quote", walk_in
        elif kind == "quote_member":
            spec = make_request(rng, items, members)
            del spec["at"]
            spec["lines"] = spec["lines"][:10]
            yield "Quote", pb.QuoteRequest(basket=basket(spec))
        else:
            spec = make_request(rng, items, members)
            del spec["at"]  # the server's clock: Settle refuses a far-off instant
            yield "Settle", pb.SettleRequest(idempotency_key=f"b{seed}-{n}",
                                             basket=basket(spec))


def call(pos: PosClient, name: str, request: Any, errors: Counter[str] | None) -> bool:
    """One call through ``pos``'s stub, no retry; a refusal is counted in ``errors`` by
    status name (or raised when ``errors`` is None). True when it succeeded."""
    try:
        getattr(pos.settlements, name)(request, timeout=30, metadata=pos.metadata)
    except grpc.RpcError as exc:
        if errors is None:
            raise
        errors[exc.code().name] += 1  # type: ignore[attr-defined]
        return False
    return True


def closed_loop(target: str, token: str, kind: str, seconds: float, seed: int,
                members: int, errors: Counter[str] | None = None) -> list[float]:
    """Calls one after the other for ``seconds``; latencies in ms of the successes (errors
    raise, or are counted in ``errors``)."""
    with PosClient(target, token, timeout=30) as pos:
        supply = requests_for(kind, seed, members)
        pos.ping()
        out: list[float] = []
        deadline = time.perf_counter() + seconds
        while True:
            name, request = next(supply)
            t0 = time.perf_counter()
            if t0 >= deadline:
                return out
            if call(pos, name, request, errors):
                out.append((time.perf_counter() - t0) * 1e3)


def schedule(g: int, per_connection: float, offered: float,
             seconds: float) -> Iterator[float]:
    """When connection ``g`` of a fixed-rate phase sends its calls, in seconds from the
    phase's start: every ``1 / per_connection`` s from ``g / offered`` on, while before
    ``seconds``. Over all the phase's connections (``offered / per_connection`` of them)
    the calls are evenly spaced, ``offered`` per second."""
    k = 0
    while (due := g / offered + k / per_connection) < seconds:
        yield due
        k += 1


def _process(args: tuple[str, tuple[str, ...], str, float, int, int, int, float, int, float,
                         float]) -> tuple[list[float], dict[str, int], float]:
    """One client process: ``threads`` connections, closed loop or fixed rate; latencies in
    ms of the successes, the refusals by status, and (fixed rate) the ``time.monotonic()``
    of its last answer (0.0 in a closed loop).

    Fixed rate: every connection of the phase sends at ``rate`` / connections, and they are
    staggered: connection ``g`` (over all processes; this process's first is ``first``)
    starts ``g / offered`` seconds after the common ``start_at`` (``time.monotonic()``),
    so the calls arrive evenly spaced at ``offered`` per second, not in bursts of one call per
    connection."""
    import threading

    (target, tokens, kind, seconds, seed, members, threads, rate, first, offered,
     start_at) = args
    rate /= threads  # this process's rate, shared by its connections
    results: list[list[float]] = [[] for _ in range(threads)]
    errors: list[Counter[str]] = [Counter() for _ in range(threads)]
    last = [0.0] * threads

    def run(i: int) -> None:
        token = tokens[(first + i) % len(tokens)]  # connection g is till g of the store
        if rate <= 0:
            results[i] = closed_loop(target, token, kind, seconds, seed * 100 + i, members,
                                     errors[i])
            return
        # fixed rate (schedule()): latency counts from when the call was due
        with PosClient(target, token, timeout=30) as pos:
            supply = requests_for(kind, seed * 100 + i, members)
            pos.ping()
            for offset in schedule(first + i, rate, offered, seconds):
                due = start_at + offset
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                name, request = next(supply)
                if call(pos, name, request, errors[i]):
                    results[i].append((time.monotonic() - due) * 1e3)
                last[i] = time.monotonic()

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total: Counter[str] = Counter()
    for e in errors:
        total.update(e)
    return [x for r in results for x in r], dict(total), max(last)


CLIENT_PROCESSES = 4
"""Client processes :func:`load` spreads its connections over (at most)."""


def client_pool() -> Pool:
    """A pool of :data:`CLIENT_PROCESSES` spawned client processes for :func:`load` to reuse
    (spawning them costs a second or two per phase otherwise)."""
    return multiprocessing.get_context("spawn").Pool(CLIENT_PROCESSES)


def summary(lat: list[float]) -> dict[str, float]:
    """Percentiles (ms) of sorted latencies: p50, p90, p99, p99.9, max, mean."""
    return {"p50_ms": percentile(lat, 0.50), "p90_ms": percentile(lat, 0.90),
            "p99_ms": percentile(lat, 0.99), "p999_ms": percentile(lat, 0.999),
            "max_ms": lat[-1] if lat else float("nan"),
            "mean_ms": sum(lat) / len(lat) if lat else float("nan")}


def load(target: str, tokens: Sequence[str], kind: str, seconds: float, clients: int,
         members: int, rate: float = 0.0, seed: int = 1, pool: Pool | None = None
         ) -> dict[str, Any]:
    """``clients`` connections over up to 4 processes, connection g as terminal
    ``tokens[g % len(tokens)]``; ``rate`` > 0: total calls/s, fixed,
    latency from each call's scheduled start. ``pool`` (:func:`client_pool`) is reused
    when given, else spawned for this call. Refusals are counted in ``errors``, by status;
    ``calls`` and the percentiles are of the successes."""
    processes = min(CLIENT_PROCESSES, clients)
    per = [clients // processes + (1 if i < clients % processes else 0)
           for i in range(processes)]
    # fixed rate: all processes start together, once they can (spawning takes seconds)
    start_at = time.monotonic() + (1.0 if pool is not None else 5.0)
    jobs = [(target, tuple(tokens), kind, seconds, seed * 10 + i, members, per[i],
             rate * per[i] / clients if rate else 0.0, sum(per[:i]), rate, start_at)
            for i in range(processes)]
    t0 = time.perf_counter()
    limit = seconds * 3 + 120  # a client process that died would leave map() waiting
    if pool is None:
        with client_pool() as own:
            parts = own.map_async(_process, jobs, chunksize=1).get(limit)
    else:
        parts = pool.map_async(_process, jobs, chunksize=1).get(limit)
    wall = time.perf_counter() - t0
    lat = sorted(x for part, _, _ in parts for x in part)
    errors: Counter[str] = Counter()
    for _, errs, _ in parts:
        errors.update(errs)
    # Fixed rate: answers still arriving after the schedule ended count over the time they
    # took (an overloaded server's rate is what it served, not what was asked).
    span = max(seconds, max(done for _, _, done in parts) - start_at) if rate else seconds
    return {"kind": kind, "clients": clients, "calls": len(lat), "seconds": seconds,
            "span_s": span, "per_second": len(lat) / span, "rate_asked": rate,
            "wall_s": wall, "errors": dict(errors), **summary(lat)}


def latency_rounds(target: str, token: str, seconds: float, members: int) -> dict[str, Any]:
    """One connection, one call at a time, the three kinds interleaved call by call (the
    same worker, the same moment: the fairest comparison)."""
    lat: dict[str, list[float]] = {"ping": [], "quote": [], "quote_member": []}
    supplies = {kind: requests_for(kind, 5, members) for kind in lat}
    with PosClient(target, token, timeout=30) as pos:
        pos.ping()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for kind, values in lat.items():
                name, request = next(supplies[kind])
                t0 = time.perf_counter()
                getattr(pos.settlements, name)(request, timeout=30, metadata=pos.metadata)
                values.append((time.perf_counter() - t0) * 1e3)
    out = {}
    for kind, values in lat.items():
        values.sort()
        out[kind] = {"calls": len(values), "p50_ms": percentile(values, 0.5),
                     "p99_ms": percentile(values, 0.99)}
    return out


TERMINALS = 64
"""POS terminals of store S001 the load is spread over: a till settles one basket at a
time, and one terminal taking the whole load is itself an anomaly the watchdog flags
(terminal_burst on every settlement, all of them updating that one alert row)."""


def prepare_ledger(cluster: PostgresCluster, members: int,
                   terminals: int = TERMINALS) -> tuple[str, list[str]]:
    """Create the ledger database in ``cluster``, migrate it, enrol ``members`` members
    (bench/ledger_vs_pgbench.py's set_up_ledger), add ``terminals`` POS terminals of store
    S001 and VACUUM ANALYZE; returns (SQLAlchemy URL, the terminals' tokens)."""
    cluster.create_database(LEDGER_DB)
    url = cluster.url(dbname=LEDGER_DB)
    log(f"ledger: migrate and enrol {members} members")
    set_up_ledger(url, settlement.load_rulebook(RULEBOOK), members)
    engine = create_ledger_engine(url)
    tokens = [add_terminal(engine, f"T{t:03d}", "S001", "pos") for t in range(1, terminals + 1)]
    engine.dispose()
    with cluster.connect(LEDGER_DB, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return url, tokens


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``server`` (it drains) and wait for it."""
    if server.poll() is None:
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every phase (see the module docstring); prints the table, returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="each measured phase")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=16, help="server threads per worker")
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=8, help="pgbench -i -s")
    parser.add_argument("--impls", default="sync,aio", help="server implementations to run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    cluster = PostgresCluster(durable=True)
    server = None
    try:
        start_with_pgbench(cluster, args.scale)
        url, tokens = prepare_ledger(cluster, args.members)
        log("pgbench before")
        checkpoint(cluster)
        result["pgbench_before"] = pgbench_run(cluster, args.clients, 2, int(args.seconds))
        for n, impl in enumerate(args.impls.split(",")):
            server, target = start_server(url, args.workers, impl, args.threads)
            r: dict[str, Any] = {}
            log(f"{impl}: latency at low load: Ping / Quote walk-in / Quote member")
            r["latency"] = latency_rounds(target, tokens[0], args.seconds * 2, args.members)
            for kind in ("ping", "quote"):
                log(f"{impl}: throughput: {kind}, {args.clients} clients")
                r[f"throughput_{kind}"] = load(target, tokens, kind, args.seconds,
                                               args.clients, args.members)
            log(f"{impl}: settle: closed loop, {args.clients} clients")
            checkpoint(cluster)
            r["settle"] = load(target, tokens, "settle", args.seconds, args.clients,
                               args.members, seed=2 + 10 * n)
            rate = 0.8 * r["settle"]["per_second"]
            log(f"{impl}: settle: fixed rate {rate:.0f}/s")
            checkpoint(cluster)
            r["settle_fixed"] = load(target, tokens, "settle", args.seconds, args.clients,
                                     args.members, rate=rate, seed=3 + 10 * n)
            lat = r["latency"]
            r["quote_p50_ratio"] = lat["quote"]["p50_ms"] / lat["ping"]["p50_ms"]
            result[impl] = r
            stop_server(server)
        log("pgbench after")
        checkpoint(cluster)
        result["pgbench_after"] = pgbench_run(cluster, args.clients, 2, int(args.seconds))
        mean = (result["pgbench_before"]["tps"] + result["pgbench_after"]["tps"]) / 2
        result["pgbench_mean_tps"] = mean
        for impl in args.impls.split(","):
            result[impl]["settle_ratio"] = result[impl]["settle"]["per_second"] / mean
    finally:
        if server is not None:
            stop_server(server)
        cluster.stop()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def table(r: dict[str, Any]) -> str:
    """The results as the markdown table of bench/README.md."""
    impls = [k for k in ("sync", "aio") if k in r]

    def row(label: str, fn: Any) -> str:
        return f"| {label} | " + " | ".join(fn(r[impl]) for impl in impls) + " |"

    def lat(kind: str) -> Any:
        return lambda x: (f"{x['latency'][kind]['p50_ms']:.3f} / "
                          f"{x['latency'][kind]['p99_ms']:.3f} ms")

    def tput(kind: str) -> Any:
        return lambda x: (f"{x[kind]['per_second']:,.0f}/s (p50 {x[kind]['p50_ms']:.2f}, "
                          f"p99 {x[kind]['p99_ms']:.2f} ms)")

    lines = [f"| measure | {' | '.join(impls)} |", "| --- |" + " --- |" * len(impls),
             row("empty RPC (Ping), 1 connection: p50 / p99", lat("ping")),
             row("Quote walk-in 20 lines: p50 / p99", lat("quote")),
             row("Quote member (reads the member): p50 / p99", lat("quote_member")),
             row("**Quote p50 / Ping p50** (target <= 1.2x)",
                 lambda x: f"**{x['quote_p50_ratio']:.2f}x**"),
             row("Ping throughput, closed loop", tput("throughput_ping")),
             row("Quote throughput, closed loop", tput("throughput_quote")),
             row("Settle throughput, closed loop", tput("settle")),
             row("**Settle / pgbench** (target >= 0.7x)",
                 lambda x: f"**{x['settle_ratio']:.3f}x**"),
             row("Settle at 80 % of max, fixed rate: done, p50 / p99 from scheduled start "
                 "(target p99 <= 15 ms)",
                 lambda x: (f"{x['settle_fixed']['per_second']:,.0f}/s of "
                            f"{x['settle_fixed']['rate_asked']:,.0f}/s, "
                            f"{x['settle_fixed']['p50_ms']:.2f} / "
                            f"{x['settle_fixed']['p99_ms']:.2f} ms"))]
    lines.append(f"| pgbench tpcb-like, {r['args']['clients']} clients: before / after / mean | "
                 f"{r['pgbench_before']['tps']:,.1f} / {r['pgbench_after']['tps']:,.1f} / "
                 f"{r['pgbench_mean_tps']:,.1f} TPS |" + " |" * (len(impls) - 1))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
