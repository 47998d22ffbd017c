"""The settlement core: prices baskets under a chain's rulebook.

Public API::

    rb = settlement.load_rulebook("rulebook.toml")
    receipt = settlement.quote(rb, request_dict)

``request_dict`` and the receipt use the field names of the pricing
contract (``pricing.md``). Invalid requests raise :class:`RequestError`,
invalid rulebooks :class:`RulebookError`; both are :class:`InvalidInput`
(a ``ValueError``) with a ``field`` attribute.

Two implementations share this API: a pure-Python reference
(``settlement.pricing``) and a Cython kernel (``settlement._fast``).
:data:`IMPLEMENTATION` says which one :func:`quote` is; the environment
variable ``SETTLEMENT_IMPL=pure|fast`` forces one at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import rulebook as _rulebook
from ._impl import IMPLEMENTATION, quote
from ._impl import prepare as _prepare
from .errors import InvalidInput, RequestError, RulebookError
from .rulebook import Rulebook


def load_rulebook(path: str | Path) -> Rulebook:
    """Read, validate and compile the TOML rulebook at ``path`` for the active engine.

    Raises :class:`RulebookError` naming the section, entry and field.
    """
    return _prepared(_rulebook.load_rulebook(path))


def rulebook_from_toml(text: str, source: str = "<rulebook>") -> Rulebook:
    """Like :func:`load_rulebook`, from TOML text."""
    return _prepared(_rulebook.rulebook_from_toml(text, source))


def rulebook_from_mapping(data: Mapping[str, Any], source: str = "<rulebook>") -> Rulebook:
    """Like :func:`load_rulebook`, from data already parsed from TOML."""
    return _prepared(_rulebook.rulebook_from_mapping(data, source))


def _prepared(rb: Rulebook) -> Rulebook:
    _prepare(rb)  # compile once now, not in the first checkout
    return rb


__all__ = [
    "IMPLEMENTATION",
    "InvalidInput",
    "RequestError",
    "Rulebook",
    "RulebookError",
    "load_rulebook",
    "quote",
    "rulebook_from_mapping",
    "rulebook_from_toml",
]
