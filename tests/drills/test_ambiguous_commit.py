"""Drill 3: the connection to PostgreSQL is cut after COMMIT left the server process
and before its reply came back (an *ambiguous commit*: the server cannot know whether
it happened). A TCP proxy between the ledger and PostgreSQL forwards the COMMIT and
drops the connection instead of the reply. The ledger's retry on a fresh connection
meets its own idempotency key and answers with what was committed: applied once."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import settlement
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.verify import verify
from tests.pgcluster import PostgresCluster

from .conftest import LONG, record

ROUNDS = 30 if LONG else 4
BASKET = {"member_id": "M1", "pay_stored_value_cents": 700, "lines": [
    {"sku": "A", "category": "grain", "unit_price_cents": 1000, "quantity": 2}]}


class CommitCutter:
    """A loopback TCP proxy to PostgreSQL. Armed, it forwards the next client message
    that holds ``COMMIT``, waits for the server to act on it, and closes both sides of
    that connection without passing the reply on."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if to_server and b"COMMIT\x00" in data and self.armed.is_set():
                    self.armed.clear()
                    self.cuts += 1
                    time.sleep(0.3)  # PostgreSQL commits; its reply is never passed on
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


def test_ambiguous_commit_applies_once(drill_cluster: PostgresCluster, examples_dir: Path,
                                       tmp_path: Path) -> None:
    name = f"ambiguous_{uuid.uuid4().hex[:10]}"
    drill_cluster.create_database(name)
    direct = create_ledger_engine(drill_cluster.url(dbname=name))
    upgrade(direct)
    cutter = CommitCutter(drill_cluster.port)
    engine = create_ledger_engine(drill_cluster.url(dbname=name).replace(
        f":{drill_cluster.port}/", f":{cutter.port}/"))
    rulebook = tmp_path / "rulebook.toml"
    shutil.copy(examples_dir / "rulebook.toml", rulebook)
    ledger = Ledger(engine, settlement.load_rulebook(rulebook))
    try:
        ledger.enroll("S001", "e", member_id="M1")
        opening = ledger.recharge("S001", "r0", "M1", 10**6)["amount_cents"]
        kinds = {"settle (PostgreSQL fast path)": 0, "recharge (portable path)": 0,
                 "refund (portable path)": 0}
        expected_sv = opening
        for n in range(ROUNDS):
            cutter.armed.set()
            sold = ledger.settle("S001", f"s{n}", BASKET)
            assert not cutter.armed.is_set(), "the settle's COMMIT was not cut"
            assert ledger.settle("S001", f"s{n}", BASKET) == sold  # the key's answer
            kinds["settle (PostgreSQL fast path)"] += 1
            cutter.armed.set()
            topped = ledger.recharge("S001", f"r{n + 1}", "M1", 5_000)
            assert not cutter.armed.is_set(), "the recharge's COMMIT was not cut"
            assert ledger.recharge("S001", f"r{n + 1}", "M1", 5_000) == topped
            kinds["recharge (portable path)"] += 1
            cutter.armed.set()
            back = ledger.refund("S001", f"f{n}", sold["settlement_id"])
            assert not cutter.armed.is_set(), "the refund's COMMIT was not cut"
            kinds["refund (portable path)"] += 1
            expected_sv += (-sold["stored_value_cents"] + topped["amount_cents"]
                            + topped["bonus_cents"] + back["stored_value_cents"])
        with direct.connect() as conn:
            assert verify(conn) is None
            counts = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                      for t in ("settlements", "recharges", "refunds")}
        member = ledger.get_member(member_id="M1")
    finally:
        engine.dispose()
        direct.dispose()
        cutter.close()
    assert cutter.cuts == 3 * ROUNDS
    assert counts == {"settlements": ROUNDS, "recharges": ROUNDS + 1, "refunds": ROUNDS}
    assert member["sv_principal_cents"] + member["sv_bonus_cents"] == expected_sv
    record("ambiguous commit", [
        f"{cutter.cuts} connections cut between COMMIT and its reply: "
        + ", ".join(f"{n} {kind}" for kind, n in kinds.items()),
        "each answered (by the ledger's one retry on a fresh connection, which found its "
        "key) with what was committed; asking again with the key gives the same answer",
        f"rows: {counts} = one per request; stored value = the answers' sum; "
        "settlement verify: ok", "violations: 0"])
