"""Settle on PostgreSQL in three round trips, straight on psycopg.

The portable path (SQLAlchemy Core, one statement per row or per update)
costs about 19 round trips and 35 statement executions per settlement.
Here the same plan (:class:`settlement.ledger.service.SettlePlan`, computed
by the same code) goes to the server as:

1. one pipeline: ``BEGIN``, the idempotency claim, the card lookup, the
   member's row lock, and the member's whole snapshot (one statement);
2. one statement that writes everything: a data-modifying CTE inserts the
   journal transaction, its postings, new points lots, the settlement and
   its lines (JSON documents through ``json_populate_recordset``), updates
   balances, lots, coupons and the member (id arrays through ``unnest``),
   and marks the idempotency key done. It returns how many rows each guarded
   update touched;
3. ``COMMIT``, sent only when every count is the one planned (otherwise
   ``ROLLBACK`` and a typed error).

Statements keep one text whatever the basket size, so psycopg prepares them
once per connection (its ``prepare_threshold``). The updates joined to an
``unnest`` also filter on ``id = ANY(...)``: without it the planner may
hash-join the whole accounts table (a sequential scan per settlement). The guards are the same as
the portable path's: updates conditioned on the state read
(``balance + delta >= 0``, ``remaining >= take``, ``state = 'available'``),
CHECK constraints behind them, and the member row lock before all.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import schema
from .alerts import FACTS_SQL, pg_sql
from .errors import Conflict
from .idempotency import canonical, replay
from .journal import MEMBER_KINDS, Account
from .snapshot import PG_LOCK_SQL, PG_SNAPSHOT_SQL, Lot

if TYPE_CHECKING:
    import psycopg

    from .service import SettlePlan

CLAIM_SQL = ("INSERT INTO idempotency_keys (store, key, operation, request_hash, response, "
             "created_us) VALUES (%s, %s, %s, %s, '', %s) ON CONFLICT DO NOTHING RETURNING 1")
STORED_SQL = ("SELECT operation, request_hash, response FROM idempotency_keys "
              "WHERE store = %s AND key = %s")
RECEIPT_SQL = "SELECT receipt FROM settlements WHERE id = %s"
LOTS_SQL = ("SELECT id, remaining, expires_us FROM points_lots WHERE member_id = %s "
            "AND remaining > 0 AND (expires_us IS NULL OR expires_us > %s) "
            "ORDER BY expires_us NULLS LAST, id")
CARD_SQL = "SELECT member_id, status FROM cards WHERE card_no = %s"
ACCOUNT_SQL = ("INSERT INTO accounts (owner, kind, ref, asset, balance) "
               "VALUES (%s, %s, %s, %s, 0) ON CONFLICT DO NOTHING")
ACCOUNT_ID_SQL = "SELECT id FROM accounts WHERE owner = %s AND kind = %s AND ref = %s"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: settlement_lines columns the plan fills (refunded_quantity starts at its default).
LINE_COLUMNS = [c.name for c in schema.settlement_lines.columns
                if c.name != "refunded_quantity"]
#: settlements columns the plan fills (status starts at its default; tx_id comes from the CTE).
SETTLEMENT_COLUMNS = [c.name for c in schema.settlements.columns
                      if c.name not in ("status", "tx_id")]

WRITE_SQL = " ".join(f"""
WITH tx AS (
  INSERT INTO journal_transactions (kind, ref, store, created_us)
  VALUES ('settle', %(id)s, %(store)s, %(now)s) RETURNING id
), posted AS (
  INSERT INTO journal_postings (tx_id, account_id, asset, amount)
  SELECT tx.id, p.account_id, p.asset, p.amount
  FROM tx, json_to_recordset(%(postings)s) AS p(account_id bigint, asset text, amount bigint)
), balanced AS (
  UPDATE accounts a SET balance = a.balance + d.delta
  FROM unnest(%(d_account)s::bigint[], %(d_delta)s::bigint[]) AS d(id, delta)
  WHERE a.id = ANY(%(d_account)s::bigint[]) AND a.id = d.id AND a.balance + d.delta >= 0
  RETURNING 1
), spent AS (
  UPDATE points_lots l SET remaining = l.remaining - s.take
  FROM unnest(%(lot_id)s::bigint[], %(lot_take)s::bigint[]) AS s(id, take)
  WHERE l.id = ANY(%(lot_id)s::bigint[]) AND l.id = s.id AND l.remaining >= s.take
  RETURNING 1
), granted AS (
  INSERT INTO points_lots (member_id, points, remaining, expires_us, tx_id, created_us)
  SELECT g.member_id, g.points, g.remaining, g.expires_us, tx.id, %(now)s
  FROM tx, json_to_recordset(%(lots)s)
    AS g(member_id text, points bigint, remaining bigint, expires_us bigint)
), redeemed AS (
  UPDATE coupons SET state = 'redeemed', settlement_id = %(id)s
  WHERE id = ANY(%(coupons)s::text[]) AND member_id = %(member)s AND state = 'available'
  RETURNING 1
), member AS (
  UPDATE members SET cumulative_spend_cents = %(spend)s, tier = %(tier)s,
                     points_debt = %(debt)s
  WHERE id = %(member)s AND %(update_member)s
  RETURNING 1
), settled AS (
  INSERT INTO settlements ({', '.join(SETTLEMENT_COLUMNS)}, tx_id)
  SELECT {', '.join('%(receipt)s' if name == 'receipt' else 's.' + name
                    for name in SETTLEMENT_COLUMNS)}, tx.id
  FROM tx, json_populate_record(NULL::settlements, %(settlement)s) AS s
), lined AS (
  INSERT INTO settlement_lines ({', '.join(LINE_COLUMNS)})
  SELECT {', '.join('l.' + name for name in LINE_COLUMNS)}
  FROM json_populate_recordset(NULL::settlement_lines, %(lines)s) AS l
), answered AS (
  UPDATE idempotency_keys SET response = %(response)s
  WHERE store = %(store)s AND key = %(key)s
  RETURNING 1
)
SELECT (SELECT count(*) FROM balanced), (SELECT count(*) FROM spent),
       (SELECT count(*) FROM redeemed), (SELECT count(*) FROM member),
       (SELECT count(*) FROM answered)
""".split())


PG_FACTS_SQL = pg_sql(FACTS_SQL)


def begin(pg: psycopg.Connection[Any], store: str, key: str, operation: str, digest: str,
          now: int, member_id: str | None, card_no: str | None, at: int,
          facts: dict[str, Any] | None = None,
          ) -> tuple[dict[str, Any] | None, tuple[Any, ...] | None, tuple[Any, ...] | None,
                     tuple[Any, ...] | None]:
    """Round trip 1: claim ``key``, look up the card, read and lock the member, and (given
    ``facts``, its parameters) read the watchdog's look-back facts after the lock.

    Returns ``(stored, card, snapshot_row, facts_row)``: ``stored`` is the earlier response
    when the key was executed before (the caller rolls back and returns it; another request
    under the key raises :class:`IdempotencyConflict`).
    """
    with pg.pipeline():
        claim = pg.execute(CLAIM_SQL, (store, key, operation, digest, now))
        card = pg.execute(CARD_SQL, (card_no,)) if card_no is not None else None
        snap = None
        if member_id is not None or card_no is not None:
            pg.execute(PG_LOCK_SQL, {"member": member_id, "card": card_no})
            snap = pg.execute(PG_SNAPSHOT_SQL, {"member": member_id, "card": card_no, "at": at})
        seen = pg.execute(PG_FACTS_SQL, facts) if facts is not None else None
        claimed = claim.fetchone()
        card_row = card.fetchone() if card is not None else None
        snap_row = snap.fetchone() if snap is not None else None
        facts_row = seen.fetchone() if seen is not None else None
    if claimed is None:
        row = pg.execute(STORED_SQL, (store, key)).fetchone()
        assert row is not None  # the conflicting insert saw it
        return replay(store, key, operation, digest, *row), None, None, None
    return None, card_row, snap_row, facts_row


def read_member(pg: psycopg.Connection[Any], member_id: str | None, card_no: str | None,
                at: int) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
    """For a quote: the card row and the member's snapshot row in one round trip, without a
    lock or a transaction (the snapshot is one statement, so it is consistent)."""
    pg.autocommit = True
    try:
        with pg.pipeline():
            card = pg.execute(CARD_SQL, (card_no,)) if card_no is not None else None
            snap = pg.execute(PG_SNAPSHOT_SQL, {"member": member_id, "card": card_no, "at": at})
            card_row = card.fetchone() if card is not None else None
            snap_row = snap.fetchone()
    finally:
        pg.autocommit = False
    return card_row, snap_row


def all_lots(pg: psycopg.Connection[Any], member_id: str, at: int) -> list[Lot]:
    """Every unexpired unspent lot of a member in spend order (a redemption bigger than the
    snapshot's first lots cover)."""
    return [Lot(lid, member_id, remaining, expires)
            for lid, remaining, expires in pg.execute(LOTS_SQL, (member_id, at)).fetchall()]


def receipt(pg: psycopg.Connection[Any], settlement_id: str) -> str:
    """A settlement's stored receipt (JSON)."""
    row = pg.execute(RECEIPT_SQL, (settlement_id,)).fetchone()
    assert row is not None
    return str(row[0])


def ensure_account(pg: psycopg.Connection[Any], owner: str, kind: str, ref: str) -> Account:
    """A member account missing from the snapshot, created (rare: accounts are made at
    enrolment and at count card issue)."""
    asset = "uses" if kind == "count_card" else MEMBER_KINDS[kind]
    pg.execute(ACCOUNT_SQL, (owner, kind, ref, asset))
    row = pg.execute(ACCOUNT_ID_SQL, (owner, kind, ref)).fetchone()
    assert row is not None
    return Account(row[0], owner, kind, ref, asset)


def write(pg: psycopg.Connection[Any], plan: SettlePlan, store: str, key: str,
          now: int) -> None:
    """Round trip 2: every write of ``plan``; raises :class:`Conflict` (the caller rolls
    back) when a guarded update did not touch the rows the plan read under the lock."""
    deltas = plan.tx.deltas()
    member = plan.member_values or {}
    params: dict[str, Any] = {
        "id": plan.sid, "store": store, "key": key, "now": now, "member": plan.member_id,
        "postings": _json([{"account_id": a, "asset": asset, "amount": amount}
                           for a, asset, amount in plan.tx.postings()]),
        "d_account": [acc.id for acc, _ in deltas], "d_delta": [d for _, d in deltas],
        "lot_id": [lot for lot, _ in plan.lot_takes],
        "lot_take": [take for _, take in plan.lot_takes],
        "lots": _json([{"member_id": g[0], "points": g[1], "expires_us": g[2],
                        "remaining": g[3]} for g in plan.new_lots]),
        "coupons": plan.coupon_ids,
        "update_member": bool(member), "spend": member.get("cumulative_spend_cents", 0),
        "tier": member.get("tier", ""), "debt": member.get("points_debt", 0),
        "settlement": _json({k: v for k, v in plan.settlement.items() if k != "receipt"}),
        "receipt": plan.settlement["receipt"], "lines": _json(plan.lines),
        "response": canonical({"settlement_id": plan.sid}),
    }
    row = pg.execute(WRITE_SQL, params).fetchone()
    assert row is not None
    balanced, spent, redeemed, members, answered = row
    planned = (len(deltas), len(plan.lot_takes), len(plan.coupon_ids), int(bool(member)), 1)
    if (balanced, spent, redeemed, members, answered) != planned:
        # Cannot happen under the member lock; never commit a partial settlement.
        raise Conflict("the member's balances, points or coupons changed during the "
                       "settlement; retry")
