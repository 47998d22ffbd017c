"""The servicers: each RPC authenticates, maps the proto request to the
domain (:class:`settlement.ledger.Ledger`), and maps the answer or the
refusal back. No business rule lives here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import code_pb2
from grpc_status import rpc_status
from sqlalchemy import Engine

import settlement
from settlement.errors import RequestError
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import Terminal
from settlement.v1 import settlement_pb2 as pb
from settlement.v1 import settlement_pb2_grpc as pb_grpc

from . import convert
from .auth import ADMIN, ANY, POS, Authenticator
from .errors import Forbidden, refusal, status_for
from .feed import AlertFeed

_R = TypeVar("_R")


class Core:
    """What every servicer shares. A rulebook reload builds a new :class:`Ledger` and swaps
    the reference: a call in flight keeps the ledger (and rulebook) it started with, so no
    call ever prices with half of one rulebook and half of another."""

    def __init__(self, engine: Engine, rulebook_path: str | Path, auth_ttl: float = 5.0,
                 **ledger_options: Any) -> None:
        self.engine = engine
        self.rulebook_path = Path(rulebook_path)
        self._reload_lock = threading.Lock()
        # ledger_options: Ledger's clock and max_clock_skew_us (tests pin the clock)
        self.ledger = Ledger(engine, settlement.load_rulebook(self.rulebook_path),
                             **ledger_options)
        self.auth = Authenticator(engine, auth_ttl)
        self.feed = AlertFeed(engine)

    def reload(self) -> str:
        """Load the rulebook file again; returns its version. A broken file raises
        ``RulebookError`` and the current rulebook stays."""
        with self._reload_lock:
            rulebook = settlement.load_rulebook(self.rulebook_path)
            self.ledger = Ledger(self.engine, rulebook, clock=self.ledger.clock,
                                 max_clock_skew_us=self.ledger.max_clock_skew_us)
            return rulebook.version


@dataclass(frozen=True)
class Rpc:
    """How to run one servicer method: who may call it, the proto path of its domain
    request (error field names), and whether it may run on the event loop of the aio
    server (``inline(request)`` true: the method itself reads no database; the token check
    may, once per ``auth_cache_seconds`` per token)."""

    roles: frozenset[str]
    prefix: str = ""
    inline: Callable[[Any], bool] | None = None


def rpc(roles: frozenset[str], prefix: str = "",
        inline: Callable[[Any], bool] | None = None) -> Callable[..., Any]:
    """Mark a servicer method ``(self, request, ledger, terminal)`` with its :class:`Rpc`
    and give it the sync server's signature ``(self, request, context)``: authenticate,
    honour the deadline, run, and map any refusal to its status."""

    def wrap(method: Callable[..., _R]) -> Callable[..., _R]:
        spec = Rpc(roles, prefix, inline)

        @functools.wraps(method)
        def handler(self: Any, request: Any, context: grpc.ServicerContext) -> _R:
            try:
                return self.run(spec, method, request, context.invocation_metadata(),
                                context.time_remaining())
            except Exception as exc:  # noqa: BLE001 - every refusal is mapped
                problem = exc
            context.abort_with_status(rpc_status.to_status(status_for(problem, prefix)))
            raise AssertionError("abort_with_status returned")  # pragma: no cover

        handler.rpc = spec  # type: ignore[attr-defined]
        handler.body = method  # type: ignore[attr-defined]
        return handler

    return wrap


class _Servicer:
    core: Core

    def run(self, spec: Rpc, method: Callable[..., _R], request: Any, metadata: Any,
            remaining: float | None) -> _R:
        """Authenticate and call ``method``; raises what the call is refused with."""
        terminal = self.core.auth.check(metadata, spec.roles)
        if remaining is not None and remaining <= 0:
            raise refusal(code_pb2.DEADLINE_EXCEEDED, "deadline exceeded before start")
        return method(self, request, self.core.ledger, terminal)


def _key(request: Any) -> str:
    return request.idempotency_key  # type: ignore[no-any-return]


def _page_token(after: str | None) -> str:
    return base64.urlsafe_b64encode(after.encode()).decode() if after else ""


def _after(token: str) -> str | None:
    if not token:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise RequestError("page_token", "is not a token this server returned") from None


class SettlementServicer(_Servicer, pb_grpc.SettlementServiceServicer):
    """Quote, Settle, Refund, Void, GetSettlement, Ping."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @rpc(POS, prefix="basket", inline=lambda r: r.basket.WhichOneof("member") is None)
    def Quote(self, request: pb.QuoteRequest, ledger: Ledger, t: Terminal) -> pb.QuoteResponse:
        return pb.QuoteResponse(receipt=convert.receipt(
            ledger.quote(t.store, convert.basket(request.basket), terminal=t.id)))

    @rpc(POS, prefix="basket")
    def Settle(self, request: pb.SettleRequest, ledger: Ledger,
               t: Terminal) -> pb.SettleResponse:
        payload = convert.basket(request.basket)
        if request.HasField("expected_payable_cents"):
            payload["expected_payable_cents"] = request.expected_payable_cents
        return convert.settle_response(ledger.settle(t.store, _key(request), payload,
                                                     terminal=t.id))

    def _own_settlement(self, ledger: Ledger, t: Terminal, settlement_id: str) -> None:
        """Refunds and voids happen at the store that sold (a terminal acts for its store)."""
        if ledger.get_settlement(settlement_id)["store"] != t.store:
            raise Forbidden(f"settlement {settlement_id!r} belongs to another store")

    @rpc(POS)
    def Refund(self, request: pb.RefundRequest, ledger: Ledger,
               t: Terminal) -> pb.RefundResponse:
        if request.all_remaining and request.lines:
            raise RequestError("lines", "give either lines or all_remaining, not both")
        if not request.all_remaining and not request.lines:
            raise RequestError("lines", "give the units to refund, or all_remaining = true")
        self._own_settlement(ledger, t, request.settlement_id)
        lines: list[Mapping[str, int]] | None = None if request.all_remaining else [
            {"line_no": x.line_no, "quantity": x.quantity} for x in request.lines]
        return convert.refund_response(ledger.refund(t.store, _key(request),
                                                     request.settlement_id, lines))

    @rpc(POS)
    def Void(self, request: pb.VoidRequest, ledger: Ledger, t: Terminal) -> pb.RefundResponse:
        self._own_settlement(ledger, t, request.settlement_id)
        return convert.refund_response(ledger.void(t.store, _key(request),
                                                   request.settlement_id))

    @rpc(ANY)
    def GetSettlement(self, request: pb.GetSettlementRequest, ledger: Ledger,
                      t: Terminal) -> pb.Settlement:
        found = ledger.get_settlement(request.settlement_id)
        if t.role == "pos" and found["store"] != t.store:
            raise Forbidden(f"settlement {request.settlement_id!r} belongs to another store")
        return convert.settlement(found)

    @rpc(ANY, inline=lambda r: True)
    def Ping(self, request: pb.PingRequest, ledger: Ledger, t: Terminal) -> pb.PingResponse:
        return pb.PingResponse()


class MemberServicer(_Servicer, pb_grpc.MemberServiceServicer):
    """Members, stored value, coupons, cards, count cards."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @rpc(POS)
    def Enroll(self, request: pb.EnrollRequest, ledger: Ledger,
               t: Terminal) -> pb.EnrollResponse:
        card_type = convert.CARD_TYPES.get(request.card_type)
        if card_type is None:
            raise RequestError("card_type", f"unknown card type {request.card_type}")
        done = ledger.enroll(
            t.store, _key(request), phone=request.phone or None,
            member_id=request.member_id or None, card_no=request.card_no or None,
            tier=request.tier or None, card_type=card_type, birthday=request.birthday or None,
            referrer_id=request.referrer_id or None,
            paid_from_us=convert.optional_micros(request, "paid_from", "paid_from"),
            paid_until_us=convert.optional_micros(request, "paid_until", "paid_until"))
        return pb.EnrollResponse(member_id=done["member_id"], card_no=done["card_no"])

    @rpc(ANY)
    def GetMember(self, request: pb.GetMemberRequest, ledger: Ledger, t: Terminal) -> pb.Member:
        by = request.WhichOneof("by")
        if by is None:
            raise RequestError("by", "give member_id, phone or card_no")
        m = ledger.get_member(**{by: getattr(request, by)})
        return convert.member(m, len(m["coupons"]))

    @rpc(POS)
    def Recharge(self, request: pb.RechargeRequest, ledger: Ledger,
                 t: Terminal) -> pb.RechargeResponse:
        return pb.RechargeResponse(**ledger.recharge(t.store, _key(request), request.member_id,
                                                     request.amount_cents))

    @rpc(POS)
    def ReverseRecharge(self, request: pb.ReverseRechargeRequest, ledger: Ledger,
                        t: Terminal) -> pb.ReverseRechargeResponse:
        return pb.ReverseRechargeResponse(**ledger.reverse_recharge(
            t.store, _key(request), request.recharge_id))

    @rpc(ADMIN)
    def IssueCoupon(self, request: pb.IssueCouponRequest, ledger: Ledger,
                    t: Terminal) -> pb.IssueCouponResponse:
        return pb.IssueCouponResponse(**ledger.issue_coupon(
            t.store, _key(request), request.member_id, request.template,
            coupon_id=request.coupon_id or None,
            valid_from_us=convert.optional_micros(request, "valid_from", "valid_from"),
            valid_until_us=convert.optional_micros(request, "valid_until", "valid_until")))

    @rpc(ANY)
    def ListCoupons(self, request: pb.ListCouponsRequest, ledger: Ledger,
                    t: Terminal) -> pb.ListCouponsResponse:
        page, last = ledger.list_coupons(request.member_id, request.page_size or 50,
                                         _after(request.page_token))
        return pb.ListCouponsResponse(coupons=[convert.coupon(c) for c in page],
                                      next_page_token=_page_token(last))

    @rpc(POS)
    def ReportCardLost(self, request: pb.ReportCardLostRequest, ledger: Ledger,
                       t: Terminal) -> pb.CardResponse:
        done = ledger.report_lost(t.store, _key(request), request.card_no)
        return pb.CardResponse(card_no=done["card_no"], status=done["status"])

    @rpc(POS)
    def ReplaceCard(self, request: pb.ReplaceCardRequest, ledger: Ledger,
                    t: Terminal) -> pb.CardResponse:
        done = ledger.replace_card(t.store, _key(request), request.card_no,
                                   request.new_card_no or None)
        return pb.CardResponse(card_no=done["card_no"], member_id=done["member_id"],
                               status="active", replaces=done["replaces"])

    @rpc(ADMIN)
    def IssueCountCard(self, request: pb.IssueCountCardRequest, ledger: Ledger,
                       t: Terminal) -> pb.CountCardResponse:
        done = ledger.issue_count_card(
            t.store, _key(request), request.member_id, request.card_id, list(request.skus),
            request.uses,
            valid_until_us=convert.optional_micros(request, "valid_until", "valid_until"))
        return pb.CountCardResponse(count_card_id=done["count_card_id"], uses=done["uses"],
                                    uses_left=done["uses"])

    @rpc(POS)
    def ConsumeCountCard(self, request: pb.ConsumeCountCardRequest, ledger: Ledger,
                         t: Terminal) -> pb.CountCardResponse:
        return pb.CountCardResponse(**ledger.consume_count_card(
            t.store, _key(request), request.member_id, request.card_id, request.sku,
            request.uses or 1))


def aio_servicer(sync_class: type, base: type, core: Core,
                 executor: Any) -> Any:
    """The same servicer for the ``grpc.aio`` server: each method authenticates and runs its
    body in ``executor`` (the ledger blocks on the database), or on the event loop when its
    :class:`Rpc` says the request needs no database."""
    import asyncio

    def make(name: str, handler: Any) -> Any:
        spec, body = handler.rpc, handler.body

        async def method(self: Any, request: Any, context: Any) -> Any:
            remaining = context.time_remaining()
            metadata = context.invocation_metadata()
            try:
                if spec.inline is not None and spec.inline(request):
                    return self.sync.run(spec, body, request, metadata, remaining)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(executor, self.sync.run, spec, body,
                                                  request, metadata, remaining)
            except Exception as exc:  # noqa: BLE001 - every refusal is mapped
                problem = exc
            await context.abort_with_status(rpc_status.to_status(
                status_for(problem, spec.prefix)))

        method.__name__ = name
        return method

    methods = {name: make(name, value) for name, value in vars(sync_class).items()
               if hasattr(value, "rpc")}
    cls = type(f"Aio{sync_class.__name__}", (base,), methods)
    servicer = cls()
    servicer.sync = sync_class(core)
    return servicer
