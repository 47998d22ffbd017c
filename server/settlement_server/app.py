"""``settlement serve``: build the gRPC server, run it in one or several
processes, drain on shutdown, reload the rulebook on SIGHUP.

- Health checking (``grpc.health.v1``, open to all) reports SERVING while the
  server takes calls and NOT_SERVING once it drains; server reflection lets
  ``grpcurl`` list and describe every service.
- Several workers: N processes bind the same port (SO_REUSEPORT); the kernel
  balances *connections*, not calls, so a single client connection stays
  on one worker.
- SIGTERM/SIGINT: health goes NOT_SERVING, new calls are refused, calls in
  flight get ``grace_seconds`` to finish. SIGHUP: the rulebook file is read
  again; a broken file is logged and the current rulebook stays.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from settlement.ledger.db import create_ledger_engine
from settlement.v1 import settlement_pb2 as pb
from settlement.v1 import settlement_pb2_grpc as pb_grpc

from .config import ServerConfig
from .malformed import add_guarded
from .risk import RiskServicer, aio_risk_servicer
from .service import Core, MemberServicer, SettlementServicer

log = logging.getLogger("settlement_server")

_CONTROL_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

SERVICES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name
                 for name in ("SettlementService", "MemberService", "RiskService"))


class Running:
    """A started server: its port, its health servicer, and how to stop it."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer,
                 port: int, core: Core) -> None:
        self.server, self.health, self.port, self.core = server, health_servicer, port, core

    def stop(self, grace: float) -> threading.Event:
        """Stop taking calls (health NOT_SERVING) and let calls in flight finish."""
        self.health.enter_graceful_shutdown()
        self.core.feed.close()  # alert streams end; unary calls in flight finish
        return self.server.stop(grace)  # type: ignore[no-any-return]


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    key = Path(config.tls_key).read_bytes()
    chain = Path(config.tls_cert).read_bytes()
    if config.tls_client_ca:
        return grpc.ssl_server_credentials([(key, chain)],
                                           Path(config.tls_client_ca).read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([(key, chain)])


def _options(config: ServerConfig) -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 1 if config.workers > 1 else 0)]


def start(config: ServerConfig, core: Core | None = None) -> Running:
    """Build and start a server for ``config`` (``core``: share one, as tests do)."""
    if core is None:
        core = Core(create_ledger_engine(config.database_url, pool_size=config.threads),
                    config.rulebook, config.auth_cache_seconds)
    if config.impl == "aio":
        return _AioServer(config, core)
    server = grpc.server(ThreadPoolExecutor(config.threads, thread_name_prefix="rpc"),
                         options=_options(config))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    port = _wire(server, config, SettlementServicer(core), MemberServicer(core),
                 RiskServicer(core), health_servicer)
    server.start()
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Running(server, health_servicer, port, core)


def _wire(server: Any, config: ServerConfig, settlements: Any, members: Any, risk: Any,
          health_servicer: Any) -> int:
    """Add the services, health and reflection to a sync or aio server and bind its port."""
    aio = isinstance(server, grpc.aio.Server)
    for add, servicer in ((pb_grpc.add_SettlementServiceServicer_to_server, settlements),
                          (pb_grpc.add_MemberServiceServicer_to_server, members),
                          (pb_grpc.add_RiskServiceServicer_to_server, risk)):
        add_guarded(add, servicer, server, aio)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    credentials = _credentials(config)
    port = (server.add_secure_port(config.listen, credentials) if credentials
            else server.add_insecure_port(config.listen))
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    return int(port)


class _AioServer(Running):
    """A ``grpc.aio`` server on its own event loop thread, driven like a sync server."""

    def __init__(self, config: ServerConfig, core: Core) -> None:
        # Sets Running's attributes itself (server, health, port, core) once built.
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.executor = ThreadPoolExecutor(config.threads, thread_name_prefix="db")
        self.thread = threading.Thread(target=self.loop.run_forever, name="aio", daemon=True)
        self.thread.start()
        self.config, self.core = config, core
        self._stop_lock = threading.Lock()
        self._stopped: threading.Event | None = None
        self.port, self.health = self._call(self._build())

    def _call(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _build(self) -> tuple[int, Any]:
        from .service import aio_servicer

        config, core = self.config, self.core
        self.server = grpc.aio.server(options=_options(config))
        health_servicer = health.aio.HealthServicer()
        port = _wire(self.server, config,
                     aio_servicer(SettlementServicer, pb_grpc.SettlementServiceServicer, core,
                                  self.executor),
                     aio_servicer(MemberServicer, pb_grpc.MemberServiceServicer, core,
                                  self.executor),
                     aio_risk_servicer(core, self.executor), health_servicer)
        await self.server.start()
        for name in ("", *SERVICES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return port, health_servicer

    def stop(self, grace: float) -> threading.Event:
        """Like ``grpc.Server.stop``; stopping again returns the first stop's event."""
        with self._stop_lock:
            if self._stopped is not None:
                return self._stopped
            done = self._stopped = threading.Event()

        async def stopping() -> None:
            await self.health.enter_graceful_shutdown()
            self.core.feed.close()
            await self.server.stop(grace)

        def run() -> None:
            self._call(stopping())
            self.executor.shutdown(wait=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            done.set()

        threading.Thread(target=run, daemon=True).start()
        return done


def _serve_here(config: ServerConfig, ready: Any = None) -> None:
    """One worker: serve until SIGTERM/SIGINT; SIGHUP reloads the rulebook."""
    # Handlers first: a signal that comes while the server is starting is acted on once
    # it is up (SIGHUP's default action would end the process, and a SIGTERM that killed
    # a starting worker would leave the parent waiting for it). A worker of ``serve``
    # starts with these signals blocked (the parent's mask, kept across exec): one sent
    # before this point is pending, and arrives here when unblocked.
    _log_to_stderr()
    stopped = threading.Event()
    early: list[int] = []
    for signum in _CONTROL_SIGNALS:
        signal.signal(signum, lambda number, _frame: early.append(number))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _CONTROL_SIGNALS)
    running = start(config)
    host = config.listen.rsplit(":", 1)[0]
    log.info("worker %d (%s) listening on %s:%d (rulebook %s)", os.getpid(), config.impl,
             host, running.port, running.core.ledger.rulebook.version)
    if ready is not None:
        ready.put(running.port)
    else:
        print(f"settlement serve: listening on {host}:{running.port}, rulebook "
              f"{running.core.ledger.rulebook.version}, database "
              f"{running.core.engine.url.render_as_string(hide_password=True)}", flush=True)

    def terminate(signum: int, _frame: Any) -> None:
        log.info("worker %d: signal %d, draining (up to %.0f s)", os.getpid(), signum,
                 config.grace_seconds)
        def drain() -> None:
            running.stop(config.grace_seconds).wait()
            stopped.set()

        threading.Thread(target=drain, daemon=True).start()

    def reload(_signum: int, _frame: Any) -> None:
        try:
            version = running.core.reload()
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop the server
            log.error("rulebook reload failed, keeping %s: %s",
                      running.core.ledger.rulebook.version, exc)
            return
        log.info("worker %d: rulebook reloaded, version %s", os.getpid(), version)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    signal.signal(signal.SIGHUP, reload)
    for number in early:
        (reload if number == signal.SIGHUP else terminate)(number, None)
    while not stopped.wait(0.5):
        pass
    running.core.engine.dispose()
    log.info("worker %d stopped", os.getpid())


def _log_to_stderr() -> None:
    # A spawned worker does not inherit the parent's logging setup.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def serve(config: ServerConfig) -> int:
    """Run ``config.workers`` worker processes (or this one) until told to stop."""
    _log_to_stderr()
    if config.workers == 1:
        _serve_here(config)
        return 0
    context = multiprocessing.get_context("spawn")  # gRPC must not be forked once started
    ready = context.Queue()
    workers = [context.Process(target=_serve_here, args=(config, ready), daemon=False)
               for _ in range(config.workers)]
    told: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        told.append(signum)
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    # Forwarding from the start: a worker already serving must hear a signal that comes
    # while another one is still starting (and the parent must not die of it). The
    # workers start with the control signals blocked (they inherit the mask), so one
    # forwarded before a worker has its handlers waits for it (see _serve_here).
    for signum in _CONTROL_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL_SIGNALS)
    try:
        for worker in workers:
            worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _CONTROL_SIGNALS)
    if _all_ready(workers, ready, told, timeout=60.0):
        print(f"settlement serve: listening on {config.listen} with {config.workers} "
              f"worker processes (SO_REUSEPORT)", flush=True)
    for worker in workers:
        worker.join()
    return 0 if all(w.exitcode == 0 for w in workers) else 1


def _all_ready(workers: list[Any], ready: Any, told: list[int], timeout: float) -> bool:
    """Wait until every worker is listening; give up (stopping the others) when one dies
    first or none is ready in time. A stop signal ends the wait: the workers drain."""
    deadline = time.monotonic() + timeout
    pending = len(workers)
    while pending:
        if any(s != signal.SIGHUP for s in told):
            return False
        try:
            ready.get(timeout=0.2)
            pending -= 1
            continue
        except queue.Empty:
            pass
        if any(w.exitcode is not None for w in workers) or time.monotonic() > deadline:
            log.error("a worker exited or did not start in %.0f s; stopping the others",
                      timeout)
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, signal.SIGTERM)
            return False
    return True
