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

class BatchError(ValueError):
    """A basket ``price_batch`` cannot price under this rulebook (``basket``: its index)."""

    basket: int
    problem: str

    def __init__(self, basket: int, problem: str) -> None: ...

def tables(rulebook: Rulebook) -> dict[str, Any]:
    """The compiled rulebook's code -> index maps (for the back-test's columns)."""

def price_batch(rulebook: Rulebook, at: Any, tier: Any, rounding: Any, maxc: Any,
                points_balance: Any, stored_value: Any, redeem_points: Any,
                pay_stored_value: Any, line_start: Any, line_sku: Any, line_cat: Any,
                line_gross: Any, line_qty: Any, coupon_start: Any, coupon_tpl: Any,
                coupon_from: Any, coupon_until: Any, coupon_key: Any,
                skip: Any) -> dict[str, Any]:
    """Totals of the baskets not skipped (NumPy columns in this rulebook's indices)."""
