"""Terminals: who may call the API, for which store, in which role.

A terminal's token is ``<terminal id>.<secret>``: the secret is 32 random
bytes (URL-safe base64), shown once when the terminal is added; the database
keeps only its SHA-256. A random 256-bit secret cannot be guessed or
brute-forced from its hash, so no salt or slow hash is needed (those protect
low-entropy passwords). Revoked terminals stay in the table for the audit
trail.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import schema
from .errors import Conflict, NotFound

ROLES = ("pos", "risk", "admin")


@dataclass(frozen=True, slots=True)
class Terminal:
    """An active terminal."""

    id: str
    store: str
    role: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def add_terminal(engine: Engine, terminal_id: str, store: str, role: str,
                 name: str | None = None) -> str:
    """Register a terminal; returns its token (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not terminal_id or "." in terminal_id or len(terminal_id) > 64:
        raise ValueError("terminal id must be 1..64 characters without '.'")
    if not store or len(store) > 128:
        raise ValueError("store must be 1..128 characters")
    secret = secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(insert(schema.terminals).values(
                id=terminal_id, store=store, role=role, secret_sha256=_digest(secret),
                name=name, created_us=time.time_ns() // 1000))
    except IntegrityError:
        raise Conflict(f"terminal {terminal_id!r} already exists") from None
    return f"{terminal_id}.{secret}"


def revoke_terminal(engine: Engine, terminal_id: str) -> None:
    """Revoke a terminal's token (servers notice within their cache lifetime)."""
    with engine.begin() as conn:
        done = conn.execute(update(schema.terminals).where(
            schema.terminals.c.id == terminal_id, schema.terminals.c.revoked_us.is_(None))
            .values(revoked_us=time.time_ns() // 1000)).rowcount
    if done != 1:
        raise NotFound(f"no active terminal {terminal_id!r}")


def list_terminals(engine: Engine) -> list[dict[str, object]]:
    """Every terminal, revoked ones included (no secrets)."""
    t = schema.terminals.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.id, t.store, t.role, t.name, t.created_us, t.revoked_us)
                            .order_by(t.id)).all()
    return [dict(r._mapping) for r in rows]


def authenticate(engine: Engine, token: str) -> Terminal | None:
    """The active terminal holding ``token``, or None."""
    terminal_id, dot, secret = token.partition(".")
    if not dot or not terminal_id or not secret or len(token) > 256:
        return None
    t = schema.terminals.c
    with engine.connect() as conn:
        row = conn.execute(select(t.store, t.role, t.secret_sha256, t.revoked_us)
                           .where(t.id == terminal_id)).first()
    if row is None or row.revoked_us is not None:
        return None
    if not hmac.compare_digest(row.secret_sha256, _digest(secret)):
        return None
    return Terminal(terminal_id, row.store, row.role)
