"""The Cython pricing kernel (same API and results as ``settlement.pricing``).

Importing this package fails with ImportError when the extension is not
built; ``settlement._impl`` decides what that means.
"""

from ._kernel import prepare, quote

__all__ = ["prepare", "quote"]
