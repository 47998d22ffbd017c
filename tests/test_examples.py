"""The spec's example requests give exactly the spec's receipts, on both engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import LOCAL_EXAMPLES, SHARED_EXAMPLES


@pytest.mark.parametrize("name", ["member", "walkin"])
def test_example_receipt(engine, demo_rulebook, examples_dir: Path, name: str) -> None:
    request = json.loads((examples_dir / f"request-{name}.json").read_text())
    expected = json.loads((examples_dir / f"receipt-{name}.json").read_text())
    assert engine(demo_rulebook, request) == expected


def test_packaged_examples_match_the_contract() -> None:
    """``examples/`` (what the README's run command uses) is a faithful copy of the spec's."""
    if not SHARED_EXAMPLES.is_dir():
        pytest.skip(f"{SHARED_EXAMPLES} not present beside this checkout")
    for path in SHARED_EXAMPLES.iterdir():
        assert (LOCAL_EXAMPLES / path.name).read_bytes() == path.read_bytes(), path.name
