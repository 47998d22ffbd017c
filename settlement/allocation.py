"""Integer arithmetic of the contract: half-up basis points and largest-remainder allocation."""

from __future__ import annotations

from collections.abc import Sequence


def round_half_up_bp(amount: int, bp: int) -> int:
    """``round_half_up(amount * bp / 10000)`` for ``amount >= 0``, in integers."""
    return (amount * bp + 5000) // 10000


def apportion(amount: int, weights: Sequence[int]) -> list[int]:
    """Split ``amount >= 0`` in proportion to ``weights`` by the same largest-remainder rule,
    without :func:`allocate`'s bound (``amount`` may exceed the weights: e.g. points
    apportioned by cents). Zero total weight gets nothing, so ``amount`` must be 0 then."""
    total = sum(weights)
    if amount < 0 or (amount and total <= 0):
        raise ValueError(f"cannot apportion {amount} over weights summing to {total}")
    if amount == 0:
        return [0] * len(weights)
    parts = [amount * w // total for w in weights]
    left = amount - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(amount * weights[i] % total), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def allocate(amount: int, weights: Sequence[int]) -> list[int]:
    """Spread ``amount`` over ``weights`` (``0 <= amount <= sum(weights)``).

    Each part is first ``amount * w // W``; the cents left over go one each
    to the largest remainders ``amount * w % W``, ties to the lower index.
    The parts add up to ``amount`` exactly and none exceeds its weight.
    """
    total = sum(weights)
    if amount == 0 or total == 0:
        if amount:
            raise ValueError("cannot allocate a positive amount over zero weight")
        return [0] * len(weights)
    if not 0 <= amount <= total:
        raise ValueError(f"amount {amount} outside 0..{total}")
    parts = [amount * w // total for w in weights]
    left = amount - sum(parts)
    if left:
        order = sorted(range(len(weights)), key=lambda i: (-(amount * weights[i] % total), i))
        for i in order[:left]:
            parts[i] += 1
    return parts
