"""Settlements per second in-process on PostgreSQL, beside pgbench tpcb-like on the same cluster.

Run from the repository root::

    .venv/bin/python bench/ledger_vs_pgbench.py [--seconds 20] [--workers 8] [--members 2000]
                                                [--json out.json]

One throw-away, *durable* PostgreSQL cluster (``tests/pgcluster.py``, fsync and
full_page_writes on, synchronous_commit on) holds two databases:

* ``pgbench``: ``pgbench -i -s 8``, then ``pgbench -b tpcb-like -c 8 -j 2 -T <seconds>
  -M prepared``, run once BEFORE and once AFTER the multi-worker settle pass so drift
  shows; the reference is their mean. The figure is pgbench's only ``tps`` line
  (PostgreSQL 14+ prints ``tps = N (without initial connection time)``).
* ``ledger``: migrated, ``--members`` members enrolled through :class:`Ledger` (a spread
  of tiers, stored value by ``recharge``, a seeded points lot, 3 issued coupons each),
  then ``Ledger.settle`` from worker threads sharing one engine built by
  ``create_ledger_engine`` (the production settings: pool, pre-ping), each worker with
  its own idempotency keys, each settlement for a member drawn uniformly, a basket of
  1-20 lines from a 400-SKU catalogue (``bench/cases.py`` categories), ``redeem_points``
  and ``pay_stored_value_cents`` always set, and presented coupons or ``auto_coupons`` on
  part of them, under the spec's example rulebook (``examples/rulebook.toml``). A
  1-worker pass shows scaling.

Order: setup (enrolment commits with synchronous_commit=off: it is not measured), a short
single-threaded warm-up, settle with 1 worker, pgbench before, settle with ``--workers``,
pgbench after. Every measured phase starts right after a CHECKPOINT, so each pays the same
full-page writes. Each phase also reports CPU in cores: this Python process, the
PostgreSQL server processes, the pgbench client and "other" (anything else on the
machine: a figure well above 0 means the run was disturbed; ``--wait-quiet`` waits for an
idle machine first).

After the runs a short single-threaded profile pass counts SQL statements per settlement
and splits its time (engine quote, statement round trips, commit, pool pre-ping, the
rest: Python in the ledger, SQLAlchemy and psycopg), then cProfile shows where the Python
time goes (``--profile-out`` keeps the stats; ``--pg-stat-statements`` loads that
extension for the server's view, which costs both benchmarks a little). ``verify()`` must
return None at the end; the exit status is 1 otherwise. The cluster is stopped in all
cases.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import platform
import pstats
import random
import re
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import sqlalchemy  # noqa: E402
from sqlalchemy import Engine, create_engine, event  # noqa: E402

import settlement  # noqa: E402
from bench.cases import CATEGORIES  # noqa: E402
from settlement.ledger import pg_settle  # noqa: E402
from settlement.ledger.db import create_ledger_engine  # noqa: E402
from settlement.ledger.journal import Transaction, account, system  # noqa: E402
from settlement.ledger.migrate import upgrade  # noqa: E402
from settlement.ledger.service import Ledger  # noqa: E402
from settlement.ledger.verify import verify  # noqa: E402
from settlement.timeutil import parse_instant  # noqa: E402
from tests.pgcluster import PostgresCluster, parse_tps  # noqa: E402

RULEBOOK = ROOT / "examples" / "rulebook.toml"
STORE = "S001"
AT = "2026-11-22T10:30:00+08:00"  # a Sunday morning: weekend fruit promotion, dairy hours
VALID_FROM = parse_instant("2026-11-01T00:00:00+08:00")
VALID_UNTIL = parse_instant("2027-01-01T00:00:00+08:00")
TIERS = ("normal",) * 6 + ("silver",) * 3 + ("gold",)
COUPON_SETS = (("SPEND200-20", "VOUCHER5", "PCT12"), ("SPEND200-20", "VOUCHER5", "DAIRY-30PCT"),
               ("VOUCHER5", "VOUCHER5", "PCT12"))
RECHARGE_CENTS = 10_000_000
SEED_POINTS = 50_000
LEDGER_DB = "ledger"
PGBENCH_DB = "pgbench"


def log(message: str) -> None:
    """Progress to stderr (the results go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- workload


def catalogue(seed: int, size: int = 400) -> list[dict[str, Any]]:
    """A store's SKUs: category and shelf price (plus the rulebook's member-priced milk)."""
    rng = random.Random(seed)
    items = [{"sku": "MILK-1L", "category": "dairy", "unit_price_cents": 1290}]
    for i in range(size - 1):
        items.append({"sku": f"SKU-{i:04d}",
                      "category": CATEGORIES[rng.randrange(len(CATEGORIES))],
                      "unit_price_cents": rng.randrange(150, 9000)})
    return items


def member_id(i: int) -> str:
    return f"M{i:05d}"


def coupon_ids(i: int) -> list[str]:
    return [f"{member_id(i)}-C{j}" for j in range(len(COUPON_SETS[i % len(COUPON_SETS)]))]


def make_request(rng: random.Random, items: list[dict[str, Any]],
                 members: int) -> dict[str, Any]:
    """One checkout: a uniformly drawn member, 1-20 lines, points and stored value."""
    i = rng.randrange(members)
    lines = [{**item, "quantity": rng.randrange(1, 4)}
             for item in rng.sample(items, rng.randint(1, 20))]
    request: dict[str, Any] = {
        "member_id": member_id(i), "at": AT, "lines": lines,
        "redeem_points": rng.choice((200, 400, 1000)),
        "pay_stored_value_cents": rng.choice((1000, 5000, 20000, 100000)),
    }
    mode = rng.random()
    if mode < 0.4:  # presented coupons (already redeemed ones come back as rejected)
        ids = coupon_ids(i)
        request["coupon_ids"] = rng.sample(ids, rng.randint(1, len(ids)))
    elif mode < 0.55:
        request["auto_coupons"] = True
    return request


def seed_points(ledger: Ledger, mid: str, points: int) -> None:
    """A points lot, as a past settlement would have left it (as the ledger tests seed),
    two hours before the run and before :data:`AT`: a lot of 10,000+ points created within
    the hour makes every redemption a watchdog ``points_burn`` hit."""
    with ledger.engine.begin() as conn:
        now = min(ledger.clock(), parse_instant(AT)) - 2 * 3600 * 1_000_000
        tx = Transaction("seed", mid, STORE, now)
        tx.move(system(conn, "points_issued"), account(conn, mid, "points"), points)
        Ledger._write_lots(conn, tx.write(conn), [(mid, points, None)], now)


def set_up_member(ledger: Ledger, i: int) -> None:
    mid = member_id(i)
    ledger.enroll(STORE, f"e-{mid}", member_id=mid, card_no=f"K{i:05d}",
                  tier=TIERS[i % len(TIERS)])
    ledger.recharge(STORE, f"r-{mid}", mid, RECHARGE_CENTS)
    seed_points(ledger, mid, SEED_POINTS)
    for cid, template in zip(coupon_ids(i), COUPON_SETS[i % len(COUPON_SETS)], strict=True):
        ledger.issue_coupon(STORE, f"c-{cid}", mid, template, coupon_id=cid,
                            valid_from_us=VALID_FROM, valid_until_us=VALID_UNTIL)


def set_up_ledger(url: str, rulebook: settlement.Rulebook, members: int,
                  threads: int = 4) -> None:
    """Migrate and enrol; on PostgreSQL setup commits with synchronous_commit=off (it is not
    measured); a SQLite URL is enrolled from one thread."""
    if url.startswith("sqlite"):  # one writer at a time: threads would only wait
        engine, threads = create_engine(url), 1
    else:
        engine = create_engine(url, pool_size=threads,
                               connect_args={"options": "-c synchronous_commit=off"})
    try:
        upgrade(engine)
        ledger = Ledger(engine, rulebook, max_clock_skew_us=None)
        set_up_member(ledger, 0)  # creates the system accounts before any concurrency
        errors: list[BaseException] = []
        todo = iter(range(1, members))
        lock = threading.Lock()

        def work() -> None:
            while not errors:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    set_up_member(ledger, i)
                except BaseException as exc:  # re-raised below
                    errors.append(exc)

        pool = [threading.Thread(target=work) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        if errors:
            raise errors[0]
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- measuring


class CpuMeter:
    """CPU use over a phase, in cores: the machine (/proc/stat; iowait counts as idle, steal
    is shown apart), this process (all its threads), reaped child processes (pgbench), the
    PostgreSQL server's processes (sampled every 0.25 s, so a backend that exits loses at
    most its last 0.25 s) and "other": whatever else ran on the machine meanwhile."""

    def __init__(self, cluster: PostgresCluster | None = None) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.cluster = cluster
        self.first: dict[int, float] = self._server()
        self.last: dict[int, float] = dict(self.first)
        self.stopped = threading.Event()
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.start = self._sample()
        if cluster is not None:
            self.poller.start()

    def _server(self) -> dict[int, float]:
        ticks = {}
        for pid in self.cluster.server_pids() if self.cluster else []:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[pid] = (int(fields[11]) + int(fields[12])) / self.hz
        return ticks

    def _poll(self) -> None:
        while not self.stopped.wait(0.25):
            self.last.update(self._server())

    def _sample(self) -> tuple[float, ...]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        busy = sum(fields[:8]) - fields[3] - fields[4]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (busy / self.hz, fields[7] / self.hz, time.perf_counter(), time.process_time(),
                children.ru_utime + children.ru_stime)

    def read(self) -> dict[str, float]:
        end = self._sample()
        self.stopped.set()
        if self.poller.is_alive():
            self.poller.join()
        self.last.update(self._server())
        busy, steal, wall, own, kids = (b - a for a, b in zip(self.start, end, strict=True))
        server = sum(t - self.first.get(pid, 0.0) for pid, t in self.last.items())
        return {"wall_s": wall, "machine_busy_cores": busy / wall, "steal_cores": steal / wall,
                "this_process_cores": own / wall, "child_processes_cores": kids / wall,
                "server_cores": server / wall,
                "other_cores": (busy - own - kids - server) / wall}


@dataclass
class PassResult:
    workers: int
    seconds: float
    settled: int
    per_second: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: dict[str, int]
    error_examples: dict[str, str]
    cpu: dict[str, float] = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def settle_loop(ledger: Ledger, rng: random.Random, items: list[dict[str, Any]], members: int,
                now: Callable[[], float], deadline: float, key: str,
                terminal: str) -> tuple[list[float], Counter[str], dict[str, str]]:
    """Settle until ``now() >= deadline``: latencies of the successes, errors by type."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    n = 0
    while now() < deadline:
        request = make_request(rng, items, members)
        n += 1
        t0 = time.perf_counter()
        try:
            ledger.settle(STORE, f"{key}-{n}", request, terminal=terminal)
        except Exception as exc:  # noqa: BLE001 - counted by type, reported
            errors[type(exc).__name__] += 1
            examples.setdefault(type(exc).__name__, str(exc)[:200])
            continue
        latencies.append(time.perf_counter() - t0)
    return latencies, errors, examples


def settle_pass(ledger: Ledger, items: list[dict[str, Any]], members: int, workers: int,
                seconds: float, tag: str, seed: int,
                cluster: PostgresCluster | None = None) -> PassResult:
    """``workers`` threads settle for ``seconds``; every one counts if it started in time."""
    outcomes: list[Any] = [None] * workers
    clock: dict[str, float] = {}

    def go() -> None:
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + seconds

    barrier = threading.Barrier(workers, action=go)

    def work(w: int) -> None:
        rng = random.Random(f"{seed}-{tag}-{w}")
        barrier.wait()
        outcomes[w] = settle_loop(ledger, rng, items, members, time.perf_counter,
                                  clock["deadline"], f"{tag}-w{w}", f"T{w:02d}")

    meter = CpuMeter(cluster)
    threads = [threading.Thread(target=work, args=(w,), name=f"settle-{w}")
               for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - clock["start"]
    cpu = meter.read()
    flat = sorted(x for lat, _, _ in outcomes for x in lat)
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for _, errs, exs in outcomes:
        errors.update(errs)
        examples.update(exs)
    return PassResult(
        workers=workers, seconds=elapsed, settled=len(flat), per_second=len(flat) / elapsed,
        p50_ms=percentile(flat, 0.50) * 1e3, p99_ms=percentile(flat, 0.99) * 1e3,
        mean_ms=(sum(flat) / len(flat) * 1e3) if flat else float("nan"),
        errors=dict(errors), error_examples=examples, cpu=cpu)


def bench_rulebook(watchdog: bool = True) -> settlement.Rulebook:
    """The spec's example rulebook, its watchdog at the defaults or (``watchdog=False``)
    switched off."""
    if watchdog:
        return settlement.load_rulebook(RULEBOOK)
    return settlement.rulebook_from_toml(
        RULEBOOK.read_text() + "\n[watchdog]\nenabled = false\n")


def _process_worker(url: str, rulebook: settlement.Rulebook, items: list[dict[str, Any]],
                    members: int, seconds: float, tag: str, seed: int, w: int,
                    start_at: float, out: Any) -> None:
    """One settling process (forked): its own engine and Ledger, like a server worker."""
    engine = create_ledger_engine(url, pool_size=2)
    ledger = Ledger(engine, rulebook, max_clock_skew_us=None)
    rng = random.Random(f"{seed}-{tag}-{w}")
    while time.time() < start_at:
        time.sleep(0.001)
    latencies, errors, _ = settle_loop(ledger, rng, items, members, time.time,
                                       start_at + seconds, f"{tag}-p{w}", f"P{w:02d}")
    engine.dispose()
    out.put((latencies, dict(errors)))


def process_pass(url: str, rulebook: settlement.Rulebook, items: list[dict[str, Any]],
                 members: int, processes: int, seconds: float, tag: str, seed: int,
                 cluster: PostgresCluster | None = None) -> PassResult:
    """``processes`` forked processes settle for ``seconds`` (one Ledger each): the shape of
    a server with N worker processes, free of one interpreter's GIL."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # time for every process to connect
    procs = [ctx.Process(target=_process_worker,
                         args=(url, rulebook, items, members, seconds, tag, seed, w,
                               start_at, out))
             for w in range(processes)]
    for proc in procs:
        proc.start()
    time.sleep(max(0.0, start_at - time.time()))
    meter = CpuMeter(cluster)
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    cpu = meter.read()
    flat = sorted(x for lat, _ in results for x in lat)
    errors: Counter[str] = Counter()
    for _, errs in results:
        errors.update(errs)
    wall = cpu["wall_s"]
    return PassResult(
        workers=processes, seconds=wall, settled=len(flat), per_second=len(flat) / seconds,
        p50_ms=percentile(flat, 0.50) * 1e3, p99_ms=percentile(flat, 0.99) * 1e3,
        mean_ms=(sum(flat) / len(flat) * 1e3) if flat else float("nan"),
        errors=dict(errors), error_examples={}, cpu=cpu)


def pgbench_run(cluster: PostgresCluster, clients: int, threads: int,
                seconds: int) -> dict[str, Any]:
    meter = CpuMeter(cluster)
    out = cluster.run_pgbench(["-b", "tpcb-like", "-c", str(clients), "-j", str(threads),
                               "-T", str(seconds), "-M", "prepared"],
                              dbname=PGBENCH_DB, timeout=seconds + 300)
    cpu = meter.read()
    line = next(x for x in out.splitlines() if x.startswith("tps = "))

    def grab(pattern: str) -> str | None:
        match = re.search(pattern, out, re.MULTILINE)
        return match.group(1) if match else None

    latency = grab(r"^latency average = ([0-9.]+) ms")
    return {"tps": parse_tps(out), "tps_line": line.strip(),
            "transactions": int(grab(r"^number of transactions actually processed: (\d+)")
                                or 0),
            "failed": grab(r"^number of failed transactions: (.*)$"),
            "latency_avg_ms": float(latency) if latency else None, "cpu": cpu}


def start_with_pgbench(cluster: PostgresCluster, scale: int) -> str:
    """Start ``cluster`` and load a ``pgbench -i -s scale`` database into it; returns
    the server's version."""
    log("starting a durable PostgreSQL cluster")
    cluster.start()
    with cluster.connect("postgres") as conn:
        version = conn.execute("SHOW server_version").fetchone()
    cluster.create_database(PGBENCH_DB)
    log(f"pgbench -i -s {scale}")
    cluster.run_pgbench(["-i", "-s", str(scale), "-q"], dbname=PGBENCH_DB, timeout=900)
    return str(version[0]) if version else "?"


def checkpoint(cluster: PostgresCluster) -> None:
    """CHECKPOINT, so the next phase pays the same full-page writes as the others."""
    with cluster.connect("postgres", autocommit=True) as conn:
        conn.execute("CHECKPOINT")


# --------------------------------------------------------------------------- profile


def _shape(statement: str) -> str:
    """``SELECT accounts``, ``INSERT journal_postings``...: verb and first table."""
    text = " ".join(statement.split())
    verb = text.split(" ", 1)[0].upper()
    pattern = {"SELECT": r"\bFROM (\w+)", "INSERT": r"^INSERT INTO (\w+)",
               "UPDATE": r"^UPDATE (\w+)", "DELETE": r"^DELETE FROM (\w+)"}.get(verb)
    match = re.search(pattern, text) if pattern else None
    return f"{verb} {match.group(1)}" if match else text[:40]


@contextmanager
def instrumented(engine: Engine) -> Iterator[dict[str, Any]]:
    """Count and time statements, commits, pre-pings and quotes (single-threaded use)."""
    stats: dict[str, Any] = {"statements": Counter(), "rows": Counter(), "db_s": Counter(),
                             "commit_s": 0.0, "commits": 0, "ping_s": 0.0, "pings": 0,
                             "quote_s": 0.0, "quotes": 0, "executemany": 0}
    started: list[float] = []

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        started.append(time.perf_counter())

    def after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        shape = _shape(statement)
        stats["db_s"][shape] += time.perf_counter() - started.pop()
        stats["statements"][shape] += 1
        if executemany:
            stats["executemany"] += 1
            stats["rows"][shape] += len(parameters)

    dialect = engine.dialect
    real_ping = dialect.do_ping
    real_quote = settlement.quote
    real_commit = dialect.do_commit

    def ping(dbapi_connection):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return real_ping(dbapi_connection)
        finally:
            stats["ping_s"] += time.perf_counter() - t0
            stats["pings"] += 1

    def commit(dbapi_connection):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return real_commit(dbapi_connection)
        finally:
            stats["commit_s"] += time.perf_counter() - t0
            stats["commits"] += 1

    def quote(rulebook, request):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return real_quote(rulebook, request)
        finally:
            stats["quote_s"] += time.perf_counter() - t0
            stats["quotes"] += 1

    # The PostgreSQL settle path (settlement/ledger/pg_settle.py) runs on psycopg directly:
    # time its two statement round trips and its COMMIT.
    real_begin, real_write = pg_settle.begin, pg_settle.write
    real_pg_commit = psycopg.Connection.commit

    def timed(name: str, fn: Callable[..., Any], statements: int) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stats["db_s"][name] += time.perf_counter() - t0
                stats["statements"][name] += statements
        return wrapper

    def pg_commit(self):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return real_pg_commit(self)
        finally:
            stats["commit_s"] += time.perf_counter() - t0
            stats["commits"] += 1

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    dialect.do_ping = ping  # type: ignore[method-assign]
    dialect.do_commit = commit  # type: ignore[method-assign]
    settlement.quote = quote  # the ledger calls settlement.quote(...) through the module
    pg_settle.begin = timed("pipeline: BEGIN, claim key, lock member, read snapshot",  # type: ignore[assignment]
                            real_begin, 3)
    pg_settle.write = timed("write CTE: journal, balances, lots, coupons, settlement, lines",  # type: ignore[assignment]
                            real_write, 1)
    psycopg.Connection.commit = pg_commit  # type: ignore[method-assign]
    try:
        yield stats
    finally:
        psycopg.Connection.commit = real_pg_commit  # type: ignore[method-assign]
        pg_settle.begin, pg_settle.write = real_begin, real_write  # type: ignore[assignment]
        settlement.quote = real_quote
        dialect.do_ping = real_ping  # type: ignore[method-assign]
        dialect.do_commit = real_commit  # type: ignore[method-assign]
        event.remove(engine, "after_cursor_execute", after)
        event.remove(engine, "before_cursor_execute", before)


def single_loop(ledger: Ledger, items: list[dict[str, Any]], members: int, seconds: float,
                tag: str, seed: int) -> tuple[int, float]:
    """Settle in this thread for ``seconds``; (successful settlements, wall seconds)."""
    rng = random.Random(f"{seed}-{tag}")
    done = n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        n += 1
        try:
            ledger.settle(STORE, f"{tag}-{n}", make_request(rng, items, members), terminal="P")
            done += 1
        except Exception:  # noqa: BLE001 - errors are counted in the measured passes
            continue
    return done, time.perf_counter() - start


def server_statements(cluster: PostgresCluster, settled: int,
                      top: int = 20) -> list[dict[str, Any]]:
    """pg_stat_statements for the ledger database, per settlement, by total execution time."""
    with cluster.connect(LEDGER_DB) as conn:
        rows = conn.execute(
            "SELECT s.calls, s.total_exec_time, s.total_plan_time, s.rows, s.query "
            "FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
            "ORDER BY s.total_exec_time + s.total_plan_time DESC LIMIT %s",
            (LEDGER_DB, top)).fetchall()
    per = max(settled, 1)
    return [{"calls_per_settle": calls / per, "exec_ms_per_settle": total / per,
             "plan_ms_per_settle": plan / per,
             "rows_per_settle": nrows / per, "query": " ".join(query.split())[:90]}
            for calls, total, plan, nrows, query in rows]


def profile(ledger: Ledger, items: list[dict[str, Any]], members: int, seconds: float,
            seed: int, cluster: PostgresCluster | None = None, stat_statements: bool = False,
            profile_out: Path | None = None, top: int = 25) -> dict[str, Any]:
    """Where a settlement's time goes: instrumented pass, then a cProfile pass."""
    if stat_statements and cluster is not None:
        with cluster.connect(LEDGER_DB) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
    with instrumented(ledger.engine) as stats:
        n, wall = single_loop(ledger, items, members, seconds, "prof", seed)
    per = max(n, 1)
    server = (server_statements(cluster, n) if stat_statements and cluster is not None
              else None)
    db_total = sum(stats["db_s"].values())
    breakdown_ms = {
        "total": wall / per * 1e3,
        "engine quote": stats["quote_s"] / per * 1e3,
        "SQL statement round trips (send -> result)": db_total / per * 1e3,
        "COMMIT (WAL flush)": stats["commit_s"] / per * 1e3,
        "pool pre-ping (off since the fast path)": stats["ping_s"] / per * 1e3,
    }
    breakdown_ms["rest: Python (ledger, SQLAlchemy, psycopg, request generation)"] = (
        breakdown_ms["total"] - sum(v for k, v in breakdown_ms.items() if k != "total"))
    statements = {shape: {"per_settle": count / per,
                          "ms_per_settle": stats["db_s"][shape] / per * 1e3}
                  for shape, count in stats["statements"].most_common()}
    profiler = cProfile.Profile()
    profiler.enable()
    n_prof, wall_prof = single_loop(ledger, items, members, seconds, "cprof", seed)
    profiler.disable()
    if profile_out is not None:
        profiler.dump_stats(profile_out)
    buf = io.StringIO()
    ps = pstats.Stats(profiler, stream=buf)
    ps.sort_stats("tottime").print_stats(top)
    ps.sort_stats("cumulative").print_stats(top)
    return {"settled": n, "wall_s": wall, "breakdown_ms_per_settle": breakdown_ms,
            "statements_per_settle": sum(stats["statements"].values()) / per,
            "executemany_per_settle": stats["executemany"] / per,
            "pings_per_settle": stats["pings"] / per, "commits_per_settle": stats["commits"] / per,
            "statements": statements, "server_statements": server,
            "cprofile_settled": n_prof,
            "cprofile_ms_per_settle": wall_prof / max(n_prof, 1) * 1e3,
            "cprofile": buf.getvalue()}


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"nproc": affinity or os.cpu_count(), "cpu": model,
            "python": platform.python_version(), "sqlalchemy": sqlalchemy.__version__,
            "psycopg": psycopg.__version__, "implementation": settlement.IMPLEMENTATION}


def table(r: dict[str, Any]) -> str:
    before, after = r["pgbench_before"], r["pgbench_after"]
    one, many = r["settle_1"], r["settle_n"]
    m = r["machine"]
    w = many["workers"]

    def settle_cpu(p: dict[str, Any]) -> str:
        c = p["cpu"]
        per = c["wall_s"] / max(p["settled"], 1) * 1e3
        other = c["other_cores"]
        return (f"machine {c['machine_busy_cores']:.2f} of {m['nproc']}: Python "
                f"{c['this_process_cores']:.2f} ({c['this_process_cores'] * per:.2f} ms/settle), "
                f"PostgreSQL {c['server_cores']:.2f} ({c['server_cores'] * per:.2f} ms/settle), "
                f"other {other:.2f}, steal {c['steal_cores']:.2f}")

    def bench_cpu(p: dict[str, Any]) -> str:
        c = p["cpu"]
        per = c["wall_s"] / max(p["transactions"], 1) * 1e3
        return (f"machine {c['machine_busy_cores']:.2f}: pgbench client "
                f"{c['child_processes_cores']:.2f}, PostgreSQL {c['server_cores']:.2f} "
                f"({c['server_cores'] * per:.2f} ms/tx), other {c['other_cores']:.2f}, "
                f"steal {c['steal_cores']:.2f}")

    def errs(p: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(p["errors"].items())) or "none"

    rows = [
        ("machine", f"{m['nproc']} CPUs, {m['cpu']}; Python {m['python']}, "
                    f"SQLAlchemy {m['sqlalchemy']}, psycopg {m['psycopg']}"),
        ("PostgreSQL", f"{r['server_version']}, one durable cluster (fsync, full_page_writes, "
                       "synchronous_commit on), 127.0.0.1 TCP"),
        ("engine implementation", f"`{m['implementation']}` (settlement.IMPLEMENTATION)"),
        ("watchdog", "off (--no-watchdog)" if r["args"].get("no_watchdog")
         else "on, the rulebook's defaults (this load raises alerts on most settlements)"),
        (f"pgbench tpcb-like -s {r['args']['scale']} -c {r['args']['clients']} "
         f"-j {r['args']['pgbench_threads']} -M prepared, {r['args']['seconds']} s, before",
         f"{before['tps']:,.1f} TPS (latency avg {before['latency_avg_ms']} ms)"),
        ("pgbench, after", f"{after['tps']:,.1f} TPS (latency avg {after['latency_avg_ms']} ms)"),
        ("pgbench, mean (reference)", f"{r['pgbench_mean_tps']:,.1f} TPS"),
        ("settle/s, 1 worker", f"{one['per_second']:,.1f} ({one['settled']} in "
                               f"{one['seconds']:.1f} s)"),
        (f"settle/s, {w} workers", f"{many['per_second']:,.1f} ({many['settled']} in "
                                   f"{many['seconds']:.1f} s)"),
        (f"scaling {w} vs 1 worker", f"{many['per_second'] / one['per_second']:.2f}x"
         if one["per_second"] else "n/a"),
        (f"**ratio settle({w}) / pgbench mean**", f"**{r['ratio']:.3f}x** (target >= 0.5x: "
                                                  f"{'met' if r['ratio'] >= 0.5 else 'NOT met'})"),
        ("latency p50 / p99, 1 worker", f"{one['p50_ms']:.2f} / {one['p99_ms']:.2f} ms"),
        (f"latency p50 / p99, {w} workers", f"{many['p50_ms']:.2f} / {many['p99_ms']:.2f} ms"),
        ("errors, 1 worker", errs(one)),
        (f"errors, {w} workers", errs(many)),
        ("CPU cores busy, settle 1 worker", settle_cpu(one)),
        (f"CPU cores busy, settle {w} workers", settle_cpu(many)),
        ("CPU cores busy, pgbench before", bench_cpu(before)),
        ("CPU cores busy, pgbench after", bench_cpu(after)),
        ("background load before the run", f"{r['background']['machine_busy_cores']:.2f} "
         f"cores busy over {r['background']['wall_s']:.0f} s (should be ~0)"),
        ("verify()", repr(r["verify"])),
    ]
    procs = r.get("settle_processes")
    if procs:
        c = procs["cpu"]
        rows[-1:-1] = [
            (f"settle/s, {procs['workers']} worker processes",
             f"{procs['per_second']:,.1f} ({procs['settled']} in {r['args']['seconds']} s), "
             f"p50 / p99 {procs['p50_ms']:.2f} / {procs['p99_ms']:.2f} ms, errors {errs(procs)}"),
            (f"ratio settle({procs['workers']} processes) / pgbench mean",
             f"{procs['per_second'] / r['pgbench_mean_tps']:.3f}x"),
            (f"CPU cores busy, settle {procs['workers']} processes",
             f"machine {c['machine_busy_cores']:.2f} of {m['nproc']}: worker processes "
             f"{c['child_processes_cores']:.2f}, PostgreSQL {c['server_cores']:.2f}, "
             f"other {c['other_cores']:.2f}"),
        ]
    out = ["| measure | value |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in rows]
    out.append("")
    out.append(f"pgbench tps line (before): `{before['tps_line']}`")
    return "\n".join(out)


def profile_report(p: dict[str, Any]) -> str:
    out = [f"Profile, 1 worker, {p['settled']} settlements in {p['wall_s']:.1f} s "
           f"(instrumented, no cProfile):", "", "| part | ms per settle | share |",
           "| --- | ---: | ---: |"]
    total = p["breakdown_ms_per_settle"]["total"]
    for part, ms in p["breakdown_ms_per_settle"].items():
        out.append(f"| {part} | {ms:.3f} | {ms / total:.0%} |")
    out += ["", f"SQL statements per settle: {p['statements_per_settle']:.1f} "
            f"(executemany: {p['executemany_per_settle']:.2f}), pre-pings "
            f"{p['pings_per_settle']:.2f}, commits {p['commits_per_settle']:.2f}", "",
            "| statement | per settle | ms per settle |", "| --- | ---: | ---: |"]
    for shape, s in p["statements"].items():
        out.append(f"| {shape} | {s['per_settle']:.2f} | {s['ms_per_settle']:.3f} |")
    if p.get("server_statements"):
        out += ["", "pg_stat_statements over the same pass (server planning and execution "
                "time):", "",
                "| calls per settle | plan ms per settle | exec ms per settle | rows per settle "
                "| query |",
                "| ---: | ---: | ---: | ---: | --- |"]
        for row in p["server_statements"]:
            query = row["query"].replace("|", "\\|")
            out.append(f"| {row['calls_per_settle']:.2f} | {row['plan_ms_per_settle']:.3f} | "
                       f"{row['exec_ms_per_settle']:.3f} | "
                       f"{row['rows_per_settle']:.2f} | `{query}` |")
    out += ["", f"cProfile pass: {p['cprofile_settled']} settlements, "
            f"{p['cprofile_ms_per_settle']:.2f} ms each under the profiler", "",
            p["cprofile"]]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def quiet(wait: float, threshold: float = 0.3) -> dict[str, float]:
    """The machine's load over 1 s; with ``wait`` > 0, retry for up to ``wait`` seconds
    until fewer than ``threshold`` cores are busy (another job would distort every figure)."""
    deadline = time.monotonic() + wait
    while True:
        meter = CpuMeter()
        time.sleep(1)
        load = meter.read()
        if load["machine_busy_cores"] < threshold or time.monotonic() >= deadline:
            return load
        log(f"machine busy ({load['machine_busy_cores']:.2f} cores), waiting for quiet")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="each measured phase")
    parser.add_argument("--workers", type=int, default=8, help="settle threads (multi pass)")
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=0,
                        help="also settle with this many worker processes (0: skip)")
    parser.add_argument("--clients", type=int, default=8, help="pgbench -c")
    parser.add_argument("--pgbench-threads", type=int, default=2, help="pgbench -j")
    parser.add_argument("--scale", type=int, default=8, help="pgbench -i -s")
    parser.add_argument("--profile-seconds", type=float, default=5.0,
                        help="each of the two profile passes; 0 skips profiling")
    parser.add_argument("--pg-stat-statements", action="store_true",
                        help="load pg_stat_statements (both benchmarks pay for it) and show "
                             "the server's view of the profile pass")
    parser.add_argument("--profile-out", type=Path, help="dump the cProfile stats here")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for an idle machine")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-watchdog", action="store_true",
                        help="settle with [watchdog] enabled = false (what the watchdog costs "
                             "on this load: every settlement here raises alerts)")
    parser.add_argument("--json", type=Path, help="write all results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run everything; returns the results (``verify`` is None when the journal holds)."""
    args = parse_args(argv)
    result: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v
                                       for k, v in vars(args).items()},
                              "started": datetime.now(UTC).isoformat(timespec="seconds"),
                              "machine": machine()}
    result["background"] = quiet(args.wait_quiet)
    rulebook = bench_rulebook(watchdog=not args.no_watchdog)
    items = catalogue(args.seed)
    settings: dict[str, str | int] = (
        {"shared_preload_libraries": "pg_stat_statements",
         "pg_stat_statements.track_planning": "on"} if args.pg_stat_statements else {})
    cluster = PostgresCluster(durable=True, settings=settings)
    engine: Engine | None = None
    try:
        result["server_version"] = start_with_pgbench(cluster, args.scale)
        cluster.create_database(LEDGER_DB)
        url = cluster.url(dbname=LEDGER_DB)
        log(f"ledger: migrate and enrol {args.members} members")
        t0 = time.perf_counter()
        set_up_ledger(url, rulebook, args.members)
        result["setup_s"] = time.perf_counter() - t0
        with cluster.connect(LEDGER_DB, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            if args.pg_stat_statements:
                conn.execute("CREATE EXTENSION pg_stat_statements")
        engine = create_ledger_engine(url, pool_size=max(args.workers, 8))
        ledger = Ledger(engine, rulebook, max_clock_skew_us=None)
        log("warm-up")  # single-threaded: first settlements create the system accounts
        warm = single_loop(ledger, items, args.members, min(2.0, args.seconds / 4), "warm",
                           args.seed)
        result["warmup_settled"] = warm[0]

        def phase(name: str, fn: Callable[[], Any]) -> Any:
            checkpoint(cluster)
            log(name)
            return fn()

        one = phase("settle, 1 worker", lambda: settle_pass(
            ledger, items, args.members, 1, args.seconds, "one", args.seed, cluster))
        before = phase("pgbench before", lambda: pgbench_run(
            cluster, args.clients, args.pgbench_threads, args.seconds))
        many = phase(f"settle, {args.workers} workers", lambda: settle_pass(
            ledger, items, args.members, args.workers, args.seconds, "many", args.seed,
            cluster))
        if args.processes:
            procs = phase(f"settle, {args.processes} processes", lambda: process_pass(
                url, rulebook, items, args.members, args.processes, args.seconds, "procs",
                args.seed, cluster))
            result["settle_processes"] = asdict(procs)
        after = phase("pgbench after", lambda: pgbench_run(
            cluster, args.clients, args.pgbench_threads, args.seconds))
        mean = (before["tps"] + after["tps"]) / 2
        result.update(settle_1=asdict(one), settle_n=asdict(many), pgbench_before=before,
                      pgbench_after=after, pgbench_mean_tps=mean,
                      ratio=many.per_second / mean if mean else 0.0)
        if args.profile_seconds > 0:
            log("profile")
            result["profile"] = profile(ledger, items, args.members, args.profile_seconds,
                                        args.seed, cluster, args.pg_stat_statements,
                                        args.profile_out)
        with engine.connect() as ledger_conn:
            result["verify"] = verify(ledger_conn)
    finally:
        if engine is not None:
            engine.dispose()
        log("stopping the cluster")
        cluster.stop()
    print(table(result))
    if "profile" in result:
        print()
        print(profile_report(result["profile"]))
    print(f"\nverify(): {result['verify']!r}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["verify"] is None else 1)
