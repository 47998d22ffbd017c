"""Smoke test of bench/alert_latency.py: a few alerts through two server processes."""

from __future__ import annotations

import pytest

from tests.pgcluster import require_postgres_or_skip

from . import alert_latency


def test_alert_latency_runs(capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres_or_skip()
    result = alert_latency.main(["--alerts", "10", "--rate", "20"])
    assert (result["delivered"], result["missed"]) == (10, 0)
    assert 0 < result["from_call"]["p50_ms"] <= result["from_call"]["max_ms"]
    assert "commit-to-WatchAlerts" in capsys.readouterr().out
