"""Who is calling: the terminal behind the ``authorization: Bearer <token>``
metadata, and whether its role may call the method.

Tokens are checked against the ``terminals`` table
(:mod:`settlement.ledger.terminals`) and remembered for ``ttl`` seconds, so a
checkout does not pay a database lookup per call; a revoked token therefore
keeps working for at most ``ttl`` seconds in each server process.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from google.rpc import code_pb2
from sqlalchemy import Engine

from settlement.ledger.terminals import Terminal, authenticate

from .errors import info, refusal

POS = frozenset({"pos", "admin"})
ANY = frozenset({"pos", "risk", "admin"})
ADMIN = frozenset({"admin"})
#: Alerts are for risk staff only (not the tills, not the chain's admins).
RISK = frozenset({"risk"})


class Authenticator:
    """Token -> terminal, with a small time-bounded cache (negative answers included, so a
    stream of bad tokens does not become a stream of database lookups)."""

    def __init__(self, engine: Engine, ttl: float = 5.0, max_entries: int = 10_000) -> None:
        self.engine = engine
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[Terminal | None, float]] = {}
        self._lock = threading.Lock()

    def lookup(self, token: str) -> Terminal | None:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        terminal = authenticate(self.engine, token)
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[token] = (terminal, now + self.ttl)
        return terminal

    def check(self, metadata: Any, roles: frozenset[str]) -> Terminal:
        """The calling terminal, from the call's metadata; raises a :class:`Refusal`
        (UNAUTHENTICATED, PERMISSION_DENIED) otherwise."""
        token = None
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, rest = value.partition(" ")
                if scheme.lower() == "bearer" and rest.strip():
                    token = rest.strip()
        if token is None:
            raise refusal(code_pb2.UNAUTHENTICATED,
                          "missing credentials: send 'authorization: Bearer <terminal token>'",
                          [info("NO_CREDENTIALS")])
        terminal = self.lookup(token)
        if terminal is None:
            raise refusal(code_pb2.UNAUTHENTICATED, "unknown or revoked terminal token",
                          [info("BAD_CREDENTIALS")])
        if terminal.role not in roles:
            raise refusal(code_pb2.PERMISSION_DENIED,
                          f"role {terminal.role!r} may not call this method",
                          [info("ROLE_NOT_ALLOWED", role=terminal.role)])
        return terminal
