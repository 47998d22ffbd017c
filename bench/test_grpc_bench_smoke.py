"""Smoke test of bench/grpc_vs_floor.py: tiny parameters, both server implementations."""

from __future__ import annotations

import pytest

from tests.pgcluster import require_postgres_or_skip

from . import grpc_vs_floor


def test_grpc_vs_floor_runs(capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres_or_skip()
    result = grpc_vs_floor.main(["--seconds", "1", "--members", "30", "--scale", "1",
                                 "--clients", "2"])
    for impl in ("sync", "aio"):
        r = result[impl]
        assert r["latency"]["ping"]["calls"] > 0 and r["latency"]["quote"]["calls"] > 0
        assert r["settle"]["calls"] > 0 and r["settle_ratio"] > 0
        assert r["settle_fixed"]["calls"] > 0
    assert "Settle / pgbench" in capsys.readouterr().out


def test_fixed_rate_connections_are_staggered_not_bursts() -> None:
    """16 connections sharing 40 calls/s: one call every 25 ms, not 16 at once every
    400 ms (bursts queue at the server and inflate the latency of a light load)."""
    offered, clients, seconds = 40.0, 16, 3.0
    due = sorted(t for g in range(clients)
                 for t in grpc_vs_floor.schedule(g, offered / clients, offered, seconds))
    assert len(due) == 120
    gaps = [b - a for a, b in zip(due, due[1:], strict=False)]
    assert min(gaps) > 0.0249 and max(gaps) < 0.0251
    assert due[0] == 0.0 and due[-1] < seconds
