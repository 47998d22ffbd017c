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

from ._impl import IMPLEMENTATION, quote
from .errors import InvalidInput, RequestError, RulebookError
from .rulebook import Rulebook, load_rulebook, rulebook_from_mapping, rulebook_from_toml

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
