"""What a client gets back when a call is refused: a status code, a message,
and machine-readable details (``google.rpc`` rich error model).

- ``RequestError`` (bad input; names the field): INVALID_ARGUMENT with a
  ``BadRequest`` field violation;
- ``NotFound``: NOT_FOUND; ``IdempotencyConflict`` (key reused with another
  body): ALREADY_EXISTS;
- ``PriceChanged``: FAILED_PRECONDITION, ``ErrorInfo`` PRICE_CHANGED and the
  new receipt as a ``SettleResponse``;
- ``InsufficientBalance``: FAILED_PRECONDITION, ``ErrorInfo``
  INSUFFICIENT_BALANCE (account, short by); ``Conflict`` (card lost, coupon
  used...): FAILED_PRECONDITION, CONFLICT;
- ``Forbidden`` (another store's settlement): PERMISSION_DENIED;
- database unreachable: UNAVAILABLE (retry with the same key);
- anything else: INTERNAL with a fixed message; the trace goes to the
  server's log only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, NoReturn

import grpc
import psycopg
import sqlalchemy.exc
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from settlement.errors import RequestError
from settlement.ledger.errors import (
    Conflict,
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


def abort(context: grpc.ServicerContext, code: int, message: str,
          details: Iterable[Message] = ()) -> NoReturn:
    """End the call with a rich status (``google.rpc.Status`` in the trailers)."""
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def info(reason: str, **metadata: Any) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN,
                                       metadata={k: str(v) for k, v in metadata.items()})


def bad_request(context: grpc.ServicerContext, field: str, message: str) -> NoReturn:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
    abort(context, code_pb2.INVALID_ARGUMENT, f"{field}: {message}",
          [error_details_pb2.BadRequest(field_violations=[violation])])


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or the connection broke."""
    if isinstance(exc, psycopg.OperationalError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError) \
            or isinstance(exc, sqlalchemy.exc.OperationalError)
    return False


def refuse(context: grpc.ServicerContext, exc: BaseException, field_prefix: str = "") -> NoReturn:
    """Map a domain refusal (or a database outage) to its status; anything unexpected is
    INTERNAL with a fixed message and the trace in the log."""
    if isinstance(exc, Forbidden):
        abort(context, code_pb2.PERMISSION_DENIED, str(exc), [info("OTHER_STORE")])
    if isinstance(exc, RequestError):
        bad_request(context, convert.field_path(field_prefix, exc.field), exc.problem)
    if isinstance(exc, PriceChanged):
        receipt = {**exc.receipt, "settlement_id": ""}
        abort(context, code_pb2.FAILED_PRECONDITION, str(exc),
              [info("PRICE_CHANGED", payable_cents=exc.receipt["payable_cents"]),
               convert.settle_response(receipt)])
    if isinstance(exc, InsufficientBalance):
        abort(context, code_pb2.FAILED_PRECONDITION, str(exc),
              [info("INSUFFICIENT_BALANCE", account=exc.kind, ref=exc.ref,
                    short_by=exc.short_by)])
    if isinstance(exc, Conflict):
        abort(context, code_pb2.FAILED_PRECONDITION, str(exc), [info("CONFLICT")])
    if isinstance(exc, NotFound):
        abort(context, code_pb2.NOT_FOUND, str(exc), [info("NOT_FOUND")])
    if isinstance(exc, IdempotencyConflict):
        abort(context, code_pb2.ALREADY_EXISTS, str(exc), [info("IDEMPOTENCY_KEY_REUSED")])
    if is_unavailable(exc):
        log.warning("database unavailable: %s", exc)
        abort(context, code_pb2.UNAVAILABLE, "the ledger database is unavailable; retry with "
              "the same idempotency key", [info("DATABASE_UNAVAILABLE")])
    log.exception("internal error", exc_info=exc)
    abort(context, code_pb2.INTERNAL, "internal error (logged on the server)")
