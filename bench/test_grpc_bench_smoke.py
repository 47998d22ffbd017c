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
