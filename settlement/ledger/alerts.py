"""Watchdog alerts in the database: the look-back facts, recording hits, and review.

The rules themselves are pure (:mod:`settlement.watchdog`). Here:

- :data:`FACTS_SQL` reads, in one statement, what the settlement rules look back
  on (counts and sums of the member's and the terminal's recent settlements and
  the member's largest recent points accrual). It runs inside the settlement's
  transaction after the member's row lock, so one member's settlements are
  judged one at a time against committed history, whatever the number of
  server processes (the state is the journal, not a process's memory).
- :func:`record` writes hits in the caller's transaction: one open alert per
  (rule, subject), later hits attached to it; each hit keyed by the request
  (``store/idempotency key``) so a retry never counts twice; an audit event per
  change; an outbox row per new alert; on PostgreSQL a ``NOTIFY`` that reaches
  listeners at commit.
- :class:`AlertDesk` is risk staff's side: list, show, acknowledge, assign,
  annotate and resolve, each change in the audit trail.

SQL here is written once with ``:name`` parameters and runs on SQLAlchemy
connections (SQLite, PostgreSQL) and on the PostgreSQL settle path's raw psycopg
connection (:class:`PgDb`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, text

from settlement.errors import RequestError
from settlement.watchdog import Facts, Hit, Watchdog

from .checks import text_field
from .errors import Conflict, NotFound

#: The PostgreSQL channel a commit with new alert events notifies (payload: the new
#: events' ids, comma-separated: ids are not committed in order, so a listener reads
#: exactly the ones named instead of "everything after the last id").
CHANNEL = "settlement_alerts"
STATES = ("open", "acknowledged", "resolved")
OUTCOMES = ("confirmed_fraud", "false_positive", "valuable")
ACTOR = "watchdog"


class Db(Protocol):
    """A connection the alert SQL runs on (inside the caller's transaction)."""

    postgres: bool

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...


class SaDb:
    """A SQLAlchemy connection as a :class:`Db`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        result = self.conn.execute(text(sql), params)
        return [tuple(r) for r in result] if result.returns_rows else []


_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def pg_sql(sql: str) -> str:
    """``:name`` parameters as psycopg's ``%(name)s``."""
    return _PARAM.sub(r"%(\1)s", sql)


class PgDb:
    """A psycopg connection as a :class:`Db` (the PostgreSQL settle path)."""

    postgres = True

    def __init__(self, pg: Any) -> None:
        self.pg = pg

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        cur = self.pg.execute(pg_sql(sql), params)
        return list(cur.fetchall()) if cur.description else []


# ---------------------------------------------------------------- facts

#: What the settlement rules look back on, before the settlement being committed: the
#: member's settlements of the longest member window read once (index on member_id, at_us)
#: and each window's count or sum taken from that one read with FILTER; the terminal's
#: settlements and the member's recent points lots by their own indexes.
FACTS_SQL = " ".join("""
WITH m AS (SELECT coalesce(:member, (SELECT member_id FROM cards WHERE card_no = :card)) AS id)
SELECT coalesce(a.burst, 0), coalesce(a.day, 0), coalesce(a.history, 0),
 coalesce(a.history_max, 0),
 (SELECT count(*) FROM (SELECT 1 FROM settlements
   WHERE store = :store AND terminal = :terminal AND at_us > :terminal_since AND at_us <= :at
   LIMIT :terminal_cap) t),
 coalesce(a.drain, 0), coalesce(a.burn, 0),
 (SELECT coalesce(max(points), 0) FROM points_lots
   WHERE member_id = (SELECT id FROM m) AND created_us > :accrual),
 coalesce(a.spread, 0)
FROM (SELECT count(*) FILTER (WHERE at_us > :burst) AS burst,
             count(*) FILTER (WHERE at_us > :day) AS day,
             count(*) FILTER (WHERE at_us > :history) AS history,
             max(payable_cents) FILTER (WHERE at_us > :history) AS history_max,
             sum(stored_value_cents) FILTER (WHERE at_us > :drain) AS drain,
             sum(points_redeemed) FILTER (WHERE at_us > :burn) AS burn,
             count(DISTINCT store) FILTER (WHERE at_us > :spread AND store <> :store) AS spread
      FROM settlements
      WHERE member_id = (SELECT id FROM m) AND at_us > :oldest AND at_us <= :at) a
""".split())


#: The terminal's settlements are counted up to this many times ``terminal_burst``'s
#: ``count``: the rule needs only "reached", and a flood of one terminal must not make
#: every later settlement's look-back read longer (the evidence then shows the ceiling).
TERMINAL_CAP = 10


def facts_params(wd: Watchdog, member_id: str | None, card_no: str | None, store: str,
                 terminal: str | None, at: int) -> dict[str, Any]:
    """:data:`FACTS_SQL`'s parameters for a settlement at ``at``."""
    w = wd.windows
    burst = wd.rule("terminal_burst")
    return {"member": member_id, "card": card_no, "store": store, "terminal": terminal,
            "terminal_cap": TERMINAL_CAP * burst.count if burst is not None else 0,
            "at": at, "burst": at - w["burst_us"], "day": at - w["day_us"],
            "history": at - w["history_us"], "terminal_since": at - w["terminal_us"],
            "drain": at - w["drain_us"], "burn": at - w["burn_us"],
            "accrual": at - w["accrual_us"], "spread": at - w["spread_us"],
            "oldest": at - max(w[k] for k in ("burst_us", "day_us", "history_us", "drain_us",
                                               "burn_us", "spread_us"))}


def facts_from_row(row: Sequence[Any]) -> Facts:
    """:class:`Facts` from a :data:`FACTS_SQL` row."""
    return Facts(*(int(v) for v in row))


#: The member's refunds in the window (all of them, for the count) and their money back
#: on purchases made in the window, against what those purchases came to: a return of
#: an older, larger purchase does not make this week's ratio.
REFUND_FACTS_SQL = " ".join("""
SELECT count(*), coalesce(sum(r.net_cents) FILTER (WHERE s.at_us > :since), 0),
 (SELECT coalesce(sum(payable_cents), 0) FROM settlements
   WHERE member_id = :member AND at_us > :since)
FROM refunds r JOIN settlements s ON s.id = r.settlement_id
WHERE s.member_id = :member AND r.created_us > :since
""".split())


def refund_facts(db: Db, wd: Watchdog, member_id: str, now: int) -> tuple[int, int, int]:
    """(refunds, refunded cents of purchases in the window, settled cents) of a member
    within the refund-abuse window before ``now``."""
    since = now - wd.windows["refund_us"]
    row = db.rows(REFUND_FACTS_SQL, {"member": member_id, "since": since})[0]
    return int(row[0]), int(row[1]), int(row[2])


# ---------------------------------------------------------------- recording


@dataclass(frozen=True, slots=True)
class Context:
    """Where hits come from: the request and what it is about."""

    store: str
    terminal: str | None
    member_id: str | None
    card_no: str | None
    #: the request: "<store>/<idempotency key>" (a quote: a fresh id)
    ref: str
    operation: str
    #: the settlement or refund written with the hits (None when held)
    operation_id: str | None
    rule_version: str
    now: int


def subject(hit: Hit, ctx: Context) -> str:
    """What one open alert per rule is kept for: the member, the terminal (its burst rule)
    or the store (a walk-in)."""
    if hit.rule == "terminal_burst":
        return f"terminal:{ctx.store}/{ctx.terminal}"
    if ctx.member_id is not None:
        return f"member:{ctx.member_id}"
    return f"store:{ctx.store}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_OPEN_ALERT = """
INSERT INTO alerts (id, rule, rule_version, severity, action, subject, member_id, card_no,
                    store, terminal, settlement_id, evidence, state, hits, created_us,
                    updated_us, last_hit_us)
VALUES (:id, :rule, :version, :severity, :action, :subject, :member, :card, :store,
        :terminal, :operation_id, :evidence, 'open', 1, :now, :now, :now)
ON CONFLICT (rule, subject) WHERE state <> 'resolved' DO NOTHING
RETURNING id
"""
_OPEN_ID = "SELECT id FROM alerts WHERE rule = :rule AND subject = :subject AND state <> 'resolved'"
_HIT = """
INSERT INTO alert_hits (alert_id, ref, operation, operation_id, action, rule_version, store,
                        terminal, evidence, created_us)
VALUES (:alert, :ref, :operation, :operation_id, :action, :version, :store, :terminal,
        :evidence, :now)
ON CONFLICT DO NOTHING
RETURNING 1
"""
_COUNT_HIT = ("UPDATE alerts SET hits = hits + 1, last_hit_us = :now, updated_us = :now "
              "WHERE id = :alert")
_EVENT = ("INSERT INTO alert_events (alert_id, actor, action, detail, created_us) "
          "VALUES (:alert, :actor, :action, :detail, :now) RETURNING id")
_OUTBOX = ("INSERT INTO alert_outbox (alert_id, payload, created_us) "
           "VALUES (:alert, :payload, :now)")
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', :ids)"


def _notify(db: Db, events: list[int]) -> None:
    """Tell listeners (at commit) which audit events the transaction wrote."""
    if events and db.postgres:
        db.rows(_NOTIFY, {"ids": ",".join(map(str, events))})


#: PostgreSQL: one hit in one statement (what :func:`record` does in four to six), so the
#: settle path can send every hit in the pipeline of its write (:func:`queue_pg`). The
#: CTEs share one snapshot: ``a`` is the alert just opened or the open one committed
#: before the statement began; an open alert committed by another transaction *during*
#: the statement is in neither (the insert waited on it and did nothing), and the
#: statement then returns no row: :func:`finish_pg` records that hit the long way.
#: (``told`` is read by the last SELECT only so that it runs: a plain CTE nobody reads
#: is never evaluated.)
PG_HIT_SQL = pg_sql(" ".join(f"""
WITH opened AS ({_OPEN_ALERT.strip()}),
a AS (SELECT id, true AS new FROM opened
      UNION ALL
      SELECT id, false FROM alerts
       WHERE rule = :rule AND subject = :subject AND state <> 'resolved'),
hit AS (INSERT INTO alert_hits (alert_id, ref, operation, operation_id, action, rule_version,
                                store, terminal, evidence, created_us)
        SELECT id, :ref, :operation, :operation_id, :action, :version, :store, :terminal,
               :evidence, :now FROM a
        ON CONFLICT DO NOTHING RETURNING alert_id),
counted AS (UPDATE alerts SET hits = hits + 1, last_hit_us = :now, updated_us = :now
            WHERE id IN (SELECT a.id FROM a JOIN hit ON hit.alert_id = a.id WHERE NOT a.new)),
ev AS (INSERT INTO alert_events (alert_id, actor, action, detail, created_us)
       SELECT a.id, :actor, CASE WHEN a.new THEN 'opened' ELSE 'hit' END, :detail, :now
         FROM a JOIN hit ON hit.alert_id = a.id
       RETURNING id),
outbox AS (INSERT INTO alert_outbox (alert_id, payload, created_us)
           SELECT a.id, :payload, :now FROM a JOIN hit ON hit.alert_id = a.id WHERE a.new),
told AS (SELECT pg_notify('{CHANNEL}', string_agg(id::text, ',')) FROM ev HAVING count(*) > 0)
SELECT a.id, (SELECT count(*) FROM told) FROM a
""".split()))


def _hit_params(hit: Hit, ctx: Context, alert_id: str) -> tuple[dict[str, Any], dict[str, Any],
                                                              dict[str, Any]]:
    """(the statements' common parameters, the audit event's detail, the outbox payload)
    of one hit; ``alert_id`` is the id a new alert gets."""
    subj = subject(hit, ctx)
    base = {"rule": hit.rule, "subject": subj, "version": ctx.rule_version,
            "store": ctx.store, "terminal": ctx.terminal, "now": ctx.now,
            "operation_id": ctx.operation_id, "evidence": _json(hit.evidence)}
    detail = {"rule": hit.rule, "action": hit.action, "ref": ctx.ref,
              "operation": ctx.operation, "operation_id": ctx.operation_id,
              "evidence": hit.evidence}
    payload = {"alert_id": alert_id, "rule": hit.rule, "severity": hit.severity,
               "action": hit.action, "rule_version": ctx.rule_version,
               "subject": subj, "member_id": ctx.member_id, "card_no": ctx.card_no,
               "store": ctx.store, "terminal": ctx.terminal,
               "operation_id": ctx.operation_id, "evidence": hit.evidence,
               "at_us": ctx.now}
    return base, detail, payload


def queue_pg(pg: Any, hits: Sequence[Hit], ctx: Context) -> list[Any]:
    """Send each hit as one :data:`PG_HIT_SQL` statement on the psycopg connection ``pg``
    (in the caller's transaction, normally inside ``pg.pipeline()`` so they travel with
    the settlement's write); returns their cursors for :func:`finish_pg`."""
    cursors = []
    for hit in hits:
        alert_id = new_id()
        base, detail, payload = _hit_params(hit, ctx, alert_id)
        cursors.append(pg.execute(PG_HIT_SQL, {
            **base, "id": alert_id, "severity": hit.severity, "action": hit.action,
            "member": ctx.member_id, "card": ctx.card_no, "ref": ctx.ref,
            "operation": ctx.operation, "actor": ACTOR, "detail": _json(detail),
            "payload": _json(payload)}))
    return cursors


def finish_pg(pg: Any, hits: Sequence[Hit], ctx: Context, cursors: Sequence[Any]) -> list[str]:
    """After :func:`queue_pg`'s statements ran: the alert id of each hit; a hit whose
    statement lost the race described at :data:`PG_HIT_SQL` is recorded by
    :func:`record` now, in the same transaction."""
    rows = [cur.fetchone() for cur in cursors]
    late = iter(record(PgDb(pg), [h for h, r in zip(hits, rows, strict=True) if r is None],
                       ctx))
    return [r[0] if r is not None else next(late) for r in rows]


def new_id(prefix: str = "A") -> str:
    """A fresh alert id."""
    return f"{prefix}{uuid.uuid4().hex[:20]}"


def record(db: Db, hits: Sequence[Hit], ctx: Context) -> list[str]:
    """Write ``hits`` in the caller's transaction; returns the alert id of each."""
    ids: list[str] = []
    events: list[int] = []
    for hit in hits:
        alert_id = new_id()
        base, detail, payload = _hit_params(hit, ctx, alert_id)
        opened = db.rows(_OPEN_ALERT, {**base, "id": alert_id, "severity": hit.severity,
                                       "action": hit.action, "member": ctx.member_id,
                                       "card": ctx.card_no})
        alert = opened[0][0] if opened else db.rows(_OPEN_ID, base)[0][0]
        new_hit = db.rows(_HIT, {**base, "alert": alert, "ref": ctx.ref,
                                 "operation": ctx.operation, "action": hit.action})
        ids.append(alert)
        if not new_hit:
            continue  # the same request hit before (a retry): counted once
        if opened:
            events += [r[0] for r in db.rows(_EVENT, {
                "alert": alert, "actor": ACTOR, "action": "opened", "detail": _json(detail),
                "now": ctx.now})]
            db.rows(_OUTBOX, {"alert": alert, "payload": _json(payload), "now": ctx.now})
        else:
            db.rows(_COUNT_HIT, {"alert": alert, "now": ctx.now})
            events += [r[0] for r in db.rows(_EVENT, {
                "alert": alert, "actor": ACTOR, "action": "hit", "detail": _json(detail),
                "now": ctx.now})]
    _notify(db, events)
    return ids


# ---------------------------------------------------------------- review

_ALERT_COLUMNS = ("id", "rule", "rule_version", "severity", "action", "subject", "member_id",
                  "card_no", "store", "terminal", "settlement_id", "evidence", "state",
                  "outcome", "assignee", "hits", "created_us", "updated_us", "last_hit_us")
_SELECT_ALERT = f"SELECT {', '.join(_ALERT_COLUMNS)} FROM alerts"
#: What UpdateAlert may do, from which states, to which state.
TRANSITIONS = {"acknowledge": (("open",), "acknowledged"),
               "resolve": (("open", "acknowledged"), "resolved"),
               "assign": (("open", "acknowledged"), None),
               "note": (STATES, None)}


def _alert(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_ALERT_COLUMNS, row, strict=True))
    out["evidence"] = json.loads(out["evidence"])
    return out


class AlertDesk:
    """Risk staff's view of the alerts: list, show, and the review workflow.

    ``actor`` on every change is who did it (the risk terminal's id); each change
    appends to the alert's audit trail in the same transaction.
    """

    def __init__(self, engine: Engine, clock: Callable[[], int]) -> None:
        self.engine = engine
        self.clock = clock

    def list_alerts(self, *, states: Sequence[str] = (), rule: str | None = None,
             store: str | None = None, member_id: str | None = None,
             min_severity: str | None = None, page_size: int = 50,
             page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Alerts newest first, filtered; returns (alerts, the next page's token or None)."""
        from settlement.watchdog import SEVERITIES

        where: list[str] = []
        params: dict[str, Any] = {}
        for name, value in (("rule", rule), ("store", store), ("member_id", member_id)):
            text_field(name, value, required=False)
        for s in states:
            if s not in STATES:
                raise RequestError("states", f"unknown state {s[:40]!r} (one of "
                                   f"{', '.join(STATES)})")
        if states:
            where.append("state IN (" + ", ".join(f":s{i}" for i in range(len(states))) + ")")
            params.update({f"s{i}": s for i, s in enumerate(states)})
        for name, value in (("rule", rule), ("store", store), ("member_id", member_id)):
            if value is not None:
                where.append(f"{name} = :{name}")
                params[name] = value
        if min_severity is not None:
            if min_severity not in SEVERITIES:
                raise RequestError("min_severity", f"unknown severity {min_severity[:40]!r}")
            worse = SEVERITIES[SEVERITIES.index(min_severity):]
            where.append("severity IN (" + ", ".join(f"'{s}'" for s in worse) + ")")
        if not 1 <= page_size <= 500:
            raise RequestError("page_size", "must be 1..500")
        if page_token:
            try:
                created, aid = page_token.split(":", 1)
                params.update(tc=int(created), ti=text_field("page_token", aid))
            except (ValueError, RequestError):
                raise RequestError("page_token", "is not a token this server gave") from None
            where.append("(created_us < :tc OR (created_us = :tc AND id < :ti))")
        sql = (_SELECT_ALERT + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY created_us DESC, id DESC LIMIT {page_size + 1}")
        with self.engine.connect() as conn:
            rows = SaDb(conn).rows(sql, params)
        page = [_alert(r) for r in rows[:page_size]]
        more = len(rows) > page_size
        return page, (f"{page[-1]['created_us']}:{page[-1]['id']}" if more else None)

    def get(self, alert_id: str) -> dict[str, Any]:
        """One alert with its hits and its audit trail (oldest first)."""
        text_field("alert_id", alert_id)
        with self.engine.connect() as conn:
            return self._get(SaDb(conn), alert_id)

    @staticmethod
    def _get(db: Db, alert_id: str) -> dict[str, Any]:
        rows = db.rows(_SELECT_ALERT + " WHERE id = :id", {"id": alert_id})
        if not rows:
            raise NotFound(f"alert {alert_id!r} not found")
        out = _alert(rows[0])
        out["hit_list"] = [
            {"ref": r[0], "operation": r[1], "operation_id": r[2], "action": r[3],
             "rule_version": r[4], "store": r[5], "terminal": r[6],
             "evidence": json.loads(r[7]), "created_us": r[8]}
            for r in db.rows("SELECT ref, operation, operation_id, action, rule_version, store, "
                             "terminal, evidence, created_us FROM alert_hits "
                             "WHERE alert_id = :id ORDER BY created_us, ref", {"id": alert_id})]
        out["events"] = [
            {"id": r[0], "actor": r[1], "action": r[2], "detail": json.loads(r[3]),
             "created_us": r[4]}
            for r in db.rows("SELECT id, actor, action, detail, created_us FROM alert_events "
                             "WHERE alert_id = :id ORDER BY id", {"id": alert_id})]
        return out

    def update(self, alert_id: str, actor: str, action: str, *, assignee: str | None = None,
               note: str | None = None, outcome: str | None = None) -> dict[str, Any]:
        """Apply one review step (``acknowledge``, ``resolve``, ``assign``, ``note``) and
        return the alert as it is now. Resolving needs an ``outcome``; ``assign`` an
        ``assignee``; ``note`` a note; a step the alert's state does not allow is a
        :class:`Conflict`."""
        text_field("alert_id", alert_id)
        if action not in TRANSITIONS:
            raise RequestError("action", f"must be one of {', '.join(TRANSITIONS)}")
        for name, value in (("actor", actor), ("assignee", assignee), ("note", note)):
            if value is not None and (not isinstance(value, str) or not value.strip()
                                      or len(value) > 2000 or "\x00" in value):
                raise RequestError(name, "must be 1..2000 characters of text")
        if action == "resolve" and outcome not in OUTCOMES:
            raise RequestError("outcome", f"resolving needs one of {', '.join(OUTCOMES)}")
        if action != "resolve" and outcome is not None:
            raise RequestError("outcome", "only a resolve sets an outcome")
        if action == "assign" and assignee is None:
            raise RequestError("assignee", "required to assign")
        if action == "note" and note is None:
            raise RequestError("note", "required to add a note")
        allowed, to_state = TRANSITIONS[action]
        now = self.clock()
        with self.engine.begin() as conn:
            db = SaDb(conn)
            lock = " FOR UPDATE" if db.postgres else ""
            rows = db.rows("SELECT state FROM alerts WHERE id = :id" + lock, {"id": alert_id})
            if not rows:
                raise NotFound(f"alert {alert_id!r} not found")
            state = rows[0][0]
            if state not in allowed:
                raise Conflict(f"alert {alert_id!r} is {state}: cannot {action} it")
            sets = ["updated_us = :now"]
            params: dict[str, Any] = {"id": alert_id, "now": now}
            if to_state is not None:
                sets.append("state = :state")
                params["state"] = to_state
            if assignee is not None:
                sets.append("assignee = :assignee")
                params["assignee"] = assignee
            if outcome is not None:
                sets.append("outcome = :outcome")
                params["outcome"] = outcome
            db.rows(f"UPDATE alerts SET {', '.join(sets)} WHERE id = :id", params)
            detail = {k: v for k, v in (("from", state), ("to", to_state or state),
                                        ("assignee", assignee), ("note", note),
                                        ("outcome", outcome)) if v is not None}
            past = {"acknowledge": "acknowledged", "resolve": "resolved",
                    "assign": "assigned", "note": "noted"}[action]
            _notify(db, [r[0] for r in db.rows(_EVENT, {
                "alert": alert_id, "actor": actor, "action": past, "detail": _json(detail),
                "now": now})])
            return self._get(db, alert_id)

    def events_after(self, event_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Audit events with an id above ``event_id``, oldest first, each with its alert as
        it is now (the WatchAlerts feed on SQLite, where ids commit in order, and resumes)."""
        return self._events("e.id > :after ORDER BY e.id LIMIT :limit",
                            {"after": event_id, "limit": limit})

    def events(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The audit events ``ids`` (a PostgreSQL notification's), oldest first."""
        if not ids:
            return []
        names = {f"i{n}": int(i) for n, i in enumerate(ids)}
        return self._events("e.id IN (" + ", ".join(":" + k for k in names) + ") ORDER BY e.id",
                            names)

    def _events(self, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = SaDb(conn).rows("SELECT e.id, e.actor, e.action, e.detail, e.created_us, "
                                   + ", ".join("a." + c for c in _ALERT_COLUMNS)
                                   + " FROM alert_events e JOIN alerts a ON a.id = e.alert_id "
                                   "WHERE " + where, params)
        return [{"id": r[0], "actor": r[1], "action": r[2], "detail": json.loads(r[3]),
                 "created_us": r[4], "alert": _alert(r[5:])} for r in rows]

    def last_event_id(self) -> int:
        """The newest audit event's id (0: none)."""
        with self.engine.connect() as conn:
            return int(SaDb(conn).rows("SELECT coalesce(max(id), 0) FROM alert_events", {})[0][0])

    def outbox(self, after: int = 0, limit: int = 100,
               pending_only: bool = True) -> list[dict[str, Any]]:
        """Outbox rows (new alerts to forward) with an id above ``after``."""
        cond = " AND delivered_us IS NULL" if pending_only else ""
        with self.engine.connect() as conn:
            rows = SaDb(conn).rows("SELECT id, alert_id, payload, created_us, delivered_us "
                                   "FROM alert_outbox WHERE id > :after" + cond
                                   + " ORDER BY id LIMIT :limit",
                                   {"after": after, "limit": limit})
        return [{"id": r[0], "alert_id": r[1], "payload": json.loads(r[2]),
                 "created_us": r[3], "delivered_us": r[4]} for r in rows]

    def mark_delivered(self, ids: Sequence[int]) -> int:
        """Mark outbox rows forwarded; returns how many were pending."""
        if not ids:
            return 0
        now = self.clock()
        with self.engine.begin() as conn:
            result = conn.execute(text(
                "UPDATE alert_outbox SET delivered_us = :now WHERE delivered_us IS NULL AND id IN ("
                + ", ".join(f":i{n}" for n in range(len(ids))) + ")"),
                {"now": now, **{f"i{n}": int(i) for n, i in enumerate(ids)}})
            return int(result.rowcount)
