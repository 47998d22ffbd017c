"""Demo data for ``settlement serve --demo``: the schema, a few members with
stored value, points, coupons and a count card, and terminals of store S001
(pos, risk, admin) whose fresh POS and risk tokens are written to files (the
README's run command).

Everything goes through the ledger's own operations with fixed idempotency
keys, so starting the demo again changes nothing but the terminal tokens.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, delete

from settlement.ledger import schema
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import add_terminal
from settlement.rulebook import Rulebook
from settlement.timeutil import parse_instant

STORE = "S001"
COUPONS = (("C-1", "SPEND200-20"), ("C-2", "PCT12"), ("C-3", "VOUCHER5"),
           ("C-4", "DAIRY-30PCT"))


def seed(engine: Engine, rulebook: Rulebook, token_file: Path) -> dict[str, str]:
    """Migrate, enrol the demo members (once), and issue new demo terminal tokens."""
    upgrade(engine)
    ledger = Ledger(engine, rulebook)
    start = parse_instant("2026-11-01T00:00:00+08:00")
    until = parse_instant("2027-12-31T00:00:00+08:00")
    ledger.enroll(STORE, "demo-enroll-1", member_id="M0001", phone="13800000001",
                  card_no="K0001", tier="gold")
    ledger.recharge(STORE, "demo-recharge-1", "M0001", 50_000)
    for cid, template in COUPONS:
        ledger.issue_coupon(STORE, f"demo-coupon-{cid}", "M0001", template, coupon_id=cid,
                            valid_from_us=start, valid_until_us=until)
    ledger.issue_count_card(STORE, "demo-count-card-1", "M0001", "CW-1", ["CAR-WASH"], 10,
                            valid_until_us=until)
    ledger.enroll(STORE, "demo-enroll-2", member_id="M0002", phone="13800000002",
                  card_no="K0002", referrer_id="M0001")
    ledger.recharge(STORE, "demo-recharge-2", "M0002", 10_000)
    tokens = {}
    with engine.begin() as conn:
        conn.execute(delete(schema.terminals).where(
            schema.terminals.c.id.in_(["demo-pos", "demo-risk", "demo-admin"])))
    for terminal, role in (("demo-pos", "pos"), ("demo-risk", "risk"), ("demo-admin", "admin")):
        tokens[role] = add_terminal(engine, terminal, STORE, role, name="demo")
    for path, role in ((token_file, "pos"), (risk_token_file(token_file), "risk")):
        path.write_text(f"{tokens[role]}\n", encoding="utf-8")
        path.chmod(0o600)
    return tokens


def risk_token_file(pos_token_file: Path) -> Path:
    """Where the demo's risk terminal token goes: ``demo-risk.token`` beside the POS one."""
    return pos_token_file.with_name("demo-risk.token")
