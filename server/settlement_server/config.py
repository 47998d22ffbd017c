"""Server settings: defaults, then a TOML file, then the environment, then flags.

TOML (``--config`` or ``SETTLEMENT_CONFIG``)::

    [server]
    listen = "127.0.0.1:50051"     # SETTLEMENT_LISTEN
    rulebook = "rulebook.toml"      # SETTLEMENT_RULEBOOK
    workers = 1                     # SETTLEMENT_WORKERS: processes sharing the port
    threads = 16                    # RPC threads per process
    max_message_bytes = 1048576     # requests and responses above this are refused
    grace_seconds = 10              # in-flight calls get this long on shutdown
    auth_cache_seconds = 5          # a revoked token works at most this long
    tls_cert = ""                   # PEM certificate chain and key: TLS
    tls_key = ""
    tls_client_ca = ""              # PEM CA: mutual TLS, clients must present a cert
    impl = "sync"                   # SETTLEMENT_SERVER_IMPL: sync (thread pool) or aio

    [database]
    url = "postgresql+psycopg://..."  # SETTLEMENT_DATABASE_URL (default: SQLite file)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from settlement.ledger.db import database_url, read_config


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``settlement serve`` needs."""

    listen: str = "127.0.0.1:50051"
    rulebook: str = "rulebook.toml"
    database_url: str = ""
    workers: int = 1
    threads: int = 16
    max_message_bytes: int = 1 << 20
    grace_seconds: float = 10.0
    auth_cache_seconds: float = 5.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    #: "sync" (thread pool) or "aio" (grpc.aio, an event loop plus a thread pool for the
    #: database); both measured in bench/README.md
    impl: str = "sync"

    def check(self) -> ServerConfig:
        """Raise ValueError naming the setting that cannot work."""
        if ":" not in self.listen:
            raise ValueError(f"listen: {self.listen!r} is not host:port")
        if not 1 <= self.workers <= 64:
            raise ValueError("workers: must be 1..64")
        if self.workers > 1 and self.listen.rsplit(":", 1)[1] == "0":
            raise ValueError("listen: several workers need a fixed port (they share it)")
        if not 1 <= self.threads <= 1024:
            raise ValueError("threads: must be 1..1024")
        if not 1024 <= self.max_message_bytes <= 64 << 20:
            raise ValueError("max_message_bytes: must be 1 KiB..64 MiB")
        if self.impl not in ("sync", "aio"):
            raise ValueError("impl: must be sync or aio")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self


_ENV = {"listen": "SETTLEMENT_LISTEN", "rulebook": "SETTLEMENT_RULEBOOK",
        "workers": "SETTLEMENT_WORKERS", "impl": "SETTLEMENT_SERVER_IMPL"}


def load_config(path: str | None = None, **flags: Any) -> ServerConfig:
    """Defaults < ``[server]`` of the TOML file < environment < ``flags`` (None: unset)."""
    path = path or os.environ.get("SETTLEMENT_CONFIG")
    values: dict[str, Any] = {}
    names = {f.name: f.type for f in fields(ServerConfig)}
    if path:
        for key, value in read_config(path).get("server", {}).items():
            if key not in names or key == "database_url":
                raise ValueError(f"config {path}: unknown setting server.{key}")
            values[key] = value
    for key, var in _ENV.items():
        if os.environ.get(var):
            values[key] = os.environ[var]
    values.update({k: v for k, v in flags.items() if v is not None and k != "database_url"})
    config = ServerConfig()
    for key, value in values.items():
        default = getattr(config, key)
        try:
            values[key] = type(default)(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: {value!r} is not a {type(default).__name__}") from None
    url = database_url(flags.get("database_url"), path)
    return replace(config, **values, database_url=url).check()
