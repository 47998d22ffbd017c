"""RiskService: the watchdog's alerts for terminals with the ``risk`` role.

ListAlerts, GetAlert and UpdateAlert map to :class:`settlement.ledger.alerts.AlertDesk`
(the acting terminal's id goes into the audit trail). WatchAlerts streams the
events :class:`~settlement_server.feed.AlertFeed` hands over as they commit.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_status import rpc_status

from settlement.errors import RequestError
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import Terminal
from settlement.v1 import settlement_pb2 as pb
from settlement.v1 import settlement_pb2_grpc as pb_grpc
from settlement.watchdog import SEVERITIES

from . import convert
from .auth import RISK
from .errors import status_for
from .service import Core, _Servicer, rpc


def _severity(value: str, field: str = "min_severity") -> str | None:
    if value and value not in SEVERITIES:
        raise RequestError(field, f"must be one of {', '.join(SEVERITIES)} (or empty)")
    return value or None


def _matches(event: dict[str, Any], request: pb.WatchAlertsRequest) -> bool:
    a = event["alert"]
    if request.store and a["store"] != request.store:
        return False
    return not request.min_severity or (
        SEVERITIES.index(a["severity"]) >= SEVERITIES.index(request.min_severity))


class RiskServicer(_Servicer, pb_grpc.RiskServiceServicer):
    """ListAlerts, GetAlert, UpdateAlert, WatchAlerts."""

    #: how often an idle stream checks that its client and the server are still there
    heartbeat_seconds = 0.25

    def __init__(self, core: Core) -> None:
        self.core = core

    @rpc(RISK)
    def ListAlerts(self, request: pb.ListAlertsRequest, ledger: Ledger,
                   t: Terminal) -> pb.ListAlertsResponse:
        page, token = ledger.alerts.list_alerts(
            states=list(request.states), rule=request.rule or None, store=request.store or None,
            member_id=request.member_id or None, min_severity=_severity(request.min_severity),
            page_size=request.page_size or 50, page_token=request.page_token or None)
        return pb.ListAlertsResponse(alerts=[convert.alert(a) for a in page],
                                     next_page_token=token or "")

    @rpc(RISK)
    def GetAlert(self, request: pb.GetAlertRequest, ledger: Ledger, t: Terminal) -> pb.Alert:
        return convert.alert(ledger.alerts.get(request.alert_id))

    @rpc(RISK)
    def UpdateAlert(self, request: pb.UpdateAlertRequest, ledger: Ledger,
                    t: Terminal) -> pb.Alert:
        return convert.alert(ledger.alerts.update(
            request.alert_id, t.id, request.action, assignee=request.assignee or None,
            note=request.note or None, outcome=request.outcome or None))

    def events(self, request: pb.WatchAlertsRequest, metadata: Any,
               active: Callable[[], bool]) -> Iterator[pb.AlertEvent | None]:
        """Check the caller and subscribe (raises when refused), then return the stream's
        events: ``None`` every :attr:`heartbeat_seconds` without one (the caller checks its
        client then). Every event committed after this returns is in the stream."""
        self.core.auth.check(metadata, RISK)
        _severity(request.min_severity)
        q = self.core.feed.subscribe()
        return self._events(request, q, active)

    def _events(self, request: pb.WatchAlertsRequest, q: queue.Queue[dict[str, Any]],
                active: Callable[[], bool]) -> Iterator[pb.AlertEvent | None]:
        feed = self.core.feed
        try:
            sent: set[int] = set()
            after = request.after_event_id
            while after > 0:  # resume: what the console missed, then live
                missed = self.core.ledger.alerts.events_after(after)
                if not missed:
                    break
                for event in missed:
                    sent.add(event["id"])
                    if _matches(event, request):
                        yield convert.alert_event(event)
                after = missed[-1]["id"]
            while active() and not feed.closed.is_set():
                try:
                    event = q.get(timeout=self.heartbeat_seconds)
                except queue.Empty:
                    yield None
                    continue
                if event["id"] not in sent and _matches(event, request):
                    yield convert.alert_event(event)
        finally:
            feed.unsubscribe(q)

    def WatchAlerts(self, request: pb.WatchAlertsRequest,
                    context: grpc.ServicerContext) -> Iterator[pb.AlertEvent]:
        try:
            stream = self.events(request, context.invocation_metadata(), context.is_active)
        except Exception as exc:  # noqa: BLE001 - every refusal is mapped
            context.abort_with_status(rpc_status.to_status(status_for(exc)))
            return
        # The headers tell the client it is subscribed: what commits from now on comes.
        context.send_initial_metadata(())
        for event in stream:
            if event is not None:
                yield event


def aio_risk_servicer(core: Core, executor: Any) -> Any:
    """RiskService for the ``grpc.aio`` server: the unary methods like every other servicer,
    WatchAlerts as an async generator pulling the blocking stream in ``executor``."""
    import asyncio

    from .service import aio_servicer

    servicer = aio_servicer(RiskServicer, pb_grpc.RiskServiceServicer, core, executor)
    sync: RiskServicer = servicer.sync

    async def WatchAlerts(request: pb.WatchAlertsRequest, context: Any) -> Any:  # noqa: N802
        loop = asyncio.get_running_loop()
        try:
            stream = await loop.run_in_executor(executor, sync.events, request,
                                                context.invocation_metadata(),
                                                lambda: not context.done())
        except Exception as exc:  # noqa: BLE001 - every refusal is mapped
            await context.abort_with_status(rpc_status.to_status(status_for(exc)))
            return
        await context.send_initial_metadata(())
        try:
            while True:
                try:
                    event = await loop.run_in_executor(executor, next, stream, StopIteration)
                except Exception as exc:  # noqa: BLE001 - every refusal is mapped
                    await context.abort_with_status(rpc_status.to_status(status_for(exc)))
                    return
                if event is StopIteration:
                    return
                if event is not None:
                    yield event
        finally:
            # (the stream may still be inside ``next`` in the executor: close it there)
            executor.submit(_close_when_idle, stream)

    servicer.WatchAlerts = WatchAlerts
    return servicer


def _close_when_idle(stream: Iterator[Any]) -> None:
    """Close a generator another thread may be running (it returns within a heartbeat)."""
    import time

    for _ in range(100):
        try:
            stream.close()  # type: ignore[attr-defined]
            return
        except ValueError:  # "generator already executing"
            time.sleep(0.05)
