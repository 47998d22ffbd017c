"""Type stub of the Cython pricing kernel (see ``_kernel.pyx``)."""

from collections.abc import Sequence
from typing import Any

from settlement.rulebook import Rulebook

REASONS: tuple[str, ...]

def quote(rulebook: Rulebook, request: Any) -> dict[str, Any]:
    """Price ``request``: same contract and results as ``settlement.pricing.quote``."""

def prepare(rulebook: Rulebook) -> None:
    """Compile ``rulebook`` for the kernel now (otherwise the first quote does it)."""

def allocate(amount: int, weights: Sequence[int]) -> list[int]:
    """The contract's largest-remainder allocation (exposed for tests)."""

def slow_path_count() -> int:
    """Quotes this process sent to the pure path (invalid or exotic input)."""

def _iso_micros(value: object) -> int: ...
