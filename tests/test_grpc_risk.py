"""RiskService over the wire (real servers, SQLite and PostgreSQL, sync and aio): only
risk terminals see alerts, holds name their alert, the review workflow with the acting
terminal in the audit trail, WatchAlerts delivers as alerts commit, and two server
processes raise the same alerts as one."""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from settlement.v1 import settlement_pb2 as pb
from settlement_pos import PosClient
from settlement_pos.client import error_details

from .grpc_helpers import Api, api_server, serve_process

BIG = {"member_id": "M1", "lines": [{"sku": "TV", "category": "grain",
                                     "unit_price_cents": 600_000, "quantity": 1}]}


@pytest.fixture(params=["sync", "aio"])
def api(request: pytest.FixtureRequest, ledger_url: str, examples_dir: Path,
        tmp_path: Path) -> Iterator[Api]:
    with api_server(ledger_url, examples_dir, tmp_path, request.param) as server:
        server.ledger.enroll("S001", "e1", member_id="M1", card_no="K1")
        yield server


def code_of(error: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return error.value.code()  # type: ignore[attr-defined,no-any-return]


def info_of(error: pytest.ExceptionInfo[grpc.RpcError]) -> error_details_pb2.ErrorInfo:
    (found,) = [d for d in error_details(error.value)
                if isinstance(d, error_details_pb2.ErrorInfo)]
    return found


class Watch:
    """A WatchAlerts stream read on a thread of its own."""

    def __init__(self, client: PosClient, **request: object) -> None:
        self.stream = client.watch_alerts(**request)  # type: ignore[arg-type]
        self.stream.initial_metadata()  # subscribed (or refused) once the headers arrive
        self.events: queue.Queue[tuple[float, pb.AlertEvent]] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.put((time.monotonic(), event))
        except grpc.RpcError as exc:
            self.error = exc

    def next(self, timeout: float = 10.0) -> tuple[float, pb.AlertEvent]:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)


def test_only_risk_terminals_see_alerts(api: Api) -> None:
    calls = [("ListAlerts", pb.ListAlertsRequest()),
             ("GetAlert", pb.GetAlertRequest(alert_id="A1")),
             ("UpdateAlert", pb.UpdateAlertRequest(alert_id="A1", action="acknowledge"))]
    for who in ("pos", "admin"):
        with api.client(who) as client:
            for name, request in calls:
                with pytest.raises(grpc.RpcError) as refused:
                    client.call(getattr(client.risk, name), request)
                assert code_of(refused) == grpc.StatusCode.PERMISSION_DENIED, (who, name)
            watch = Watch(client)
            watch.thread.join(10)
            assert watch.error is not None
            assert watch.error.code() == grpc.StatusCode.PERMISSION_DENIED
    with PosClient(api.target, "nobody.secret") as stranger:
        with pytest.raises(grpc.RpcError) as refused:
            stranger.list_alerts()
        assert code_of(refused) == grpc.StatusCode.UNAUTHENTICATED
    with api.client("risk") as risk:
        assert list(risk.list_alerts().alerts) == []


def test_a_hold_names_its_alert_and_risk_staff_review_it(api: Api) -> None:
    with api.client("pos") as pos, api.client("risk") as risk:
        pos.call(pos.members.ReportCardLost, pb.ReportCardLostRequest(idempotency_key="l1",
                                                                      card_no="K1"))
        with pytest.raises(grpc.RpcError) as held:
            pos.settle({"card_no": "K1", "lines": BIG["lines"]}, key="s1")
        assert code_of(held) == grpc.StatusCode.FAILED_PRECONDITION
        reason = info_of(held)
        assert reason.reason == "HELD" and reason.metadata["rules"] == "lost_card"
        aid = reason.metadata["alert_ids"]
        assert aid in held.value.details()  # type: ignore[attr-defined]
        (listed,) = risk.list_alerts(states=["open"], min_severity="critical").alerts
        assert (listed.alert_id, listed.rule, listed.card_no, listed.member_id) == (
            aid, "lost_card", "K1", "M1")
        alert = risk.get_alert(aid)
        assert [(h.operation, h.action, h.ref, h.terminal) for h in alert.hit_list] == [
            ("settle", "hold", "S001/s1", "T-POS")]
        assert json.loads(alert.evidence_json) == {"card_no": "K1"}
        acked = risk.update_alert(aid, "acknowledge", assignee="li.wei")
        assert (acked.state, acked.assignee) == ("acknowledged", "li.wei")
        done = risk.update_alert(aid, "resolve", outcome="confirmed_fraud", note="stolen")
        assert (done.state, done.outcome) == ("resolved", "confirmed_fraud")
        assert [(e.actor, e.action) for e in done.audit] == [
            ("watchdog", "opened"), ("T-RISK", "acknowledged"), ("T-RISK", "resolved")]
        assert json.loads(done.audit[2].detail_json)["note"] == "stolen"
        for request, field in ((pb.UpdateAlertRequest(alert_id=aid, action="escalate"),
                                "action"),
                               (pb.ListAlertsRequest(min_severity="awful"), "min_severity"),
                               (pb.ListAlertsRequest(page_token="??"), "page_token")):
            method = risk.risk.UpdateAlert if isinstance(request, pb.UpdateAlertRequest) \
                else risk.risk.ListAlerts
            with pytest.raises(grpc.RpcError) as bad:
                risk.call(method, request)
            assert code_of(bad) == grpc.StatusCode.INVALID_ARGUMENT
            (violations,) = [d for d in error_details(bad.value)
                             if isinstance(d, error_details_pb2.BadRequest)]
            assert violations.field_violations[0].field == field
        with pytest.raises(grpc.RpcError) as again:
            risk.update_alert(aid, "acknowledge")
        assert code_of(again) == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as missing:
            risk.get_alert("A-none")
        assert code_of(missing) == grpc.StatusCode.NOT_FOUND


def test_refusals_do_not_echo_huge_values(api: Api) -> None:
    """A refusal quoting a 10,000-character value stays INVALID_ARGUMENT / NOT_FOUND with
    a short message: echoed whole, its trailers passed the client's 16 KiB metadata limit
    and the till saw RESOURCE_EXHAUSTED (found by the hostile-client drill)."""
    huge = "x" * 10_000
    with api.client("risk") as risk:
        for request, method, code in (
                (pb.ListAlertsRequest(states=[huge]), risk.risk.ListAlerts,
                 grpc.StatusCode.INVALID_ARGUMENT),
                (pb.ListAlertsRequest(min_severity=huge), risk.risk.ListAlerts,
                 grpc.StatusCode.INVALID_ARGUMENT),
                (pb.GetAlertRequest(alert_id=huge), risk.risk.GetAlert, None)):
            with pytest.raises(grpc.RpcError) as refused:
                risk.call(method, request)
            assert code_of(refused) in ((code,) if code else (
                grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND))
            assert len(refused.value.details()) <= 512  # type: ignore[attr-defined]
            for detail in error_details(refused.value):
                assert detail.ByteSize() < 2048


def test_watch_alerts_delivers_as_alerts_commit(api: Api) -> None:
    with api.client("pos") as pos, api.client("risk") as risk:
        everything = Watch(risk)
        critical = Watch(risk, min_severity="critical")
        elsewhere = Watch(risk, store="S999")
        try:
            start = time.monotonic()
            sold = pos.settle(BIG, key="s1")  # 6,000 yuan: high_value (high), alert
            at, event = everything.next()
            assert event.action == "opened" and event.actor == "watchdog"
            assert (event.alert.rule, event.alert.settlement_id) == (
                "high_value", sold.settlement_id)
            assert at - start < 10  # delivered (the latency is measured in bench/)
            risk.update_alert(event.alert.alert_id, "acknowledge")
            _, acked = everything.next()
            assert (acked.action, acked.actor, acked.alert.state) == (
                "acknowledged", "T-RISK", "acknowledged")
            pos.settle(BIG, key="s2")
            _, hit = everything.next()
            assert (hit.action, hit.alert.hits) == ("hit", 2)
            assert critical.events.empty() and elsewhere.events.empty()
            # a console that lost its connection resumes after the last event it saw
            resumed = Watch(risk, after_event_id=event.event_id)
            try:
                assert [resumed.next()[1].action for _ in range(2)] == ["acknowledged", "hit"]
            finally:
                resumed.close()
        finally:
            for watch in (everything, critical, elsewhere):
                watch.close()


def test_streams_end_when_the_server_stops(api: Api) -> None:
    with api.client("risk") as risk:
        watch = Watch(risk)
        time.sleep(0.3)
        api.running.stop(5).wait(15)
        watch.thread.join(10)
        assert not watch.thread.is_alive()


def _script(target: str, token: str) -> None:
    """The same checkouts, each on a new connection: the kernel spreads connections over the
    worker processes (SO_REUSEPORT; 20 connections all landing on one of two workers has a
    chance of 2 in a million). Bursts, big baskets, walk-ins at one terminal."""
    with PosClient(target, token) as pos:
        for m in range(2):
            pos.enroll(key=f"e{m}", member_id=f"M{m}")
    for i in range(20):
        member = {"member_id": f"M{i % 2}"} if i % 5 else {}  # every fifth one a walk-in
        cents = 600_000 if i in (3, 9) else 1_000 + i
        basket = {**member, "lines": [{"sku": "X", "category": "grain",
                                       "unit_price_cents": cents, "quantity": 1}]}
        with PosClient(target, token) as pos:
            pos.settle(basket, key=f"s{i}")


def _alerts(url: str) -> list[tuple[object, ...]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT rule, subject, severity, action, hits, state, evidence FROM alerts "
                "ORDER BY rule, subject")).all()
            hits = conn.execute(text("SELECT count(*) FROM alert_hits")).scalar_one()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows] + [("hits", hits)]


def test_two_server_processes_raise_the_same_alerts_as_one(postgres_cluster, examples_dir: Path,
                                                          tmp_path: Path) -> None:
    rulebook = tmp_path / "rulebook.toml"
    rulebook.write_text((examples_dir / "rulebook.toml").read_text())
    seen = {}
    for workers in (1, 2):
        name = f"w{workers}_{os.getpid()}_{int(time.time())}"
        postgres_cluster.create_database(name)
        url = postgres_cluster.url(dbname=name)
        with serve_process(url, rulebook, workers) as (server, target, token):
            _script(target, token)
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        seen[workers] = _alerts(url)
    rules = {row[0] for row in seen[1][:-1]}
    assert {"high_value", "card_burst", "terminal_burst"} <= rules, seen[1]
    assert seen[2] == seen[1]


def test_settlement_alerts_commands(api: Api, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from settlement.cli import main

    risk_file, pos_file = tmp_path / "risk.token", tmp_path / "pos.token"
    risk_file.write_text(api.tokens["risk"] + "\n")
    pos_file.write_text(api.tokens["pos"] + "\n")
    with api.client("pos") as pos:
        pos.settle(BIG, key="s1")
    (alert,), _ = api.ledger.alerts.list_alerts()
    aid = alert["id"]

    def run(*args: str, token: Path = risk_file) -> tuple[int, str, str]:
        code = main(["alerts", "--target", api.target, "--token-file", str(token), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = run("list", "--state", "open")
    assert code == 0 and aid in out and "high_value" in out
    assert "payable_cents=6000.00" in out  # cents shown as money
    code, out, _ = run("show", aid)
    assert code == 0 and "S001/s1" in out and "watchdog" in out and "opened" in out
    code, out, _ = run("ack", aid, "--assignee", "li.wei", "--note", "calling")
    assert code == 0 and "acknowledged" in out and "li.wei" in out
    code, out, _ = run("resolve", aid, "valuable", "--note", "a school's order")
    assert code == 0 and "resolved, outcome valuable" in out
    assert [e["actor"] for e in api.ledger.alerts.get(aid)["events"]][1:] == ["T-RISK"] * 2
    code, _, err = run("ack", aid)
    assert code == 1 and "FAILED_PRECONDITION" in err
    code, _, err = run("list", token=pos_file)
    assert code == 1 and "PERMISSION_DENIED" in err
    with pytest.raises(SystemExit) as usage:
        run("resolve", aid, "fine")
    assert usage.value.code == 2
