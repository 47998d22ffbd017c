"""A member's state as one settlement reads it: the member row, accounts with
balances, unspent points lots, available coupons and count cards.

Settle prices against a snapshot taken under the member's row lock, plans
every write from it, then applies the plan. :func:`load_snapshot` reads it
with SQLAlchemy Core (any database); the PostgreSQL fast path reads the
same thing in one statement and builds it with :func:`snapshot_from_pg`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, select

from . import schema
from .errors import NotFound
from .journal import Account


@dataclass(frozen=True, slots=True)
class MemberRow:
    """The member columns settlement and lookups use."""

    id: str
    phone: str | None
    tier: str
    card_type: str
    paid_from_us: int | None
    paid_until_us: int | None
    cumulative_spend_cents: int
    points_debt: int


@dataclass(frozen=True, slots=True)
class Lot:
    """An unspent points lot."""

    id: int
    member_id: str
    remaining: int
    expires_us: int | None


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    """Everything of one member that pricing and settling read."""

    member: MemberRow
    #: (kind, ref) -> (account, balance)
    accounts: dict[tuple[str, str], tuple[Account, int]]
    lots: list[Lot]
    #: available coupons, by id: (id, template, valid_from_us, valid_until_us)
    coupons: list[tuple[str, str, int | None, int | None]]
    #: count cards, by id: (id, skus, valid_until_us)
    count_cards: list[tuple[str, list[str], int | None]]

    def balance(self, kind: str, ref: str = "") -> int:
        """An account's balance (0 when the account does not exist)."""
        hit = self.accounts.get((kind, ref))
        return hit[1] if hit else 0

    def usable_points(self, at: int) -> int:
        """Points in lots not yet expired at ``at``."""
        return sum(lot.remaining for lot in self.lots
                   if lot.expires_us is None or lot.expires_us > at)


_MEMBER_COLUMNS = [schema.members.c[f.name] for f in fields(MemberRow)]


def load_snapshot(conn: Connection, member_id: str, lock: bool) -> MemberSnapshot:
    """Read a member's snapshot (``lock``: take the row lock first, on PostgreSQL)."""
    query = select(*_MEMBER_COLUMNS).where(schema.members.c.id == member_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"member {member_id!r} not found")
    a = schema.accounts.c
    accounts = {(r.kind, r.ref): (Account(r.id, member_id, r.kind, r.ref, r.asset),
                                  int(r.balance))
                for r in conn.execute(select(a.id, a.kind, a.ref, a.asset, a.balance)
                                      .where(a.owner == member_id))}
    lc = schema.points_lots.c
    lots = [Lot(r.id, member_id, r.remaining, r.expires_us)
            for r in conn.execute(select(lc.id, lc.remaining, lc.expires_us)
                                  .where(lc.member_id == member_id, lc.remaining > 0)
                                  .order_by(lc.id))]
    cc = schema.coupons.c
    coupons = [tuple(r) for r in conn.execute(
        select(cc.id, cc.template, cc.valid_from_us, cc.valid_until_us)
        .where(cc.member_id == member_id, cc.state == "available").order_by(cc.id))]
    kc = schema.count_cards.c
    cards = [(r.id, json.loads(r.skus), r.valid_until_us) for r in conn.execute(
        select(kc.id, kc.skus, kc.valid_until_us).where(kc.member_id == member_id)
        .order_by(kc.id))]
    return MemberSnapshot(MemberRow(*row), accounts, lots, coupons, cards)  # type: ignore[arg-type]


#: The member's row lock on PostgreSQL, by id or by card. A statement of its own: a
#: statement that waited for a row lock still reads everything else as of its start, so
#: the snapshot read must be the next statement (READ COMMITTED: a new snapshot each).
PG_LOCK_SQL = """
SELECT 1 FROM members m
WHERE m.id = coalesce(%(member)s, (SELECT member_id FROM cards WHERE card_no = %(card)s))
FOR UPDATE
"""

#: The PostgreSQL read of a whole snapshot in one statement, after :data:`PG_LOCK_SQL`;
#: :func:`snapshot_from_pg` turns its row into a :class:`MemberSnapshot`.
PG_SNAPSHOT_SQL = f"""
SELECT {', '.join('m.' + c.name for c in _MEMBER_COLUMNS)},
  (SELECT coalesce(json_agg(json_build_array(a.id, a.kind, a.ref, a.asset, a.balance)), '[]')
     FROM accounts a WHERE a.owner = m.id),
  (SELECT coalesce(json_agg(json_build_array(l.id, l.remaining, l.expires_us) ORDER BY l.id),
                   '[]')
     FROM points_lots l WHERE l.member_id = m.id AND l.remaining > 0),
  (SELECT coalesce(json_agg(json_build_array(c.id, c.template, c.valid_from_us,
                                             c.valid_until_us) ORDER BY c.id), '[]')
     FROM coupons c WHERE c.member_id = m.id AND c.state = 'available'),
  (SELECT coalesce(json_agg(json_build_array(k.id, k.skus, k.valid_until_us) ORDER BY k.id),
                   '[]')
     FROM count_cards k WHERE k.member_id = m.id)
FROM members m
WHERE m.id = coalesce(%(member)s, (SELECT member_id FROM cards WHERE card_no = %(card)s))
"""


def snapshot_from_pg(row: tuple[Any, ...]) -> MemberSnapshot:
    """A :class:`MemberSnapshot` from a :data:`PG_SNAPSHOT_SQL` row."""
    n = len(_MEMBER_COLUMNS)
    member = MemberRow(*row[:n])
    accs, lots, coupons, cards = row[n:]
    return MemberSnapshot(
        member,
        {(kind, ref): (Account(aid, member.id, kind, ref, asset), int(bal))
         for aid, kind, ref, asset, bal in accs},
        [Lot(lid, member.id, remaining, expires) for lid, remaining, expires in lots],
        [(cid, template, vf, vu) for cid, template, vf, vu in coupons],
        [(kid, json.loads(skus), vu) for kid, skus, vu in cards])
