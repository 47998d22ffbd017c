"""A real gRPC server on a loopback port for the API tests (no mocks)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from settlement.ledger.db import create_ledger_engine
from settlement.ledger.journal import Transaction, account, system
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import add_terminal, revoke_terminal
from settlement.timeutil import parse_instant
from settlement_pos import PosClient
from settlement_server.app import Running, start
from settlement_server.config import ServerConfig
from settlement_server.service import Core

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
def api_server(url: str, examples_dir: Path, tmp_path: Path,
               impl: str = "sync") -> Iterator[Api]:
    """Migrated database, spec rulebook (copied: tests rewrite it), terminals, server."""
    rulebook_path = tmp_path / "rulebook.toml"
    shutil.copy(examples_dir / "rulebook.toml", rulebook_path)
    engine = create_ledger_engine(url)
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


def spec_member(ledger: Ledger) -> None:
    """The member of the spec's example request, as database state."""
    ledger.enroll("S001", "e-1", member_id="M0001", phone="13800000001", card_no="K0001",
                  tier="gold")
    with ledger.engine.begin() as conn:
        tx = Transaction("seed", "M0001", "S001", NOW)
        tx.move(system(conn, "points_issued"), account(conn, "M0001", "points"), 1234)
        Ledger._write_lots(conn, tx.write(conn), [("M0001", 1234, None)], NOW)
    ledger.recharge("S001", "r-1", "M0001", 5000)
    for cid, template, begin, end in [
        ("C-1", "SPEND200-20", "2026-11-01", "2026-12-01"),
        ("C-2", "PCT12", "2026-11-01", "2026-11-30"),
        ("C-3", "VOUCHER5", "2026-11-01", "2026-11-25"),
        ("C-4", "DAIRY-30PCT", "2026-11-01", "2026-12-31"),
        ("C-5", "VOUCHER5", "2026-10-01", "2026-11-01"),
    ]:
        ledger.issue_coupon("S001", f"c-{cid}", "M0001", template, coupon_id=cid,
                            valid_from_us=parse_instant(f"{begin}T00:00:00+08:00"),
                            valid_until_us=parse_instant(f"{end}T00:00:00+08:00"))
    ledger.issue_count_card("S001", "k-1", "M0001", "K-1", ["CAR-WASH"], 10,
                            parse_instant("2027-06-01T00:00:00+08:00"))


def spec_basket(examples_dir: Path) -> dict[str, object]:
    """The spec's member request as a basket (member state comes from the ledger)."""
    request = json.loads((examples_dir / "request-member.json").read_text())
    del request["member"], request["store"]
    return {"member_id": "M0001", **request}
