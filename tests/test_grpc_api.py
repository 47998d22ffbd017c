"""The gRPC API against a real server on a loopback port, on SQLite and PostgreSQL:
every RPC, every error code, auth and roles, health and reflection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import func, select

from settlement.ledger import schema
from settlement.v1 import settlement_pb2 as pb
from settlement_pos import error_details

from .grpc_helpers import NOW, Api, api_server, spec_basket, spec_member


@pytest.fixture(params=["sync", "aio"])
def api(request: pytest.FixtureRequest, ledger_url: str, examples_dir: Path, tmp_path: Path):
    with api_server(ledger_url, examples_dir, tmp_path, request.param) as server:
        yield server


def plain(message: Message) -> dict[str, Any]:
    """A message as a plain dict, field by field from its descriptor (independent of the
    server's converters): what the spec's receipt JSON looks like."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None:
            if field.is_repeated:
                out[field.name] = [plain(v) for v in value]
            else:
                out[field.name] = plain(value)
        elif field.is_repeated:
            out[field.name] = list(value)
        else:
            out[field.name] = value
    return out


def status_of(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return excinfo.value.code()  # type: ignore[attr-defined,no-any-return]


def details_of(excinfo: pytest.ExceptionInfo[grpc.RpcError], kind: type) -> Any:
    found = [d for d in error_details(excinfo.value) if isinstance(d, kind)]
    assert found, f"no {kind.__name__} in {error_details(excinfo.value)}"
    return found[0]


def small_basket(member: str | None = "M0001", cents: int = 1000, **extra: Any) -> dict:
    basket = {"lines": [{"sku": "X-1", "category": "grain", "unit_price_cents": cents,
                         "quantity": 1}], **extra}
    if member:
        basket["member_id"] = member
    return basket


def test_the_spec_example_over_the_wire(api: Api, examples_dir: Path) -> None:
    """Quote and Settle of the spec's member example give exactly receipt-member.json."""
    spec_member(api.ledger)
    expected = json.loads((examples_dir / "receipt-member.json").read_text())
    with api.client() as pos:
        quoted = pos.quote(spec_basket(examples_dir))
        assert plain(quoted) == expected
        done = pos.settle(spec_basket(examples_dir), key="sale-1",
                          expected_payable_cents=quoted.payable_cents)
        assert plain(done.receipt) == expected and done.settlement_id.startswith("S")
        again = pos.settle(spec_basket(examples_dir), key="sale-1",
                           expected_payable_cents=quoted.payable_cents)
        assert again == done  # a retry answers from the key
        got = pos.get_settlement(done.settlement_id)
        assert (got.store, got.terminal, got.member_id, got.status) == (
            "S001", "T-POS", "M0001", "settled")
        assert plain(got.receipt) == expected
        assert got.at.seconds * 1_000_000 == NOW
        member = pos.get_member(card_no="K0001")
    assert member.points_balance == 1234 - 1000 + 236
    assert member.sv_principal_cents == 2000 and member.available_coupons == 2
    assert member.count_cards[0].uses == 9


def test_every_member_rpc(api: Api) -> None:
    with api.client() as pos, api.client("admin") as admin:
        enrolled = pos.enroll(key="e1", member_id="M1", phone="139", card_no="K1",
                              card_type=pb.CARD_TYPE_TIERED)
        assert (enrolled.member_id, enrolled.card_no) == ("M1", "K1")
        assert pos.get_member(phone="139").member_id == "M1"
        assert pos.get_member(member_id="M1").card_type == pb.CARD_TYPE_TIERED
        recharge = pos.recharge("M1", 2000, key="r1")
        assert recharge.amount_cents == 2000 and recharge.recharge_id
        for i in range(5):
            admin.call(admin.members.IssueCoupon, pb.IssueCouponRequest(
                idempotency_key=f"c{i}", member_id="M1", template="VOUCHER5",
                coupon_id=f"CP-{i}"))
        coupons = pos.list_coupons("M1", page_size=2)  # three pages
        assert [c.id for c in coupons] == [f"CP-{i}" for i in range(5)]
        first = pos.call(pos.members.ListCoupons, pb.ListCouponsRequest(member_id="M1",
                                                                        page_size=2))
        assert len(first.coupons) == 2 and first.next_page_token
        reversed_ = pos.call(pos.members.ReverseRecharge, pb.ReverseRechargeRequest(
            idempotency_key="rr1", recharge_id=recharge.recharge_id))
        assert reversed_.reversed
        card = admin.call(admin.members.IssueCountCard, pb.IssueCountCardRequest(
            idempotency_key="cc1", member_id="M1", card_id="CC-1", skus=["CUT"], uses=3))
        assert card.uses_left == 3
        used = pos.call(pos.members.ConsumeCountCard, pb.ConsumeCountCardRequest(
            idempotency_key="u1", member_id="M1", card_id="CC-1", sku="CUT"))
        assert (used.uses, used.uses_left) == (1, 2)
        lost = pos.call(pos.members.ReportCardLost, pb.ReportCardLostRequest(
            idempotency_key="l1", card_no="K1"))
        assert lost.status == "lost"
        with pytest.raises(grpc.RpcError) as refused:
            pos.quote({**small_basket(None), "card_no": "K1"})
        assert status_of(refused) == grpc.StatusCode.FAILED_PRECONDITION
        new = pos.call(pos.members.ReplaceCard, pb.ReplaceCardRequest(
            idempotency_key="n1", card_no="K1", new_card_no="K2"))
        assert (new.card_no, new.member_id, new.replaces) == ("K2", "M1", "K1")
        assert pos.get_member(card_no="K2").member_id == "M1"
        assert pos.ping() == pb.PingResponse()


def test_refund_void_and_stores(api: Api) -> None:
    api.ledger.enroll("S001", "e", member_id="M0001")
    api.ledger.recharge("S001", "r", "M0001", 10_000)
    with api.client() as pos, api.client("pos2") as other:
        basket = {"member_id": "M0001", "pay_stored_value_cents": 3000, "lines": [
            {"sku": "A", "category": "grain", "unit_price_cents": 1000, "quantity": 3}]}
        sold = pos.settle(basket, key="s1")
        part = pos.refund(sold.settlement_id, [(0, 1)], key="f1")
        assert part.lines[0].quantity == 1 and part.stored_value_cents == part.net_cents
        assert pos.refund(sold.settlement_id, [(0, 1)], key="f1") == part
        with pytest.raises(grpc.RpcError) as foreign:
            other.refund(sold.settlement_id, None, key="f2")
        assert status_of(foreign) == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as foreign_read:
            other.get_settlement(sold.settlement_id)
        assert status_of(foreign_read) == grpc.StatusCode.PERMISSION_DENIED
        rest = pos.refund(sold.settlement_id, None, key="f3")
        assert rest.lines[0].quantity == 2
        assert pos.get_settlement(sold.settlement_id).refunded[0].quantity == 3
        second = pos.settle(basket, key="s2")
        voided = pos.void(second.settlement_id, key="v1")
        assert voided.voided and pos.get_settlement(second.settlement_id).status == "voided"
        with pytest.raises(grpc.RpcError) as again:
            pos.void(second.settlement_id, key="v2")
        assert status_of(again) == grpc.StatusCode.FAILED_PRECONDITION
    assert api.ledger.get_member(member_id="M0001")["sv_principal_cents"] == 10_000


def test_bad_input_names_the_field(api: Api) -> None:
    """INVALID_ARGUMENT with a BadRequest field violation, never INTERNAL."""
    with api.client() as pos:
        cases: list[tuple[Any, Any, str]] = [
            (pos.settlements.Quote, pb.QuoteRequest(basket=pb.Basket(lines=[pb.Line(
                sku="A", category="grain", unit_price_cents=100, quantity=0)])),
             "basket.lines[0].quantity"),
            (pos.settlements.Quote, pb.QuoteRequest(basket=pb.Basket()), "basket.lines"),
            (pos.settlements.Quote, pb.QuoteRequest(basket=pb.Basket(
                lines=[pb.Line(sku="A", category="grain", unit_price_cents=-5, quantity=1)])),
             "basket.lines[0].unit_price_cents"),
            (pos.settlements.Settle, pb.SettleRequest(basket=pb.Basket(lines=[pb.Line(
                sku="A", category="grain", unit_price_cents=100, quantity=1)])),
             "idempotency_key"),
            (pos.settlements.Refund, pb.RefundRequest(idempotency_key="k",
                                                      settlement_id="S-1"), "lines"),
            (pos.members.GetMember, pb.GetMemberRequest(), "by"),
            (pos.members.Recharge, pb.RechargeRequest(idempotency_key="k", member_id="M",
                                                      amount_cents=-1), "amount_cents"),
            (pos.members.Enroll, pb.EnrollRequest(idempotency_key="k", card_type=99),
             "card_type"),
            (pos.members.ListCoupons, pb.ListCouponsRequest(member_id="M", page_size=501),
             "page_size"),
            (pos.members.ListCoupons, pb.ListCouponsRequest(member_id="M", page_token="%%"),
             "page_token"),
        ]
        at = pb.Basket(lines=[pb.Line(sku="A", category="grain", unit_price_cents=1,
                                      quantity=1)])
        at.at.seconds = 10**12
        cases.append((pos.settlements.Quote, pb.QuoteRequest(basket=at), "basket.at"))
        for method, request, field in cases:
            with pytest.raises(grpc.RpcError) as refused:
                method(request, timeout=5, metadata=pos.metadata)
            assert status_of(refused) == grpc.StatusCode.INVALID_ARGUMENT, (field, refused)
            violation = details_of(refused, error_details_pb2.BadRequest).field_violations[0]
            assert violation.field == field, (violation, field)
            assert violation.description


def test_refusals_have_their_codes(api: Api) -> None:
    api.ledger.enroll("S001", "e", member_id="M0001")
    api.ledger.recharge("S001", "r", "M0001", 400)
    with api.client() as pos:
        with pytest.raises(grpc.RpcError) as missing:
            pos.get_member(member_id="nobody")
        assert status_of(missing) == grpc.StatusCode.NOT_FOUND
        pos.settle(small_basket(), key="same")
        with pytest.raises(grpc.RpcError) as reused:
            pos.settle(small_basket(cents=2000), key="same")
        assert status_of(reused) == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.RpcError) as changed:
            pos.settle(small_basket(), key="p1", expected_payable_cents=1)
        assert status_of(changed) == grpc.StatusCode.FAILED_PRECONDITION
        assert details_of(changed, error_details_pb2.ErrorInfo).reason == "PRICE_CHANGED"
        assert details_of(changed, pb.SettleResponse).receipt.payable_cents == 1000
        with pytest.raises(grpc.RpcError) as short:
            pos.settle(small_basket(pay_stored_value_cents=1000), key="p2")
        assert status_of(short) == grpc.StatusCode.FAILED_PRECONDITION
        info = details_of(short, error_details_pb2.ErrorInfo)
        assert info.reason == "INSUFFICIENT_BALANCE" and info.metadata["short_by"] == "600"
        with pytest.raises(grpc.RpcError) as late:
            pos.settlements.Ping(pb.PingRequest(), timeout=-1, metadata=pos.metadata)
        assert status_of(late) == grpc.StatusCode.DEADLINE_EXCEEDED
    with api.client(timeout=5) as pos:  # nothing above wrote a second settlement
        with api.ledger.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(
                schema.settlements)).scalar() == 1


def test_auth_and_roles(api: Api) -> None:
    import settlement_pos

    anonymous = settlement_pos.PosClient(api.target, "x")
    anonymous.metadata = ()
    calls = [
        (None, "Ping", grpc.StatusCode.UNAUTHENTICATED),
        ("not-a-token", "Ping", grpc.StatusCode.UNAUTHENTICATED),
        ("T-POS.wrong-secret", "Ping", grpc.StatusCode.UNAUTHENTICATED),
        (api.tokens["revoked"], "Ping", grpc.StatusCode.UNAUTHENTICATED),
        (api.tokens["risk"], "Settle", grpc.StatusCode.PERMISSION_DENIED),
        (api.tokens["risk"], "Quote", grpc.StatusCode.PERMISSION_DENIED),
    ]
    requests = {"Ping": pb.PingRequest(), "Settle": pb.SettleRequest(idempotency_key="k"),
                "Quote": pb.QuoteRequest()}
    for token, method, code in calls:
        metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        with pytest.raises(grpc.RpcError) as refused:
            getattr(anonymous.settlements, method)(requests[method], timeout=5,
                                                   metadata=metadata)
        assert status_of(refused) == code, (token, method)
    anonymous.close()
    with api.client() as pos, pytest.raises(grpc.RpcError) as not_admin:
        pos.call(pos.members.IssueCoupon, pb.IssueCouponRequest(
            idempotency_key="k", member_id="M", template="VOUCHER5"))
    assert status_of(not_admin) == grpc.StatusCode.PERMISSION_DENIED
    with api.client("risk") as risk:
        assert risk.ping() == pb.PingResponse()  # risk may read


def test_health_and_reflection_are_open(api: Api) -> None:
    with grpc.insecure_channel(api.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "settlement.v1.SettlementService", "settlement.v1.MemberService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in replies[0].list_services_response.service}
    assert {"settlement.v1.SettlementService", "settlement.v1.MemberService",
            "grpc.health.v1.Health"} <= names


def _string_field_1(method: Any) -> bool:
    field = method.input_type.fields_by_number.get(1)
    return field is not None and field.type == field.TYPE_STRING


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x12\x05abc", b"\x0a\x02\xc3\x28"],
                         ids=["garbage", "truncated", "invalid-utf8"])
def test_bytes_that_are_no_message_are_invalid_argument(api: Api, payload: bytes) -> None:
    """Every method of every service (invalid UTF-8: those whose field 1 is a string):
    grpcio alone answers INTERNAL ("Exception deserializing request!"); ours is
    INVALID_ARGUMENT naming the request."""
    metadata = (("authorization", f"Bearer {api.tokens['admin']}"),)
    checked = 0
    with grpc.insecure_channel(api.target) as channel:
        for service in pb.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if payload.startswith(b"\x0a") and not _string_field_1(method):
                    continue  # bytes a message without a string field 1 may well accept
                path = f"/{service.full_name}/{method.name}"
                with pytest.raises(grpc.RpcError) as refused:
                    if method.server_streaming:
                        list(channel.unary_stream(path)(payload, timeout=5, metadata=metadata))
                    else:
                        channel.unary_unary(path)(payload, timeout=5, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path  # type: ignore[attr-defined]
                (bad,) = [d for d in error_details(refused.value)
                          if isinstance(d, error_details_pb2.BadRequest)]
                assert bad.field_violations[0].field == "request", path
                checked += 1
    assert checked >= 10
