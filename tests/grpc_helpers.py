"""A real gRPC server on a loopback port for the API tests (no mocks)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from settlement.ledger.db import create_ledger_engine
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import add_terminal, revoke_terminal
from settlement.timeutil import parse_instant
from settlement_pos import PosClient
from settlement_server.app import Running, start
from settlement_server.config import ServerConfig
from settlement_server.service import Core

from .test_ledger_service import spec_member  # noqa: F401 - the spec's member, as state
from .test_ledger_service import spec_settle_request as spec_basket  # noqa: F401

NOW = parse_instant("2026-11-22T10:30:00+08:00")


@dataclass
class Api:
    """A running server, its core, a rulebook file, and one token per role."""

    running: Running
    rulebook_path: Path
    tokens: dict[str, str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def ledger(self) -> Ledger:
        return self.running.core.ledger

    def client(self, who: str = "pos", **options: object) -> PosClient:
        return PosClient(self.target, self.tokens[who], **options)  # type: ignore[arg-type]


@contextmanager
def api_server(url: str, examples_dir: Path, tmp_path: Path, impl: str = "sync",
               lock_timeout_s: float = 5.0) -> Iterator[Api]:
    """Migrated database, spec rulebook (copied: tests rewrite it), terminals, server."""
    rulebook_path = tmp_path / "rulebook.toml"
    shutil.copy(examples_dir / "rulebook.toml", rulebook_path)
    engine = create_ledger_engine(url, lock_timeout_s=lock_timeout_s)
    upgrade(engine)
    tokens = {
        "pos": add_terminal(engine, "T-POS", "S001", "pos"),
        "pos2": add_terminal(engine, "T-POS-2", "S002", "pos"),
        "risk": add_terminal(engine, "T-RISK", "S001", "risk"),
        "admin": add_terminal(engine, "T-ADMIN", "S001", "admin"),
        "revoked": add_terminal(engine, "T-OLD", "S001", "pos"),
    }
    revoke_terminal(engine, "T-OLD")
    core = Core(engine, rulebook_path, auth_ttl=0.0, clock=lambda: NOW,
                max_clock_skew_us=None)
    running = start(ServerConfig(listen="127.0.0.1:0", rulebook=str(rulebook_path),
                                 database_url=url, threads=8, impl=impl), core)
    try:
        yield Api(running, rulebook_path, tokens)
    finally:
        running.stop(0).wait()
        engine.dispose()
