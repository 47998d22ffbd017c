"""Properties of the contract's integer arithmetic: allocation and half-up basis points.

``allocate`` runs for the pure reference (``settlement.allocation``) and for
the Cython kernel's exposed helper (``settlement._fast._kernel.allocate``),
which must also agree with the pure one exactly. The kernel keeps its
half-up rounding inline (not exposed), so ``round_half_up_bp`` is checked
on the pure module only; the differential test covers the kernel's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from settlement import allocation

from .conftest import require_fast

Allocate = Callable[[int, Sequence[int]], list[int]]
SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

#: Line amounts as the engines see them: many ties (small values, repeats) and large ones
#: (a line is at most 10^8 * 9999 cents; 500 of them stay far below 2**63).
WEIGHT = st.one_of(st.integers(0, 12), st.sampled_from([1, 99, 100, 101, 5000, 10**6]),
                   st.integers(0, 10**12))
WEIGHTS = st.lists(WEIGHT, min_size=1, max_size=60)


@pytest.fixture(params=["pure", "fast"])
def allocate(request: pytest.FixtureRequest) -> Allocate:
    """``allocate(amount, weights)`` of one implementation."""
    if request.param == "pure":
        return allocation.allocate
    require_fast()
    kernel = importlib.import_module("settlement._fast._kernel")
    helper = getattr(kernel, "allocate", None)
    if helper is None:
        pytest.skip("settlement._fast._kernel exposes no allocation helper")
    return helper


@st.composite
def amount_and_weights(draw: st.DrawFn, weights: st.SearchStrategy[list[int]] = WEIGHTS,
                       ) -> tuple[int, list[int]]:
    ws = draw(weights)
    total = sum(ws)
    amount = draw(st.one_of(st.integers(0, total), st.sampled_from([0, total]),
                            st.integers(max(0, total - len(ws)), total)))
    return amount, ws


def brute_force(amount: int, weights: Sequence[int]) -> list[int]:
    """The rule as written: each leftover cent, one at a time, to the line with the largest
    remainder among those without one yet, the lower index on a tie."""
    total = sum(weights)
    if amount == 0:
        return [0] * len(weights)
    parts = [Fraction(amount * w, total).__floor__() for w in weights]
    remainders = [Fraction(amount * w, total) - p for w, p in zip(weights, parts, strict=True)]
    bonus: set[int] = set()
    for _ in range(amount - sum(parts)):
        best = None
        for i, rem in enumerate(remainders):
            if i not in bonus and (best is None or rem > remainders[best]):
                best = i
        assert best is not None
        bonus.add(best)
    return [p + (i in bonus) for i, p in enumerate(parts)]


def obeys_rule(amount: int, weights: Sequence[int], parts: Sequence[int]) -> bool:
    """The rule as a property of the result: floor or floor + 1 everywhere, and a line with the
    extra cent never has a smaller remainder (or, equal, a higher index) than one without."""
    total = sum(weights)
    floors = [amount * w // total for w in weights]
    rems = [amount * w % total for w in weights]
    extra = [p - f for p, f in zip(parts, floors, strict=True)]
    if any(e not in (0, 1) for e in extra):
        return False
    return all(not (extra[i] and not extra[j]) or (rems[i], -i) > (rems[j], -j)
               for i in range(len(parts)) for j in range(len(parts)))


@SETTINGS
@given(case=amount_and_weights())
def test_parts_add_up_and_stay_within_weights(allocate: Allocate,
                                              case: tuple[int, list[int]]) -> None:
    amount, weights = case
    parts = allocate(amount, weights)
    assert len(parts) == len(weights)
    assert all(type(p) is int for p in parts)
    assert sum(parts) == amount
    assert all(0 <= p <= w for p, w in zip(parts, weights, strict=True))
    total = sum(weights)
    if total:  # each part is within one cent of the exact share
        assert all(abs(Fraction(amount * w, total) - p) < 1
                   for p, w in zip(parts, weights, strict=True))


@SETTINGS
@given(case=amount_and_weights())
def test_largest_remainder_ties_to_lower_index(allocate: Allocate,
                                               case: tuple[int, list[int]]) -> None:
    amount, weights = case
    parts = allocate(amount, weights)
    assert parts == brute_force(amount, weights)
    if sum(weights):
        assert obeys_rule(amount, weights, parts)


@SETTINGS
@given(case=amount_and_weights(st.lists(st.integers(0, 4), min_size=1, max_size=12)))
def test_many_ties(allocate: Allocate, case: tuple[int, list[int]]) -> None:
    """Small equal weights: the tie-break to the lower index decides most cents."""
    amount, weights = case
    assert allocate(amount, weights) == brute_force(amount, weights)


@SETTINGS
@given(case=amount_and_weights(st.lists(st.integers(3037000499 // 4, 10**15), min_size=1,
                                        max_size=8)))
def test_large_totals(allocate: Allocate, case: tuple[int, list[int]]) -> None:
    """Totals above 3037000499, where amount * weight no longer fits in 63 bits."""
    amount, weights = case
    assert allocate(amount, weights) == brute_force(amount, weights)


@SETTINGS
@given(case=amount_and_weights(st.lists(st.integers(0, 10**6), min_size=1, max_size=30)),
       scale=st.integers(2, 1000))
def test_scaling_all_weights_changes_nothing(allocate: Allocate, case: tuple[int, list[int]],
                                             scale: int) -> None:
    amount, weights = case
    assert allocate(amount, [w * scale for w in weights]) == allocate(amount, weights)


@SETTINGS
@given(case=amount_and_weights())
def test_zero_weights_get_nothing(allocate: Allocate, case: tuple[int, list[int]]) -> None:
    amount, weights = case
    parts = allocate(amount, weights)
    assert all(p == 0 for p, w in zip(parts, weights, strict=True) if w == 0)


@SETTINGS
@given(case=amount_and_weights())
def test_fast_helper_matches_pure(allocate: Allocate, case: tuple[int, list[int]]) -> None:
    amount, weights = case
    assert allocate(amount, weights) == allocation.allocate(amount, weights)


@SETTINGS
@given(weights=WEIGHTS, over=st.integers(1, 10**6))
def test_amount_above_the_total_is_refused(allocate: Allocate, weights: list[int],
                                           over: int) -> None:
    with pytest.raises(ValueError):
        allocate(sum(weights) + over, weights)


@SETTINGS
@given(weights=WEIGHTS, under=st.integers(1, 10**6))
def test_negative_amount_is_refused(allocate: Allocate, weights: list[int], under: int) -> None:
    with pytest.raises(ValueError):
        allocate(-under, weights)


@pytest.mark.parametrize("weights", [[], [0], [0, 0, 0]])
def test_nothing_over_zero_weight(allocate: Allocate, weights: list[int]) -> None:
    assert allocate(0, weights) == [0] * len(weights)
    with pytest.raises(ValueError):
        allocate(1, weights)


@pytest.mark.parametrize(("amount", "weights", "parts"), [
    (1, [1, 1, 1], [1, 0, 0]),  # a tie: the lower index
    (2, [1, 1, 1], [1, 1, 0]),
    (1, [1, 2, 1], [0, 1, 0]),  # remainders 1, 2, 1 (of 4)
    (8, [3, 3, 3], [3, 3, 2]),  # equal remainders: the two lowest indexes
    (7, [0, 5, 0, 5], [0, 4, 0, 3]),
    (100, [1, 1, 98], [1, 1, 98]),
    (3, [2, 3, 5], [1, 1, 1]),  # floors 0, 0, 1; remainders 6, 9, 5 (of 10)
])
def test_worked_examples(allocate: Allocate, amount: int, weights: list[int],
                         parts: list[int]) -> None:
    assert allocate(amount, weights) == parts
    assert parts == brute_force(amount, weights)


# --------------------------------------------------------------------------
# round_half_up_bp (pure module; the kernel's is inline and covered differentially).


@given(amount=st.one_of(st.integers(0, 10**6), st.integers(0, 10**18)),
       bp=st.one_of(st.integers(0, 10000), st.integers(0, 10**6)))
def test_round_half_up_bp_is_exact_half_up(amount: int, bp: int) -> None:
    got = allocation.round_half_up_bp(amount, bp)
    exact = Fraction(amount * bp, 10000)
    assert got == (exact + Fraction(1, 2)).__floor__()
    assert got == int((Decimal(amount) * bp / 10000).quantize(Decimal(1), ROUND_HALF_UP))
    assert abs(exact - got) <= Fraction(1, 2)


@given(amount=st.integers(0, 10**12), bp=st.integers(0, 10000))
def test_round_half_up_bp_stays_within_the_amount(amount: int, bp: int) -> None:
    got = allocation.round_half_up_bp(amount, bp)
    assert 0 <= got <= amount
    assert allocation.round_half_up_bp(amount + 1, bp) >= got
    assume(bp < 10000)
    assert allocation.round_half_up_bp(amount, bp + 1) >= got


@pytest.mark.parametrize(("amount", "bp", "want"), [
    (5, 1000, 1),  # 0.5 -> 1
    (4, 1000, 0),  # 0.4 -> 0
    (15, 1000, 2),  # 1.5 -> 2 (half up, not half even)
    (25, 1000, 3),
    (1, 5000, 1),
    (1, 4999, 0),
    (12345, 10000, 12345),
    (0, 10000, 0),
])
def test_round_half_up_bp_examples(amount: int, bp: int, want: int) -> None:
    assert allocation.round_half_up_bp(amount, bp) == want


def test_fast_allocation_of_many_weights() -> None:
    """More weights than any quote has lines (500): the kernel's helper still agrees."""
    from settlement.allocation import allocate as pure_allocate

    kernel = pytest.importorskip("settlement._fast._kernel")
    weights = [(i * 7919) % 1013 + 1 for i in range(2000)]
    amount = sum(weights) // 3 + 17
    assert kernel.allocate(amount, weights) == pure_allocate(amount, weights)
