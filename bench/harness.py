"""The one-command load harness behind ``bench/run`` (its docstring is the user guide).

One durable throw-away PostgreSQL cluster (tests/pgcluster.py) holds a pgbench database
and the ledger (members enrolled by bench/ledger_vs_pgbench.py's set_up_ledger); then,
for each server worker count, ``settlement serve --workers W`` runs on it and is measured
with bench/grpc_vs_floor.py's client loops:

1. low load: one connection, Ping / Quote walk-in / Quote member interleaved call by call;
2. closed loop: each kind (Ping, Quote walk-in, Settle) at each concurrency level;
3. fixed rate (open loop): each kind at fractions of its best closed-loop rate with this
   worker count, latency from each call's scheduled start (no coordinated omission).

pgbench tpcb-like runs at each concurrency level before the servers, and once more at the
highest level after them (drift). Everything goes to ``--out``: results.json, report.md
and three PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # on sys.path: bench/run puts it there

from bench.grpc_vs_floor import (  # noqa: E402
    TERMINALS,
    client_pool,
    latency_rounds,
    load,
    prepare_ledger,
    start_server,
    stop_server,
)
from bench.ledger_vs_pgbench import (  # noqa: E402
    CpuMeter,
    checkpoint,
    log,
    machine,
    pgbench_run,
    quiet,
    start_with_pgbench,
)
from tests.pgcluster import PostgresCluster  # noqa: E402

KINDS = ("ping", "quote", "settle")
LABELS = {"ping": "Ping (empty RPC)", "quote": "Quote (walk-in, 20 lines)",
          "settle": "Settle (member basket)", "pgbench": "pgbench tpcb-like"}
PLOTS = ("latency_vs_load.png", "throughput_vs_concurrency.png", "throughput_vs_workers.png")
QUICK = {"seconds": 0.5, "latency_seconds": 0.5, "concurrency": "1,4", "loads": "0.5,1.0",
         "fixed_kinds": "quote,settle", "fixed_clients": 4, "members": 30, "scale": 1}
"""What ``--quick`` sets (the smoke test's run); explicit options still win."""


def ints(text: str) -> list[int]:
    """``"1,4,16"`` -> [1, 4, 16]."""
    return [int(x) for x in text.split(",") if x.strip()]


def floats(text: str) -> list[float]:
    """``"0.5,1.1"`` -> [0.5, 1.1]."""
    return [float(x) for x in text.split(",") if x.strip()]


def names(text: str) -> list[str]:
    """``"ping,settle"`` -> the kinds, each checked against :data:`KINDS`."""
    out = [x.strip() for x in text.split(",") if x.strip()]
    for kind in out:
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {kind!r} (one of {KINDS})")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options; ``--quick`` fills in :data:`QUICK` for those not given."""
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny phases: the smoke run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "harness",
                   help="directory for report.md, results.json and the PNGs")
    p.add_argument("--seconds", type=float, help="each measured phase (default 4)")
    p.add_argument("--latency-seconds", type=float,
                   help="the low-load latency phase per worker count (default 6)")
    p.add_argument("--concurrency", help="client connections, closed loop and pgbench -c "
                   "(default 1,4,16,32)")
    p.add_argument("--workers", default="1,2", help="server worker processes to compare")
    p.add_argument("--kinds", default="ping,quote,settle", help="closed-loop kinds")
    p.add_argument("--fixed-kinds", help="fixed-rate kinds (default ping,quote,settle)")
    p.add_argument("--loads", help="fixed-rate offered loads as fractions of the kind's best "
                   "closed-loop rate with that worker count (default 0.25,0.5,0.75,0.9,1.1)")
    p.add_argument("--fixed-clients", type=int,
                   help="connections that carry a fixed-rate phase (default 16)")
    p.add_argument("--members", type=int, help="members enrolled (default 1000)")
    p.add_argument("--scale", type=int, help="pgbench -i -s (default 8)")
    p.add_argument("--terminals", type=int, default=TERMINALS,
                   help=f"POS terminals the connections are spread over (default {TERMINALS})")
    p.add_argument("--threads", type=int, default=16, help="server threads per worker")
    p.add_argument("--impl", default="sync", choices=("sync", "aio"), help="server impl")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to this long for an idle machine")
    args = p.parse_args(argv)
    defaults = {"seconds": 4.0, "latency_seconds": 6.0, "concurrency": "1,4,16,32",
                "loads": "0.25,0.5,0.75,0.9,1.1", "fixed_kinds": "ping,quote,settle",
                "fixed_clients": 16, "members": 1000, "scale": 8}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else value)
    args.concurrency = ints(args.concurrency)
    args.workers = ints(args.workers)
    args.kinds = names(args.kinds)
    args.fixed_kinds = names(args.fixed_kinds)
    args.loads = floats(args.loads)
    return args


def metered(cluster: PostgresCluster, fn: Callable[..., dict[str, Any]], *args: Any,
            **kwargs: Any) -> dict[str, Any]:
    """``fn(*args, **kwargs)``'s result with the phase's CPU use (machine and PostgreSQL,
    in cores)."""
    meter = CpuMeter(cluster)
    out = fn(*args, **kwargs)
    cpu = meter.read()
    out["machine_cores"] = cpu["machine_busy_cores"]
    out["postgres_cores"] = cpu["server_cores"]
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every phase; the results as a JSON-ready dict."""
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "pgbench": [], "servers": []}
    background = quiet(args.wait_quiet)
    result["background_cores"] = background["machine_busy_cores"]
    cluster = PostgresCluster(durable=True)
    server = None
    pool = None
    phase_seed = 100  # each load phase its own seed, so its own idempotency keys
    try:
        result["server_version"] = start_with_pgbench(cluster, args.scale)
        t0 = time.perf_counter()
        url, tokens = prepare_ledger(cluster, args.members, args.terminals)
        result["setup_s"] = time.perf_counter() - t0
        pg_seconds = max(1, round(args.seconds))
        for clients in args.concurrency:
            log(f"pgbench tpcb-like, {clients} clients")
            checkpoint(cluster)
            run = pgbench_run(cluster, clients, min(2, clients), pg_seconds)
            result["pgbench"].append({"clients": clients, "tps": run["tps"],
                                      "latency_avg_ms": run["latency_avg_ms"],
                                      "machine_cores": run["cpu"]["machine_busy_cores"],
                                      "postgres_cores": run["cpu"]["server_cores"]})
        pool = client_pool()
        for workers in args.workers:
            server, target = start_server(url, workers, args.impl, args.threads)
            entry: dict[str, Any] = {"workers": workers, "closed": [], "fixed": []}
            log(f"{workers} worker(s): low-load latency")
            entry["latency"] = latency_rounds(target, tokens[0], args.latency_seconds,
                                              args.members)
            for kind in args.kinds:
                for clients in args.concurrency:
                    log(f"{workers} worker(s): {kind}, closed loop, {clients} clients")
                    if kind == "settle":
                        checkpoint(cluster)
                    phase_seed += 1
                    entry["closed"].append(metered(
                        cluster, load, target, tokens, kind, args.seconds, clients,
                        args.members, seed=phase_seed, pool=pool))
            for kind in args.fixed_kinds:
                best = max((r["per_second"] for r in entry["closed"] if r["kind"] == kind),
                           default=0.0)
                if best <= 0:
                    best = probe_rate(target, tokens, kind, args, pool, phase_seed)
                    phase_seed += 1
                for fraction in args.loads:
                    rate = fraction * best
                    log(f"{workers} worker(s): {kind}, fixed rate {rate:,.0f}/s "
                        f"({fraction:.0%} of {best:,.0f}/s)")
                    if kind == "settle":
                        checkpoint(cluster)
                    phase_seed += 1
                    r = metered(cluster, load, target, tokens, kind, args.seconds,
                                args.fixed_clients, args.members, rate=rate, seed=phase_seed,
                                pool=pool)
                    r["fraction"] = fraction
                    entry["fixed"].append(r)
            stop_server(server)
            server = None
            result["servers"].append(entry)
        result["watchdog"] = watchdog_load(url)
        top = max(args.concurrency)
        log(f"pgbench tpcb-like after, {top} clients")
        checkpoint(cluster)
        after = pgbench_run(cluster, top, min(2, top), pg_seconds)
        result["pgbench_after"] = {"clients": top, "tps": after["tps"],
                                   "latency_avg_ms": after["latency_avg_ms"]}
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if server is not None:
            stop_server(server)
        cluster.stop()
    result["duration_s"] = time.perf_counter() - t_start
    return result


def watchdog_load(url: str) -> dict[str, Any]:
    """The settlements the run committed and the watchdog hits they raised, by rule: the
    Settle figures include writing those alerts."""
    from settlement.ledger.db import create_ledger_engine

    engine = create_ledger_engine(url)
    try:
        with engine.connect() as conn:
            settled = int(conn.exec_driver_sql("SELECT count(*) FROM settlements").scalar_one())
            hits = {rule: int(n) for rule, n in conn.exec_driver_sql(
                "SELECT a.rule, count(*) FROM alert_hits h JOIN alerts a ON a.id = h.alert_id "
                "WHERE h.operation = 'settle' GROUP BY a.rule ORDER BY a.rule")}
    finally:
        engine.dispose()
    return {"settlements": settled, "hits": hits}


def probe_rate(target: str, tokens: list[str], kind: str, args: argparse.Namespace, pool: Any,
               seed: int) -> float:
    """The closed-loop rate of ``kind`` at ``--fixed-clients`` (when the closed-loop
    phases did not measure it)."""
    log(f"probing {kind}'s closed-loop rate")
    return float(load(target, tokens, kind, args.seconds, args.fixed_clients, args.members,
                      seed=seed, pool=pool)["per_second"])


# --------------------------------------------------------------------------- report


def _ms(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.2f}"


def _errors(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(r.get("errors", {}).items())) or "0"


def _by_kind(r: dict[str, Any], phase: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(kind, workers, row) of every ``phase`` ("closed" or "fixed") row, kind by kind."""
    for kind in KINDS:
        for s in r["servers"]:
            for row in s[phase]:
                if row["kind"] == kind:
                    yield kind, s["workers"], row


def report(r: dict[str, Any]) -> str:
    """The results as markdown (the PNGs are linked, next to it)."""
    m = r["machine"]
    a = r["args"]
    out = [f"# Load harness report ({r['started']})", "",
           f"Machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}, engine "
           f"`{m['implementation']}`; PostgreSQL {r.get('server_version', '?')} (one durable "
           f"throw-away cluster, fsync on, loopback TCP). Server `settlement serve --impl "
           f"{a['impl']} --threads {a['threads']}`; {a['members']} members; phases of "
           f"{a['seconds']} s; run took {r['duration_s']:.0f} s"
           f"{' (--quick)' if a['quick'] else ''}. Clients: bench/grpc_vs_floor.py's loops, "
           "up to 4 client processes on the same machine, so clients, server and PostgreSQL "
           "share the cores. One run: figures are noisy. Before the run the machine "
           f"already had {r['background_cores']:.2f} cores busy (other work; ~0 on an idle "
           "machine).", ""]
    out += ["## Low load: one connection, one call at a time", "",
            "| workers | Ping p50 / p99 ms | Quote walk-in p50 / p99 ms | "
            "Quote member p50 / p99 ms | Quote / Ping p50 |", "| ---: | --- | --- | --- | ---: |"]
    for s in r["servers"]:
        lat = s["latency"]
        cells = [f"{_ms(lat[k]['p50_ms'])} / {_ms(lat[k]['p99_ms'])}"
                 for k in ("ping", "quote", "quote_member")]
        ratio = lat["quote"]["p50_ms"] / lat["ping"]["p50_ms"]
        out.append(f"| {s['workers']} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    out += ["", "## Closed loop: throughput by concurrency and server workers", "",
            "Each connection sends its next call when the last one returns. Latency from the "
            "call's start. CPU in cores busy (machine / PostgreSQL).", "",
            "| kind | clients | workers | calls/s | p50 ms | p99 ms | max ms | errors | "
            "CPU machine / PG |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for kind, workers, c in _by_kind(r, "closed"):
        out.append(f"| {kind} | {c['clients']} | {workers} | "
                   f"{c['per_second']:,.0f} | {_ms(c['p50_ms'])} | {_ms(c['p99_ms'])} | "
                   f"{_ms(c['max_ms'])} | {_errors(c)} | "
                   f"{c['machine_cores']:.2f} / {c['postgres_cores']:.2f} |")
    wd = r.get("watchdog")
    if wd and wd["settlements"]:
        total = sum(wd["hits"].values())
        rules = ", ".join(f"{k} {v:,}" for k, v in wd["hits"].items()) or "none"
        out += ["", f"Watchdog on (the rulebook's defaults): the run's {wd['settlements']:,} "
                f"settlements raised {total:,} alert hits ({rules}), "
                f"{total / wd['settlements']:.2f} per settlement. Each hit is written in its "
                "settlement's transaction, so they are part of the Settle figures. A load "
                "test is anomalous by those rules: each connection is a till of its own "
                f"(of {a['terminals']}) settling many times a minute "
                "(terminal_burst), and members settle several times in minutes "
                "(card_burst); ordinary traffic raises almost none (the replay simulator, "
                "bench/README.md)."]
    out += ["", "## pgbench tpcb-like on the same cluster", "",
            "| clients | TPS | latency avg ms | Settle/s at that concurrency (best workers) "
            "| Settle / pgbench |", "| ---: | ---: | ---: | ---: | ---: |"]
    for p in r["pgbench"]:
        settle = max((c["per_second"] for s in r["servers"] for c in s["closed"]
                      if c["kind"] == "settle" and c["clients"] == p["clients"]), default=0.0)
        ratio = f"{settle / p['tps']:.3f}x" if settle and p["tps"] else "-"
        settle_cell = f"{settle:,.0f}" if settle else "-"
        out.append(f"| {p['clients']} | {p['tps']:,.1f} | {p['latency_avg_ms']} | "
                   f"{settle_cell} | {ratio} |")
    after = r.get("pgbench_after")
    if after:
        out += ["", f"pgbench again after the servers, {after['clients']} clients: "
                f"{after['tps']:,.1f} TPS (drift check)."]
    out += ["", "## Fixed rate (open loop): latency vs offered load", "",
            f"{a['fixed_clients']} connections share the offered rate, staggered so the calls "
            "arrive evenly spaced; each call's latency counts from when it was due, so a "
            "stall delays every later call's figure instead of hiding (no coordinated "
            "omission). The rate is a fraction of the kind's best closed-loop rate with the "
            "same workers. done/s: answers per second until the last one arrived (past the "
            "schedule's end when the server fell behind).", "",
            "| kind | workers | offered/s | done/s | p50 ms | p90 ms | p99 ms | p99.9 ms | "
            "max ms | errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| --- |"]
    for kind, workers, f in _by_kind(r, "fixed"):
        out.append(f"| {kind} | {workers} | {f['rate_asked']:,.0f} "
                   f"({f['fraction']:.0%}) | {f['per_second']:,.0f} | "
                   f"{_ms(f['p50_ms'])} | {_ms(f['p90_ms'])} | {_ms(f['p99_ms'])} | "
                   f"{_ms(f['p999_ms'])} | {_ms(f['max_ms'])} | {_errors(f)} |")
    out += ["", "## Plots", ""] + [f"![{name}]({name})" for name in PLOTS]
    return "\n".join(out) + "\n"


def plots(r: dict[str, Any], out: Path) -> list[Path]:
    """The three PNGs (matplotlib, Agg backend) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colours = {1: "tab:blue", 2: "tab:orange", 3: "tab:green", 4: "tab:red"}
    styles = {"p50_ms": ("-", "p50"), "p90_ms": ("--", "p90"), "p99_ms": (":", "p99")}
    kinds = [k for k in KINDS if any(f["kind"] == k for s in r["servers"] for f in s["fixed"])]
    if kinds:
        fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
        for ax, kind in zip(axes[0], kinds, strict=True):
            for s in r["servers"]:
                rows = sorted((f for f in s["fixed"] if f["kind"] == kind),
                              key=lambda f: f["rate_asked"])
                for key, (style, label) in styles.items():
                    ax.plot([f["rate_asked"] for f in rows], [f[key] for f in rows], style,
                            marker="o", color=colours.get(s["workers"], "black"),
                            label=f"{label}, {s['workers']} worker(s)")
            ax.set_yscale("log")
            ax.set_title(LABELS[kind])
            ax.set_xlabel("offered load, calls/s")
            ax.set_ylabel("latency from scheduled start, ms")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        written.append(out / PLOTS[0])
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"ping": "o", "quote": "s", "settle": "^"}
    for kind in KINDS:
        for s in r["servers"]:
            rows = [c for c in s["closed"] if c["kind"] == kind]
            if rows:
                ax.plot([c["clients"] for c in rows], [c["per_second"] for c in rows],
                        marker=markers[kind], color=colours.get(s["workers"], "black"),
                        label=f"{kind}, {s['workers']} worker(s)")
    if r["pgbench"]:
        ax.plot([p["clients"] for p in r["pgbench"]], [p["tps"] for p in r["pgbench"]],
                marker="x", color="black", linestyle="--", label="pgbench tpcb-like")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    levels = sorted({c["clients"] for s in r["servers"] for c in s["closed"]})
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent clients (connections)")
    ax.set_ylabel("calls/s (pgbench: TPS), log scale")
    ax.set_title("Closed-loop throughput vs concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / PLOTS[1])
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    worker_counts = [s["workers"] for s in r["servers"]]
    width = 0.8 / max(1, len(worker_counts))
    for j, s in enumerate(r["servers"]):
        best = [max((c["per_second"] for c in s["closed"] if c["kind"] == k), default=0.0)
                for k in KINDS]
        ax.bar([i + j * width for i in range(len(KINDS))], best, width,
               color=colours.get(s["workers"], "grey"), label=f"{s['workers']} worker(s)")
    ax.set_xticks([i + width * (len(worker_counts) - 1) / 2 for i in range(len(KINDS))],
                  [LABELS[k] for k in KINDS], fontsize=8)
    ax.set_ylabel("best closed-loop calls/s over the concurrency levels")
    ax.set_title("Throughput vs server worker processes")
    ax.legend()
    fig.tight_layout()
    written.append(out / PLOTS[2])
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    """Measure, then write results.json, report.md and the plots into ``--out``."""
    args = parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("bench/run: matplotlib is missing: .venv/bin/pip install 'matplotlib>=3.8'",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result = measure(args)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (args.out / "report.md").write_text(text)
    plots(result, args.out)
    print(text)
    log(f"wrote {args.out}/report.md, results.json and {', '.join(PLOTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
