"""The server under faults and operations: a reply lost on the wire, a rulebook
reload under traffic, and ``settlement serve`` as a process (SIGHUP, SIGTERM)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from settlement.ledger import schema
from settlement_pos import PosClient

from .grpc_helpers import Api, _free_port, api_server, serve_process, serving


@pytest.fixture(params=["sync", "aio"])
def api(request: pytest.FixtureRequest, ledger_url: str, examples_dir: Path, tmp_path: Path):
    with api_server(ledger_url, examples_dir, tmp_path, request.param) as server:
        yield server


class Proxy:
    """A TCP relay between client and server that can hold the server's bytes back
    and then cut every connection: a reply lost after the server committed."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hold = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if replies and self.hold.is_set():
                    continue  # the reply is lost
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.sockets.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def settlements(api: Api) -> int:
    with api.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.settlements)).scalar())


def test_a_settle_whose_reply_was_lost_is_retried_and_applied_once(api: Api) -> None:
    api.ledger.enroll("S001", "e", member_id="M0001")
    api.ledger.recharge("S001", "r", "M0001", 10_000)
    proxy = Proxy(api.running.port)
    pos = PosClient(f"127.0.0.1:{proxy.port}", api.tokens["pos"], timeout=10, attempts=5,
                    backoff=0.1)
    try:
        pos.ping()  # the HTTP/2 connection is up before the reply is held back
        basket = {"member_id": "M0001", "pay_stored_value_cents": 2500, "lines": [
            {"sku": "A", "category": "grain", "unit_price_cents": 2500, "quantity": 1}]}
        outcome: list[object] = []
        proxy.hold.set()
        caller = threading.Thread(target=lambda: outcome.append(
            pos.settle(basket, key="lost-reply-1")))
        caller.start()
        deadline = time.monotonic() + 10
        while settlements(api) == 0:  # the server committed; its reply is being held
            assert time.monotonic() < deadline, "the settlement never committed"
            time.sleep(0.02)
        proxy.hold.clear()
        proxy.cut()  # the client sees the connection drop: UNAVAILABLE, then retries
        caller.join(15)
        assert not caller.is_alive() and len(outcome) == 1
        done = outcome[0]
        assert settlements(api) == 1  # applied once
        assert done.settlement_id == pos.get_settlement(done.settlement_id).settlement_id
        assert api.ledger.get_member(member_id="M0001")["sv_principal_cents"] == 7500
    finally:
        pos.close()
        proxy.close()


def test_rulebook_reload_under_traffic(api: Api, examples_dir: Path) -> None:
    """Quotes keep flowing while the rulebook is replaced; each answer is priced with one
    whole rulebook, the old or the new, and settlements record the version."""
    old = api.ledger.rulebook.version
    text = api.rulebook_path.read_text()
    basket = {"lines": [{"sku": "A", "category": "grain", "unit_price_cents": 1000,
                         "quantity": 1}]}
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        with api.client() as pos:
            while not stop.is_set():
                try:
                    seen.append(pos.quote(basket).rulebook_version)
                except BaseException as exc:  # noqa: BLE001 - asserted below
                    errors.append(exc)

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    api.rulebook_path.write_text(text.replace(f'version = "{old}"', 'version = "reloaded-2"'))
    assert api.running.core.reload() == "reloaded-2"
    before = len(seen)
    time.sleep(0.3)
    stop.set()
    for w in workers:
        w.join()
    assert not errors
    assert set(seen) == {old, "reloaded-2"}
    assert set(seen[before + 8:]) == {"reloaded-2"}  # (calls in flight at the swap aside)
    api.rulebook_path.write_text("version = broken")  # a broken file keeps the current one
    with pytest.raises(Exception, match="rulebook|version|TOML|toml"):
        api.running.core.reload()
    with api.client() as pos:
        done = pos.settle(basket, key="after-reload")
    assert done.receipt.rulebook_version == "reloaded-2"
    with api.ledger.engine.connect() as conn:
        assert conn.execute(select(schema.settlements.c.rulebook_version)).scalar() \
            == "reloaded-2"


@pytest.mark.parametrize(("workers", "impl"), [(1, "sync"), (2, "sync"), (1, "aio")])
def test_settlement_serve_reloads_on_sighup_and_drains_on_sigterm(
        tmp_path: Path, examples_dir: Path, workers: int, impl: str) -> None:
    rulebook = tmp_path / "rulebook.toml"
    text = (examples_dir / "rulebook.toml").read_text()
    rulebook.write_text(text)
    url = f"sqlite:///{tmp_path}/serve.db"
    with serve_process(url, rulebook, workers, impl) as (server, target, token):
        basket = {"lines": [{"sku": "A", "category": "grain", "unit_price_cents": 1000,
                             "quantity": 1}]}
        with PosClient(target, token) as pos:
            old = pos.quote(basket).rulebook_version
            rulebook.write_text(text.replace(f'version = "{old}"', 'version = "hup-2"'))
            server.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            log = tmp_path / f"serve-{target.rsplit(':', 1)[1]}.log"
            # Every worker reloads (one connection reaches one worker: its log says so).
            while log.read_text().count("rulebook reloaded, version hup-2") < workers \
                    or pos.quote(basket).rulebook_version != "hup-2":
                assert time.monotonic() < deadline, "SIGHUP did not reload the rulebook"
                time.sleep(0.1)
            settled = pos.settle(basket, key="k1")
        assert settled.receipt.rulebook_version == "hup-2"
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert not serving(target)
        assert log.read_text().count("stopped") == workers


def _spawned_workers(pid: int) -> list[int]:
    """The pids of ``pid``'s children that are multiprocessing spawn workers."""
    found = []
    for task in Path("/proc").glob("[0-9]*"):
        try:
            stat = (task / "stat").read_text()
            cmdline = (task / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(task.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8])
def test_sigterm_while_workers_start_stops_cleanly(tmp_path: Path, examples_dir: Path,
                                                   delay: float) -> None:
    """SIGTERM sent while the workers are still starting (importing, binding): each
    worker holds it until it can drain, and ``serve`` exits 0 at once rather than
    waiting for a worker the signal killed (it used to wait 60 s and exit 1)."""
    url = f"sqlite:///{tmp_path}/serve.db"
    subprocess.run([sys.executable, "-m", "settlement", "migrate", "--database-url", url],
                   check=True, timeout=120, capture_output=True)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "settlement", "serve", "--listen",
             f"127.0.0.1:{_free_port()}",
             "--rulebook", str(examples_dir / "rulebook.toml"), "--database-url", url,
             "--workers", "2"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not _spawned_workers(server.pid):  # the parent's handlers are in by now
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no worker was spawned"
            time.sleep(0.01)
        time.sleep(delay)
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, log.read_text()[-4000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.fixture(params=["sync", "aio"])
def pg_api(request: pytest.FixtureRequest, postgres_cluster, examples_dir: Path,
           tmp_path: Path):
    from uuid import uuid4

    name = f"d_{uuid4().hex[:12]}"
    postgres_cluster.create_database(name)
    with api_server(postgres_cluster.url(dbname=name), examples_dir, tmp_path,
                    request.param) as server:
        yield server


def test_shutdown_drains_a_call_in_flight(pg_api: Api) -> None:
    """A Settle waiting on its member's row lock (held from outside, PostgreSQL) when
    shutdown starts still completes; calls that arrive after shutdown began are refused."""
    api = pg_api
    api.ledger.enroll("S001", "e", member_id="M0001")
    blocker = api.ledger.engine.connect()
    blocker.execute(select(schema.members).where(schema.members.c.id == "M0001")
                    .with_for_update())
    basket = {"member_id": "M0001", "lines": [
        {"sku": "A", "category": "grain", "unit_price_cents": 1000, "quantity": 1}]}
    outcome: list[object] = []
    with api.client(attempts=1, timeout=30) as pos, api.client(attempts=1) as late:
        pos.ping()
        late.ping()
        caller = threading.Thread(target=lambda: outcome.append(pos.settle(basket, key="fly")))
        caller.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(api):
            assert time.monotonic() < deadline, "the settle never reached the lock"
            time.sleep(0.05)
        stopped = api.running.stop(20)
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as refused:
            late.ping()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        blocker.rollback()  # release the member: the call in flight finishes
        blocker.close()
        caller.join(20)
        assert stopped.wait(20)
    assert len(outcome) == 1 and outcome[0].receipt.payable_cents == 1000
    assert settlements(api) == 1


def _waiting_on_a_lock(api: Api) -> bool:
    with api.ledger.engine.connect() as conn:
        return bool(conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()").scalar())


def test_a_busy_member_is_unavailable_not_a_hang(postgres_cluster, examples_dir: Path,
                                                  tmp_path: Path) -> None:
    """A member held by a stuck transaction: Settle ends UNAVAILABLE (LOCK_TIMEOUT) after
    the lock timeout instead of hanging the till; the same key succeeds afterwards."""
    from uuid import uuid4

    from google.rpc import error_details_pb2

    from settlement_pos import error_details

    name = f"b_{uuid4().hex[:12]}"
    postgres_cluster.create_database(name)
    with api_server(postgres_cluster.url(dbname=name), examples_dir, tmp_path,
                    lock_timeout_s=0.3) as api:
        api.ledger.enroll("S001", "e", member_id="M0001")
        basket = {"member_id": "M0001", "lines": [
            {"sku": "A", "category": "grain", "unit_price_cents": 1000, "quantity": 1}]}
        with api.client(attempts=1) as pos:
            with api.ledger.engine.connect() as stuck:
                stuck.execute(select(schema.members).where(schema.members.c.id == "M0001")
                              .with_for_update())
                began = time.monotonic()
                with pytest.raises(grpc.RpcError) as busy:
                    pos.settle(basket, key="busy-1")
                assert time.monotonic() - began < 3
                assert busy.value.code() == grpc.StatusCode.UNAVAILABLE
                reasons = [d.reason for d in error_details(busy.value)
                           if isinstance(d, error_details_pb2.ErrorInfo)]
                assert reasons == ["LOCK_TIMEOUT"]
                stuck.rollback()
            assert pos.settle(basket, key="busy-1").receipt.payable_cents == 1000
        assert settlements(api) == 1


def test_serve_refuses_to_start_on_an_unmigrated_database_or_a_bad_rulebook(
        tmp_path: Path, examples_dir: Path) -> None:
    cli = [sys.executable, "-m", "settlement", "serve", "--listen", "127.0.0.1:0"]
    bare = subprocess.run([*cli, "--database-url", f"sqlite:///{tmp_path}/none.db",
                           "--rulebook", str(examples_dir / "rulebook.toml")],
                          capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "run `settlement migrate` first" in bare.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text('version = "x"\ntimezone = "Nowhere/City"\n')
    bad = subprocess.run([*cli, "--database-url", f"sqlite:///{tmp_path}/none.db",
                          "--rulebook", str(broken)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "rulebook" in bad.stderr and "Traceback" not in bad.stderr
    worker = subprocess.run([*cli, "--workers", "2", "--rulebook", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 2 and "fixed port" in worker.stderr
