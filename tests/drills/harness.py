"""What the drills share: a ``settlement serve`` process that can be killed, tills that
retry with the same key until they get an answer, the tills' own record of what was
acknowledged, and the checks of the ledger against that record.

A till's record is the "plain model": it adds up what each acknowledged answer said
(stored value recharged, paid, refunded) and nothing else. After a drill the ledger
must agree with it exactly, and the journal replayed posting by posting must agree
with the ledger's balances.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import text

from settlement.ledger.db import create_ledger_engine
from settlement.ledger.verify import verify
from settlement.v1 import settlement_pb2 as pb
from settlement.v1 import settlement_pb2_grpc as pb_grpc
from settlement_pos import basket
from tests.grpc_helpers import serving
from tests.pgcluster import _free_port

#: Codes a till retries with the same request (and so the same key).
RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
         grpc.StatusCode.CANCELLED}
#: Codes that are a definitive "no" (nothing was applied).
REFUSED = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
STORE = "S001"


class ServerProcess:
    """``settlement serve`` on a fixed loopback port, in a process group of its own so
    that a kill -9 takes its workers with it."""

    def __init__(self, url: str, rulebook: Path, log: Path, workers: int = 2) -> None:
        self.url, self.rulebook, self.log, self.workers = url, rulebook, log, workers
        self.target = f"127.0.0.1:{_free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until SERVING; returns the seconds it took."""
        began = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "settlement", "serve", "--listen", self.target,
                 "--rulebook", str(self.rulebook), "--database-url", self.url,
                 "--workers", str(self.workers)],
                stdout=log, stderr=log, start_new_session=True)
        while not serving(self.target):
            if self.proc.poll() is not None or time.monotonic() - began > timeout:
                raise RuntimeError(f"the server did not start; see {self.log}")
            time.sleep(0.05)
        self.starts += 1
        return time.monotonic() - began

    def kill9(self) -> None:
        """SIGKILL to the whole process group: no drain, no cleanup, mid-transaction."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        """SIGTERM (drain) and wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@dataclass
class Record:
    """What the tills were told, and what they saw on the way."""

    sv: dict[str, int] = field(default_factory=dict)  # member -> expected stored value
    settled: dict[str, str] = field(default_factory=dict)  # key -> settlement id
    refunded: dict[str, str] = field(default_factory=dict)  # key -> settlement refunded
    recharged: dict[str, str] = field(default_factory=dict)  # key -> recharge id
    attempted: set[str] = field(default_factory=set)  # every settle key sent
    codes: Counter[str] = field(default_factory=Counter)  # every status seen
    retries: int = 0
    refusals: int = 0
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_sv(self, member: str, cents: int) -> None:
        with self.lock:
            self.sv[member] = self.sv.get(member, 0) + cents


class Till:
    """One POS terminal's loop: settle, recharge and refund for its own members, each
    request retried with the same key until it is answered."""

    def __init__(self, target: str, token: str, record: Record, members: list[str],
                 seed: int, give_up_s: float = 120.0) -> None:
        self.channel = grpc.insecure_channel(target)
        self.settlements = pb_grpc.SettlementServiceStub(self.channel)
        self.members_stub = pb_grpc.MemberServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.record, self.members, self.rng = record, members, random.Random(seed)
        self.seed, self.give_up_s, self.n = seed, give_up_s, 0
        self.mine: list[tuple[str, str]] = []  # (settlement id, member) not yet refunded

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        """The answer, or None when refused; retries through outages with the same request.
        INTERNAL, UNKNOWN and anything undocumented are violations."""
        began = time.monotonic()
        while True:
            try:
                answer = method(request, timeout=5, metadata=self.metadata,
                                wait_for_ready=True)
                self.record.codes["OK"] += 1
                return answer
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                self.record.codes[code.name] += 1
                if code in REFUSED:
                    self.record.refusals += 1
                    return None
                if code not in RETRY:
                    self.record.violations.append(f"{code.name}: {exc.details()}")  # type: ignore[attr-defined]
                    return None
            self.record.retries += 1
            if time.monotonic() - began > self.give_up_s:
                self.record.violations.append(f"no answer within {self.give_up_s} s")
                return None
            time.sleep(0.05)

    def step(self) -> None:
        """One operation, chosen at random."""
        self.n += 1
        key = f"t{self.seed}-{self.n}"
        roll = self.rng.random()
        member = self.rng.choice(self.members)
        if roll < 0.2:
            amount = self.rng.randrange(1_000, 20_001)
            done = self.call(self.members_stub.Recharge, pb.RechargeRequest(
                idempotency_key=key, member_id=member, amount_cents=amount))
            if done is not None:
                self.record.recharged[key] = done.recharge_id
                self.record.add_sv(member, done.amount_cents + done.bonus_cents)
        elif roll < 0.35 and self.mine:
            sid, owner = self.mine.pop(self.rng.randrange(len(self.mine)))
            done = self.call(self.settlements.Refund, pb.RefundRequest(
                idempotency_key=key, settlement_id=sid, all_remaining=True))
            if done is not None:
                self.record.refunded[key] = sid
                self.record.add_sv(owner, done.stored_value_cents)
        else:
            lines = [{"sku": f"SKU{self.rng.randrange(50)}", "category": "grain",
                      "unit_price_cents": self.rng.randrange(100, 3_001),
                      "quantity": self.rng.randrange(1, 4)}
                     for _ in range(self.rng.randrange(1, 4))]
            request = pb.SettleRequest(idempotency_key=key, basket=basket({
                "member_id": member, "lines": lines,
                "pay_stored_value_cents": self.rng.randrange(0, 3_001)}))
            self.record.attempted.add(key)
            done = self.call(self.settlements.Settle, request)
            if done is not None:
                self.record.settled[key] = done.settlement_id
                self.record.add_sv(member, -done.receipt.stored_value_cents)
                self.mine.append((done.settlement_id, member))

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.channel.close()


def check_ledger(url: str, record: Record, recharges_before: int) -> list[str]:
    """The ledger against the tills' record (``recharges_before``: made by the set-up,
    already in ``record.sv``); returns what was checked (raises on a violation, naming
    it)."""
    cli = subprocess.run([sys.executable, "-m", "settlement", "verify", "--database-url", url],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    engine = create_ledger_engine(url)
    try:
        with engine.connect() as conn:
            problem = verify(conn)
            assert problem is None, f"settlement verify: {problem}"
            keys = {k: json.loads(r)["settlement_id"] for k, r in conn.execute(text(
                "SELECT key, response FROM idempotency_keys WHERE operation = 'settle' "
                "AND store = :s"), {"s": STORE})}
            sids = [r[0] for r in conn.execute(text("SELECT id FROM settlements"))]
            journal = Counter(r[0] for r in conn.execute(text(
                "SELECT kind FROM journal_transactions")))
            refunds = conn.execute(text("SELECT count(*) FROM refunds")).scalar_one()
            recharges = conn.execute(text("SELECT count(*) FROM recharges")).scalar_one()
            # The plain model: every posting replayed in order, per account.
            replayed: Counter[int] = Counter()
            for account, amount in conn.execute(text(
                    "SELECT account_id, amount FROM journal_postings ORDER BY tx_id, id")):
                replayed[account] += amount
            accounts = conn.execute(text(
                "SELECT id, owner, kind, balance FROM accounts WHERE balance IS NOT NULL")).all()
            by_asset: Counter[str] = Counter()
            for asset, amount in conn.execute(text(
                    "SELECT asset, sum(amount) FROM journal_postings GROUP BY asset")):
                by_asset[asset] += amount
    finally:
        engine.dispose()
    lost = [k for k, sid in record.settled.items() if keys.get(k) != sid]
    assert not lost, f"acknowledged settlements lost or changed: {lost[:5]}"
    assert sorted(keys.values()) == sorted(sids), "a settlement without exactly one key"
    assert set(keys) <= record.attempted, "a settlement nobody asked for"
    assert journal["settle"] == len(sids), "settle journal transactions != settlements"
    assert journal["refund"] == refunds == len(record.refunded), (
        f"refunds: journal {journal['refund']}, table {refunds}, acknowledged "
        f"{len(record.refunded)}")
    assert recharges == len(record.recharged) + recharges_before, (
        f"recharges {recharges} != {len(record.recharged)} acknowledged + {recharges_before}")
    assert all(v == 0 for v in by_asset.values()), f"not conserved: {dict(by_asset)}"
    wrong = [(a.id, a.balance, replayed[a.id]) for a in accounts if a.balance != replayed[a.id]]
    assert not wrong, f"balances differ from the replayed journal: {wrong[:5]}"
    held = Counter[str]()
    for a in accounts:
        if a.kind in ("sv_principal", "sv_bonus"):
            held[a.owner] += a.balance
    off = {m: (held[m], cents) for m, cents in record.sv.items() if held[m] != cents}
    assert not off, f"stored value differs from what the tills were told: {off}"
    return [f"`settlement verify`: exit 0; assets conserved: {sorted(by_asset)} each sum to 0",
            f"{len(record.settled)} acknowledged settlements all in the journal once; "
            f"{len(keys)} settle keys = {len(sids)} settlements (none without its key, "
            f"none twice); {len(record.attempted) - len(record.settled)} settle keys "
            "refused or never answered: applied 0 times",
            f"{refunds} refunds and {recharges} recharges = the acknowledged ones",
            f"journal replayed posting by posting = every account balance "
            f"({len(accounts)} accounts)",
            f"stored value of {len(record.sv)} members = the tills' own sum of answers"]

