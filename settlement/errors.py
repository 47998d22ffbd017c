"""The exception types of the settlement core.

Every problem with caller-supplied input raises a subclass of
:class:`InvalidInput`, whose ``field`` names the offending field. The gRPC
layer maps these to ``INVALID_ARGUMENT`` with field violations.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """Input that breaks the contract; ``str()`` is ``"<field>: <problem>"``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self):  # keep pickling (multiprocessing) working
        return (type(self), (self.field, self.problem))


class RulebookError(InvalidInput):
    """A rulebook that cannot be loaded: unknown field, wrong type, bad reference."""


class RequestError(InvalidInput):
    """A quote request that cannot be priced; ``field`` is a path such as ``lines[3].quantity``."""
