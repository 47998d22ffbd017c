"""A POS terminal's client: typed calls with deadlines, and retries that are
safe because every mutating call carries one idempotency key for all its
attempts.

    from settlement_pos import PosClient

    with PosClient("127.0.0.1:50051", token) as pos:
        quote = pos.quote({"member_id": "M0001", "lines": [...]})
        done = pos.settle({...}, expected_payable_cents=quote.payable_cents)

``UNAVAILABLE`` (server restarting, database down) and ``DEADLINE_EXCEEDED``
are retried with backoff, with the same request and so the same key: a
settlement whose reply was lost is answered from its key, never charged
twice. Every other status is raised at once as :class:`grpc.RpcError`;
:func:`error_details` decodes the machine-readable details.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from settlement.v1 import settlement_pb2 as pb
from settlement.v1 import settlement_pb2_grpc as pb_grpc

_T = TypeVar("_T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def timestamp(iso: str) -> Timestamp:
    """An ISO 8601 instant with its offset (``2026-11-22T10:30:00+08:00``) as a Timestamp."""
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        raise ValueError(f"{iso!r} has no UTC offset")
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def basket(spec: Mapping[str, Any]) -> pb.Basket:
    """A basket from the pricing contract's request shape (``member_id`` or ``card_no``,
    ``lines``, ``coupon_ids`` / ``auto_coupons``, ``redeem_points``,
    ``pay_stored_value_cents``, ``at``)."""
    b = pb.Basket(
        lines=[pb.Line(sku=x["sku"], category=x["category"],
                       unit_price_cents=x["unit_price_cents"], quantity=x["quantity"],
                       count_card_id=x.get("count_card_id") or "") for x in spec["lines"]],
        coupon_ids=list(spec.get("coupon_ids") or ()),
        auto_coupons=bool(spec.get("auto_coupons")),
        redeem_points=int(spec.get("redeem_points") or 0),
        pay_stored_value_cents=int(spec.get("pay_stored_value_cents") or 0))
    if spec.get("member_id"):
        b.member_id = spec["member_id"]
    elif spec.get("card_no"):
        b.card_no = spec["card_no"]
    if spec.get("at"):
        b.at.CopyFrom(timestamp(spec["at"]))
    return b


def error_details(error: grpc.RpcError) -> list[Message]:
    """The ``google.rpc`` details of a refused call (BadRequest, ErrorInfo, and for a changed
    price the new SettleResponse)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    out: list[Message] = []
    for any_detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo,
                     pb.SettleResponse):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                out.append(message)
    return out


class PosClient:
    """One terminal's connection to the settlement core."""

    def __init__(self, target: str, token: str, *, timeout: float = 5.0, attempts: int = 4,
                 backoff: float = 0.2, root_certificates: bytes | None = None,
                 client_key: bytes | None = None, client_chain: bytes | None = None) -> None:
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, client_key,
                                                       client_chain)
            self.channel = grpc.secure_channel(target, credentials)
        else:
            self.channel = grpc.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout, self.attempts, self.backoff = timeout, attempts, backoff
        self.settlements = pb_grpc.SettlementServiceStub(self.channel)
        self.members = pb_grpc.MemberServiceStub(self.channel)
        self.risk = pb_grpc.RiskServiceStub(self.channel)

    def __enter__(self) -> PosClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: Callable[..., _T], request: Message) -> _T:
        """``method(request)`` with the deadline and metadata; UNAVAILABLE and
        DEADLINE_EXCEEDED are retried (the same request, so the same idempotency key)."""
        delay = self.backoff
        for attempt in range(self.attempts):
            try:
                # A retry waits for the channel to reconnect (within the deadline) instead
                # of failing fast while the connection is being re-established.
                return method(request, timeout=self.timeout, metadata=self.metadata,
                              wait_for_ready=attempt > 0)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.attempts - 1:  # type: ignore[attr-defined]
                    raise
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    # -- checkout

    def quote(self, spec: Mapping[str, Any]) -> pb.Receipt:
        """Price a basket (nothing is written)."""
        return self.call(self.settlements.Quote, pb.QuoteRequest(basket=basket(spec))).receipt

    def settle(self, spec: Mapping[str, Any], *, key: str | None = None,
               expected_payable_cents: int | None = None) -> pb.SettleResponse:
        """Settle a basket once; ``key`` defaults to a new UUID (kept for the retries)."""
        request = pb.SettleRequest(idempotency_key=key or uuid.uuid4().hex, basket=basket(spec))
        if expected_payable_cents is not None:
            request.expected_payable_cents = expected_payable_cents
        return self.call(self.settlements.Settle, request)

    def refund(self, settlement_id: str, lines: list[tuple[int, int]] | None = None, *,
               key: str | None = None) -> pb.RefundResponse:
        """Refund ``(line_no, quantity)`` pairs, or everything left when ``lines`` is None."""
        request = pb.RefundRequest(idempotency_key=key or uuid.uuid4().hex,
                                   settlement_id=settlement_id,
                                   all_remaining=lines is None,
                                   lines=[pb.RefundLine(line_no=n, quantity=q)
                                          for n, q in lines or ()])
        return self.call(self.settlements.Refund, request)

    def void(self, settlement_id: str, *, key: str | None = None) -> pb.RefundResponse:
        return self.call(self.settlements.Void, pb.VoidRequest(
            idempotency_key=key or uuid.uuid4().hex, settlement_id=settlement_id))

    def get_settlement(self, settlement_id: str) -> pb.Settlement:
        return self.call(self.settlements.GetSettlement,
                         pb.GetSettlementRequest(settlement_id=settlement_id))

    def ping(self) -> pb.PingResponse:
        return self.call(self.settlements.Ping, pb.PingRequest())

    # -- members

    def get_member(self, *, member_id: str = "", phone: str = "",
                   card_no: str = "") -> pb.Member:
        if member_id:
            request = pb.GetMemberRequest(member_id=member_id)
        elif phone:
            request = pb.GetMemberRequest(phone=phone)
        else:
            request = pb.GetMemberRequest(card_no=card_no)
        return self.call(self.members.GetMember, request)

    def enroll(self, *, key: str | None = None, **fields: Any) -> pb.EnrollResponse:
        return self.call(self.members.Enroll, pb.EnrollRequest(
            idempotency_key=key or uuid.uuid4().hex, **fields))

    def recharge(self, member_id: str, amount_cents: int, *,
                 key: str | None = None) -> pb.RechargeResponse:
        return self.call(self.members.Recharge, pb.RechargeRequest(
            idempotency_key=key or uuid.uuid4().hex, member_id=member_id,
            amount_cents=amount_cents))

    def list_coupons(self, member_id: str, page_size: int = 50) -> list[pb.Coupon]:
        """Every available coupon of a member, page after page."""
        out: list[pb.Coupon] = []
        token = ""
        while True:
            page = self.call(self.members.ListCoupons, pb.ListCouponsRequest(
                member_id=member_id, page_size=page_size, page_token=token))
            out.extend(page.coupons)
            token = page.next_page_token
            if not token:
                return out

    # -- risk review (a terminal with the "risk" role)

    def list_alerts(self, *, states: Sequence[str] = (), page_size: int = 50,
                    page_token: str = "", **filters: str) -> pb.ListAlertsResponse:
        """One page of alerts, newest first (filters: rule, store, member_id,
        min_severity)."""
        return self.call(self.risk.ListAlerts, pb.ListAlertsRequest(
            states=list(states), page_size=page_size, page_token=page_token, **filters))

    def get_alert(self, alert_id: str) -> pb.Alert:
        """An alert with its hits and audit trail."""
        return self.call(self.risk.GetAlert, pb.GetAlertRequest(alert_id=alert_id))

    def update_alert(self, alert_id: str, action: str, **fields: str) -> pb.Alert:
        """One review step: ``acknowledge``, ``assign``, ``note`` or ``resolve`` (fields:
        assignee, note, outcome)."""
        return self.call(self.risk.UpdateAlert, pb.UpdateAlertRequest(
            alert_id=alert_id, action=action, **fields))

    def watch_alerts(self, *, min_severity: str = "", store: str = "",
                     after_event_id: int = 0) -> Any:
        """Alert events as they commit: a gRPC call to iterate for ``AlertEvent`` s, without
        a deadline (``.cancel()`` it, or close the client, to stop). Its
        ``initial_metadata()`` returns once the server has subscribed it."""
        return self.risk.WatchAlerts(
            pb.WatchAlertsRequest(min_severity=min_severity, store=store,
                                  after_event_id=after_event_id), metadata=self.metadata)

