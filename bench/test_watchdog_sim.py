"""Smoke test of bench/watchdog_sim.py: a small timeline on SQLite, well under 30 s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from settlement.watchdog import RULES

from . import watchdog_sim


def test_watchdog_sim_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    result = watchdog_sim.main([
        "--seed", "3", "--members", "60", "--stores", "4", "--days", "4", "--cases", "3",
        "--latency-settles", "120", "--json", str(out)])
    assert result["errors"] == {}, result["errors"]  # every operation of the replay went in
    assert set(result["rules"]) == set(RULES)
    for rule, r in result["rules"].items():
        assert r["cases"] > 0, rule
        assert r["recall"] is not None and 0.0 <= r["recall"] <= 1.0, (rule, r)
        assert r["precision"] is not None and 0.0 <= r["precision"] <= 1.0, (rule, r)
        assert r["caught"] <= r["cases"] and r["true_refs"] <= r["flagged_refs"], (rule, r)
    # a rule that caught nothing at all would mean the replay or the scoring is broken
    assert sum(r["caught"] for r in result["rules"].values()) > 0
    assert result["held"] >= result["rules"]["lost_card"]["cases"]  # lost cards are refused
    clean = result["clean"]
    assert clean["operations"] > 0 and clean["settles"] > 0
    assert clean["per_10k"] is not None and clean["per_10k"] >= 0
    lat = result["latency"]
    for mode in ("on", "off"):
        assert lat[mode]["n"] == 120, lat
        assert 0 < lat[mode]["p50_ms"] <= lat[mode]["p99_ms"], lat
    assert lat["p50_ratio"] > 0
    assert json.loads(out.read_text())["clean"]["operations"] == clean["operations"]
    table = capsys.readouterr().out
    assert "| lost_card |" in table and "Settle p50 on / off" in table


def test_timeline_is_deterministic() -> None:
    """The same seed gives the same timeline (refs, instants, labels)."""
    def shape(seed: int) -> list[tuple[int, str, str | None]]:
        sim = watchdog_sim.Sim(seed, 40, 3, 3, 2)
        return [(e.at, e.ref, e.label) for e in sim.build()]

    assert shape(5) == shape(5)
    assert shape(5) != shape(6)
