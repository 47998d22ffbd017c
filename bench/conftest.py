"""Benchmark fixtures: the bench rulebook and both engines."""

from __future__ import annotations

import pytest

import settlement
from settlement import pricing

from .cases import RULEBOOK


@pytest.fixture(scope="session")
def rulebook() -> settlement.Rulebook:
    return settlement.load_rulebook(RULEBOOK)


@pytest.fixture(params=["pure", "fast"])
def engine(request: pytest.FixtureRequest):
    """``(name, quote)`` of one implementation."""
    if request.param == "pure":
        return "pure", pricing.quote
    try:
        from settlement._fast import quote
    except ImportError:
        pytest.skip("Cython kernel not built")
    return "fast", quote
