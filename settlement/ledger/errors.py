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


class Held(Conflict):
    """A watchdog rule with action ``hold`` (or a lost card) refused the operation; nothing
    but the alerts named in ``alert_ids`` was committed."""

    def __init__(self, message: str, alert_ids: list[str], rules: list[str]) -> None:
        super().__init__(message)
        self.alert_ids, self.rules = alert_ids, rules
