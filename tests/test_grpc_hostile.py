"""Hostile input over the wire: generated protobuf messages to every RPC get only
documented status codes, never INTERNAL, and the server keeps serving."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from settlement.v1 import settlement_pb2 as pb

from .grpc_helpers import Api, api_server

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.PERMISSION_DENIED}

INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1),
                  st.sampled_from([0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]))
INT32 = st.integers(-(2**31), 2**31 - 1)
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", "M0001", "K0001", "C-1", "\x00",
                                                        "A" * 300, "grain", "dairy"]))


#: an alert id: mostly the module's real alert (opened by the fixture), else anything
ALERT_ID = st.one_of(st.just("REAL"), TEXT)


def lines() -> st.SearchStrategy[list[pb.Line]]:
    return st.lists(st.builds(pb.Line, sku=TEXT, category=TEXT, unit_price_cents=INT64,
                              quantity=INT32, count_card_id=TEXT), max_size=6)


@st.composite
def baskets(draw: st.DrawFn) -> pb.Basket:
    b = pb.Basket(lines=draw(lines()), coupon_ids=draw(st.lists(TEXT, max_size=4)),
                  auto_coupons=draw(st.booleans()), redeem_points=draw(INT64),
                  pay_stored_value_cents=draw(INT64))
    who = draw(st.sampled_from(["none", "member", "card"]))
    if who == "member":
        b.member_id = draw(TEXT)
    elif who == "card":
        b.card_no = draw(TEXT)
    if draw(st.booleans()):
        b.at.seconds = draw(INT64)
        b.at.nanos = draw(INT32)
    return b


def requests() -> st.SearchStrategy[tuple[str, object]]:
    key = TEXT
    return st.one_of(
        st.builds(lambda b: ("Quote", pb.QuoteRequest(basket=b)), baskets()),
        st.builds(lambda k, b, e: ("Settle", pb.SettleRequest(
            idempotency_key=k, basket=b, **({} if e is None else
                                            {"expected_payable_cents": e}))),
                  key, baskets(), st.one_of(st.none(), INT64)),
        st.builds(lambda k, s, ls, a: ("Refund", pb.RefundRequest(
            idempotency_key=k, settlement_id=s, all_remaining=a,
            lines=[pb.RefundLine(line_no=n, quantity=q) for n, q in ls])),
                  key, TEXT, st.lists(st.tuples(INT32, INT32), max_size=3), st.booleans()),
        st.builds(lambda k, s: ("Void", pb.VoidRequest(idempotency_key=k, settlement_id=s)),
                  key, TEXT),
        st.builds(lambda s: ("GetSettlement", pb.GetSettlementRequest(settlement_id=s)), TEXT),
        st.builds(lambda m, n, t: ("member.ListCoupons", pb.ListCouponsRequest(
            member_id=m, page_size=n, page_token=t)), TEXT, INT32, TEXT),
        st.builds(lambda k, m, a: ("member.Recharge", pb.RechargeRequest(
            idempotency_key=k, member_id=m, amount_cents=a)), key, TEXT, INT64),
        st.builds(lambda k, c, n: ("member.ReplaceCard", pb.ReplaceCardRequest(
            idempotency_key=k, card_no=c, new_card_no=n)), key, TEXT, TEXT),
        st.builds(lambda k, m, c, s, u: ("member.ConsumeCountCard", pb.ConsumeCountCardRequest(
            idempotency_key=k, member_id=m, card_id=c, sku=s, uses=u)),
            key, TEXT, TEXT, TEXT, INT64),
        st.builds(lambda k, p, m, c, t, ct: ("member.Enroll", pb.EnrollRequest(
            idempotency_key=k, phone=p, member_id=m, card_no=c, tier=t, card_type=ct)),
            key, TEXT, TEXT, TEXT, TEXT, st.integers(-5, 8)),
        st.builds(lambda ss, r, s, m, v, n, t: ("risk.ListAlerts", pb.ListAlertsRequest(
            states=ss, rule=r, store=s, member_id=m, min_severity=v, page_size=n,
            page_token=t)), st.lists(st.one_of(TEXT, st.just("open")), max_size=3), TEXT, TEXT,
            TEXT, st.one_of(TEXT, st.just("high")), INT32, TEXT),
        st.builds(lambda a: ("risk.GetAlert", pb.GetAlertRequest(alert_id=a)), ALERT_ID),
        st.builds(lambda a, act, who, note, out: ("risk.UpdateAlert", pb.UpdateAlertRequest(
            alert_id=a, action=act, assignee=who, note=note, outcome=out)), ALERT_ID,
            st.one_of(TEXT, st.sampled_from(["acknowledge", "assign", "note", "resolve"])),
            TEXT, TEXT, st.one_of(TEXT, st.just("valuable"))),
        st.builds(lambda v, s, a: ("risk.WatchAlerts", pb.WatchAlertsRequest(
            min_severity=v, store=s, after_event_id=a)), TEXT, TEXT, INT64),
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        examples_dir: Path):
    tmp = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{tmp}/l.db"
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        cluster.create_database("hostile")
        url = cluster.url(dbname="hostile")
    with api_server(url, examples_dir, tmp) as server:
        server.ledger.enroll("S001", "e", member_id="M0001", card_no="K0001")
        server.ledger.recharge("S001", "r", "M0001", 10_000)
        big = {"member_id": "M0001", "lines": [{"sku": "TV", "category": "grain",
                                                "unit_price_cents": 600_000, "quantity": 1}]}
        server.ledger.settle("S001", "big", big)
        (alert,), _ = server.ledger.alerts.list_alerts()
        server.real_alert = alert["id"]  # type: ignore[attr-defined]
        yield server


#: Examples per run (the default keeps the suite quick; the long run sets more).
EXAMPLES = int(os.environ.get("SETTLEMENT_HOSTILE_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=requests())
def test_generated_requests_get_documented_codes_only(api: Api, call: tuple[str, object]):
    name, request = call
    if getattr(request, "alert_id", None) == "REAL":
        request.alert_id = api.real_alert  # type: ignore[attr-defined]
    group, _, rpc = name.rpartition(".")
    with api.client("risk" if group == "risk" else "pos", attempts=1) as pos:
        stub = {"member": pos.members, "risk": pos.risk}.get(group, pos.settlements)
        method = getattr(stub, rpc)
        try:
            answer = method(request, timeout=10 if rpc != "WatchAlerts" else 0.3,
                            metadata=pos.metadata)
            if rpc == "WatchAlerts":  # a stream: read until its deadline ends it
                for _ in answer:
                    pass
        except grpc.RpcError as exc:
            if rpc == "WatchAlerts" and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return  # the stream ran until the client's deadline: accepted

            assert exc.code() in ALLOWED, (name, request, exc.code(), exc.details())
        assert pos.ping() == pb.PingResponse()  # still serving
