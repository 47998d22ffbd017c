"""The reliability drills (``tests/drills``): faults injected into a running system,
then the ledger checked for lost, duplicated or unbalanced money.

Run alone: ``.venv/bin/python -m pytest tests/drills``. The default is a short version
(part of ``make test``); ``SETTLEMENT_DRILLS=long`` runs the long one. Each drill
records what it did and what it checked; the reports are printed at the end of the
run (``pytest_terminal_summary``), whatever the capture settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.pgcluster import PostgresCluster, require_postgres_or_skip

#: True for the long drills (SETTLEMENT_DRILLS=long).
LONG = os.environ.get("SETTLEMENT_DRILLS", "short") == "long"

_REPORTS: list[tuple[str, list[str]]] = []


def record(name: str, lines: list[str]) -> None:
    """Keep a drill's report for the end of the run."""
    _REPORTS.append((name, lines))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORTS:
        return
    terminalreporter.section(f"reliability drills ({'long' if LONG else 'short'})")
    for name, lines in _REPORTS:
        terminalreporter.write_line(f"{name}:")
        for line in lines:
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="module")
def drill_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the drill's own (drills stop and crash it), durable like
    production: fsync on, so a crash loses nothing that was acknowledged."""
    bin_dir = require_postgres_or_skip()
    with PostgresCluster(bin_dir, durable=True) as cluster:
        yield cluster
