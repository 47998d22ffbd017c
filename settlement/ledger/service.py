"""The ledger's operations, as a domain service (no gRPC here).

Every mutating operation takes the caller's ``store`` and idempotency
``key`` and runs in one database transaction: claim the key, lock the
member's row, check, write the effects and the journal, store the response.
A retry with the same key and request returns the stored response; the same
key with another request is an :class:`IdempotencyConflict`.

Concurrency: each operation locks its member's row (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite serializes writers with ``BEGIN
IMMEDIATE``), so one member's operations run one at a time while different
members never wait on each other (system balances are not cached rows).
Conditional balance updates and CHECK constraints stand behind the lock.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

import settlement
from settlement.allocation import allocate, apportion
from settlement.errors import RequestError
from settlement.rulebook import Rulebook
from settlement.timeutil import format_instant, parse_instant
from settlement.watchdog import (
    Hit,
    RefundEvent,
    SettleEvent,
    evaluate_refund,
    evaluate_settlement,
    lost_card_hit,
)

from . import alerts, pg_settle, schema
from .checks import int_field as _int
from .checks import text_field as _text
from .errors import Conflict, Held, InsufficientBalance, LedgerError, NotFound
from .idempotency import claim, record, request_hash
from .journal import SYSTEM_KINDS, Account, Transaction, account, balance, system
from .snapshot import Lot, MemberRow, MemberSnapshot, load_lots, load_snapshot, snapshot_from_pg

DAY_US = 86_400 * 1_000_000
#: How far a settlement's ``at`` may be from the ledger's clock by default.
MAX_CLOCK_SKEW_US = 15 * 60 * 1_000_000
CARD_TYPES = ("free", "paid", "tiered", "internal")
#: The fields of a settle request. The member's state (tier, balances, coupons) always
#: comes from the database: a request naming ``member`` or ``store`` is refused.
SETTLE_FIELDS = frozenset({"member_id", "card_no", "at", "lines", "coupon_ids", "auto_coupons",
                           "redeem_points", "pay_stored_value_cents",
                           "expected_payable_cents"})


_T = TypeVar("_T")


class _Disconnected(Exception):
    """The PostgreSQL path found its connection dead (retried once on a fresh one)."""


class _Hold(Exception):
    """A watchdog rule holds the operation: raised inside its transaction (which rolls
    back), caught by :meth:`Ledger._holding`, which commits the alerts alone."""

    def __init__(self, hits: list[Hit], member_id: str | None, card_no: str | None) -> None:
        super().__init__(", ".join(h.rule for h in hits))
        self.hits, self.member_id, self.card_no = hits, member_id, card_no


@dataclass
class SettlePlan:
    """Every write of one settlement, worked out from the member's snapshot before
    anything is written; the portable and the PostgreSQL paths both apply it."""

    sid: str
    member_id: str | None
    tx: Transaction
    coupon_ids: list[str] = field(default_factory=list)
    #: (lot id, points taken)
    lot_takes: list[tuple[int, int]] = field(default_factory=list)
    #: lots to create: (member, points, expires_us, remaining)
    new_lots: list[Any] = field(default_factory=list)
    #: the member row's new cumulative_spend_cents, tier, points_debt
    member_values: dict[str, Any] | None = None
    #: the settlements row (without tx_id) and its settlement_lines rows
    settlement: dict[str, Any] = field(default_factory=dict)
    lines: list[dict[str, Any]] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)


class PriceChanged(LedgerError):
    """``expected_payable_cents`` differs from the price now; ``receipt`` is the new one."""

    def __init__(self, expected: int, receipt: dict[str, Any]) -> None:
        super().__init__(f"price changed: expected {expected}, now {receipt['payable_cents']}")
        self.receipt = receipt


INSTANT = (-(2**62), 2**62)  # microseconds: far beyond any real date, well inside int64


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:20]}"


class Ledger:
    """Member ledger over one database and one rulebook.

    ``clock`` returns the current instant in epoch microseconds (tests pass a
    fixed one). A settlement's ``at`` (when the POS sends one) must lie within
    ``max_clock_skew_us`` of that clock: otherwise a terminal could backdate a
    checkout to use expired coupons or a past promotion. ``None`` turns the
    check off (tests and replays with fixed instants).
    """

    def __init__(self, engine: Engine, rulebook: Rulebook,
                 clock: Callable[[], int] | None = None,
                 max_clock_skew_us: int | None = MAX_CLOCK_SKEW_US) -> None:
        self.engine = engine
        self.rulebook = rulebook
        self.clock = clock or (lambda: time.time_ns() // 1000)
        self.max_clock_skew_us = max_clock_skew_us
        #: risk staff's side of the watchdog's alerts
        self.alerts = alerts.AlertDesk(engine, self.clock)
        # System accounts never change: create them once (committed), then post to the
        # cached ids without a lookup per move. The schema must be migrated first.
        with engine.begin() as conn:
            self._system = {kind: system(conn, kind) for kind in SYSTEM_KINDS}

    def _sys(self, kind: str) -> Account:
        return self._system[kind]

    # ------------------------------------------------------------------ plumbing

    def _idempotent(self, store: str, key: str, operation: str, request: Any,
                    body: Callable[[Connection, int], dict[str, Any]],
                    settles: bool = False) -> dict[str, Any]:
        """Run ``body`` once per (store, key). ``settles``: the response is a receipt
        already kept in ``settlements``; the key keeps only its settlement id."""
        _text("store", store)
        _text("idempotency_key", key)
        digest = request_hash(operation, request)

        def run() -> dict[str, Any]:
            with self.engine.begin() as conn:
                now = self.clock()
                stored = claim(conn, store, key, operation, digest, now)
                if stored is not None:
                    return self._receipt_of(conn, stored) if settles else stored
                response = body(conn, now)
                record(conn, store, key, _stored_settle(response) if settles else response)
                return response

        return self._once_more_if_disconnected(run)

    def _once_more_if_disconnected(self, run: Callable[[], _T]) -> _T:
        """Run ``run``, and once more on a fresh connection if the database connection turned
        out dead (a restarted server, a dropped link: the pool does not ping first). Safe for
        mutations: each is idempotent by key, so a retry after a commit whose reply was lost
        returns the stored response. A database that is down fails the retry too."""
        try:
            return run()
        except DBAPIError as exc:
            if not exc.connection_invalidated:  # SQLAlchemy invalidated the pool already
                raise
        except _Disconnected:
            pass
        return run()

    def _holding(self, store: str, terminal: str | None, ref: str, operation: str,
                 run: Callable[[], _T]) -> _T:
        """Run ``run``; when a watchdog rule holds it (its transaction rolled back), commit
        the alerts alone and raise :class:`Held` naming them."""
        try:
            return run()
        except _Hold as hold:
            ctx = alerts.Context(store, terminal, hold.member_id, hold.card_no, ref, operation,
                                 None, self.rulebook.version, self.clock())
            with self.engine.begin() as conn:
                ids = alerts.record(alerts.SaDb(conn), hold.hits, ctx)
            held = [(h.rule, a) for h, a in zip(hold.hits, ids, strict=True)
                    if h.action == "hold"]
            reason = (f"card {hold.card_no!r} is reported lost"
                      if hold.hits[0].rule == "lost_card" else "refused by the watchdog")
            what = "; ".join(f"{rule} (alert {a})" for rule, a in held)
            raise Held(f"{reason}; held for review: {what}", [a for _, a in held],
                       [rule for rule, _ in held]) from None

    @staticmethod
    def _refuse_held(hits: list[Hit], ctx: alerts.Context) -> None:
        """A hold among ``hits`` raises :class:`_Hold` (the transaction rolls back)."""
        if any(h.action == "hold" for h in hits):
            raise _Hold(hits, ctx.member_id, ctx.card_no)

    @staticmethod
    def _hold_or_record(db: alerts.Db, hits: list[Hit], ctx: alerts.Context) -> None:
        """A hold among ``hits`` raises :class:`_Hold`; otherwise the alerts are written in
        the operation's transaction."""
        Ledger._refuse_held(hits, ctx)
        if hits:
            alerts.record(db, hits, ctx)

    def _watch_settlement(self, db: alerts.Db, plan: SettlePlan, snap: MemberSnapshot | None,
                          store: str, terminal: str | None, req: Mapping[str, Any], at: int,
                          now: int, ref: str) -> None:
        """Judge the planned settlement by the watchdog's rules inside its transaction:
        alerts are written with it; a hold raises :class:`_Hold`."""
        judged = self._judge_settlement(db, plan, snap, store, terminal, req, at, now, ref)
        if judged is not None:
            alerts.record(db, *judged)

    def _judge_settlement(self, db: alerts.Db, plan: SettlePlan, snap: MemberSnapshot | None,
                          store: str, terminal: str | None, req: Mapping[str, Any], at: int,
                          now: int, ref: str, facts_row: Sequence[Any] | None = None,
                          ) -> tuple[list[Hit], alerts.Context] | None:
        """The watchdog's hits on the planned settlement and their context, or None when
        there are none (``facts_row``: the look-back facts when already read); a hold
        raises :class:`_Hold` (the caller's transaction rolls back)."""
        wd = self.rulebook.watchdog
        if not wd.enabled:
            return None
        member_id = snap.member.id if snap is not None else None
        if facts_row is None:
            facts_row = db.rows(alerts.FACTS_SQL, alerts.facts_params(
                wd, member_id, None, store, terminal, at))[0]
        r = plan.response
        event = SettleEvent(
            store, terminal, member_id, at, r["payable_cents"], r["stored_value_cents"],
            r["points_redeemed"],
            snap.balance("sv_principal") + snap.balance("sv_bonus") if snap else 0,
            snap.usable if snap else 0)
        hits = evaluate_settlement(wd, event, alerts.facts_from_row(facts_row))
        if not hits:
            return None
        ctx = alerts.Context(store, terminal, member_id, req.get("card_no"), ref, "settle",
                             plan.sid, self.rulebook.version, now)
        self._refuse_held(hits, ctx)
        return hits, ctx

    @staticmethod
    def _receipt_of(conn: Connection, stored: dict[str, Any]) -> dict[str, Any]:
        """A settle response from its key's stored form (portable path)."""
        return _settle_response(stored, lambda sid: conn.execute(
            select(schema.settlements.c.receipt)
            .where(schema.settlements.c.id == sid)).scalar_one())

    def _lock_member(self, conn: Connection, member_id: str) -> Any:
        query = select(schema.members).where(schema.members.c.id == member_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"member {member_id!r} not found")
        return row

    def _request_member(self, req: Mapping[str, Any], card: Any) -> str | None:
        """The member a settle or quote request is for: ``member_id``, or the owner of
        ``card_no`` (``card``: its ``(member_id, status)`` row, None when not found), which
        must be active and agree with ``member_id``; None for a walk-in."""
        member_id = req.get("member_id")
        card_no = req.get("card_no")
        if card_no is None:
            return member_id  # type: ignore[no-any-return]
        if card is None:
            raise NotFound(f"card {card_no!r} not found")
        owner, status = card
        if status == "lost":  # always refused, and risk staff hear of the attempt
            raise _Hold([lost_card_hit(self.rulebook.watchdog, card_no)], owner, card_no)
        if status != "active":
            raise Conflict(f"card {card_no!r} is {status}")
        if member_id is not None and member_id != owner:
            raise Conflict("card_no belongs to another member")
        return str(owner)

    def _lowest_tier(self) -> str:
        tiers = sorted(self.rulebook.tiers.values(), key=lambda t: t.rank)
        if not tiers:
            raise LedgerError("the rulebook defines no tiers")
        return tiers[0].code

    def _grant_points(self, conn: Connection, tx: Transaction, member_id: str, points: int,
                      now: int, source: str = "points_issued") -> list[Any]:
        """:meth:`_points_grant` to the member's points account."""
        if points <= 0:
            return []
        return self._points_grant(tx, account(conn, member_id, "points"), member_id, points,
                                  now, source)

    def _points_grant(self, tx: Transaction, to: Account, member_id: str, points: int,
                      now: int, source: str = "points_issued") -> list[Any]:
        """Queue a points grant from system account ``source`` on ``tx``; returns the lot
        ``(member, points, expires_us, remaining)`` (expiring as new points do) to create
        after ``tx`` is written."""
        if points <= 0:
            return []
        tx.move(self._sys(source), to, points)
        days = self.rulebook.points.expiry_days if self.rulebook.points else None
        return [(member_id, points, now + days * DAY_US if days else None, points)]

    @staticmethod
    def _write_lots(conn: Connection, tx_id: int, lots: list[Any], now: int) -> None:
        """Create points lots ``(member, points, expires_us[, remaining])``."""
        for lot in lots:
            member_id, points, expires = lot[:3]
            remaining = lot[3] if len(lot) > 3 else points
            conn.execute(insert(schema.points_lots).values(
                member_id=member_id, points=points, remaining=remaining, expires_us=expires,
                tx_id=tx_id, created_us=now))

    # ------------------------------------------------------------------ members

    def enroll(self, store: str, key: str, *, phone: str | None = None,
               member_id: str | None = None, card_no: str | None = None,
               tier: str | None = None, card_type: str = "free", birthday: str | None = None,
               referrer_id: str | None = None, paid_from_us: int | None = None,
               paid_until_us: int | None = None) -> dict[str, Any]:
        """Enrol a member with a first card; a referrer and the new member both get the
        rulebook's ``referral_points``."""
        request = {"phone": phone, "member_id": member_id, "card_no": card_no, "tier": tier,
                   "card_type": card_type, "birthday": birthday, "referrer_id": referrer_id,
                   "paid_from_us": paid_from_us, "paid_until_us": paid_until_us}
        for name in ("phone", "member_id", "card_no", "tier", "birthday", "referrer_id"):
            _text(name, request[name], required=False)
        for name in ("paid_from_us", "paid_until_us"):
            _int(name, request[name], *INSTANT, required=False)
        if card_type not in CARD_TYPES:
            raise RequestError("card_type", f"must be one of {', '.join(CARD_TYPES)}")
        if tier is not None and tier not in self.rulebook.tiers:
            raise RequestError("tier", f"unknown tier {tier!r}")

        def body(conn: Connection, now: int) -> dict[str, Any]:
            mid = member_id or _new_id("M")
            card = card_no or _new_id("K")
            if referrer_id is not None:
                self._lock_member(conn, referrer_id)
            try:
                with conn.begin_nested():
                    conn.execute(insert(schema.members).values(
                        id=mid, phone=phone, tier=tier or self._lowest_tier(),
                        card_type=card_type, birthday=birthday, referrer_id=referrer_id,
                        paid_from_us=paid_from_us, paid_until_us=paid_until_us,
                        created_us=now))
                    conn.execute(insert(schema.cards).values(
                        card_no=card, member_id=mid, issued_us=now, status_us=now))
            except IntegrityError:
                raise Conflict("member id, phone or card number already in use") from None
            for kind in ("points", "sv_principal", "sv_bonus"):
                account(conn, mid, kind)
            referral = self.rulebook.points.referral_points if self.rulebook.points else 0
            if referrer_id is not None and referral:
                tx = Transaction("referral", mid, store, now)
                lots = (self._grant_points(conn, tx, mid, referral, now)
                        + self._grant_points(conn, tx, referrer_id, referral, now))
                self._write_lots(conn, tx.write(conn), lots, now)
            return {"member_id": mid, "card_no": card}

        return self._idempotent(store, key, "enroll", request, body)

    def get_member(self, *, member_id: str | None = None, phone: str | None = None,
                   card_no: str | None = None, at_us: int | None = None) -> dict[str, Any]:
        """A member's state by id, phone or card number (balances, coupons, cards)."""
        for name, value in (("member_id", member_id), ("phone", phone), ("card_no", card_no)):
            _text(name, value, required=False)
        _int("at_us", at_us, *INSTANT, required=False)
        return self._once_more_if_disconnected(
            lambda: self._get_member(member_id, phone, card_no, at_us))

    def _get_member(self, member_id: str | None, phone: str | None, card_no: str | None,
                    at_us: int | None) -> dict[str, Any]:
        with self.engine.connect() as conn:
            if card_no is not None:
                row = conn.execute(select(schema.cards.c.member_id)
                                   .where(schema.cards.c.card_no == card_no)).first()
                member_id = row.member_id if row else None
            elif phone is not None:
                row = conn.execute(select(schema.members.c.id)
                                   .where(schema.members.c.phone == phone)).first()
                member_id = row.id if row else None
            if member_id is None:
                raise NotFound("member not found")
            at = self.clock() if at_us is None else at_us
            snap = load_snapshot(conn, member_id, lock=False, at=at)
        m = snap.member
        return {
            "member_id": m.id, "phone": m.phone, "tier": m.tier, "card_type": m.card_type,
            "cumulative_spend_cents": m.cumulative_spend_cents,
            "points_balance": snap.usable,
            "points_total": snap.balance("points"),
            "points_debt": m.points_debt,
            "sv_principal_cents": snap.balance("sv_principal"),
            "sv_bonus_cents": snap.balance("sv_bonus"),
            "coupons": [{"id": cid, "template": template, "valid_from_us": vf,
                         "valid_until_us": vu} for cid, template, vf, vu in snap.coupons],
            "count_cards": [{"id": kid, "skus": skus, "uses": snap.balance("count_card", kid),
                             "valid_until_us": vu} for kid, skus, vu in snap.count_cards],
        }

    # ------------------------------------------------------------------ coupons, recharge

    def issue_coupon(self, store: str, key: str, member_id: str, template: str, *,
                     coupon_id: str | None = None, valid_from_us: int | None = None,
                     valid_until_us: int | None = None) -> dict[str, Any]:
        """Give a member a coupon of ``template``."""
        _text("member_id", member_id)
        _text("coupon_id", coupon_id, required=False)
        _int("valid_from_us", valid_from_us, *INSTANT, required=False)
        _int("valid_until_us", valid_until_us, *INSTANT, required=False)
        if _text("template", template) not in self.rulebook.coupon_templates:
            raise RequestError("template", f"unknown coupon template {template!r}")
        request = {"member_id": member_id, "template": template, "coupon_id": coupon_id,
                   "valid_from_us": valid_from_us, "valid_until_us": valid_until_us}

        def body(conn: Connection, now: int) -> dict[str, Any]:
            self._lock_member(conn, member_id)
            cid = coupon_id or _new_id("CP")
            try:
                with conn.begin_nested():
                    conn.execute(insert(schema.coupons).values(
                        id=cid, member_id=member_id, template=template,
                        valid_from_us=valid_from_us, valid_until_us=valid_until_us,
                        source="issued", issued_us=now))
            except IntegrityError:
                raise Conflict(f"coupon id {cid!r} already exists") from None
            return {"coupon_id": cid}

        return self._idempotent(store, key, "issue_coupon", request, body)

    def recharge(self, store: str, key: str, member_id: str, amount_cents: int) -> dict[str, Any]:
        """Pay ``amount_cents`` into stored value; the best ``[[recharge_rules]]`` entry adds
        bonus stored value, points and coupons."""
        _text("member_id", member_id)
        _int("amount_cents", amount_cents, 1, 10**12)
        request = {"member_id": member_id, "amount_cents": amount_cents}

        def body(conn: Connection, now: int) -> dict[str, Any]:
            self._lock_member(conn, member_id)
            rule = self.rulebook.recharge_rule(amount_cents)
            rid = _new_id("R")
            tx = Transaction("recharge", rid, store, now)
            tx.move(self._sys("sv_cash_in"), account(conn, member_id, "sv_principal"),
                    amount_cents)
            bonus = rule.bonus_cents if rule else 0
            tx.move(self._sys("sv_bonus_granted"), account(conn, member_id, "sv_bonus"), bonus)
            lots = self._grant_points(conn, tx, member_id, rule.bonus_points if rule else 0, now)
            tx_id = tx.write(conn)
            self._write_lots(conn, tx_id, lots, now)
            coupons = []
            for i, template in enumerate(rule.bonus_coupons if rule else ()):
                cid = f"{rid}-{i}"
                conn.execute(insert(schema.coupons).values(
                    id=cid, member_id=member_id, template=template, valid_from_us=now,
                    valid_until_us=now + rule.coupon_valid_days * DAY_US if rule else None,
                    source=f"recharge:{rid}", issued_us=now))
                coupons.append(cid)
            conn.execute(insert(schema.recharges).values(
                id=rid, member_id=member_id, store=store, amount_cents=amount_cents,
                bonus_cents=bonus, bonus_points=rule.bonus_points if rule else 0,
                rule_min_cents=rule.min_cents if rule else None, tx_id=tx_id, created_us=now))
            return {"recharge_id": rid, "amount_cents": amount_cents, "bonus_cents": bonus,
                    "bonus_points": rule.bonus_points if rule else 0, "bonus_coupons": coupons}

        return self._idempotent(store, key, "recharge", request, body)

    def issue_count_card(self, store: str, key: str, member_id: str, card_id: str,
                         skus: list[str], uses: int,
                         valid_until_us: int | None = None) -> dict[str, Any]:
        """Sell or give a member a count card: ``uses`` of ``skus`` until ``valid_until_us``."""
        _text("member_id", member_id)
        _text("card_id", card_id)
        if not isinstance(skus, list) or not 1 <= len(skus) <= 1000:
            raise RequestError("skus", "must be a list of 1..1000 SKU codes")
        for i, sku in enumerate(skus):
            _text(f"skus[{i}]", sku)
        _int("uses", uses, 1, 10**9)
        _int("valid_until_us", valid_until_us, *INSTANT, required=False)
        request = {"member_id": member_id, "card_id": card_id, "skus": skus, "uses": uses,
                   "valid_until_us": valid_until_us}

        def body(conn: Connection, now: int) -> dict[str, Any]:
            self._lock_member(conn, member_id)
            try:
                with conn.begin_nested():
                    conn.execute(insert(schema.count_cards).values(
                        id=card_id, member_id=member_id, skus=json.dumps(sorted(set(skus))),
                        valid_until_us=valid_until_us, issued_us=now))
            except IntegrityError:
                raise Conflict(f"count card {card_id!r} already exists") from None
            tx = Transaction("count_card", card_id, store, now)
            tx.move(self._sys("uses_issued"), account(conn, member_id, "count_card", card_id),
                    uses)
            tx.write(conn)
            return {"count_card_id": card_id, "uses": uses}

        return self._idempotent(store, key, "issue_count_card", request, body)

    def consume_count_card(self, store: str, key: str, member_id: str, card_id: str,
                           sku: str, uses: int = 1) -> dict[str, Any]:
        """Use a count card outside a basket (a salon visit): ``uses`` of ``sku``."""
        _text("member_id", member_id)
        _text("card_id", card_id)
        _text("sku", sku)
        _int("uses", uses, 1, 9999)
        request = {"member_id": member_id, "card_id": card_id, "sku": sku, "uses": uses}

        def body(conn: Connection, now: int) -> dict[str, Any]:
            self._lock_member(conn, member_id)
            card = conn.execute(select(schema.count_cards).where(
                schema.count_cards.c.id == card_id,
                schema.count_cards.c.member_id == member_id)).first()
            if card is None:
                raise NotFound(f"member {member_id!r} holds no count card {card_id!r}")
            if card.valid_until_us is not None and now >= card.valid_until_us:
                raise Conflict(f"count card {card_id!r} has expired")
            if sku not in json.loads(card.skus):
                raise Conflict(f"count card {card_id!r} does not cover SKU {sku!r}")
            tx = Transaction("count_card_use", card_id, store, now)
            tx.move(account(conn, member_id, "count_card", card_id), self._sys("uses_spent"),
                    uses)
            tx.write(conn)
            left = balance(conn, member_id, "count_card", card_id)
            return {"count_card_id": card_id, "uses": uses, "uses_left": left}

        return self._idempotent(store, key, "consume_count_card", request, body)

    # ------------------------------------------------------------------ settle

    def settle(self, store: str, key: str, request: Mapping[str, Any],
               terminal: str | None = None) -> dict[str, Any]:
        """Price a basket against the member's state and apply it, exactly once.

        ``request`` is the pricing contract's request without ``member`` and
        ``store``: ``member_id`` or ``card_no`` (or neither, a walk-in),
        ``lines``, ``coupon_ids`` or ``auto_coupons``, ``redeem_points``,
        ``pay_stored_value_cents``, optional ``at`` (default: now) and
        ``expected_payable_cents``. The response is the receipt plus
        ``settlement_id``.
        """
        payload = self._checked_settle_request(request)
        _text("terminal", terminal, required=False)

        request = {"request": payload, "terminal": terminal}
        ref = f"{store}/{key}"
        if self.engine.dialect.name == "postgresql":
            _text("store", store)
            _text("idempotency_key", key)
            digest = request_hash("settle", request)
            return self._holding(store, terminal, ref, "settle", lambda:
                                 self._once_more_if_disconnected(
                                     lambda: self._settle_pg(store, key, digest, payload,
                                                             terminal, ref)))

        def body(conn: Connection, now: int) -> dict[str, Any]:
            return self._settle(conn, now, store, terminal, payload, ref)

        return self._holding(store, terminal, ref, "settle", lambda: self._idempotent(
            store, key, "settle", request, body, settles=True))

    @staticmethod
    def _checked_settle_request(request: Mapping[str, Any]) -> dict[str, Any]:
        """The settle (or quote) request's own fields, checked (the basket itself is checked
        by the engine)."""
        if not isinstance(request, Mapping):
            raise RequestError("request", "must be a JSON object")
        payload = dict(request)
        for name in payload:
            if name not in SETTLE_FIELDS:
                raise RequestError(str(name), "unknown field (the member's state comes from "
                                   "the ledger, the store from the caller)")
        _text("member_id", payload.get("member_id"), required=False)
        _text("card_no", payload.get("card_no"), required=False)
        # Everything else is the engine's to check, except what the database cannot store.
        for i, line in enumerate(payload.get("lines") or ()):
            if isinstance(line, Mapping):
                for name, value in line.items():
                    if isinstance(value, str) and "\x00" in value:
                        raise RequestError(f"lines[{i}].{name}",
                                           "must not contain NUL characters")
        for i, value in enumerate(payload.get("coupon_ids") or ()):
            if isinstance(value, str) and "\x00" in value:
                raise RequestError(f"coupon_ids[{i}]", "must not contain NUL characters")
        _int("expected_payable_cents", payload.get("expected_payable_cents"), 0, 10**15,
             required=False)
        if payload.get("at") is not None:
            try:
                parse_instant(payload["at"])
            except ValueError as exc:
                raise RequestError("at", str(exc)) from None
        return payload

    def _snapshot_of(self, conn: Connection, req: Mapping[str, Any], lock: bool,
                     at: int) -> MemberSnapshot | None:
        """The snapshot of the request's member (by ``member_id`` or ``card_no``; None for a
        walk-in), card checks first (portable path)."""
        card = None
        if req.get("card_no") is not None:
            card = conn.execute(select(schema.cards.c.member_id, schema.cards.c.status)
                                .where(schema.cards.c.card_no == req["card_no"])).first()
        member_id = self._request_member(req, card)
        return load_snapshot(conn, member_id, lock, at) if member_id is not None else None

    def _settle(self, conn: Connection, now: int, store: str, terminal: str | None,
                req: dict[str, Any], ref: str) -> dict[str, Any]:
        """The portable path (SQLAlchemy Core): read, plan, apply."""
        at = self._settle_at(req, now)
        snap = self._snapshot_of(conn, req, lock=True, at=at)

        def ensure(kind: str, ref: str) -> Account:
            assert snap is not None
            return account(conn, snap.member.id, kind, ref)

        def more_lots() -> list[Lot]:
            assert snap is not None
            return load_lots(conn, snap.member.id, at)

        plan = self._plan_settlement(snap, store, terminal, req, at, now, ensure, more_lots)
        self._watch_settlement(alerts.SaDb(conn), plan, snap, store, terminal, req, at, now, ref)
        self._apply_settlement(conn, plan, now)
        return plan.response

    def _settle_pg(self, store: str, key: str, digest: str, req: dict[str, Any],
                   terminal: str | None, ref: str) -> dict[str, Any]:
        """The PostgreSQL path: the same checks and plan in three round trips
        (:mod:`settlement.ledger.pg_settle`); ``ref`` names the request in alerts."""
        with self._psycopg() as pg:
            now = self.clock()
            # (the instant is checked against the clock after the claim: a replay of an
            # executed key answers whatever the clock says now)
            at = _instant(req, now)
            wd = self.rulebook.watchdog
            facts = (alerts.facts_params(wd, req.get("member_id"), req.get("card_no"), store,
                                         terminal, at) if wd.enabled else None)
            stored, card, row, facts_row = pg_settle.begin(
                pg, store, key, "settle", digest, now, req.get("member_id"),
                req.get("card_no"), at, facts)
            if stored is not None:
                stored = _settle_response(stored, lambda sid: pg_settle.receipt(pg, sid))
                pg.rollback()
                return stored
            self._check_skew(at, now)
            snap = self._pg_snapshot(req, card, row)

            def ensure(kind: str, ref: str) -> Account:
                assert snap is not None
                return pg_settle.ensure_account(pg, snap.member.id, kind, ref)

            def more_lots() -> list[Lot]:
                assert snap is not None
                return pg_settle.all_lots(pg, snap.member.id, at)

            plan = self._plan_settlement(snap, store, terminal, req, at, now, ensure,
                                         more_lots)
            judged = self._judge_settlement(alerts.PgDb(pg), plan, snap, store, terminal,
                                            req, at, now, ref, facts_row)
            if judged is None:
                pg_settle.write(pg, plan, store, key, now)
            else:  # the alerts travel with the write: still one round trip
                with pg.pipeline():
                    cursors = alerts.queue_pg(pg, *judged)
                    pg_settle.write(pg, plan, store, key, now)
                alerts.finish_pg(pg, *judged, cursors)
            pg.commit()
            return plan.response

    def _pg_snapshot(self, req: Mapping[str, Any], card: tuple[Any, ...] | None,
                     row: tuple[Any, ...] | None) -> MemberSnapshot | None:
        """The member's snapshot from the PostgreSQL path's card and snapshot rows, with the
        portable path's checks in its order (card first, then member)."""
        member_id = self._request_member(req, card)
        if member_id is None:
            return None
        if row is None:
            raise NotFound(f"member {member_id!r} not found")
        return snapshot_from_pg(row)

    @contextmanager
    def _psycopg(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection as psycopg's own, for the PostgreSQL paths. On an error the
        open transaction is rolled back; a dead connection is dropped with the pool's other
        connections of its age and :class:`_Disconnected` raised, so that
        :meth:`_once_more_if_disconnected` runs the operation again."""
        fairy = self.engine.raw_connection()
        pg = fairy.driver_connection
        assert pg is not None
        try:
            yield pg
        except psycopg.OperationalError as exc:
            if not pg.broken:
                pg.rollback()
                raise
            fairy.invalidate(exc)
            self.engine.dispose(close=False)
            raise _Disconnected() from exc
        except BaseException:
            if not pg.closed:
                pg.rollback()
            raise
        finally:
            fairy.close()

    def _settle_at(self, req: Mapping[str, Any], now: int) -> int:
        """The settlement's instant: the request's ``at`` (within the clock skew) or now."""
        at = _instant(req, now)
        self._check_skew(at, now)
        return at

    def _check_skew(self, at: int, now: int) -> None:
        skew = self.max_clock_skew_us
        if skew is not None and abs(at - now) > skew:
            raise RequestError("at", f"is more than {skew // 60_000_000} minutes from the "
                               "ledger's clock (a backdated or future checkout)")

    def _plan_settlement(self, snap: MemberSnapshot | None, store: str, terminal: str | None,
                         req: dict[str, Any], at: int, now: int,
                         ensure: Callable[[str, str], Account],
                         more_lots: Callable[[], list[Lot]]) -> SettlePlan:
        """Price ``req`` against ``snap`` (read under the member's lock) and work out every
        write of the settlement; nothing is written here. ``ensure`` creates a member
        account the snapshot lacks; ``more_lots`` reads every usable lot when the
        snapshot's first ones do not cover the redemption."""
        rb = self.rulebook
        m = snap.member if snap is not None else None
        receipt = settlement.quote(rb, self._quote_request(snap, store, req, at))
        expected = req.get("expected_payable_cents")
        if expected is not None and expected != receipt["payable_cents"]:
            raise PriceChanged(expected, receipt)
        wanted_sv = min(req.get("pay_stored_value_cents") or 0, receipt["payable_cents"])
        if m is not None and receipt["stored_value_cents"] < wanted_sv:
            raise InsufficientBalance(m.id, "stored_value", "",
                                      wanted_sv - receipt["stored_value_cents"])

        def acc(kind: str, ref: str = "") -> Account:
            assert snap is not None
            hit = snap.accounts.get((kind, ref))
            return hit[0] if hit is not None else ensure(kind, ref)

        sid = _new_id("S")
        tx = Transaction("settle", sid, store, now)
        n = len(receipt["lines"])
        sv_bonus = 0
        line_points_redeemed = [0] * n
        line_points_earned = [0] * n
        line_sv = [0] * n
        line_sv_bonus = [0] * n
        plan = SettlePlan(sid, m.id if m is not None else None, tx)
        if snap is not None and m is not None:
            plan.coupon_ids = [c["id"] for c in receipt["applied_coupons"]]
            redeemed = receipt["points_redeemed"]
            if redeemed:
                lots = snap.lots
                if not snap.all_lots and sum(lot.remaining for lot in lots) < redeemed:
                    lots = more_lots()
                plan.lot_takes = self._lot_takes(lots, redeemed, at)
                tx.move(acc("points"), self._sys("points_redeemed"), redeemed)
                line_points_redeemed = apportion(
                    redeemed, [ln["points_offset_cents"] for ln in receipt["lines"]])
            used = receipt["stored_value_cents"]
            if used:
                principal, bonus = snap.balance("sv_principal"), snap.balance("sv_bonus")
                sv_bonus = used * bonus // (principal + bonus)
                tx.move(acc("sv_principal"), self._sys("sv_spent"), used - sv_bonus)
                tx.move(acc("sv_bonus"), self._sys("sv_spent"), sv_bonus)
                line_sv = allocate(used, [ln["net_cents"] for ln in receipt["lines"]])
                line_sv_bonus = allocate(sv_bonus, line_sv)
            for card in receipt["count_cards_used"]:
                tx.move(acc("count_card", card["id"]), self._sys("uses_spent"), card["uses"])
            earned = receipt["points_earned"]
            debt = m.points_debt
            if earned:
                plan.new_lots = self._points_grant(tx, acc("points"), m.id, earned, now)
                repay = min(debt, earned)
                if repay:  # earned points first pay off a refund's points debt
                    tx.move(acc("points"), self._sys("points_clawed_back"), repay)
                    plan.new_lots = [(m.id, earned, plan.new_lots[0][2], earned - repay)]
                    debt -= repay
                earning = [ln["net_cents"] if self._earns(line) else 0
                           for ln, line in zip(receipt["lines"], req["lines"], strict=True)]
                line_points_earned = apportion(earned, earning)
            plan.member_values = {**self._spend_values(m, receipt["payable_cents"]),
                                  "points_debt": debt}
        plan.settlement = dict(
            id=sid, store=store, terminal=terminal, member_id=plan.member_id,
            at_us=at, rulebook_version=rb.version,
            gross_cents=receipt["gross_cents"], count_card_cents=receipt["count_card_cents"],
            item_discount_cents=receipt["item_discount_cents"],
            coupon_discount_cents=receipt["coupon_discount_cents"],
            points_offset_cents=receipt["points_offset_cents"],
            rounding_cents=receipt["rounding_cents"], payable_cents=receipt["payable_cents"],
            stored_value_cents=receipt["stored_value_cents"], sv_bonus_cents=sv_bonus,
            due_cents=receipt["due_cents"], points_redeemed=receipt["points_redeemed"],
            points_earned=receipt["points_earned"],
            receipt=json.dumps(receipt, separators=(",", ":"), ensure_ascii=False),
            created_us=now)
        plan.lines = [
            {"settlement_id": sid, "line_no": i, "sku": line["sku"], "category": line["category"],
             "unit_price_cents": line["unit_price_cents"], "quantity": line["quantity"],
             "count_card_id": line.get("count_card_id"), **ln,
             "sv_principal_cents": line_sv[i] - line_sv_bonus[i],
             "sv_bonus_cents": line_sv_bonus[i], "points_redeemed": line_points_redeemed[i],
             "points_earned": line_points_earned[i]}
            for i, (line, ln) in enumerate(zip(req["lines"], receipt["lines"], strict=True))]
        plan.response = {**receipt, "settlement_id": sid}
        return plan

    def _quote_request(self, snap: MemberSnapshot | None, store: str, req: Mapping[str, Any],
                       at: int) -> dict[str, Any]:
        """The pricing contract's request for ``req`` with the member's state from ``snap``."""
        quote_req = {k: v for k, v in req.items()
                     if k not in ("member_id", "card_no", "expected_payable_cents")}
        quote_req["store"] = store
        quote_req["at"] = req.get("at") or format_instant(at)
        if snap is not None:
            m = snap.member
            quote_req["member"] = {
                "id": m.id, "tier": self._effective_tier(m, at),
                "points_balance": snap.usable,
                "stored_value_cents": snap.balance("sv_principal") + snap.balance("sv_bonus"),
                "coupons": [{"id": cid, "template": template,
                             "valid_from": _iso_or_none(vf), "valid_until": _iso_or_none(vu)}
                            for cid, template, vf, vu in snap.coupons],
                "count_cards": [{"id": kid, "skus": skus, "uses": snap.balance("count_card", kid),
                                 "valid_until": _iso_or_none(vu)}
                                for kid, skus, vu in snap.count_cards],
            }
        return quote_req

    def quote(self, store: str, request: Mapping[str, Any],
              terminal: str | None = None) -> dict[str, Any]:
        """Price a settle request against the member's current state; nothing is written
        and nothing is locked (the price may differ at Settle: pass the quoted payable as
        ``expected_payable_cents`` there). A walk-in (no member) reads no database."""
        payload = self._checked_settle_request(request)
        _text("store", store)
        now = self.clock()
        at = self._settle_at(payload, now)
        if payload.get("member_id") is None and payload.get("card_no") is None:
            return settlement.quote(self.rulebook, self._quote_request(None, store, payload, at))

        def read() -> dict[str, Any]:
            if self.engine.dialect.name == "postgresql":
                return self._quote_pg(store, payload, at)
            with self.engine.connect() as conn:
                snap = self._snapshot_of(conn, payload, lock=False, at=at)
            return settlement.quote(self.rulebook, self._quote_request(snap, store, payload, at))

        # A quote with a lost card is a use of it: refused and alerted like a settle.
        return self._holding(store, terminal, f"{store}/quote:{uuid.uuid4().hex}", "quote",
                             lambda: self._once_more_if_disconnected(read))

    def _quote_pg(self, store: str, req: dict[str, Any], at: int) -> dict[str, Any]:
        """Quote on PostgreSQL: the member read in one round trip, no transaction."""
        with self._psycopg() as pg:
            card, row = pg_settle.read_member(pg, req.get("member_id"), req.get("card_no"), at)
        snap = self._pg_snapshot(req, card, row)
        return settlement.quote(self.rulebook, self._quote_request(snap, store, req, at))

    def get_settlement(self, settlement_id: str) -> dict[str, Any]:
        """A settlement: its receipt, status and refunded units per line."""
        _text("settlement_id", settlement_id)

        def run() -> dict[str, Any]:
            with self.engine.connect() as conn:
                s = conn.execute(select(schema.settlements).where(
                    schema.settlements.c.id == settlement_id)).first()
                if s is None:
                    raise NotFound(f"settlement {settlement_id!r} not found")
                refunded = conn.execute(select(
                    schema.settlement_lines.c.line_no,
                    schema.settlement_lines.c.refunded_quantity).where(
                    schema.settlement_lines.c.settlement_id == settlement_id,
                    schema.settlement_lines.c.refunded_quantity > 0)
                    .order_by(schema.settlement_lines.c.line_no)).all()
            return {"settlement_id": s.id, "store": s.store, "terminal": s.terminal,
                    "member_id": s.member_id, "at_us": s.at_us, "status": s.status,
                    "receipt": json.loads(s.receipt),
                    "refunded": [{"line_no": r.line_no, "quantity": r.refunded_quantity}
                                 for r in refunded]}

        return self._once_more_if_disconnected(run)

    def list_coupons(self, member_id: str, page_size: int = 50,
                     after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """A member's available coupons by id, ``page_size`` at a time after coupon id
        ``after``; returns (coupons, the last id when more may follow, else None)."""
        _text("member_id", member_id)
        _int("page_size", page_size, 1, 500)
        _text("page_token", after, required=False)
        c = schema.coupons.c

        def run() -> tuple[list[dict[str, Any]], str | None]:
            with self.engine.connect() as conn:
                if conn.execute(select(schema.members.c.id)
                                .where(schema.members.c.id == member_id)).first() is None:
                    raise NotFound(f"member {member_id!r} not found")
                query = (select(c.id, c.template, c.valid_from_us, c.valid_until_us)
                         .where(c.member_id == member_id, c.state == "available")
                         .order_by(c.id).limit(page_size + 1))
                if after is not None:
                    query = query.where(c.id > after)
                rows = conn.execute(query).all()
            page = [{"id": r.id, "template": r.template, "valid_from_us": r.valid_from_us,
                     "valid_until_us": r.valid_until_us} for r in rows[:page_size]]
            return page, (page[-1]["id"] if len(rows) > page_size else None)

        return self._once_more_if_disconnected(run)

    def _apply_settlement(self, conn: Connection, plan: SettlePlan, now: int) -> None:
        """Write ``plan`` with SQLAlchemy Core, every update guarded by the state it read."""
        for cid in plan.coupon_ids:
            done = conn.execute(update(schema.coupons).where(
                schema.coupons.c.id == cid, schema.coupons.c.member_id == plan.member_id,
                schema.coupons.c.state == "available").values(
                state="redeemed", settlement_id=plan.sid)).rowcount
            if done != 1:
                raise Conflict(f"coupon {cid!r} is no longer available")
        self._take_from_lots(conn, plan.lot_takes)
        if plan.member_values is not None:
            conn.execute(update(schema.members).where(schema.members.c.id == plan.member_id)
                         .values(**plan.member_values))
        tx_id = plan.tx.write(conn)
        self._write_lots(conn, tx_id, plan.new_lots, now)
        conn.execute(insert(schema.settlements).values(**plan.settlement, tx_id=tx_id))
        conn.execute(insert(schema.settlement_lines), plan.lines)

    # ------------------------------------------------------------------ refund, void

    def refund(self, store: str, key: str, settlement_id: str,
               lines: list[Mapping[str, int]] | None = None) -> dict[str, Any]:
        """Refund ``lines`` (``[{"line_no", "quantity"}]``) of a settlement, or all that is
        left when ``lines`` is None. See ``docs/ledger-notes.md`` for what comes back."""
        _text("settlement_id", settlement_id)
        if lines is not None:
            if not isinstance(lines, list) or not 1 <= len(lines) <= 500:
                raise RequestError("lines", "must be a list of 1..500 {line_no, quantity}")
            for i, item in enumerate(lines):
                if not isinstance(item, Mapping) or set(item) != {"line_no", "quantity"}:
                    raise RequestError(f"lines[{i}]", "must be an object {line_no, quantity}")
                _int(f"lines[{i}].line_no", item["line_no"], 0, 499)
                _int(f"lines[{i}].quantity", item["quantity"], 1, 9999)
        request = {"settlement_id": settlement_id,
                   "lines": None if lines is None else [dict(x) for x in lines]}

        def body(conn: Connection, now: int) -> dict[str, Any]:
            return self._refund(conn, now, store, key, settlement_id, lines, void=False)

        return self._holding(store, None, f"{store}/{key}", "refund", lambda: self._idempotent(
            store, key, "refund", request, body))

    def void(self, store: str, key: str, settlement_id: str) -> dict[str, Any]:
        """Cancel a settlement that has no refunds yet: a full refund, marked voided."""
        _text("settlement_id", settlement_id)

        def body(conn: Connection, now: int) -> dict[str, Any]:
            return self._refund(conn, now, store, key, settlement_id, None, void=True)

        return self._holding(store, None, f"{store}/{key}", "void", lambda: self._idempotent(
            store, key, "void", {"settlement_id": settlement_id}, body))

    def _refund(self, conn: Connection, now: int, store: str, key: str, sid: str,
                wanted: list[Mapping[str, int]] | None, void: bool) -> dict[str, Any]:
        head = conn.execute(select(schema.settlements.c.member_id)
                            .where(schema.settlements.c.id == sid)).first()
        if head is None:
            raise NotFound(f"settlement {sid!r} not found")
        m = self._lock_member(conn, head.member_id) if head.member_id is not None else None
        # Refunds of one settlement run one at a time even without a member (a walk-in).
        query = select(schema.settlements).where(schema.settlements.c.id == sid)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        s = conn.execute(query).one()
        if s.status == "voided":
            raise Conflict(f"settlement {sid!r} is voided")
        rows = {r.line_no: r for r in conn.execute(select(schema.settlement_lines).where(
            schema.settlement_lines.c.settlement_id == sid))}
        if void and any(r.refunded_quantity for r in rows.values()):
            raise Conflict(f"settlement {sid!r} has refunds: refund the rest instead of voiding")
        if wanted is None:
            plan = {n: r.quantity - r.refunded_quantity for n, r in rows.items()
                    if r.quantity > r.refunded_quantity}
        else:
            plan = {}
            for i, item in enumerate(wanted):
                n, k = item.get("line_no"), item.get("quantity")
                if n not in rows or n in plan:
                    raise RequestError(f"lines[{i}].line_no", "no such line, or named twice")
                left = rows[n].quantity - rows[n].refunded_quantity
                if not isinstance(k, int) or not 0 < k <= left:
                    raise RequestError(f"lines[{i}].quantity",
                                       f"must be 1..{left} (units not yet refunded)")
                plan[n] = k
        if not plan:
            raise Conflict(f"settlement {sid!r} is fully refunded")

        rid = _new_id("F")
        tx = Transaction("void" if void else "refund", rid, store, now)
        out_lines = []
        totals = dict.fromkeys(("net", "coupon", "offset", "svp", "svb", "pts_back",
                                "pts_taken", "uses"), 0)
        for n in sorted(plan):
            r, k = rows[n], plan[n]
            q, done = r.quantity, r.refunded_quantity

            def part(amount: int, q: int = q, done: int = done, k: int = k) -> int:
                return amount * (done + k) // q - amount * done // q

            line = {"line_no": n, "quantity": k, "net_cents": part(r.net_cents),
                    "coupon_discount_cents": part(r.coupon_discount_cents),
                    "points_offset_cents": part(r.points_offset_cents),
                    "sv_principal_cents": part(r.sv_principal_cents),
                    "sv_bonus_cents": part(r.sv_bonus_cents),
                    "points_returned": part(r.points_redeemed),
                    "points_taken_back": part(r.points_earned)}
            out_lines.append(line)
            for name, column in (("net", "net_cents"), ("coupon", "coupon_discount_cents"),
                                 ("offset", "points_offset_cents"), ("svp", "sv_principal_cents"),
                                 ("svb", "sv_bonus_cents"), ("pts_back", "points_returned"),
                                 ("pts_taken", "points_taken_back")):
                totals[name] += line[column]
            if r.count_card_id is not None and m is not None:
                tx.move(self._sys("uses_spent"),
                        account(conn, m.id, "count_card", r.count_card_id), k)
            changed = conn.execute(update(schema.settlement_lines).where(
                schema.settlement_lines.c.settlement_id == sid,
                schema.settlement_lines.c.line_no == n,
                schema.settlement_lines.c.refunded_quantity == done)
                .values(refunded_quantity=done + k)).rowcount
            if changed != 1:  # cannot happen under the lock above; never refund twice
                raise Conflict(f"settlement {sid!r} changed during the refund; retry")
        new_lots: list[Any] = []
        debt = 0
        if m is not None:
            tx.move(self._sys("sv_spent"), account(conn, m.id, "sv_principal"), totals["svp"])
            tx.move(self._sys("sv_spent"), account(conn, m.id, "sv_bonus"), totals["svb"])
            if totals["pts_back"]:
                # points that paid for refunded goods come back as a new lot
                new_lots = self._grant_points(conn, tx, m.id, totals["pts_back"], now,
                                              source="points_redeemed")
            taken = totals["pts_taken"]
            if taken:
                lots = conn.execute(select(schema.points_lots).where(
                    schema.points_lots.c.member_id == m.id,
                    schema.points_lots.c.remaining > 0)).all()
                usable = sum(lot.remaining for lot in lots
                             if lot.expires_us is None or lot.expires_us > now)
                take = min(taken, usable)
                debt = taken - take
                if take:
                    self._spend_lots(conn, lots, take, now)
                    tx.move(account(conn, m.id, "points"), self._sys("points_clawed_back"),
                            take)
            conn.execute(update(schema.members).where(schema.members.c.id == m.id).values(
                cumulative_spend_cents=schema.members.c.cumulative_spend_cents
                - min(totals["net"], m.cumulative_spend_cents),
                points_debt=schema.members.c.points_debt + debt))
        tx_id = tx.write(conn)
        self._write_lots(conn, tx_id, new_lots, now)
        fully = all(rows[n].refunded_quantity + plan.get(n, 0) == rows[n].quantity
                    for n in rows)
        coupons_back: list[str] = []
        if fully and m is not None:
            back = conn.execute(select(schema.coupons.c.id).where(
                schema.coupons.c.settlement_id == sid, schema.coupons.c.state == "redeemed",
                (schema.coupons.c.valid_until_us.is_(None))
                | (schema.coupons.c.valid_until_us > now))).scalars().all()
            if back:
                conn.execute(update(schema.coupons).where(schema.coupons.c.id.in_(back))
                             .values(state="available", settlement_id=None))
            coupons_back = sorted(back)
        if void:
            conn.execute(update(schema.settlements).where(schema.settlements.c.id == sid)
                         .values(status="voided"))
        if m is not None:
            self._watch_refund(conn, store, key, m.id, totals["net"], s.at_us, rid,
                               "void" if void else "refund", now)
        sv_back = totals["svp"] + totals["svb"]
        conn.execute(insert(schema.refunds).values(
            id=rid, settlement_id=sid, store=store, net_cents=totals["net"],
            stored_value_cents=sv_back, cash_cents=totals["net"] - sv_back,
            points_returned=totals["pts_back"], points_taken_back=totals["pts_taken"],
            tx_id=tx_id, created_us=now))
        conn.execute(insert(schema.refund_lines), [{"refund_id": rid, **ln} for ln in out_lines])
        return {"refund_id": rid, "settlement_id": sid, "lines": out_lines,
                "net_cents": totals["net"], "stored_value_cents": sv_back,
                "cash_cents": totals["net"] - sv_back, "points_returned": totals["pts_back"],
                "points_taken_back": totals["pts_taken"], "points_debt_added": debt,
                "coupons_returned": coupons_back, "voided": void}

    def _watch_refund(self, conn: Connection, store: str, key: str, member_id: str,
                      net_cents: int, sold_at: int, rid: str, operation: str,
                      now: int) -> None:
        """The refund-abuse rule, inside the refund's transaction (before its row is
        written, so the facts are the refunds before it). ``sold_at``: when the refunded
        settlement was made (its money counts in the ratio only inside the window)."""
        wd = self.rulebook.watchdog
        if wd.rule("refund_abuse") is None:
            return
        db = alerts.SaDb(conn)
        count, refunded, settled = alerts.refund_facts(db, wd, member_id, now)
        recent = sold_at > now - wd.windows["refund_us"]
        hits = evaluate_refund(wd, RefundEvent(store, member_id, net_cents if recent else 0,
                                               count, refunded, settled))
        self._hold_or_record(db, hits, alerts.Context(store, None, member_id, None,
                                                      f"{store}/{key}", operation, rid,
                                                      self.rulebook.version, now))

    # ------------------------------------------------------------------ recharge reversal

    def reverse_recharge(self, store: str, key: str, recharge_id: str) -> dict[str, Any]:
        """Take back a recharge none of which has been spent: principal, bonus, bonus points,
        and its bonus coupons (voided)."""
        _text("recharge_id", recharge_id)

        def body(conn: Connection, now: int) -> dict[str, Any]:
            r = conn.execute(select(schema.recharges)
                             .where(schema.recharges.c.id == recharge_id)).first()
            if r is None:
                raise NotFound(f"recharge {recharge_id!r} not found")
            self._lock_member(conn, r.member_id)
            if r.status != "active":
                raise Conflict(f"recharge {recharge_id!r} is already reversed")
            spent = conn.execute(select(schema.settlements.c.id).where(
                schema.settlements.c.member_id == r.member_id,
                schema.settlements.c.created_us >= r.created_us,
                schema.settlements.c.stored_value_cents > 0).limit(1)).first()
            used = conn.execute(select(schema.coupons.c.id).where(
                schema.coupons.c.source == f"recharge:{recharge_id}",
                schema.coupons.c.state != "available").limit(1)).first()
            if spent is not None or used is not None:
                raise Conflict(f"recharge {recharge_id!r} has been spent in part")
            tx = Transaction("recharge_reversal", recharge_id, store, now)
            tx.move(account(conn, r.member_id, "sv_principal"), self._sys("sv_cash_in"),
                    r.amount_cents)
            tx.move(account(conn, r.member_id, "sv_bonus"), self._sys("sv_bonus_granted"),
                    r.bonus_cents)
            if r.bonus_points:
                lot = conn.execute(select(schema.points_lots).where(
                    schema.points_lots.c.tx_id == r.tx_id,
                    schema.points_lots.c.member_id == r.member_id)).one()
                if lot.remaining < r.bonus_points:
                    raise Conflict(f"recharge {recharge_id!r}: its bonus points were spent")
                conn.execute(update(schema.points_lots).where(schema.points_lots.c.id == lot.id)
                             .values(remaining=lot.remaining - r.bonus_points))
                tx.move(account(conn, r.member_id, "points"), self._sys("points_issued"),
                        r.bonus_points)
            tx_id = tx.write(conn)
            conn.execute(update(schema.coupons).where(
                schema.coupons.c.source == f"recharge:{recharge_id}").values(state="void"))
            conn.execute(update(schema.recharges).where(schema.recharges.c.id == recharge_id)
                         .values(status="reversed", reversal_tx_id=tx_id))
            return {"recharge_id": recharge_id, "reversed": True}

        return self._idempotent(store, key, "reverse_recharge", {"recharge_id": recharge_id},
                                body)

    # ------------------------------------------------------------------ cards, expiry

    def _locked_card(self, conn: Connection, card_no: str) -> Any:
        """A card row, with its member's row locked."""
        card = conn.execute(select(schema.cards)
                            .where(schema.cards.c.card_no == card_no)).first()
        if card is None:
            raise NotFound(f"card {card_no!r} not found")
        self._lock_member(conn, card.member_id)
        return card

    def report_lost(self, store: str, key: str, card_no: str) -> dict[str, Any]:
        """Block a card: every later operation with it is refused."""
        _text("card_no", card_no)

        def body(conn: Connection, now: int) -> dict[str, Any]:
            card = self._locked_card(conn, card_no)
            if card.status != "active":
                raise Conflict(f"card {card_no!r} is {card.status}")
            conn.execute(update(schema.cards).where(schema.cards.c.card_no == card_no)
                         .values(status="lost", status_us=now))
            return {"card_no": card_no, "status": "lost"}

        return self._idempotent(store, key, "report_lost", {"card_no": card_no}, body)

    def replace_card(self, store: str, key: str, card_no: str,
                     new_card_no: str | None = None) -> dict[str, Any]:
        """Issue a new card number for the same member and balances; the old one stops."""
        _text("card_no", card_no)
        _text("new_card_no", new_card_no, required=False)

        def body(conn: Connection, now: int) -> dict[str, Any]:
            card = self._locked_card(conn, card_no)
            if card.status == "replaced":
                raise Conflict(f"card {card_no!r} was already replaced")
            new = new_card_no or _new_id("K")
            try:
                with conn.begin_nested():
                    conn.execute(insert(schema.cards).values(
                        card_no=new, member_id=card.member_id, issued_us=now, status_us=now))
            except IntegrityError:
                raise Conflict(f"card number {new!r} already in use") from None
            conn.execute(update(schema.cards).where(schema.cards.c.card_no == card_no)
                         .values(status="replaced", replaced_by=new, status_us=now))
            return {"card_no": new, "member_id": card.member_id, "replaces": card_no}

        return self._idempotent(store, key, "replace_card",
                                {"card_no": card_no, "new_card_no": new_card_no}, body)

    def expire_points(self, now_us: int | None = None) -> dict[str, int]:
        """Expire every lot past its expiry, one journal transaction per member (a job:
        running it again finds nothing)."""
        now = self.clock() if now_us is None else now_us
        expired = members = 0
        with self.engine.connect() as conn:
            due = conn.execute(select(schema.points_lots.c.member_id).where(
                schema.points_lots.c.remaining > 0, schema.points_lots.c.expires_us <= now)
                .distinct()).scalars().all()
        for member_id in due:
            with self.engine.begin() as conn:
                self._lock_member(conn, member_id)
                lots = conn.execute(select(schema.points_lots).where(
                    schema.points_lots.c.member_id == member_id,
                    schema.points_lots.c.remaining > 0,
                    schema.points_lots.c.expires_us <= now)).all()
                total = sum(lot.remaining for lot in lots)
                if not total:
                    continue
                tx = Transaction("points_expiry", member_id, None, now)
                tx.move(account(conn, member_id, "points"), self._sys("points_expired"),
                        total)
                tx.write(conn)
                conn.execute(update(schema.points_lots).where(
                    schema.points_lots.c.id.in_([lot.id for lot in lots])).values(remaining=0))
                expired += total
                members += 1
        return {"points_expired": expired, "members": members}

    def _earns(self, line: Mapping[str, Any]) -> bool:
        cat = self.rulebook.categories.get(line["category"])
        return cat is None or cat.earns_points

    def _effective_tier(self, m: Any, at: int) -> str:
        """A paid card's tier applies only within its paid period; otherwise the lowest."""
        if m.card_type == "paid":
            inside = ((m.paid_from_us is None or m.paid_from_us <= at)
                      and (m.paid_until_us is None or at < m.paid_until_us))
            if not inside:
                return self._lowest_tier()
        return str(m.tier)

    @staticmethod
    def _lot_takes(lots: Sequence[Any], points: int, at: int) -> list[tuple[int, int]]:
        """What to take from which lot to spend ``points``: unexpired lots, earliest expiry
        first (no expiry last)."""
        usable = sorted((lot for lot in lots if lot.expires_us is None or lot.expires_us > at),
                        key=lambda lot: (lot.expires_us is None, lot.expires_us or 0, lot.id))
        takes = []
        left = points
        for lot in usable:
            if left == 0:
                break
            take = min(left, lot.remaining)
            takes.append((lot.id, take))
            left -= take
        if left:
            raise InsufficientBalance(str(lots[0].member_id) if lots else "?", "points", "", left)
        return takes

    @staticmethod
    def _take_from_lots(conn: Connection, takes: list[tuple[int, int]]) -> None:
        for lot_id, take in takes:
            done = conn.execute(update(schema.points_lots).where(
                schema.points_lots.c.id == lot_id, schema.points_lots.c.remaining >= take)
                .values(remaining=schema.points_lots.c.remaining - take)).rowcount
            if done != 1:
                raise Conflict("points lots changed concurrently")

    def _spend_lots(self, conn: Connection, lots: Sequence[Any], points: int, at: int) -> None:
        """Spend ``points`` from ``lots`` (see :meth:`_lot_takes`)."""
        self._take_from_lots(conn, self._lot_takes(lots, points, at))

    def _spend_values(self, m: MemberRow, payable: int) -> dict[str, Any]:
        """Cumulative spend after paying ``payable``; a ``tiered`` card moves up when it
        crosses ``upgrade_at_cents`` (the new tier applies from the next settlement on)."""
        spend = m.cumulative_spend_cents + payable
        values: dict[str, Any] = {"cumulative_spend_cents": spend, "tier": m.tier}
        if m.card_type == "tiered":
            current = self.rulebook.tiers.get(m.tier)
            reachable = [t for t in self.rulebook.tiers.values()
                         if t.upgrade_at_cents <= spend
                         and (current is None or t.rank > current.rank)]
            if reachable:
                values["tier"] = max(reachable, key=lambda t: t.rank).code
        return values


def _instant(req: Mapping[str, Any], now: int) -> int:
    """The request's ``at`` in epoch microseconds, or ``now``."""
    return parse_instant(req["at"]) if req.get("at") is not None else now


def _settle_response(stored: dict[str, Any], receipt: Callable[[str], str]) -> dict[str, Any]:
    """A settle response from what its key stored: the settlement id, whose receipt JSON
    ``receipt(id)`` reads (a whole response, as stored before, is returned as is)."""
    if set(stored) != {"settlement_id"}:
        return stored
    sid = stored["settlement_id"]
    return {**json.loads(receipt(sid)), "settlement_id": sid}


def _stored_settle(response: dict[str, Any]) -> dict[str, Any]:
    """What a settle's idempotency key keeps: the settlement id (the receipt is in
    ``settlements``; storing it twice cost a second copy per settlement)."""
    return {"settlement_id": response["settlement_id"]}


def _iso_or_none(micros: int | None) -> str | None:
    return None if micros is None else format_instant(micros)
