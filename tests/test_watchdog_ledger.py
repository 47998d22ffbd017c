"""The watchdog inside the ledger, on SQLite and PostgreSQL: the look-back facts, alerts
committed with their settlement, holds that commit only the alert, retries that never
count twice, one open alert per (rule, subject), and the review workflow's audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

import settlement
from settlement.errors import RequestError
from settlement.ledger import schema
from settlement.ledger.alerts import FACTS_SQL, SaDb, facts_from_row, facts_params
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.errors import Conflict, Held, NotFound
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.verify import verify
from settlement.timeutil import format_instant, parse_instant
from settlement.watchdog import Facts

T0 = parse_instant("2026-11-23T10:00:00+08:00")
MIN = 60 * 1_000_000
WATCHDOG = """
[watchdog.high_value]
threshold_cents = 50000
[watchdog.card_burst]
count = 3
window_minutes = 10
[watchdog.terminal_burst]
count = 4
[watchdog.refund_abuse]
count = 2
"""


class Clock:
    """The ledger's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def rulebook(examples_dir: Path, extra: str = "") -> settlement.Rulebook:
    text = (examples_dir / "rulebook.toml").read_text()
    return settlement.rulebook_from_toml(text + WATCHDOG + extra)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(ledger_url: str, examples_dir: Path, clock: Clock) -> Iterator[Ledger]:
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine, rulebook(examples_dir), clock=clock, max_clock_skew_us=None)
    ledger.enroll("S001", "e1", member_id="M1", card_no="K1")
    ledger.recharge("S001", "r1", "M1", 500_000)
    yield ledger
    with engine.connect() as conn:
        assert verify(conn) is None
    engine.dispose()


def basket(cents: int, member: str | None = "M1", at: int = T0, **more: object) -> dict:
    out = {"at": format_instant(at), "lines": [
        {"sku": "RICE", "category": "grain", "unit_price_cents": cents, "quantity": 1}], **more}
    if member is not None:
        out["member_id"] = member
    return out


def count(ledger: Ledger, table: str) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(
            schema.metadata.tables[table])).scalar_one())


def only_alert(ledger: Ledger, rule: str) -> dict:
    page, _ = ledger.alerts.list_alerts(rule=rule)
    assert len(page) == 1, page
    return ledger.alerts.get(page[0]["id"])


def test_an_alert_commits_with_its_settlement(ledger: Ledger) -> None:
    sold = ledger.settle("S001", "s1", basket(50_000), terminal="T1")
    alert = only_alert(ledger, "high_value")
    assert alert["settlement_id"] == sold["settlement_id"]
    assert (alert["state"], alert["severity"], alert["action"], alert["hits"]) == (
        "open", "high", "alert", 1)
    assert alert["rule_version"] == ledger.rulebook.version
    assert (alert["subject"], alert["member_id"], alert["store"], alert["terminal"]) == (
        "member:M1", "M1", "S001", "T1")
    assert alert["evidence"] == {"payable_cents": 50_000, "threshold_cents": 50_000}
    assert [h["ref"] for h in alert["hit_list"]] == ["S001/s1"]
    assert [e["action"] for e in alert["events"]] == ["opened"]
    (row,) = ledger.alerts.outbox()
    assert row["alert_id"] == alert["id"] and row["payload"]["rule"] == "high_value"
    assert ledger.alerts.mark_delivered([row["id"]]) == 1
    assert ledger.alerts.outbox() == []
    # one below the threshold: nothing
    ledger.settle("S001", "s2", basket(49_999), terminal="T1")
    assert only_alert(ledger, "high_value")["hits"] == 1


def test_a_retry_never_counts_twice_and_later_hits_attach(ledger: Ledger) -> None:
    first = ledger.settle("S001", "s1", basket(60_000))
    assert ledger.settle("S001", "s1", basket(60_000)) == first  # replayed, not judged again
    assert only_alert(ledger, "high_value")["hits"] == 1
    ledger.settle("S001", "s2", basket(70_000))
    alert = only_alert(ledger, "high_value")
    assert alert["hits"] == 2 and [e["action"] for e in alert["events"]] == ["opened", "hit"]
    assert [h["ref"] for h in alert["hit_list"]] == ["S001/s1", "S001/s2"]
    assert len(ledger.alerts.outbox()) == 1  # the outbox has the alert, not every hit


def test_a_hold_refuses_and_commits_nothing_but_the_alert(ledger: Ledger,
                                                          examples_dir: Path) -> None:
    ledger.rulebook = rulebook(examples_dir, '[watchdog.sv_drain]\naction = "hold"\n'
                               "min_cents = 10000\n")
    before = ledger.get_member(member_id="M1")
    settlements, keys = count(ledger, "settlements"), count(ledger, "idempotency_keys")
    request = basket(200_000, pay_stored_value_cents=200_000)  # 200,000 of 500,000: no drain
    ledger.settle("S001", "s1", request)
    drain = basket(300_000, pay_stored_value_cents=300_000)  # the rest: 100 % in the hour
    with pytest.raises(Held) as held:
        ledger.settle("S001", "s2", drain)
    assert isinstance(held.value, Conflict)  # FAILED_PRECONDITION over gRPC
    alert = only_alert(ledger, "sv_drain")
    assert held.value.alert_ids == [alert["id"]] and held.value.rules == ["sv_drain"]
    assert alert["id"] in str(held.value)
    assert (alert["action"], alert["settlement_id"], alert["hit_list"][0]["action"]) == (
        "hold", None, "hold")
    assert alert["evidence"] == {"spent_cents": 500_000, "balance_cents": 500_000,
                                 "drain_bp": 9000, "window_minutes": 60}
    after = ledger.get_member(member_id="M1")
    assert after["sv_principal_cents"] == before["sv_principal_cents"] - 200_000
    assert count(ledger, "settlements") == settlements + 1  # s1 only
    assert count(ledger, "idempotency_keys") == keys + 1  # s2's key was not kept
    with pytest.raises(Held):  # the till retries: refused again, still one hit
        ledger.settle("S001", "s2", drain)
    assert only_alert(ledger, "sv_drain")["hits"] == 1
    # resolved: the next hold opens a new alert
    ledger.alerts.update(alert["id"], "risk-1", "resolve", outcome="valuable")
    with pytest.raises(Held) as again:
        ledger.settle("S001", "s3", drain)
    assert again.value.alert_ids != [alert["id"]]
    assert len(ledger.alerts.list_alerts(rule="sv_drain")[0]) == 2


def test_a_lost_card_is_refused_and_alerted_on_settle_and_quote(ledger: Ledger) -> None:
    ledger.report_lost("S001", "l1", "K1")
    request = {**basket(1_000, member=None), "card_no": "K1"}
    with pytest.raises(Held, match="reported lost"):
        ledger.settle("S002", "s1", request, terminal="T9")
    with pytest.raises(Held):
        ledger.quote("S003", request, terminal="T7")
    alert = only_alert(ledger, "lost_card")
    assert (alert["severity"], alert["action"], alert["card_no"], alert["member_id"]) == (
        "critical", "hold", "K1", "M1")
    assert alert["hits"] == 2
    assert [(h["operation"], h["store"]) for h in alert["hit_list"]] == [
        ("settle", "S002"), ("quote", "S003")]
    assert count(ledger, "settlements") == 0


def test_the_lost_card_alert_comes_even_with_the_watchdog_off(ledger: Ledger,
                                                              examples_dir: Path) -> None:
    ledger.rulebook = rulebook(examples_dir, "[watchdog]\nenabled = false\n")
    ledger.settle("S001", "big", basket(10**6))  # no alert: the watchdog is off
    ledger.report_lost("S001", "l1", "K1")
    with pytest.raises(Held):
        ledger.settle("S001", "s1", {**basket(1_000, member=None), "card_no": "K1"})
    assert [a["rule"] for a in ledger.alerts.list_alerts()[0]] == ["lost_card"]


def test_card_burst_counts_committed_settlements_in_the_window(ledger: Ledger,
                                                               clock: Clock) -> None:
    for i, minutes in enumerate((0, 5)):  # two in ten minutes: below 3
        clock.now = T0 + minutes * MIN
        ledger.settle("S001", f"s{i}", basket(1_000, at=clock.now))
    assert ledger.alerts.list_alerts()[0] == []
    clock.now = T0 + 10 * MIN  # the first is now exactly 10 minutes old: out of the window
    ledger.settle("S001", "s2", basket(1_000, at=clock.now))
    assert ledger.alerts.list_alerts()[0] == []
    clock.now = T0 + 11 * MIN  # 5, 10, 11: the third within ten minutes
    ledger.settle("S001", "s3", basket(1_000, at=clock.now))
    alert = only_alert(ledger, "card_burst")
    assert alert["evidence"] == {"settlements": 3, "count": 3, "window_minutes": 10}


def test_terminal_burst_is_kept_per_terminal(ledger: Ledger) -> None:
    for i in range(3):
        ledger.settle("S001", f"a{i}", basket(500, member=None), terminal="T1")
        ledger.settle("S001", f"b{i}", basket(500, member=None), terminal="T2")
    assert ledger.alerts.list_alerts()[0] == []
    ledger.settle("S001", "a3", basket(500, member=None), terminal="T1")
    alert = only_alert(ledger, "terminal_burst")
    assert (alert["subject"], alert["member_id"]) == ("terminal:S001/T1", None)


def test_a_flooded_terminal_is_counted_up_to_ten_times_the_threshold(ledger: Ledger) -> None:
    """The terminal's look-back read stops at TERMINAL_CAP x count (4 here): the rule only
    needs "reached", and a flood must not lengthen every later settlement's read."""
    from settlement.ledger.alerts import TERMINAL_CAP

    cap = TERMINAL_CAP * 4
    sold = ledger.settle("S001", "w0", basket(500, member=None), terminal="T1")
    with ledger.engine.begin() as conn:  # a flood's rows, as the settle path leaves them
        row = dict(conn.execute(select(schema.settlements).where(
            schema.settlements.c.id == sold["settlement_id"])).mappings().one())
        conn.execute(schema.settlements.insert(), [
            {**row, "id": f"{row['id']}-{i}", "at_us": T0 - i} for i in range(1, cap + 5)])
    wd = ledger.rulebook.watchdog
    with ledger.engine.connect() as conn:
        facts = facts_from_row(SaDb(conn).rows(FACTS_SQL, facts_params(
            wd, None, None, "S001", "T1", T0))[0])
        other = facts_from_row(SaDb(conn).rows(FACTS_SQL, facts_params(
            wd, None, None, "S001", "T2", T0))[0])
    assert (facts.terminal_count, other.terminal_count) == (cap, 0)


def test_refund_abuse_is_judged_on_refunds(ledger: Ledger) -> None:
    sold = [ledger.settle("S001", f"s{i}", basket(2_000))["settlement_id"] for i in range(2)]
    ledger.refund("S001", "f0", sold[0])
    assert ledger.alerts.list_alerts()[0] == []
    ledger.void("S001", "f1", sold[1])
    alert = only_alert(ledger, "refund_abuse")
    assert alert["hit_list"][0]["operation"] == "void"
    assert alert["settlement_id"] is not None  # the void's refund id
    assert alert["evidence"]["refunds"] == 2


def test_the_facts_read_each_window(ledger: Ledger, clock: Clock) -> None:
    """The look-back statement on this database: counts and sums over the right windows
    (a window's first instant excluded, later settlements ignored)."""
    ledger.enroll("S001", "e2", member_id="M2")
    ledger.recharge("S001", "r2", "M2", 100_000)
    history = [(-91 * 24 * 60, "S001", 9_000), (-2 * 24 * 60, "S001", 7_000),
               (-60, "S002", 3_000), (-30, "S003", 2_000), (-5, "S001", 1_000)]
    earned = {}
    for i, (minutes, store, cents) in enumerate(history):
        clock.now = T0 + minutes * MIN  # lots are created at the ledger's clock
        sold = ledger.settle(store, f"h{i}", basket(cents, member="M2", at=clock.now,
                                                    pay_stored_value_cents=100), terminal="T1")
        earned[minutes] = sold["points_earned"]
    clock.now = T0 + 5 * MIN  # after "now", in a category that earns no points: ignored
    ledger.settle("S004", "later", {**basket(8_000, member="M2", at=clock.now),
                                    "lines": [{"sku": "CIG", "category": "tobacco",
                                               "unit_price_cents": 8_000, "quantity": 1}]},
                  terminal="T1")
    clock.now = T0 - 30 * 1_000_000
    ledger.settle("S001", "w", basket(500, member=None, at=clock.now), terminal="T1")
    wd = ledger.rulebook.watchdog
    with ledger.engine.connect() as conn:
        db = SaDb(conn)
        walk_in = facts_from_row(db.rows(FACTS_SQL, facts_params(wd, None, None, "S001", "T1",
                                                                 T0))[0])
        by_card = facts_from_row(db.rows(FACTS_SQL, facts_params(wd, None, "K1", "S002", "T2",
                                                                 T0))[0])
        facts = facts_from_row(db.rows(FACTS_SQL, facts_params(wd, "M2", None, "S001", "T1",
                                                               T0))[0])
    assert walk_in == Facts(terminal_count=1)  # the walk-in 30 s ago, at T1
    assert by_card == Facts()  # M1 (card K1) has no settlements
    assert earned[-30] > 0 and earned[-5] > 0
    assert facts == Facts(
        burst_count=1,  # 10 minutes: -5
        day_count=3,  # a day: -60, -30, -5
        history_count=4,  # 90 days: -2 days, -60, -30, -5
        history_max_cents=7_000,
        terminal_count=1,  # S001/T1 within 60 s: the walk-in
        sv_spent_cents=200,  # an hour: -30, -5 (-60 is the window's first instant)
        points_redeemed=0,
        max_accrual_points=max(earned[-30], earned[-5]),  # lots created within the hour
        other_stores=1,  # an hour, not S001: S003 (S002 at -60 is out, S004 is later)
    )


def test_review_workflow_and_its_audit_trail(ledger: Ledger, clock: Clock) -> None:
    ledger.settle("S001", "s1", basket(60_000), terminal="T1")
    aid = only_alert(ledger, "high_value")["id"]
    desk = ledger.alerts
    clock.now = T0 + MIN
    with pytest.raises(RequestError) as bad:
        desk.update(aid, "risk-1", "resolve")  # no outcome
    assert bad.value.field == "outcome"
    with pytest.raises(RequestError):
        desk.update(aid, "risk-1", "escalate")
    with pytest.raises(NotFound):
        desk.update("A-none", "risk-1", "acknowledge")
    acked = desk.update(aid, "risk-1", "acknowledge", assignee="li.wei",
                        note="calling the store")
    assert (acked["state"], acked["assignee"]) == ("acknowledged", "li.wei")
    with pytest.raises(Conflict):
        desk.update(aid, "risk-1", "acknowledge")  # already acknowledged
    desk.update(aid, "risk-2", "assign", assignee="zhang.min")
    clock.now = T0 + 2 * MIN
    done = desk.update(aid, "risk-2", "resolve", outcome="false_positive",
                       note="a company's yearly order")
    assert (done["state"], done["outcome"], done["updated_us"]) == (
        "resolved", "false_positive", T0 + 2 * MIN)
    assert [(e["actor"], e["action"], e["detail"]) for e in done["events"]] == [
        ("watchdog", "opened", done["events"][0]["detail"]),
        ("risk-1", "acknowledged", {"from": "open", "to": "acknowledged",
                                    "assignee": "li.wei", "note": "calling the store"}),
        ("risk-2", "assigned", {"from": "acknowledged", "to": "acknowledged",
                                "assignee": "zhang.min"}),
        ("risk-2", "resolved", {"from": "acknowledged", "to": "resolved",
                                "outcome": "false_positive",
                                "note": "a company's yearly order"})]
    assert [e["created_us"] for e in done["events"]][1:] == [T0 + MIN, T0 + MIN, T0 + 2 * MIN]
    with pytest.raises(Conflict):
        desk.update(aid, "risk-1", "assign", assignee="x")  # resolved is final
    desk.update(aid, "risk-1", "note", note="customer confirmed by phone")  # notes still go
    # the feed sees every step, in order
    assert [e["action"] for e in desk.events_after(0)] == [
        "opened", "acknowledged", "assigned", "resolved", "noted"]
    # a new hit after the resolution opens a new alert
    ledger.settle("S001", "s2", basket(60_000), terminal="T1")
    assert [a["state"] for a in desk.list_alerts(rule="high_value")[0]] == ["open", "resolved"]


def test_list_filters_and_pages(ledger: Ledger, clock: Clock) -> None:
    for i in range(5):
        ledger.enroll("S001", f"en{i}", member_id=f"N{i}")
        clock.now = T0 + i * MIN
        ledger.settle("S002" if i % 2 else "S001", f"s{i}", basket(60_000, member=f"N{i}",
                                                                   at=clock.now))
    seen, token = [], None
    while True:
        page, token = ledger.alerts.list_alerts(page_size=2, page_token=token)
        seen += [a["member_id"] for a in page]
        if token is None:
            break
    assert seen == ["N4", "N3", "N2", "N1", "N0"]  # newest first, each once
    assert [a["member_id"] for a in ledger.alerts.list_alerts(store="S002")[0]] == ["N3", "N1"]
    assert ledger.alerts.list_alerts(min_severity="critical")[0] == []
    assert len(ledger.alerts.list_alerts(min_severity="high", states=["open"])[0]) == 5
    assert ledger.alerts.list_alerts(states=["resolved"])[0] == []
    for bad in ({"states": ["closed"]}, {"min_severity": "huge"}, {"page_token": "x"},
                {"page_size": 0}):
        with pytest.raises(RequestError):
            ledger.alerts.list_alerts(**bad)  # type: ignore[arg-type]


def test_alert_evidence_is_json_with_exact_integers(ledger: Ledger) -> None:
    big = {**basket(0, member=None), "lines": [
        {"sku": "GOLD", "category": "grain", "unit_price_cents": 10**8, "quantity": 999}]}
    ledger.settle("S001", "s1", big, terminal="T1")
    with ledger.engine.connect() as conn:
        raw = conn.execute(select(schema.alerts.c.evidence)).scalar_one()
    assert json.loads(raw) == {"payable_cents": 999 * 10**8, "threshold_cents": 50_000}


@pytest.mark.parametrize(("call", "field"), [
    (lambda d: d.list_alerts(rule="\x00"), "rule"),
    (lambda d: d.list_alerts(store="S\x00"), "store"),
    (lambda d: d.list_alerts(member_id="M" * 129), "member_id"),
    (lambda d: d.list_alerts(page_token="1:A\x00"), "page_token"),
    (lambda d: d.get("A\x00"), "alert_id"),
    (lambda d: d.update("A\x00", "risk-1", "acknowledge"), "alert_id"),
    (lambda d: d.update("A1", "risk-1", "note", note="\x00"), "note"),
])
def test_review_input_is_checked_before_the_database(ledger: Ledger, call: object,
                                                     field: str) -> None:
    """(PostgreSQL cannot store NUL: unchecked, these were INTERNAL errors over gRPC.)"""
    with pytest.raises(RequestError) as bad:
        call(ledger.alerts)  # type: ignore[operator]
    assert bad.value.field == field


def test_refund_ratio_counts_purchases_of_the_window_only(ledger: Ledger, clock: Clock,
                                                          examples_dir: Path) -> None:
    ledger.rulebook = settlement.rulebook_from_toml(
        (examples_dir / "rulebook.toml").read_text()
        + "[watchdog.refund_abuse]\ncount = 10\nratio_bp = 5000\nratio_min_count = 2\n")
    day = 24 * 60 * MIN
    clock.now = T0 - 10 * day
    old = ledger.settle("S001", "old", basket(50_000, at=clock.now))["settlement_id"]
    clock.now = T0 - day
    small = ledger.settle("S001", "small", basket(10_000, at=clock.now))["settlement_id"]
    large = ledger.settle("S001", "large", basket(30_000, at=clock.now))["settlement_id"]
    clock.now = T0
    ledger.refund("S001", "f-old", old)  # a return of a purchase older than the week
    ledger.refund("S001", "f-small", small)  # 10,000 of the week's 40,000: 25 %
    assert ledger.alerts.list_alerts(rule="refund_abuse")[0] == []
    ledger.refund("S001", "f-large", large)  # 40,000 of 40,000
    alert = only_alert(ledger, "refund_abuse")
    assert alert["evidence"] == {"refunds": 3, "refunded_cents": 40_000,
                                 "settled_cents": 40_000, "ratio_bp": 5000, "window_days": 7}


def test_verify_checks_the_alert_record(ledger: Ledger) -> None:
    ledger.settle("S001", "s1", basket(60_000))
    ledger.settle("S001", "s2", basket(60_000))
    with ledger.engine.connect() as conn:
        assert verify(conn) is None
        conn.execute(schema.alert_hits.delete().where(schema.alert_hits.c.ref == "S001/s2"))
        problem = verify(conn)
        assert problem is not None and "hit count differs" in problem, problem
        conn.rollback()
        conn.execute(schema.alert_hits.update().values(alert_id="A-gone"))
        problem = verify(conn)
        assert problem is not None and "belongs to no alert" in problem, problem
        conn.rollback()


def test_pg_hit_statement_that_loses_the_open_race_is_recorded_the_long_way(
        ledger: Ledger) -> None:
    """PostgreSQL: one statement per hit (alerts.PG_HIT_SQL) cannot see an alert another
    transaction opened and committed while the statement waited on it; finish_pg then
    records that hit the long way, attached to that alert and counted."""
    if ledger.engine.dialect.name != "postgresql":
        pytest.skip("the one-statement hit is the PostgreSQL settle path's")
    import threading

    from settlement.ledger.alerts import Context, finish_pg, queue_pg
    from settlement.watchdog import Hit

    hit = Hit("high_value", "high", "alert", {"payable_cents": 1})

    def ctx(ref: str) -> Context:
        return Context("S001", "T1", "M1", None, ref, "settle", None, "v", T0)

    first = ledger.engine.raw_connection()
    second = ledger.engine.raw_connection()
    try:
        pg1, pg2 = first.driver_connection, second.driver_connection
        assert pg1 is not None and pg2 is not None
        opened = finish_pg(pg1, [hit], ctx("S001/a"), queue_pg(pg1, [hit], ctx("S001/a")))
        pid2 = pg2.info.backend_pid
        got: list[object] = []

        def late() -> None:
            try:
                got.append(finish_pg(pg2, [hit], ctx("S001/b"),
                                     queue_pg(pg2, [hit], ctx("S001/b"))))
                pg2.commit()
            except BaseException as exc:  # reported below
                got.append(exc)

        worker = threading.Thread(target=late)
        worker.start()
        with ledger.engine.connect() as conn:  # until the second waits on the first's row
            for _ in range(500):
                waiting = conn.exec_driver_sql(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                    (pid2,)).scalar()
                if waiting == "Lock":
                    break
                conn.rollback()
                threading.Event().wait(0.01)
            assert waiting == "Lock", "the second transaction never waited on the first"
        pg1.commit()
        worker.join(30)
        assert got == [opened], got
    finally:
        first.close()
        second.close()
    alert = only_alert(ledger, "high_value")
    assert alert["id"] == opened[0] and alert["hits"] == 2
    assert [h["ref"] for h in alert["hit_list"]] == ["S001/a", "S001/b"]
    assert [e["action"] for e in alert["events"]] == ["opened", "hit"]
    assert len(ledger.alerts.outbox()) == 1
