"""The watchdog's rules, pure: each fires at its threshold and not one below, and the
``[watchdog]`` section's configuration (defaults, switches, errors naming the field)."""

from __future__ import annotations

import dataclasses

import pytest

from settlement.errors import RulebookError
from settlement.timeutil import parse_instant
from settlement.watchdog import (
    Facts,
    RefundEvent,
    SettleEvent,
    Watchdog,
    evaluate_refund,
    evaluate_settlement,
)
from tests.conftest import make_rulebook

AT = parse_instant("2026-11-23T14:00:00+08:00")  # inside the configured hours

WATCHDOG = """
[watchdog.high_value]
threshold_cents = 100000
store_threshold_cents = { S9 = 30000 }
history_multiple_bp = 40000
min_history = 3
history_min_cents = 5000
[watchdog.card_burst]
count = 4
day_count = 12
[watchdog.terminal_burst]
count = 8
[watchdog.sv_drain]
drain_bp = 8000
min_cents = 10000
[watchdog.points_burn]
burn_bp = 7000
min_points = 1000
accrual_points = 5000
[watchdog.off_hours]
hours = ["08:00-22:00"]
store_hours = { S24 = ["00:00-24:00"] }
[watchdog.store_spread]
stores = 3
[watchdog.refund_abuse]
count = 3
ratio_bp = 5000
ratio_min_count = 2
[watchdog.lost_card]
severity = "high"
"""


@pytest.fixture(scope="module")
def wd() -> Watchdog:
    return make_rulebook(WATCHDOG).watchdog


def settle(**changes: object) -> SettleEvent:
    base = SettleEvent(store="S1", terminal="T1", member_id="M1", at_us=AT, payable_cents=1000,
                       stored_value_cents=0, points_redeemed=0, sv_balance_cents=0,
                       points_usable=0)
    return dataclasses.replace(base, **changes)


def rules(wd: Watchdog, event: SettleEvent, facts: Facts = Facts()) -> set[str]:
    return {h.rule for h in evaluate_settlement(wd, event, facts)}


# (rule, how an event or its facts cross the rule with the number n, the threshold n)
CASES = [
    ("high_value", lambda n: (settle(payable_cents=n), Facts()), 100_000),
    ("high_value", lambda n: (settle(store="S9", payable_cents=n), Facts()), 30_000),
    ("high_value", lambda n: (settle(store="S9", member_id=None, payable_cents=n), Facts()),
     30_000),
    # 4x the member's 90-day maximum (5,000 -> 20,000) with 3 settlements of history
    ("high_value", lambda n: (settle(payable_cents=n),
                              Facts(history_count=3, history_max_cents=5_000)), 20_000),
    ("high_value", lambda n: (settle(payable_cents=20_000),
                              Facts(history_count=n, history_max_cents=5_000)), 3),
    ("card_burst", lambda n: (settle(), Facts(burst_count=n - 1, day_count=n - 1)), 4),
    ("card_burst", lambda n: (settle(), Facts(burst_count=0, day_count=n - 1)), 12),
    ("terminal_burst", lambda n: (settle(member_id=None), Facts(terminal_count=n - 1)), 8),
    # 80 % of the balance the hour started with (10,000 left + 2,500 spent earlier)
    ("sv_drain", lambda n: (settle(stored_value_cents=n - 2_500, sv_balance_cents=10_000),
                            Facts(sv_spent_cents=2_500)), 10_000),
    ("points_burn", lambda n: (settle(points_redeemed=n, points_usable=2_000),
                               Facts()), 1_400),
    ("points_burn", lambda n: (settle(points_redeemed=100, points_usable=100_000),
                               Facts(max_accrual_points=n)), 5_000),
    ("store_spread", lambda n: (settle(), Facts(other_stores=n - 1)), 3),
]


@pytest.mark.parametrize(("rule", "make", "threshold"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_rule_fires_at_its_threshold_and_not_one_below(wd: Watchdog, rule: str, make: object,
                                                          threshold: int) -> None:
    assert rule in rules(wd, *make(threshold))  # type: ignore[operator]
    assert rule not in rules(wd, *make(threshold - 1))  # type: ignore[operator]


def test_sv_drain_is_a_share_of_the_balance_at_the_window_start(wd: Watchdog) -> None:
    # 12,500 held an hour ago (10,000 left + 2,500 spent since): 80 % is 10,000
    facts = Facts(sv_spent_cents=2_500)
    assert "sv_drain" in rules(wd, settle(stored_value_cents=7_500, sv_balance_cents=10_000),
                               facts)
    assert "sv_drain" not in rules(wd, settle(stored_value_cents=7_499,
                                              sv_balance_cents=10_000), facts)
    # the same share of a small balance is below min_cents
    assert "sv_drain" not in rules(wd, settle(stored_value_cents=900, sv_balance_cents=1_000))


def test_points_burn_share_needs_its_minimum(wd: Watchdog) -> None:
    # 70 % of 2,000 points is 1,400; 70 % of 1,000 is 700, below min_points (1,000)
    assert "points_burn" not in rules(wd, settle(points_redeemed=700, points_usable=1_000))
    hit = evaluate_settlement(wd, settle(points_redeemed=1_400, points_usable=2_000), Facts())
    assert [h.evidence for h in hit if h.rule == "points_burn"] == [
        {"redeemed": 1_400, "points_balance": 2_000, "burn_bp": 7_000, "window_minutes": 1440}]


def test_member_rules_skip_walk_ins(wd: Watchdog) -> None:
    crowded = Facts(burst_count=50, day_count=50, other_stores=9, max_accrual_points=10**6)
    walk_in = settle(member_id=None, stored_value_cents=10**6, points_redeemed=10**6)
    assert rules(wd, walk_in, crowded) == set()


def test_off_hours_judged_in_store_time(wd: Watchdog) -> None:
    late = parse_instant("2026-11-23T22:00:00+08:00")  # the window is [08:00, 22:00)
    assert "off_hours" in rules(wd, settle(at_us=late))
    assert "off_hours" not in rules(wd, settle(at_us=late - 60_000_000))  # 21:59
    assert "off_hours" not in rules(wd, settle(at_us=late, store="S24"))  # its own hours
    early = parse_instant("2026-11-23T07:59:00+08:00")
    hit = evaluate_settlement(wd, settle(at_us=early), Facts())
    assert hit[0].evidence == {"local_time": "07:59", "hours": ["08:00-22:00"]}


@pytest.mark.parametrize(("count", "refunded", "settled", "fires"), [
    (2, 0, 10**9, True),  # the third refund in the window
    (1, 0, 10**9, False),
    (1, 4_000, 20_000, True),  # second refund, 4,000 + 1,000 = 5,000 of 10,000 settled = 50 %
    (1, 3_999, 20_000, False),
    (0, 0, 2_000, False),  # a first refund of everything is below ratio_min_count
])
def test_refund_abuse(wd: Watchdog, count: int, refunded: int, settled: int,
                      fires: bool) -> None:
    event = RefundEvent("S1", "M1", net_cents=1_000, refund_count=count,
                        refunded_cents=refunded, settled_cents=settled // 2)
    assert bool(evaluate_refund(wd, event)) is fires


def test_defaults_without_a_section() -> None:
    wd = make_rulebook("").watchdog
    assert wd.enabled
    assert {n: (r.severity, r.action) for n, r in wd.rules.items()} == {
        "high_value": ("high", "alert"), "card_burst": ("medium", "alert"),
        "terminal_burst": ("medium", "alert"), "sv_drain": ("high", "alert"),
        "points_burn": ("medium", "alert"), "off_hours": ("low", "alert"),
        "store_spread": ("medium", "alert"), "refund_abuse": ("medium", "alert"),
        "lost_card": ("critical", "hold")}
    # off_hours has no hours to judge until the chain gives them
    night = parse_instant("2026-11-23T03:00:00+08:00")
    assert rules(wd, settle(at_us=night)) == set()


def test_rules_switch_off_one_by_one_or_all() -> None:
    wd = make_rulebook("[watchdog.high_value]\nenabled = false\n").watchdog
    assert rules(wd, settle(payable_cents=10**9)) == set()
    wd = make_rulebook("[watchdog]\nenabled = false\n").watchdog
    assert rules(wd, settle(payable_cents=10**9), Facts(burst_count=99)) == set()


def test_hold_and_severity_are_configured_per_rule() -> None:
    wd = make_rulebook('[watchdog.high_value]\naction = "hold"\nseverity = "critical"\n'
                       "threshold_cents = 100\n").watchdog
    (hit,) = evaluate_settlement(wd, settle(payable_cents=100), Facts())
    assert (hit.rule, hit.action, hit.severity) == ("high_value", "hold", "critical")


@pytest.mark.parametrize(("body", "field"), [
    ('[watchdog.high_value]\naction = "block"\n', "watchdog.high_value.action"),
    ('[watchdog.card_burst]\ncount = 1\n', "watchdog.card_burst.count"),
    ('[watchdog.lost_card]\naction = "alert"\n', "watchdog.lost_card.action"),
    ('[watchdog.off_hours]\nenabled = true\n', "watchdog.off_hours.hours"),
    ('[watchdog.off_hours]\nhours = ["22:00-08:00"]\n', "watchdog.off_hours.hours[0]"),
    ('[watchdog.nightly]\ncount = 3\n', "watchdog.nightly"),
    ('[watchdog.sv_drain]\ndrain_bp = 0\n', "watchdog.sv_drain.drain_bp"),
])
def test_configuration_errors_name_the_field(body: str, field: str) -> None:
    with pytest.raises(RulebookError) as err:
        make_rulebook(body)
    assert err.value.field == field
