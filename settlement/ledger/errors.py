"""The ledger's typed errors (the gRPC layer maps each to a status code)."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every refusal by the ledger; nothing was changed."""


class NotFound(LedgerError):
    """The member, card, coupon, settlement or recharge does not exist."""


class IdempotencyConflict(LedgerError):
    """The idempotency key was used before with a different request."""


class InsufficientBalance(LedgerError):
    """A movement would take an account below zero."""

    def __init__(self, owner: str, kind: str, ref: str, short_by: int) -> None:
        what = f"{kind}:{ref}" if ref else kind
        super().__init__(f"insufficient {what} of {owner}: short by {short_by}")
        self.owner, self.kind, self.ref, self.short_by = owner, kind, ref, short_by


class Conflict(LedgerError):
    """The state does not allow the operation (card lost, coupon used, recharge spent...)."""
