"""A locust ``User`` that talks gRPC, following locust's documentation on testing other
systems: a client interceptor fires ``environment.events.request`` for every unary call
with ``request_type="grpc"``, the method as its name, the response time in ms, the
response's size in bytes and the exception of a refused call.

Import this module before any gRPC channel exists: it makes grpcio cooperate with gevent
(``grpc.experimental.gevent.init_gevent()``), without which a blocking call would stall
every user of the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User
from locust.env import Environment
from locust.exception import LocustError

grpc_gevent.init_gevent()


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Reports each unary call to locust's statistics as a ``grpc`` request."""

    def __init__(self, environment: Environment) -> None:
        self.env = environment

    def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any],
                              client_call_details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        """Time the call; fire the request event (exception set when refused)."""
        response = None
        exception: BaseException | None = None
        length = 0
        start = time.perf_counter()
        try:
            response = continuation(client_call_details, request)
            length = response.result().ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        self.env.events.request.fire(
            request_type="grpc", name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length, response=response, context=None, exception=exception)
        return response


class GrpcUser(User):
    """Abstract: one channel to ``host`` (``127.0.0.1:50051``, no scheme) per user, through
    :class:`LocustInterceptor`. Subclasses build their stubs on ``self.channel``."""

    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("give the server's address: --host 127.0.0.1:50051")
        self._raw_channel = grpc.insecure_channel(self.host)
        self.channel = grpc.intercept_channel(self._raw_channel,
                                              LocustInterceptor(environment))

    def on_stop(self) -> None:
        """Close the channel when the user stops."""
        self._raw_channel.close()
