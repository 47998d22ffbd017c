"""Shared fixtures: both engine implementations, the spec's examples, rulebook builders.

Every engine test takes the ``engine`` fixture and so runs once against the
pure-Python reference and once against the Cython kernel (the SQLAlchemy
``Py…Test``/``Cy…Test`` twin pattern). Without the built extension the fast
twin skips loudly, or fails when ``SETTLEMENT_REQUIRE_FAST=1`` (CI).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import settlement
from settlement import pricing
from tests.pgcluster import postgres_cluster  # noqa: F401  (registers the session fixture)

ROOT = Path(__file__).resolve().parent.parent
SHARED_EXAMPLES = ROOT.parent / "shared" / "spec" / "examples"
LOCAL_EXAMPLES = ROOT / "examples"

settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

QuoteFn = Callable[[settlement.Rulebook, Any], dict[str, Any]]


def fast_quote() -> QuoteFn | None:
    """The Cython kernel's quote, or None when the extension is not built."""
    try:
        from settlement._fast import quote
    except ImportError:
        return None
    return quote


def require_fast() -> QuoteFn:
    """The fast quote, skipping (or failing under SETTLEMENT_REQUIRE_FAST=1) without it."""
    quote = fast_quote()
    if quote is None:
        message = "Cython kernel settlement._fast is not built (pip install -e . builds it)"
        if os.environ.get("SETTLEMENT_REQUIRE_FAST") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return quote


@pytest.fixture(params=["pure", "fast"])
def engine(request: pytest.FixtureRequest) -> QuoteFn:
    """``quote(rulebook, request)`` of one implementation (parametrized: pure, fast)."""
    if request.param == "pure":
        return pricing.quote
    return require_fast()


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The spec's examples: ``../shared/spec/examples`` (the contract) when present."""
    return SHARED_EXAMPLES if SHARED_EXAMPLES.is_dir() else LOCAL_EXAMPLES


@pytest.fixture(scope="session")
def demo_rulebook(examples_dir: Path) -> settlement.Rulebook:
    """The spec's example rulebook."""
    return settlement.load_rulebook(examples_dir / "rulebook.toml")


def make_rulebook(body: str = "", *, version: str = "t-1",
                  timezone: str = "Asia/Shanghai") -> settlement.Rulebook:
    """A rulebook from a TOML fragment, with ``version`` and ``timezone`` filled in."""
    return settlement.rulebook_from_toml(
        f'version = "{version}"\ntimezone = "{timezone}"\n{body}')


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger database URL: a SQLite file, or a new database in the
    session's throwaway PostgreSQL cluster (skips loudly, or fails under
    ``SETTLEMENT_REQUIRE_POSTGRES=1``, when PostgreSQL is not installed)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    from uuid import uuid4

    cluster = request.getfixturevalue("postgres_cluster")
    name = f"t_{uuid4().hex[:12]}"
    cluster.create_database(name)
    return cluster.url(dbname=name)
