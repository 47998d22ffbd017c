"""Drills 1 and 2: tills settle, refund and recharge through ``settlement serve``
(two worker processes, PostgreSQL) while (1) the server is killed with SIGKILL and
restarted, again and again, or (2) PostgreSQL is stopped with ``-m immediate`` and
started again. The tills retry every request with its key until it is answered.
Afterwards nothing acknowledged is lost, nothing is applied twice, every asset is
conserved, and the ledger agrees with the tills' own record to the cent."""

from __future__ import annotations

import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

import settlement
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import add_terminal
from settlement.v1 import settlement_pb2 as pb
from settlement.v1 import settlement_pb2_grpc as pb_grpc
from tests.pgcluster import PostgresCluster

from .conftest import LONG, record
from .harness import STORE, Record, ServerProcess, Till, check_ledger

TILLS = 6 if LONG else 3
MEMBERS_PER_TILL = 5 if LONG else 3
FAULTS = 20 if LONG else 3
INTERVAL_S = 1.0 if LONG else 1.5
OPENING_SV = 50_000


def set_up(cluster: PostgresCluster, examples_dir: Path,
           tmp_path: Path) -> tuple[str, Path, str, Record, list[list[str]]]:
    """A migrated ledger with members holding stored value, a POS token, the rulebook."""
    name = f"drill_{uuid.uuid4().hex[:10]}"
    cluster.create_database(name)
    url = cluster.url(dbname=name)
    rulebook = tmp_path / "rulebook.toml"
    shutil.copy(examples_dir / "rulebook.toml", rulebook)
    engine = create_ledger_engine(url)
    upgrade(engine)
    token = add_terminal(engine, "T1", STORE, "pos")
    ledger = Ledger(engine, settlement.load_rulebook(rulebook))
    rec = Record()
    groups = []
    for t in range(TILLS):
        group = [f"M{t}-{i}" for i in range(MEMBERS_PER_TILL)]
        for member in group:
            ledger.enroll(STORE, f"e-{member}", member_id=member)
            done = ledger.recharge(STORE, f"r-{member}", member, OPENING_SV)
            rec.add_sv(member, done["amount_cents"] + done["bonus_cents"])
        groups.append(group)
    engine.dispose()
    return url, rulebook, token, rec, groups


def run_storm(server: ServerProcess, token: str, rec: Record, groups: list[list[str]],
              fault: Callable[[], None]) -> None:
    """Tills busy while ``fault()`` runs FAULTS times, INTERVAL_S apart; then the tills
    finish what they were doing (retrying until answered) and stop."""
    stop = threading.Event()
    tills = [Till(server.target, token, rec, group, seed=n) for n, group in enumerate(groups)]
    threads = [threading.Thread(target=t.run, args=(stop,)) for t in tills]
    for thread in threads:
        thread.start()
    try:
        for _ in range(FAULTS):
            time.sleep(INTERVAL_S)
            fault()
        time.sleep(INTERVAL_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(180)
    assert not any(t.is_alive() for t in threads), "a till never got its answer"


def test_kill_9_storm(drill_cluster: PostgresCluster, examples_dir: Path,
                      tmp_path: Path) -> None:
    url, rulebook, token, rec, groups = set_up(drill_cluster, examples_dir, tmp_path)
    server = ServerProcess(url, rulebook, tmp_path / "serve.log", workers=2)
    server.start()
    restarts: list[float] = []

    def kill_and_restart() -> None:
        server.kill9()
        restarts.append(server.start())

    run_storm(server, token, rec, groups, kill_and_restart)
    assert server.stop() == 0
    assert not rec.violations, rec.violations[:5]
    checked = check_ledger(url, rec, recharges_before=TILLS * MEMBERS_PER_TILL)
    record("kill -9 storm", [
        f"{TILLS} tills x {MEMBERS_PER_TILL} members, settle/refund/recharge, "
        f"`settlement serve --workers 2` on PostgreSQL (fsync on)",
        f"faults: {FAULTS} x SIGKILL of the server's process group mid-traffic, each "
        f"restarted (restart to SERVING: median {statistics.median(restarts):.1f} s)",
        f"requests answered: {rec.codes['OK']}, refused (definitive): {rec.refusals}, "
        f"retries with the same key: {rec.retries}; codes seen: {dict(rec.codes)}",
        *checked, "violations: 0"])


def test_database_restart_mid_load(drill_cluster: PostgresCluster, examples_dir: Path,
                                   tmp_path: Path) -> None:
    url, rulebook, token, rec, groups = set_up(drill_cluster, examples_dir, tmp_path)
    server = ServerProcess(url, rulebook, tmp_path / "serve.log", workers=2)
    server.start()
    probe = grpc.insecure_channel(server.target)
    members = pb_grpc.MemberServiceStub(probe)
    metadata = (("authorization", f"Bearer {token}"),)
    recoveries: list[float] = []

    def restart_database() -> None:
        drill_cluster.stop_server("immediate")
        time.sleep(0.5)
        drill_cluster.start_server()
        back = time.monotonic()
        while True:  # the first call that reads the database again, without a restart
            try:
                members.GetMember(pb.GetMemberRequest(member_id=groups[0][0]), timeout=1,
                                  metadata=metadata)
                break
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE,  # type: ignore[attr-defined]
                                      grpc.StatusCode.DEADLINE_EXCEEDED), exc
                assert time.monotonic() - back < 30, "the server never recovered"
                time.sleep(0.05)
        recoveries.append(time.monotonic() - back)

    try:
        run_storm(server, token, rec, groups, restart_database)
    finally:
        probe.close()
    assert server.stop() == 0
    assert server.starts == 1  # recovered by itself, never restarted
    assert not rec.violations, rec.violations[:5]
    assert rec.codes["UNAVAILABLE"] > 0, "the outages never reached a till"
    assert max(recoveries) < 5, recoveries
    checked = check_ledger(url, rec, recharges_before=TILLS * MEMBERS_PER_TILL)
    record("database restart mid-load", [
        f"{TILLS} tills x {MEMBERS_PER_TILL} members through `settlement serve --workers 2`",
        f"faults: {FAULTS} x PostgreSQL stopped with -m immediate, 0.5 s down, started "
        "again; the server was never restarted",
        f"recovery (database accepting to the first answered read): max "
        f"{max(recoveries):.2f} s, median {statistics.median(recoveries):.2f} s (target < 5 s)",
        f"requests answered: {rec.codes['OK']}, refused (definitive): {rec.refusals}, "
        f"retries with the same key: {rec.retries}; codes seen: {dict(rec.codes)} "
        "(UNAVAILABLE while down, never a wrong answer)",
        *checked, "violations: 0"])
