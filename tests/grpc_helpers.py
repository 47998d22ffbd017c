"""A real gRPC server on a loopback port for the API tests (no mocks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from settlement.ledger.db import create_ledger_engine
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import add_terminal, revoke_terminal
from settlement.timeutil import parse_instant
from settlement_pos import PosClient
from settlement_server.app import Running, start
from settlement_server.config import ServerConfig
from settlement_server.service import Core
from tests.pgcluster import _free_port

from .test_ledger_service import spec_member  # noqa: F401 - the spec's member, as state
from .test_ledger_service import spec_settle_request as spec_basket  # noqa: F401

NOW = parse_instant("2026-11-22T10:30:00+08:00")


@dataclass
class Api:
    """A running server, its core, a rulebook file, and one token per role."""

    running: Running
    rulebook_path: Path
    tokens: dict[str, str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def ledger(self) -> Ledger:
        return self.running.core.ledger

    def client(self, who: str = "pos", **options: object) -> PosClient:
        return PosClient(self.target, self.tokens[who], **options)  # type: ignore[arg-type]


@contextmanager
def api_server(url: str, examples_dir: Path, tmp_path: Path, impl: str = "sync",
               lock_timeout_s: float = 5.0) -> Iterator[Api]:
    """Migrated database, spec rulebook (copied: tests rewrite it), terminals, server."""
    rulebook_path = tmp_path / "rulebook.toml"
    shutil.copy(examples_dir / "rulebook.toml", rulebook_path)
    engine = create_ledger_engine(url, lock_timeout_s=lock_timeout_s)
    upgrade(engine)
    tokens = {
        "pos": add_terminal(engine, "T-POS", "S001", "pos"),
        "pos2": add_terminal(engine, "T-POS-2", "S002", "pos"),
        "risk": add_terminal(engine, "T-RISK", "S001", "risk"),
        "admin": add_terminal(engine, "T-ADMIN", "S001", "admin"),
        "revoked": add_terminal(engine, "T-OLD", "S001", "pos"),
    }
    revoke_terminal(engine, "T-OLD")
    core = Core(engine, rulebook_path, auth_ttl=0.0, clock=lambda: NOW,
                max_clock_skew_us=None)
    running = start(ServerConfig(listen="127.0.0.1:0", rulebook=str(rulebook_path),
                                 database_url=url, threads=8, impl=impl), core)
    try:
        yield Api(running, rulebook_path, tokens)
    finally:
        running.stop(0).wait()
        engine.dispose()


def serving(target: str) -> bool:
    """The server at ``target`` answers its health check with SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def serve_process(url: str, rulebook: Path, workers: int = 1,
                  impl: str = "sync") -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``settlement serve`` as a process on a migrated database with a POS terminal (T1,
    store S001): yields (process, target, token) once it is SERVING; killed at the end if
    the test left it running."""
    cli = [sys.executable, "-m", "settlement"]
    subprocess.run([*cli, "migrate", "--database-url", url], check=True, timeout=120,
                   capture_output=True)
    token = subprocess.run([*cli, "terminals", "add", "T1", "--store", "S001", "--role", "pos",
                            "--database-url", url], check=True, timeout=120,
                           capture_output=True, text=True).stdout.strip()
    target = f"127.0.0.1:{_free_port()}"
    # The server's output goes to a file: a pipe nobody reads would fill and block it.
    log_path = rulebook.parent / f"serve-{target.rsplit(':', 1)[1]}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([*cli, "serve", "--listen", target, "--rulebook",
                                   str(rulebook), "--database-url", url, "--workers",
                                   str(workers), "--impl", impl],
                                  stdout=log, stderr=log, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # Ready when every worker listens (the line `serve` prints then), not merely when
        # the first of several answers health checks.
        deadline = time.monotonic() + 60
        while "settlement serve: listening" not in log_path.read_text() \
                or not serving(target):
            assert server.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "server never became SERVING"
            time.sleep(0.2)
        yield server, target, token
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
