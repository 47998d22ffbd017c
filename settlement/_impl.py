"""Pick the engine implementation at import time (``SETTLEMENT_IMPL=pure|fast``).

Unset: the Cython kernel when it is built, else the pure reference.
``fast`` without the built extension raises ImportError: never a silent
fallback, so a benchmark or a CI run cannot measure the wrong engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .rulebook import Rulebook

QuoteFn = Callable[[Rulebook, Any], dict[str, Any]]
PrepareFn = Callable[[Rulebook], None]


def _no_preparation(rulebook: Rulebook) -> None:
    """The pure engine reads the rulebook as it is."""


def _select() -> tuple[str, QuoteFn, PrepareFn]:
    choice = os.environ.get("SETTLEMENT_IMPL", "").strip().lower()
    if choice not in ("", "pure", "fast"):
        raise ImportError(f"SETTLEMENT_IMPL={choice!r}: expected 'pure' or 'fast'")
    if choice == "pure":
        from .pricing import quote as pure_quote

        return "pure", pure_quote, _no_preparation
    try:
        from ._fast import prepare as fast_prepare
        from ._fast import quote as fast_quote
    except ImportError:
        if choice == "fast":
            raise
        from .pricing import quote as pure_quote

        return "pure", pure_quote, _no_preparation
    return "fast", fast_quote, fast_prepare


IMPLEMENTATION, quote, prepare = _select()
