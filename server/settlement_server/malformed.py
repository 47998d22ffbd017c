"""Requests that are not valid protobuf get INVALID_ARGUMENT, not INTERNAL.

grpcio answers a request its deserializer cannot parse (truncated bytes, a
wrong wire type, invalid UTF-8 in a string field) with ``INTERNAL``
"Exception deserializing request!", which our contract reserves for bugs.
:func:`add_guarded` registers a generated ``add_*Servicer_to_server``'s
handlers with a deserializer that keeps the failure as a value, and a
behaviour that refuses it as ``INVALID_ARGUMENT`` (``BadRequest`` on field
``request``) before the servicer sees it. Sync and aio servers alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from .errors import bad_request


class _Malformed:
    """What the guarded deserializer returns for bytes it cannot parse."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _parse(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and whatever upb raises
            return _Malformed(f"is not a valid protobuf message of this method ({exc})")

    return parse


def _status(request: _Malformed) -> Any:
    return rpc_status.to_status(bad_request("request", request.problem).status)


def _guard(handler: Any, aio: bool) -> Any:
    """``handler`` with the guarded deserializer and the refusal in front of its behaviour."""
    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    behaviour = getattr(handler, kind)
    if aio and handler.response_streaming:
        async def guarded(request: Any, context: Any) -> Any:
            if isinstance(request, _Malformed):
                await context.abort_with_status(_status(request))
                return
            async for item in behaviour(request, context):
                yield item
    elif aio:
        async def guarded(request: Any, context: Any) -> Any:  # type: ignore[misc]
            if isinstance(request, _Malformed):
                await context.abort_with_status(_status(request))
            return await behaviour(request, context)
    else:
        def guarded(request: Any, context: Any) -> Any:  # type: ignore[misc]
            if isinstance(request, _Malformed):
                context.abort_with_status(_status(request))
            return behaviour(request, context)
    return handler._replace(request_deserializer=_parse(handler.request_deserializer),
                            **{kind: guarded})


class _Capture:
    """Stands in for the server in a generated ``add_*Servicer_to_server``."""

    service = ""
    handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers


def add_guarded(add_to_server: Callable[[Any, Any], None], servicer: Any, server: Any,
                aio: bool = False) -> None:
    """``add_to_server(servicer, server)``, every method guarded against malformed bytes."""
    capture = _Capture()
    add_to_server(servicer, capture)
    if any(h.request_streaming for h in capture.handlers.values()):
        raise TypeError("request streaming methods are not guarded")  # none in our contract
    guarded = {name: _guard(h, aio) for name, h in capture.handlers.items()}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(capture.service, guarded),))
    server.add_registered_method_handlers(capture.service, guarded)
