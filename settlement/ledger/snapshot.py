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

from sqlalchemy import Connection, func, or_, select

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


#: How many unspent lots a snapshot carries (in spend order). A member who earns on every
#: visit piles up lots; reading them all made settle slower with every visit. More are
#: read only when a redemption needs them (:func:`load_lots`).
LOT_PAGE = 8


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    """Everything of one member that pricing and settling read, as of ``at``."""

    member: MemberRow
    #: (kind, ref) -> (account, balance)
    accounts: dict[tuple[str, str], tuple[Account, int]]
    #: the first unexpired unspent lots in spend order (earliest expiry first, no expiry
    #: last), at most LOT_PAGE; ``all_lots``: there are no more
    lots: list[Lot]
    all_lots: bool
    #: points usable at ``at``: the points balance less lots expired but not yet expired
    #: by the job
    usable: int
    #: available coupons, by id: (id, template, valid_from_us, valid_until_us)
    coupons: list[tuple[str, str, int | None, int | None]]
    #: count cards, by id: (id, skus, valid_until_us)
    count_cards: list[tuple[str, list[str], int | None]]

    def balance(self, kind: str, ref: str = "") -> int:
        """An account's balance (0 when the account does not exist)."""
        hit = self.accounts.get((kind, ref))
        return hit[1] if hit else 0


_MEMBER_COLUMNS = [schema.members.c[f.name] for f in fields(MemberRow)]


def _lots_query(member_id: str, at: int, limit: int | None) -> Any:
    lc = schema.points_lots.c
    query = (select(lc.id, lc.remaining, lc.expires_us)
             .where(lc.member_id == member_id, lc.remaining > 0,
                    or_(lc.expires_us.is_(None), lc.expires_us > at))
             .order_by(lc.expires_us.asc().nulls_last(), lc.id))
    return query if limit is None else query.limit(limit)


def load_lots(conn: Connection, member_id: str, at: int) -> list[Lot]:
    """Every unexpired unspent lot of a member, in spend order."""
    return [Lot(r.id, member_id, r.remaining, r.expires_us)
            for r in conn.execute(_lots_query(member_id, at, None))]


def load_snapshot(conn: Connection, member_id: str, lock: bool, at: int) -> MemberSnapshot:
    """Read a member's snapshot as of ``at`` (``lock``: take the row lock first, on
    PostgreSQL)."""
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
    lots = [Lot(r.id, member_id, r.remaining, r.expires_us)
            for r in conn.execute(_lots_query(member_id, at, LOT_PAGE))]
    lc = schema.points_lots.c
    expired = conn.execute(select(func.coalesce(func.sum(lc.remaining), 0)).where(
        lc.member_id == member_id, lc.remaining > 0, lc.expires_us <= at)).scalar_one()
    points = accounts.get(("points", ""))
    usable = (points[1] if points else 0) - int(expired)
    cc = schema.coupons.c
    coupons = [tuple(r) for r in conn.execute(
        select(cc.id, cc.template, cc.valid_from_us, cc.valid_until_us)
        .where(cc.member_id == member_id, cc.state == "available").order_by(cc.id))]
    kc = schema.count_cards.c
    cards = [(r.id, json.loads(r.skus), r.valid_until_us) for r in conn.execute(
        select(kc.id, kc.skus, kc.valid_until_us).where(kc.member_id == member_id)
        .order_by(kc.id))]
    return MemberSnapshot(MemberRow(*row), accounts, lots, len(lots) < LOT_PAGE,  # type: ignore[arg-type]
                          usable, coupons, cards)  # type: ignore[arg-type]


#: The member's row lock on PostgreSQL, by id or by card. A statement of its own: a
#: statement that waited for a row lock still reads everything else as of its start, so
#: the snapshot read must be the next statement (READ COMMITTED: a new snapshot each).
PG_LOCK_SQL = """
SELECT 1 FROM members m
WHERE m.id = coalesce(%(member)s, (SELECT member_id FROM cards WHERE card_no = %(card)s))
FOR UPDATE
"""

#: The PostgreSQL read of a whole snapshot in one statement, after :data:`PG_LOCK_SQL`
#: (parameters: member, card, at); :func:`snapshot_from_pg` turns its row into a
#: :class:`MemberSnapshot`.
PG_SNAPSHOT_SQL = f"""
SELECT {', '.join('m.' + c.name for c in _MEMBER_COLUMNS)},
  (SELECT coalesce(json_agg(json_build_array(a.id, a.kind, a.ref, a.asset, a.balance)), '[]')
     FROM accounts a WHERE a.owner = m.id),
  (SELECT coalesce(json_agg(json_build_array(x.id, x.remaining, x.expires_us)
                            ORDER BY x.expires_us NULLS LAST, x.id), '[]')
     FROM (SELECT l.id, l.remaining, l.expires_us FROM points_lots l
           WHERE l.member_id = m.id AND l.remaining > 0
             AND (l.expires_us IS NULL OR l.expires_us > %(at)s)
           ORDER BY l.expires_us NULLS LAST, l.id LIMIT {LOT_PAGE}) x),
  (SELECT coalesce(sum(l.remaining), 0) FROM points_lots l
     WHERE l.member_id = m.id AND l.remaining > 0 AND l.expires_us <= %(at)s),
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
    accs, lots, expired, coupons, cards = row[n:]
    accounts = {(kind, ref): (Account(aid, member.id, kind, ref, asset), int(bal))
                for aid, kind, ref, asset, bal in accs}
    points = accounts.get(("points", ""))
    return MemberSnapshot(
        member, accounts,
        [Lot(lid, member.id, remaining, expires) for lid, remaining, expires in lots],
        len(lots) < LOT_PAGE, (points[1] if points else 0) - int(expired),
        [(cid, template, vf, vu) for cid, template, vf, vu in coupons],
        [(kid, json.loads(skus), vu) for kid, skus, vu in cards])
