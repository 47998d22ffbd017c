"""Smoke run of ``bench/run --quick``: a throw-away PostgreSQL, two server shapes, every
phase for a fraction of a second; the report and the plots must hold what was measured
(< 60 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.pgcluster import require_postgres_or_skip

from .harness import PLOTS

RUN = Path(__file__).resolve().parent / "run"


def test_bench_run_quick_writes_report_and_plots(tmp_path: Path) -> None:
    require_postgres_or_skip()
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert [s["workers"] for s in result["servers"]] == [1, 2]
    for server in result["servers"]:
        assert server["latency"]["ping"]["calls"] > 0
        closed = {(c["kind"], c["clients"]): c for c in server["closed"]}
        assert set(closed) == {(k, c) for k in ("ping", "quote", "settle") for c in (1, 4)}
        assert all(c["calls"] > 0 and c["errors"] == {} for c in closed.values())
        fixed = [(f["kind"], f["fraction"]) for f in server["fixed"]]
        assert fixed == [("quote", 0.5), ("quote", 1.0), ("settle", 0.5), ("settle", 1.0)]
        assert all(f["calls"] > 0 and f["p99_ms"] >= f["p50_ms"] > 0 for f in server["fixed"])
    assert [p["clients"] for p in result["pgbench"]] == [1, 4]
    assert all(p["tps"] > 0 for p in result["pgbench"])
    report = (out / "report.md").read_text()
    assert done.stdout.strip() == report.strip()  # printed as written
    settle_4_2 = next(c for c in result["servers"][1]["closed"]
                      if (c["kind"], c["clients"]) == ("settle", 4))
    assert f"| settle | 4 | 2 | {settle_4_2['per_second']:,.0f} |" in report
    for p in result["pgbench"]:
        assert f"| {p['clients']} | {p['tps']:,.1f} |" in report
    assert report.count("| quote | 1 | ") == 2 + 2  # 2 closed-loop levels, 2 fixed rates
    for name in PLOTS:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
        assert f"]({name})" in report
