"""Smoke test of ``python -m bench.peer_oscar``: a few baskets, prices agree.

django-oscar is in the test extra, so a missing oscar is a broken install,
not an optional feature: this test fails with the fix rather than skipping
silently. The comparison runs in a subprocess: Django is configured once per
process, globally, and none of that leaks into the test session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_peer_oscar_prices_agree_and_table_has_rows(tmp_path: Path) -> None:
    if importlib.util.find_spec("oscar") is None:
        pytest.fail("django-oscar is not installed; it is in the test extra: "
                    "pip install -e '.[test]' (or make .venv/.installed-stamp)")
    out = tmp_path / "peer.json"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.peer_oscar", "--baskets", "2", "--repeats", "1",
         "--ours-repeats", "20", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"})
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout
    for row in ("| oscar: build basket", "| oscar: Applicator().apply", "| oscar: total",
                "| ours (pure): settlement.quote", "| ratio oscar total / ours (pure)"):
        assert row in table, table
    result = json.loads(out.read_text())
    if result["machine"]["engine_fast_built"]:
        assert "| ours (fast): settlement.quote" in table
    prices = result["prices"]
    equivalent = [p for p in prices if p["equivalent"]]
    assert len(equivalent) >= 3  # the two shared baskets and one edge basket
    for p in equivalent:
        assert p["oscar_payable_cents"] == p["ours_payable_cents"], p
    # The known differences are there, and oscar matches its model everywhere.
    assert any(not p["equivalent"] and p["oscar_payable_cents"] != p["ours_payable_cents"]
               for p in prices)
    for p in prices:
        assert p["oscar_payable_cents"] == p["oscar_model_payable_cents"], p
    assert result["oscar_queries"]["total"]["min"] > 0
    print(f"\npeer_oscar smoke: {elapsed:.1f} s in all, of which migrate "
          f"{result['setup_s']['migrate']:.1f} s")
