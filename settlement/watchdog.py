"""The watchdog: rules that flag anomalous settlements and refunds for risk staff.

Configured in the rulebook's ``[watchdog]`` section (versioned with it; see
``docs/watchdog.md``). Every rule has a ``severity`` and an ``action``:
``alert`` lets the operation through and raises an alert, ``hold`` refuses it
(the alert alone is committed). Thresholds are "at or above": a rule with
``count = 6`` fires on the sixth settlement, not the fifth.

This module is pure: it turns the numbers the ledger read (:class:`Facts`)
and the operation being committed (:class:`SettleEvent`, :class:`RefundEvent`)
into :class:`Hit` s. The ledger reads the facts inside the operation's
transaction, under the member's lock, and writes the alerts there too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from ._schema import Code, StrictModel, bounded
from .errors import RulebookError

SEVERITIES = ("low", "medium", "high", "critical")
MINUTE_US = 60 * 1_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US

_Severity = Literal["low", "medium", "high", "critical"]
_Action = Literal["alert", "hold"]
_CENTS = bounded(0, 10**12)
_SHARE = bounded(1, 10_000)  # basis points of a balance, 1..100 %


# ---------------------------------------------------------------- the TOML shape


class _RuleIn(StrictModel):
    enabled: bool = True
    severity: _Severity | None = None
    action: _Action | None = None


class _HighValueIn(_RuleIn):
    threshold_cents: _CENTS = 500_000  # type: ignore[valid-type]
    store_threshold_cents: dict[Code, _CENTS] = {}  # type: ignore[valid-type]
    history_multiple_bp: bounded(10_001, 10**7) = 50_000  # type: ignore[valid-type]
    history_days: bounded(1, 3650) = 90  # type: ignore[valid-type]
    min_history: bounded(1, 10_000) = 5  # type: ignore[valid-type]
    history_min_cents: _CENTS = 20_000  # type: ignore[valid-type]


class _CardBurstIn(_RuleIn):
    count: bounded(2, 10_000) = 6  # type: ignore[valid-type]
    window_minutes: bounded(1, 1440) = 10  # type: ignore[valid-type]
    day_count: bounded(2, 100_000) = 20  # type: ignore[valid-type]


class _TerminalBurstIn(_RuleIn):
    count: bounded(2, 10_000) = 10  # type: ignore[valid-type]
    window_seconds: bounded(1, 3600) = 60  # type: ignore[valid-type]


class _SvDrainIn(_RuleIn):
    drain_bp: _SHARE = 9_000  # type: ignore[valid-type]
    window_minutes: bounded(1, 10_080) = 60  # type: ignore[valid-type]
    min_cents: _CENTS = 50_000  # type: ignore[valid-type]


class _PointsBurnIn(_RuleIn):
    burn_bp: _SHARE = 9_000  # type: ignore[valid-type]
    window_minutes: bounded(1, 10_080) = 1440  # type: ignore[valid-type]
    min_points: bounded(1, 10**12) = 5_000  # type: ignore[valid-type]
    accrual_points: bounded(1, 10**12) = 10_000  # type: ignore[valid-type]
    accrual_window_minutes: bounded(1, 10_080) = 60  # type: ignore[valid-type]


class _OffHoursIn(_RuleIn):
    hours: list[str] | None = None
    store_hours: dict[Code, list[str]] = {}


class _StoreSpreadIn(_RuleIn):
    stores: bounded(2, 1000) = 3  # type: ignore[valid-type]
    window_minutes: bounded(1, 10_080) = 60  # type: ignore[valid-type]


class _RefundAbuseIn(_RuleIn):
    count: bounded(2, 10_000) = 4  # type: ignore[valid-type]
    ratio_bp: _SHARE = 5_000  # type: ignore[valid-type]
    ratio_min_count: bounded(1, 10_000) = 2  # type: ignore[valid-type]
    window_days: bounded(1, 365) = 7  # type: ignore[valid-type]


class _LostCardIn(StrictModel):
    severity: _Severity | None = None


class WatchdogIn(StrictModel):
    """The ``[watchdog]`` section as written (validated by the rulebook's loader)."""

    enabled: bool = True
    high_value: _HighValueIn = _HighValueIn()
    card_burst: _CardBurstIn = _CardBurstIn()
    terminal_burst: _TerminalBurstIn = _TerminalBurstIn()
    sv_drain: _SvDrainIn = _SvDrainIn()
    points_burn: _PointsBurnIn = _PointsBurnIn()
    off_hours: _OffHoursIn = _OffHoursIn()
    store_spread: _StoreSpreadIn = _StoreSpreadIn()
    refund_abuse: _RefundAbuseIn = _RefundAbuseIn()
    lost_card: _LostCardIn = _LostCardIn()


#: Each rule's severity when the rulebook names none.
DEFAULT_SEVERITY = {"high_value": "high", "card_burst": "medium", "terminal_burst": "medium",
                    "sv_drain": "high", "points_burn": "medium", "off_hours": "low",
                    "store_spread": "medium", "refund_abuse": "medium", "lost_card": "critical"}
RULES = tuple(DEFAULT_SEVERITY)


# ---------------------------------------------------------------- the compiled form


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as the watchdog applies it: whether it runs, how bad, what happens, and its
    thresholds (the TOML fields, by name)."""

    name: str
    enabled: bool
    severity: str
    action: str
    params: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.params[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Watchdog:
    """The compiled ``[watchdog]`` section."""

    enabled: bool
    rules: Mapping[str, Rule]
    zone: ZoneInfo
    #: minute-of-day ``[start, end)`` spans per store ("" = every other store), or none
    hours: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def rule(self, name: str) -> Rule | None:
        """The rule ``name`` when the watchdog and the rule are both on."""
        r = self.rules[name]
        return r if self.enabled and r.enabled else None

    @functools.cached_property
    def windows(self) -> dict[str, int]:
        """The look-back windows (microseconds) the ledger's facts query takes."""
        r = self.rules
        return {
            "burst_us": r["card_burst"].window_minutes * MINUTE_US,
            "day_us": DAY_US,
            "history_us": r["high_value"].history_days * DAY_US,
            "terminal_us": r["terminal_burst"].window_seconds * 1_000_000,
            "drain_us": r["sv_drain"].window_minutes * MINUTE_US,
            "burn_us": r["points_burn"].window_minutes * MINUTE_US,
            "accrual_us": r["points_burn"].accrual_window_minutes * MINUTE_US,
            "spread_us": r["store_spread"].window_minutes * MINUTE_US,
            "refund_us": r["refund_abuse"].window_days * DAY_US,
        }


def compile_watchdog(src: WatchdogIn, zone: ZoneInfo,
                     parse_hours: Any) -> Watchdog:
    """Compile the validated section; ``parse_hours(where, hours)`` turns ``"HH:MM-HH:MM"``
    strings into minute spans (the rulebook's own parser, so errors read the same)."""
    rules = {}
    for name in RULES:
        given = getattr(src, name)
        values = given.model_dump()
        enabled = values.pop("enabled", True)
        severity = values.pop("severity") or DEFAULT_SEVERITY[name]
        action = values.pop("action", None) or ("hold" if name == "lost_card" else "alert")
        rules[name] = Rule(name, enabled, severity, action, values)
    off = src.off_hours
    hours: dict[str, tuple[tuple[int, int], ...]] = {}
    if off.hours is not None:
        hours[""] = parse_hours("watchdog.off_hours.hours", off.hours)
    for store, spans in off.store_hours.items():
        hours[store] = parse_hours(f"watchdog.off_hours.store_hours.{store}", spans)
    if off.enabled and src.off_hours.model_fields_set & {"enabled"} and not hours:
        raise RulebookError("watchdog.off_hours.hours",
                            "required when off_hours is enabled (the store's opening hours)")
    return Watchdog(src.enabled, rules, zone, hours)


def default_watchdog(zone: ZoneInfo) -> Watchdog:
    """The watchdog of a rulebook without a ``[watchdog]`` section (documented defaults)."""
    return compile_watchdog(WatchdogIn(), zone, lambda where, hours: ())


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class SettleEvent:
    """The settlement being committed, and the member's balances before it."""

    store: str
    terminal: str | None
    member_id: str | None
    at_us: int
    payable_cents: int
    stored_value_cents: int
    points_redeemed: int
    sv_balance_cents: int = 0
    points_usable: int = 0


@dataclass(frozen=True, slots=True)
class Facts:
    """What the ledger read of the recent past, before this operation (each count and sum
    over the window the rule's configuration gives; zero for a walk-in's member facts)."""

    burst_count: int = 0
    day_count: int = 0
    history_count: int = 0
    history_max_cents: int = 0
    terminal_count: int = 0
    sv_spent_cents: int = 0
    points_redeemed: int = 0
    max_accrual_points: int = 0
    other_stores: int = 0


@dataclass(frozen=True, slots=True)
class RefundEvent:
    """A refund (or void) being committed, and the member's refunds and spending in the
    refund-abuse window before it. Money counts in the ratio only for purchases made in the
    window (``net_cents`` is 0 when this refund's purchase is older)."""

    store: str
    member_id: str
    net_cents: int
    refund_count: int
    refunded_cents: int
    settled_cents: int


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that fired: its evidence holds the numbers that crossed the threshold."""

    rule: str
    severity: str
    action: str
    evidence: dict[str, Any]


def _hit(rule: Rule, **evidence: Any) -> Hit:
    return Hit(rule.name, rule.severity, rule.action, evidence)


def evaluate_settlement(wd: Watchdog, ev: SettleEvent, facts: Facts) -> list[Hit]:
    """Every rule the settlement ``ev`` crosses, given ``facts`` of the time before it."""
    hits: list[Hit] = []
    member = ev.member_id is not None
    r = wd.rule("high_value")
    if r is not None:
        limit = r.store_threshold_cents.get(ev.store, r.threshold_cents)
        if ev.payable_cents >= limit:
            hits.append(_hit(r, payable_cents=ev.payable_cents, threshold_cents=limit))
        elif (member and facts.history_count >= r.min_history
              and ev.payable_cents >= r.history_min_cents
              and ev.payable_cents * 10_000 >= facts.history_max_cents * r.history_multiple_bp):
            hits.append(_hit(r, payable_cents=ev.payable_cents,
                             history_max_cents=facts.history_max_cents,
                             history_count=facts.history_count,
                             history_days=r.history_days,
                             multiple_bp=r.history_multiple_bp))
    r = wd.rule("card_burst")
    if r is not None and member:
        if facts.burst_count + 1 >= r.count:
            hits.append(_hit(r, settlements=facts.burst_count + 1, count=r.count,
                             window_minutes=r.window_minutes))
        elif facts.day_count + 1 >= r.day_count:
            hits.append(_hit(r, settlements=facts.day_count + 1, count=r.day_count,
                             window_minutes=1440))
    r = wd.rule("terminal_burst")
    if r is not None and ev.terminal is not None and facts.terminal_count + 1 >= r.count:
        hits.append(_hit(r, settlements=facts.terminal_count + 1, count=r.count,
                         window_seconds=r.window_seconds))
    r = wd.rule("sv_drain")
    if r is not None and member and ev.stored_value_cents > 0:
        spent = facts.sv_spent_cents + ev.stored_value_cents
        held = ev.sv_balance_cents + facts.sv_spent_cents  # the balance at the window's start
        if spent >= r.min_cents and spent * 10_000 >= held * r.drain_bp:
            hits.append(_hit(r, spent_cents=spent, balance_cents=held, drain_bp=r.drain_bp,
                             window_minutes=r.window_minutes))
    r = wd.rule("points_burn")
    if r is not None and member and ev.points_redeemed > 0:
        burnt = facts.points_redeemed + ev.points_redeemed
        held = ev.points_usable + facts.points_redeemed
        if burnt >= r.min_points and burnt * 10_000 >= held * r.burn_bp:
            hits.append(_hit(r, redeemed=burnt, points_balance=held, burn_bp=r.burn_bp,
                             window_minutes=r.window_minutes))
        elif facts.max_accrual_points >= r.accrual_points:
            hits.append(_hit(r, redeemed=ev.points_redeemed,
                             accrual_points=facts.max_accrual_points,
                             accrual_window_minutes=r.accrual_window_minutes))
    r = wd.rule("off_hours")
    if r is not None:
        spans = wd.hours.get(ev.store, wd.hours.get(""))
        if spans:
            local = datetime.fromtimestamp(ev.at_us // 1_000_000, UTC).astimezone(wd.zone)
            minute = local.hour * 60 + local.minute
            if not any(start <= minute < end for start, end in spans):
                hits.append(_hit(r, local_time=local.strftime("%H:%M"),
                                 hours=[f"{s // 60:02}:{s % 60:02}-{e // 60:02}:{e % 60:02}"
                                        for s, e in spans]))
    r = wd.rule("store_spread")
    if r is not None and member and facts.other_stores + 1 >= r.stores:
        hits.append(_hit(r, stores=facts.other_stores + 1, count=r.stores,
                         window_minutes=r.window_minutes))
    return hits


def evaluate_refund(wd: Watchdog, ev: RefundEvent) -> list[Hit]:
    """The refund-abuse rule on a refund or void about to be committed."""
    r = wd.rule("refund_abuse")
    if r is None:
        return []
    count = ev.refund_count + 1
    refunded = ev.refunded_cents + ev.net_cents
    if count >= r.count:
        return [_hit(r, refunds=count, count=r.count, window_days=r.window_days)]
    if (count >= r.ratio_min_count and ev.settled_cents > 0
            and refunded * 10_000 >= ev.settled_cents * r.ratio_bp):
        return [_hit(r, refunds=count, refunded_cents=refunded, settled_cents=ev.settled_cents,
                     ratio_bp=r.ratio_bp, window_days=r.window_days)]
    return []


def lost_card_hit(wd: Watchdog, card_no: str) -> Hit:
    """The lost-card rule: always a hold (it runs even with the watchdog off: a lost card is
    refused in any case, and the alert is how risk staff hear of the attempt)."""
    r = wd.rules["lost_card"]
    return _hit(r, card_no=card_no)
