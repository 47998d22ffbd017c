"""Smoke test of bench/ledger_vs_pgbench.py: tiny parameters, one durable cluster, < 30 s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pgcluster import require_postgres_or_skip

from . import ledger_vs_pgbench


def test_ledger_vs_pgbench_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres_or_skip()
    out = tmp_path / "result.json"
    result = ledger_vs_pgbench.main([
        "--seconds", "2", "--members", "50", "--workers", "2", "--scale", "1",
        "--profile-seconds", "0.5", "--json", str(out)])
    assert result["verify"] is None
    assert result["settle_1"]["settled"] > 0
    assert result["settle_n"]["settled"] > 0 and result["settle_n"]["workers"] == 2
    assert result["pgbench_before"]["tps"] > 0 and result["pgbench_after"]["tps"] > 0
    assert result["ratio"] > 0
    assert result["profile"]["statements_per_settle"] > 0
    assert json.loads(out.read_text())["settle_n"]["settled"] == result["settle_n"]["settled"]
    table = capsys.readouterr().out
    assert "ratio settle(2) / pgbench mean" in table and "verify(): None" in table
