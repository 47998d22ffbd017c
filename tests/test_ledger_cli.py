"""``settlement migrate`` and ``settlement verify`` from the command line; URL precedence."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from settlement.ledger.db import DEFAULT_URL, database_url


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("SETTLEMENT_DATABASE_URL", "SETTLEMENT_CONFIG")}
    return subprocess.run([sys.executable, "-m", "settlement", *args], capture_output=True,
                          text=True, timeout=120, env={**base, **(env or {})})


def test_verify_catches_a_tampered_balance(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    config = tmp_path / "settlement.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{db}"\n')
    assert cli("verify", "--config", str(config)).returncode == 2  # no schema yet
    assert cli("migrate", "--config", str(config)).returncode == 0
    ok = cli("verify", "--config", str(config))
    assert ok.returncode == 0 and "ok" in ok.stdout
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO accounts (owner, asset, kind, ref, balance) "
                     "VALUES ('M1', 'points', 'points', '', 7)")
    bad = cli("verify", "--database-url", f"sqlite:///{db}")
    assert bad.returncode == 1
    assert "balance differs from the sum of its postings" in bad.stderr


def test_url_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[database]\nurl = "sqlite:///from-config.db"\n')
    monkeypatch.delenv("SETTLEMENT_DATABASE_URL", raising=False)
    monkeypatch.delenv("SETTLEMENT_CONFIG", raising=False)
    assert database_url() == DEFAULT_URL
    monkeypatch.setenv("SETTLEMENT_CONFIG", str(config))
    assert database_url() == "sqlite:///from-config.db"
    monkeypatch.setenv("SETTLEMENT_DATABASE_URL", "sqlite:///from-env.db")
    assert database_url() == "sqlite:///from-env.db"
    assert database_url("sqlite:///explicit.db") == "sqlite:///explicit.db"
    monkeypatch.delenv("SETTLEMENT_DATABASE_URL")
    (tmp_path / "bad.toml").write_text("[database]\nurl = 5\n")
    with pytest.raises(ValueError, match="database.url"):
        database_url(config=str(tmp_path / "bad.toml"))
