"""Idempotency keys: one execution per (store, key), the response stored with the effects.

:func:`claim` inserts the key first, inside the operation's own database
transaction. A second request with the same key blocks on that insert until
the first commits (PostgreSQL; SQLite serializes writers), then sees the
stored row: the same request gets the stored response and changes nothing;
another request gets :class:`IdempotencyConflict`. If the first fails, its
key rolls back with it and a retry executes afresh: refusals are not
stored, so a retry after a top-up can succeed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, select, update

from .db import insert_or_nothing
from .errors import IdempotencyConflict
from .schema import idempotency_keys

#: Keys are kept at least this long (a purge job may delete older ones).
RETENTION_DAYS = 30


def canonical(value: Any) -> str:
    """The canonical JSON of a request: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(operation: str, request: Any) -> str:
    """SHA-256 of the operation and its canonical request."""
    return hashlib.sha256(canonical([operation, request]).encode()).hexdigest()


def claim(conn: Connection, store: str, key: str, operation: str, digest: str,
          now_us: int) -> dict[str, Any] | None:
    """Claim ``key`` for this request: None to execute, or the stored response to return."""
    inserted = conn.execute(
        insert_or_nothing(conn, idempotency_keys, store=store, key=key, operation=operation,
                          request_hash=digest, response="", created_us=now_us)
        .returning(idempotency_keys.c.key)
    ).first()
    if inserted is not None:
        return None
    row = conn.execute(select(idempotency_keys).where(
        idempotency_keys.c.store == store, idempotency_keys.c.key == key)).one()
    return replay(store, key, operation, digest, row.operation, row.request_hash, row.response)


def replay(store: str, key: str, operation: str, digest: str, stored_operation: str,
           stored_digest: str, stored_response: str) -> dict[str, Any]:
    """The stored response of an executed key, if this request is the same one."""
    if stored_operation != operation or stored_digest != digest:
        raise IdempotencyConflict(
            f"idempotency key {key!r} of store {store!r} was used for another request")
    return json.loads(stored_response)  # type: ignore[no-any-return]


def record(conn: Connection, store: str, key: str, response: dict[str, Any]) -> None:
    """Store the response of the claimed key (same transaction as the effects)."""
    conn.execute(update(idempotency_keys)
                 .where(idempotency_keys.c.store == store, idempotency_keys.c.key == key)
                 .values(response=canonical(response)))
