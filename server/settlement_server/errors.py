"""What a client gets back when a call is refused: a status code, a message,
and machine-readable details (``google.rpc`` rich error model).

- ``RequestError`` (bad input; names the field): INVALID_ARGUMENT with a
  ``BadRequest`` field violation;
- ``NotFound``: NOT_FOUND; ``IdempotencyConflict`` (key reused with another
  body): ALREADY_EXISTS;
- ``PriceChanged``: FAILED_PRECONDITION, ``ErrorInfo`` PRICE_CHANGED and the
  new receipt as a ``SettleResponse``;
- ``InsufficientBalance``: FAILED_PRECONDITION, ``ErrorInfo``
  INSUFFICIENT_BALANCE (account, short by); ``Held`` (a watchdog hold, a lost
  card): FAILED_PRECONDITION, HELD (alert ids, rules); ``Conflict`` (coupon
  used...): FAILED_PRECONDITION, CONFLICT;
- ``Forbidden`` (another store's settlement): PERMISSION_DENIED;
- database unreachable: UNAVAILABLE (retry with the same key);
- anything else: INTERNAL with a fixed message; the trace goes to the
  server's log only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg
import psycopg.errors
import sqlalchemy.exc
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from settlement.errors import RequestError
from settlement.ledger.errors import (
    Conflict,
    Held,
    IdempotencyConflict,
    InsufficientBalance,
    NotFound,
)
from settlement.ledger.service import PriceChanged

from . import convert

log = logging.getLogger("settlement_server")


class Forbidden(Exception):
    """The calling terminal may not touch this object (PERMISSION_DENIED): another store's."""

DOMAIN = "settlement.v1"


class Refusal(Exception):
    """A call ends with ``status`` (a ``google.rpc.Status``)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


# Messages may quote what the client sent; the status travels in the trailers, which
# a client refuses past its metadata limit (16 KiB by default in grpcio), so a refusal
# that echoed a huge field would reach the client as RESOURCE_EXHAUSTED instead.
MAX_MESSAGE_CHARS = 512


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (marked), for messages sent back."""
    return text if len(text) <= limit else text[:limit - 15] + "... (truncated)"


def refusal(code: int, message: str, details: Iterable[Message] = ()) -> Refusal:
    """A :class:`Refusal` with a rich status (``google.rpc.Status`` in the trailers)."""
    status = status_pb2.Status(code=code, message=clip(message))
    for detail in details:
        status.details.add().Pack(detail)
    return Refusal(status)


def info(reason: str, **metadata: Any) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN,
                                       metadata={k: clip(str(v)) for k, v in metadata.items()})


def bad_request(field: str, message: str) -> Refusal:
    field, message = clip(field, 200), clip(message)
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
    return refusal(code_pb2.INVALID_ARGUMENT, f"{field}: {message}",
                   [error_details_pb2.BadRequest(field_violations=[violation])])


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's exception behind SQLAlchemy's wrapper (or ``exc`` itself)."""
    return exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig else exc


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or the connection broke."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sqlalchemy.exc.OperationalError) or isinstance(
        _driver_error(exc), psycopg.OperationalError)


def status_for(exc: BaseException, field_prefix: str = "") -> status_pb2.Status:
    """The status of a domain refusal (or a database outage); anything unexpected is
    INTERNAL with a fixed message and the trace in the log."""
    return _refusal_for(exc, field_prefix).status


def _refusal_for(exc: BaseException, field_prefix: str) -> Refusal:
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, Forbidden):
        return refusal(code_pb2.PERMISSION_DENIED, str(exc), [info("OTHER_STORE")])
    if isinstance(exc, RequestError):
        return bad_request(convert.field_path(field_prefix, exc.field), exc.problem)
    if isinstance(exc, PriceChanged):
        receipt = {**exc.receipt, "settlement_id": ""}
        return refusal(code_pb2.FAILED_PRECONDITION, str(exc),
                       [info("PRICE_CHANGED", payable_cents=exc.receipt["payable_cents"]),
                        convert.settle_response(receipt)])
    if isinstance(exc, InsufficientBalance):
        return refusal(code_pb2.FAILED_PRECONDITION, str(exc),
                       [info("INSUFFICIENT_BALANCE", account=exc.kind, ref=exc.ref,
                             short_by=exc.short_by)])
    if isinstance(exc, Held):
        return refusal(code_pb2.FAILED_PRECONDITION, str(exc),
                       [info("HELD", alert_ids=",".join(exc.alert_ids),
                             rules=",".join(exc.rules))])
    if isinstance(exc, Conflict):
        return refusal(code_pb2.FAILED_PRECONDITION, str(exc), [info("CONFLICT")])
    if isinstance(exc, NotFound):
        return refusal(code_pb2.NOT_FOUND, str(exc), [info("NOT_FOUND")])
    if isinstance(exc, IdempotencyConflict):
        return refusal(code_pb2.ALREADY_EXISTS, str(exc), [info("IDEMPOTENCY_KEY_REUSED")])
    if isinstance(_driver_error(exc), psycopg.errors.LockNotAvailable):
        return refusal(code_pb2.UNAVAILABLE, "the member is busy with another checkout; retry "
                       "with the same idempotency key", [info("LOCK_TIMEOUT")])
    if is_unavailable(exc):
        log.warning("database unavailable: %s", exc)
        return refusal(code_pb2.UNAVAILABLE, "the ledger database is unavailable; retry with "
                       "the same idempotency key", [info("DATABASE_UNAVAILABLE")])
    log.error("internal error", exc_info=exc)
    return refusal(code_pb2.INTERNAL, "internal error (logged on the server)")
