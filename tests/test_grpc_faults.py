"""The server at the edges: the database going away and coming back, oversized
requests, TLS and mutual TLS."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from settlement.ledger.db import create_ledger_engine
from settlement.ledger.migrate import upgrade
from settlement.ledger.terminals import add_terminal
from settlement.ledger.verify import verify
from settlement.v1 import settlement_pb2 as pb
from settlement_pos import PosClient
from settlement_server.app import start
from settlement_server.config import ServerConfig
from settlement_server.service import Core

from .grpc_helpers import NOW, api_server
from .pgcluster import PostgresCluster, require_postgres_or_skip

BASKET = {"lines": [{"sku": "A", "category": "grain", "unit_price_cents": 1000,
                     "quantity": 1}]}


def test_database_down_gives_unavailable_then_recovers_by_itself(
        tmp_path: Path, examples_dir: Path) -> None:
    """PostgreSQL stopped with -m immediate mid-service: calls get UNAVAILABLE (never a
    wrong answer, never INTERNAL); once it is back the server serves again without a
    restart, and nothing acknowledged is lost."""
    require_postgres_or_skip()
    cluster = PostgresCluster()
    cluster.start()
    try:
        cluster.create_database("ledger")
        url = cluster.url(dbname="ledger")
        with api_server(url, examples_dir, tmp_path) as api:
            api.ledger.enroll("S001", "e", member_id="M0001")
            api.ledger.recharge("S001", "r", "M0001", 10_000)
            member_basket = {**BASKET, "member_id": "M0001", "pay_stored_value_cents": 1000}
            with api.client(attempts=1) as pos:
                first = pos.settle(member_basket, key="before")
                cluster.stop_server("immediate")
                for call in (lambda: pos.settle(member_basket, key="during"),
                             lambda: pos.get_member(member_id="M0001"),
                             lambda: pos.quote(member_basket)):
                    with pytest.raises(grpc.RpcError) as down:
                        call()
                    assert down.value.code() == grpc.StatusCode.UNAVAILABLE, down.value
                cluster.start_server()
                began = time.monotonic()
                while True:
                    try:
                        again = pos.settle(member_basket, key="during")
                        break
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE
                        assert time.monotonic() - began < 5, "no recovery within 5 s"
                        time.sleep(0.1)
                assert pos.get_settlement(first.settlement_id).status == "settled"
                assert again.receipt.stored_value_cents == 1000
            assert api.ledger.get_member(member_id="M0001")["sv_principal_cents"] == 8000
            with api.ledger.engine.connect() as conn:
                assert verify(conn) is None
    finally:
        cluster.stop()


def test_oversized_requests_are_refused_and_the_server_stays_up(
        tmp_path: Path, examples_dir: Path) -> None:
    with api_server(f"sqlite:///{tmp_path}/l.db", examples_dir, tmp_path) as api:
        with api.client(attempts=1) as pos:
            huge = {"lines": [{"sku": "X" * 100, "category": "grain", "unit_price_cents": 1,
                               "quantity": 1}] * 12_000}  # ~1.4 MB: over the 1 MiB limit
            with pytest.raises(grpc.RpcError) as refused:
                pos.quote(huge)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert pos.quote(BASKET).payable_cents == 1000


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
                 "-out", f"{name}.pem", cwd=d)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mutual_tls(tmp_path: Path, examples_dir: Path, mutual: bool) -> None:
    _certificates(tmp_path)
    url = f"sqlite:///{tmp_path}/l.db"
    engine = create_ledger_engine(url)
    upgrade(engine)
    token = add_terminal(engine, "T", "S001", "pos")
    core = Core(engine, examples_dir / "rulebook.toml", auth_ttl=0.0, clock=lambda: NOW,
                max_clock_skew_us=None)
    config = ServerConfig(listen="127.0.0.1:0", database_url=url,
                          tls_cert=str(tmp_path / "server.pem"),
                          tls_key=str(tmp_path / "server.key"),
                          tls_client_ca=str(tmp_path / "ca.pem") if mutual else "")
    running = start(config.check(), core)
    target = f"127.0.0.1:{running.port}"
    ca = (tmp_path / "ca.pem").read_bytes()
    try:
        key, chain = (tmp_path / "client.key").read_bytes(), (tmp_path / "client.pem").read_bytes()
        with PosClient(target, token, root_certificates=ca, client_key=key,
                       client_chain=chain) as pos:
            assert pos.quote(BASKET).payable_cents == 1000
        with PosClient(target, token, root_certificates=ca, attempts=1, timeout=3) as pos:
            if mutual:  # no client certificate: the handshake fails
                with pytest.raises(grpc.RpcError) as refused:
                    pos.ping()
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert pos.ping() == pb.PingResponse()
        with PosClient(target, token, attempts=1, timeout=3) as plain:  # no TLS at all
            with pytest.raises(grpc.RpcError) as refused:
                plain.ping()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0).wait()
        engine.dispose()
