"""Watchdog replay simulator: how well the anomaly rules catch injected anomalies.

Run from the repository root::

    .venv/bin/python -m bench.watchdog_sim [--seed 7] [--members 300] [--stores 6] [--days 14]
        [--cases 24] [--database sqlite|postgres] [--latency-settles 2000] [--json out.json]

What it does (everything seeded by ``--seed``, so a run is reproducible):

1. Builds a timeline of simulated traffic in Asia/Shanghai, stores open 07:00-23:00:
   members with a home store (2-3 terminals per store), 0-2 visits a day, baskets of
   1-15 lines at convenience-store prices, stored value paid in part by some members,
   modest points redemptions, occasional one-line refunds. A 90-day prelude before the
   period holds enrolment, seeded points and the history some members need.
   Legitimate look-alikes, labelled clean: (a) a family sharing one card, 3-4 visits a
   day hours apart; (b) a promotion-day rush at one store, no terminal above 4 a
   minute; (c) a monthly stock-up whose 90-day history holds earlier stock-ups; (d) a
   member with a 5,000-yuan stored-value balance spending normal parts of it.
2. Injects ``--cases`` anomalies per rule, each labelled with the rule it should trip
   and the request(s) (``<store>/<key>``) that should be flagged. Each case uses its
   own member (the member's clean traffic near the case is left out, so a case is
   judged on the anomaly itself; see ``QUIET``).
3. Replays the timeline through :class:`Ledger` (its clock is the simulated instant;
   each settle sends the same instant as ``at``), reads ``alert_hits`` joined to
   ``alerts`` and scores each rule:

   * recall = cases of rule R with a hit of R on one of the case's *expected* refs /
     cases of R;
   * precision = distinct refs flagged by R that are operations of a case of R /
     distinct refs flagged by R. A ref of a case of another rule flagged by R counts
     against R (reported apart as "other-case"), like a clean ref;
   * clean alerts per 10,000 = distinct clean refs (settles and refunds, the operations
     the watchdog judges) flagged by any rule / clean operations * 10,000.

4. Latency: the first ``--latency-settles`` settles of the same timeline (with every
   operation before them) are replayed into two fresh databases, one with the watchdog
   on and one with ``[watchdog] enabled = false``, in alternating blocks (ABBA order),
   and settle p50/p99 per mode are reported.

The rulebook is ``bench/rulebook.toml`` plus (see :func:`rulebook_text`): one
``[[recharge_rules]]`` entry (5,000 yuan earns 10,000 bonus points, the large accrual
of the points-burn rule), ``off_hours`` hours 07:00-23:00 (the rule is off without
hours), and a 2,000-yuan ``high_value`` threshold for the last store (a kiosk). Every
other watchdog setting is the documented default.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, text  # noqa: E402

import settlement  # noqa: E402
from bench.cases import RULEBOOK  # noqa: E402
from settlement.ledger.db import create_ledger_engine  # noqa: E402
from settlement.ledger.errors import Held  # noqa: E402
from settlement.ledger.journal import Transaction, account, system  # noqa: E402
from settlement.ledger.migrate import upgrade  # noqa: E402
from settlement.ledger.service import Ledger  # noqa: E402
from settlement.watchdog import RULES  # noqa: E402

SEC = 1_000_000
MINUTE = 60 * SEC
HOUR = 60 * MINUTE
DAY = 24 * HOUR
LOCAL = timezone(timedelta(hours=8))  # Asia/Shanghai has no DST: a fixed offset is exact
#: The simulated period starts on a Monday, local midnight.
START = int(datetime(2026, 3, 2, tzinfo=LOCAL).timestamp()) * SEC
PRELUDE_DAYS = 90
OPEN_MIN, CLOSE_MIN = 7 * 60, 23 * 60  # store hours, minutes of the local day
BIG_RECHARGE_CENTS = 500_000  # the recharge rule's floor: 10,000 bonus points
BIG_RECHARGE_POINTS = 10_000
KIOSK_THRESHOLD_CENTS = 200_000
HISTORY_MIN_CENTS = 20_000  # high_value.history_min_cents (default): smaller never trips
TARGETS = {"recall": 0.95, "precision": 0.90, "clean_per_10k": 5.0, "latency_ratio": 1.10}
CATEGORIES = ("dairy", "fruit", "fresh", "snack", "grain", "household", "drinks", "tobacco")
#: Shelf price range (cents) per category, convenience-store-like.
PRICES = {"dairy": (350, 2000), "fruit": (500, 3000), "fresh": (500, 3000),
          "snack": (300, 1500), "grain": (800, 4500), "household": (500, 5000),
          "drinks": (300, 1000), "tobacco": (1500, 6500)}
#: Categories no promotion or category discount touches (points can pay half of them).
PLAIN = ("grain", "household", "drinks")
#: How long around a case the case member's clean operations are left out, per rule:
#: (before, after) in microseconds, so that the member's everyday traffic neither
#: triggers the case early nor inherits its window (judged apart).
QUIET = {"high_value": (2 * HOUR, 2 * HOUR), "card_burst": (2 * HOUR, 2 * HOUR),
         "card_burst_day": (DAY, DAY), "sv_drain": (2 * HOUR, 2 * HOUR),
         "points_burn": (DAY, DAY), "off_hours": (2 * HOUR, 2 * HOUR),
         "store_spread": (2 * HOUR, 2 * HOUR), "refund_abuse": (7 * DAY, 7 * DAY),
         "lost_card": (2 * HOUR, 2 * HOUR)}


def log(message: str) -> None:
    """Progress to stderr (the results go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- rulebook


def rulebook_text(stores: list[str], enabled: bool = True) -> str:
    """The benchmark rulebook plus what the simulation needs (see the module docstring)."""
    return (RULEBOOK.read_text() + f"""
[[recharge_rules]]
min_cents = {BIG_RECHARGE_CENTS}
bonus_points = {BIG_RECHARGE_POINTS}

[watchdog]
enabled = {"true" if enabled else "false"}

[watchdog.high_value]
store_threshold_cents = {{ {stores[-1]} = {KIOSK_THRESHOLD_CENTS} }}

[watchdog.off_hours]
hours = ["07:00-23:00"]
""")


# --------------------------------------------------------------------------- the timeline


@dataclass
class Event:
    """One operation of the timeline. ``label`` None is clean traffic; otherwise the rule
    the event's case should trip (``case`` its index, ``expect``: this ref should be
    flagged)."""

    at: int
    kind: str  # enroll | seed | recharge | settle | refund | report_lost
    store: str
    key: str
    member: str | None = None
    terminal: str | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    redeem: int = 0
    sv: int = 0
    by_card: bool = True
    amount: int = 0
    parent: str | None = None  # refund: the settle's key
    refund_line: int | None = None  # refund: one line, one unit (None: everything left)
    label: str | None = None
    case: int | None = None
    expect: bool = False
    tag: str = "plain"  # clean look-alike tag, or history
    dropped: bool = False

    @property
    def ref(self) -> str:
        return f"{self.store}/{self.key}"

    def gross(self) -> int:
        return sum(ln["unit_price_cents"] * ln["quantity"] for ln in self.lines)


@dataclass
class Member:
    """A simulated member and the traits that shape their clean traffic."""

    mid: str
    card: str
    tier: str
    home: str
    rate: float  # expected visits per day
    sv_user: bool
    points_seed: int
    role: str = "plain"  # plain | family | stockup | bigsv
    #: stored value the generator may still ask for: a lower bound of the real balance
    #: (a settle uses at most what it asks for), so a request never exceeds the balance
    sv_budget: int = 0


@dataclass
class Case:
    """An injected anomaly: the rule it should trip, its variant and its operations."""

    rule: str
    variant: str
    refs: list[str] = field(default_factory=list)  # every operation of the case
    expected: list[str] = field(default_factory=list)  # those that should be flagged


class Sim:
    """Builds the seeded timeline: clean traffic, look-alikes, injected cases."""

    def __init__(self, seed: int, members: int, stores: int, days: int, cases: int) -> None:
        if stores < 3:
            raise SystemExit("--stores must be at least 3 (store_spread needs 3 stores)")
        self.rng = random.Random(seed)
        self.days = days
        self.cases_per_rule = cases
        self.stores = [f"S{i + 1:02d}" for i in range(stores)]
        self.terminals = {s: [f"T{j + 1}" for j in range(2 + i % 2)]
                          for i, s in enumerate(self.stores)}
        self.events: list[Event] = []
        self.cases: list[Case] = []
        self._keys = 0
        self.catalogue = self._catalogue()
        self.members = self._members(members)
        self.by_member: dict[str, list[Event]] = defaultdict(list)

    # ---- helpers

    def key(self, prefix: str) -> str:
        self._keys += 1
        return f"{prefix}{self._keys:07d}"

    def add(self, ev: Event) -> Event:
        self.events.append(ev)
        if ev.member is not None:
            self.by_member[ev.member].append(ev)
        return ev

    def at(self, day: int, minute: float) -> int:
        """The instant ``minute`` minutes after local midnight of simulated ``day``."""
        return START + day * DAY + int(minute * MINUTE)

    def open_minute(self, lo: int = OPEN_MIN + 30, hi: int = CLOSE_MIN - 30) -> float:
        return self.rng.uniform(lo, hi)

    def _catalogue(self) -> dict[str, list[dict[str, Any]]]:
        """SKUs per category; prices are whole jiao (the rulebook rounds to the jiao)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for cat in CATEGORIES:
            lo, hi = PRICES[cat]
            out[cat] = [{"sku": f"{cat[:3].upper()}-{i:03d}", "category": cat,
                         "unit_price_cents": self.rng.randrange(lo, hi) // 10 * 10}
                        for i in range(40)]
        return out

    def _members(self, n: int) -> list[Member]:
        tiers = ("normal",) * 6 + ("silver",) * 3 + ("gold",)
        out = []
        for i in range(n):
            rng = self.rng
            points = 0
            r = rng.random()
            if r < 0.05:
                points = rng.randrange(6_000, 20_000)  # a points-rich regular
            elif r < 0.45:
                points = rng.randrange(200, 4_000)
            out.append(Member(f"M{i:05d}", f"K{i:05d}", tiers[i % len(tiers)],
                              self.stores[rng.randrange(len(self.stores))],
                              rng.uniform(0.2, 1.2), rng.random() < 0.3, points))
        # look-alike roles on a few members each (at least 2 of each)
        k = max(2, n // 30)
        for j, role in enumerate(("family", "stockup", "bigsv")):
            for m in out[j * k:(j + 1) * k]:
                m.role = role
                m.sv_user = role == "bigsv"
                if role == "bigsv":
                    m.points_seed = 0
                if m.home == self.stores[-1]:  # not at the kiosk (its low threshold)
                    m.home = self.stores[0]
        return out

    def basket(self, lines: int | None = None, cats: Iterable[str] | None = None,
               max_qty: int = 3) -> list[dict[str, Any]]:
        """A convenience-store basket: mostly few lines, mostly one unit each."""
        rng = self.rng
        if lines is None:
            lines = min(15, 1 + int(rng.expovariate(1 / 2.0)))
        pool = list(cats) if cats is not None else list(CATEGORIES)
        weights = [1 if c == "tobacco" else 4 for c in pool]
        out = []
        for _ in range(lines):
            cat = rng.choices(pool, weights)[0]
            item = rng.choice(self.catalogue[cat])
            qty = 1 if rng.random() < 0.8 else rng.randint(2, max_qty)
            out.append({**item, "quantity": qty})
        return out

    def tobacco_basket(self, lo: int, hi: int, cap: int) -> list[dict[str, Any]]:
        """Tobacco packs (not discountable: payable = gross) of ``lo``..``hi`` cents each until
        the gross reaches ``cap`` - one pack or more; the gross stays <= ``cap``."""
        lines: list[dict[str, Any]] = []
        gross = 0
        while True:
            price = self.rng.randrange(lo, hi) // 10 * 10
            if gross + price > cap:
                break
            lines.append({"sku": f"TOB-P{price}", "category": "tobacco",
                          "unit_price_cents": price, "quantity": 1})
            gross += price
        return lines

    def bulk_tobacco(self, target: int) -> list[dict[str, Any]]:
        """Cartons of tobacco worth at least ``target`` cents (payable = gross)."""
        price = self.rng.choice((18_000, 23_000, 26_000, 36_000, 45_000))
        return [{"sku": f"TOB-C{price}", "category": "tobacco", "unit_price_cents": price,
                 "quantity": -(-target // price)}]

    def settle(self, m: Member | None, day: int, minute: float, store: str,
               lines: list[dict[str, Any]], terminal: str | None = None, **kw: Any) -> Event:
        """Add a settle event (a walk-in when ``m`` is None)."""
        term = terminal or self.rng.choice(self.terminals[store])
        return self.add(Event(self.at(day, minute), "settle", store, self.key("s"),
                              m.mid if m else None, term, lines, **kw))

    # ---- clean traffic

    def setup(self) -> None:
        """Enrolment, seeded points and stored value, 90 days before the period."""
        for m in self.members:
            t = START - PRELUDE_DAYS * DAY + 9 * HOUR
            self.add(Event(t, "enroll", m.home, self.key("e"), m.mid))
            if m.points_seed:
                self.add(Event(t + 1, "seed", m.home, self.key("p"), m.mid,
                               amount=m.points_seed))
            if m.sv_user:
                amount = (self.rng.randrange(300_000, 600_001, 10_000) if m.role == "bigsv"
                          else self.rng.randrange(10_000, 100_001, 5_000))
                self.add(Event(t + 2, "recharge", m.home, self.key("r"), m.mid, amount=amount))
                m.sv_budget = amount

    def clean_traffic(self) -> None:
        """Every member's everyday visits over the period."""
        for m in self.members:
            if m.role == "family":
                self.family(m)
                continue
            for day in range(self.days):
                k = self.visits(m.rate)
                minutes = sorted(self.open_minute() for _ in range(k))
                if k == 2 and minutes[1] - minutes[0] < 90:  # a member's visits hours apart
                    minutes[1] = min(CLOSE_MIN - 30, minutes[0] + 90 + self.rng.uniform(0, 120))
                for minute in minutes:
                    self.visit(m, day, minute)
            if m.role == "stockup":
                self.stockup(m)

    def visits(self, rate: float) -> int:
        """0, 1 or 2 visits on one day (Poisson with ``rate``, capped at 2)."""
        u = self.rng.random()
        p0 = math.exp(-rate)
        return 0 if u < p0 else 1 if u < p0 + rate * p0 else 2

    def visit(self, m: Member, day: int, minute: float, store: str | None = None,
              tag: str = "plain", lines: list[dict[str, Any]] | None = None) -> Event:
        """One clean checkout: home store mostly, some stored value, some points."""
        rng = self.rng
        if store is None:
            store = m.home if rng.random() < 0.85 else rng.choice(self.stores)
        lines = lines if lines is not None else self.basket()
        redeem = 0
        if m.points_seed >= 400 and rng.random() < 0.1:
            redeem = (rng.randrange(400, 2001, 20) if m.points_seed >= 6_000
                      else rng.randrange(100, 401, 20))
        sv = 0
        budget = m.sv_budget
        if m.sv_user and budget > 0 and rng.random() < (0.7 if m.role == "bigsv" else 0.4):
            gross = sum(ln["unit_price_cents"] * ln["quantity"] for ln in lines)
            sv = min(budget, max(100, gross * rng.randrange(30, 101) // 100))
            m.sv_budget = budget - sv
        ev = self.settle(m, day, minute, store, lines, redeem=redeem, sv=sv,
                         by_card=rng.random() < 0.7, tag=tag if m.role == "plain" else m.role)
        if rng.random() < 0.015:  # a legitimate return: one unit of one line, later
            later = day + (1 if minute > CLOSE_MIN - 120 or rng.random() < 0.6 else 0)
            rmin = self.open_minute(int(minute) + 60 if later == day else OPEN_MIN + 30)
            self.add(Event(self.at(later, rmin), "refund", store, self.key("f"), m.mid,
                           parent=ev.key, refund_line=rng.randrange(len(lines)), tag=ev.tag))
        return ev

    def family(self, m: Member) -> None:
        """Look-alike (a): a family sharing one card: 3-4 visits a day, hours apart."""
        for day in range(self.days):
            slots = [8 * 60, 12 * 60 + 30, 17 * 60 + 30, 20 * 60 + 30]
            if self.rng.random() < 0.5:
                slots.pop(self.rng.randrange(4))
            for s in slots:
                self.visit(m, day, s + self.rng.uniform(-40, 40), store=m.home, tag="family")

    def stockup(self, m: Member) -> None:
        """Look-alike (c): a monthly stock-up; the 90-day history (prelude) holds earlier
        ones of a similar size, so the period's one is within the history multiple."""
        size = self.rng.randrange(80_000, 150_000)
        for back in (75, 45, 15):
            lines = self.bulk_plain(size * self.rng.randrange(90, 111) // 100)
            self.visit(m, -back, self.open_minute(), store=m.home, tag="stockup", lines=lines)
            for extra in range(3):  # a few small visits between stock-ups
                self.visit(m, -back + 3 + 4 * extra, self.open_minute(), store=m.home,
                           tag="stockup")
        day = self.rng.randrange(1, max(2, self.days - 1))
        lines = self.bulk_plain(size * self.rng.randrange(90, 131) // 100)
        self.visit(m, day, self.open_minute(), store=m.home, tag="stockup", lines=lines)

    def bulk_plain(self, target: int) -> list[dict[str, Any]]:
        """A stock-up basket (rice, oil, paper, drinks by the case) worth about ``target``."""
        lines: list[dict[str, Any]] = []
        gross = 0
        while gross < target:
            item = self.rng.choice(self.catalogue[self.rng.choice(PLAIN)])
            qty = max(1, min(24, (target - gross) // item["unit_price_cents"]
                             // self.rng.randint(2, 6) or 1))
            lines.append({**item, "quantity": qty})
            gross += item["unit_price_cents"] * qty
            if len(lines) >= 40:
                break
        return lines

    def promo_rush(self) -> None:
        """Look-alike (b): a promotion-day rush: many members at one store in 40 minutes,
        each terminal at most one checkout every 15 s (a busy till, under the burst rule)."""
        store = self.stores[0]
        day = min(2, self.days - 1)
        start = 10 * 60.0
        plain = [m for m in self.members if m.role == "plain"]
        shoppers = self.rng.sample(plain, min(len(plain) // 2, 150))
        terms = self.terminals[store]
        clock = {t: start + self.rng.uniform(0, 1) for t in terms}
        for i, m in enumerate(shoppers):
            term = terms[i % len(terms)]
            clock[term] += self.rng.uniform(15, 40) / 60
            minute = clock[term]
            t = self.at(day, minute)
            self.quiet(m.mid, t - 90 * MINUTE, t + 90 * MINUTE)
            self.settle(m, day, minute, store, self.basket(), terminal=term,
                        by_card=True, tag="rush")

    # ---- cases

    def quiet(self, mid: str, lo: int, hi: int, kinds: tuple[str, ...] = ("settle", "refund"),
              ) -> None:
        """Leave the member's clean operations of ``kinds`` in ``[lo, hi]`` out."""
        for ev in self.by_member[mid]:
            if ev.label is None and ev.kind in kinds and lo <= ev.at <= hi:
                ev.dropped = True

    def new_case(self, rule: str, variant: str, evs: list[Event], expected: list[Event],
                 ) -> None:
        idx = len(self.cases)
        for ev in evs:
            ev.label, ev.case = rule, idx
            ev.expect = ev in expected
        self.cases.append(Case(rule, variant, [e.ref for e in evs], [e.ref for e in expected]))

    def pick(self, pool: list[Member], ok: Callable[[Member], bool] = lambda m: True,
             ) -> Member:
        """A member for one case (each member is used by at most one case)."""
        for i, m in enumerate(pool):
            if ok(m):
                return pool.pop(i)
        raise SystemExit("not enough members for the cases: raise --members or lower --cases")

    def steps(self, start: float, k: int, lo: float, hi: float) -> list[float]:
        """``k`` increasing instants from ``start``, ``lo``..``hi`` apart."""
        out = [start]
        for _ in range(k - 1):
            out.append(out[-1] + self.rng.uniform(lo, hi))
        return out

    def case_day(self, lo: int = 1) -> int:
        return self.rng.randrange(min(lo, self.days - 1), self.days)

    def inject(self) -> None:
        """``cases_per_rule`` cases of every rule, in a seeded order."""
        pool = [m for m in self.members if m.role == "plain"]
        self.rng.shuffle(pool)
        n = self.cases_per_rule
        for i in range(n):
            self.high_value(pool, i)
            self.card_burst(pool, i)
            self.terminal_burst(i)
            self.sv_drain(pool)
            self.points_burn(pool, i)
            self.off_hours(pool)
            self.store_spread(pool)
            self.refund_abuse(pool, i)
            self.lost_card(pool)

    def history_max(self, m: Member, t: int) -> tuple[int, int]:
        """(settles, largest gross) of the member's kept settles in the 90 days before t."""
        past = [e for e in self.by_member[m.mid] if e.kind == "settle" and not e.dropped
                and t - 90 * DAY < e.at < t]
        return len(past), max((e.gross() for e in past), default=0)

    def high_value(self, pool: list[Member], i: int) -> None:
        """A single very large checkout: over the store threshold (the kiosk's every
        third case), or over 5x the member's own 90-day maximum (every other case)."""
        m = self.pick(pool)
        day, minute = self.case_day(), self.open_minute()
        t = self.at(day, minute)
        self.quiet(m.mid, t - QUIET["high_value"][0], t + QUIET["high_value"][1])
        if i % 2:
            count, top = self.history_max(m, t)
            for j in range(max(0, 6 - count)):  # a long-standing member: history first
                self.visit(m, -80 + 12 * j, self.open_minute(), store=m.home, tag="history")
            count, top = self.history_max(m, t)
            amount = max(top * 6, HISTORY_MIN_CENTS + 5_000)
            variant, store = "history multiple", m.home
            if amount >= 450_000:  # would be the threshold branch anyway
                variant = "history multiple (threshold)"
        elif i % 3 == 0:
            store, variant = self.stores[-1], "kiosk threshold"
            amount = KIOSK_THRESHOLD_CENTS + self.rng.randrange(0, 150_000)
        else:
            store = m.home if m.home != self.stores[-1] else self.stores[0]
            variant = "store threshold"
            amount = 500_000 + self.rng.randrange(0, 400_000)
        ev = self.settle(m, day, minute, store, self.bulk_tobacco(amount))
        self.new_case("high_value", variant, [ev], [ev])

    def card_burst(self, pool: list[Member], i: int) -> None:
        """A card used again and again: 6-8 checkouts in under 10 minutes, or (every fourth
        case) 20-22 checkouts in one day, each 30+ minutes apart (a cashier scanning their
        own card for customers)."""
        m = self.pick(pool, lambda m: m.home != self.stores[-1])
        day = self.case_day()
        if i % 4 == 3:
            k = self.rng.randint(20, 22)
            step = (CLOSE_MIN - OPEN_MIN - 60) / k
            minutes = [OPEN_MIN + 20 + step * j + self.rng.uniform(0, step - 30)
                       for j in range(k)]
            before, after = QUIET["card_burst_day"]
            variant, nth = "20 a day", 20
        else:
            k = self.rng.randint(6, 8)
            start = self.open_minute()
            minutes = self.steps(start, k, 0.6, 1.2)
            before, after = QUIET["card_burst"]
            variant, nth = "6 in 10 min", 6
        self.quiet(m.mid, self.at(day, minutes[0]) - before, self.at(day, minutes[-1]) + after)
        evs = [self.settle(m, day, mm, m.home, self.basket(self.rng.randint(1, 3))) for mm in
               minutes]
        self.new_case("card_burst", variant, evs, evs[nth - 1:])

    def terminal_burst(self, i: int) -> None:
        """10-14 walk-in checkouts on one terminal in under a minute (split sales)."""
        store = self.stores[i % (len(self.stores) - 1)]
        term = self.rng.choice(self.terminals[store])
        day, start = self.case_day(), self.open_minute()
        k = self.rng.randint(10, 14)
        offsets = self.steps(0.0, k, 3.0 / 60, 5.5 / 60)
        lo, hi = self.at(day, start) - 2 * MINUTE, self.at(day, start + offsets[-1]) + 2 * MINUTE
        for ev in self.events:  # the terminal's clean checkouts around it are left out
            if (ev.label is None and ev.kind == "settle" and ev.store == store
                    and ev.terminal == term and lo <= ev.at <= hi):
                ev.dropped = True
        evs = [self.settle(None, day, start + o, store, self.basket(self.rng.randint(1, 4)),
                           terminal=term) for o in offsets]
        self.new_case("terminal_burst", "walk-ins", evs, evs[9:])

    def sv_drain(self, pool: list[Member]) -> None:
        """A recharged card emptied within the hour: a legitimate top-up of 560-1,000 yuan,
        days later 92-100 % of it spent in tobacco packs (each checkout under 200 yuan) at
        10-minute intervals."""
        m = self.pick(pool, lambda m: not m.sv_user and m.home != self.stores[-1])
        day, minute = self.case_day(2), self.open_minute(hi=CLOSE_MIN - 90)
        balance = self.rng.randrange(56_000, 100_001, 1_000)
        top_up = self.at(day - self.rng.randint(1, 2), self.open_minute())
        drain = balance * self.rng.randrange(92, 101) // 100
        n = -(-drain // 16_000)
        t0 = self.at(day, minute)
        self.quiet(m.mid, t0 - QUIET["sv_drain"][0], t0 + HOUR + QUIET["sv_drain"][1])
        self.add(Event(top_up, "recharge", m.home, self.key("r"), m.mid, amount=balance,
                       tag="case"))
        evs, expected, spent = [], [], 0
        for mm in self.steps(minute, n, 8, 10):
            lines = self.tobacco_basket(1_500, 3_500, 19_500)
            while sum(ln["unit_price_cents"] for ln in lines) < drain // n:
                lines = self.tobacco_basket(1_500, 3_500, 19_500)
            pay = min(sum(ln["unit_price_cents"] for ln in lines), drain - spent)
            spent += pay
            ev = self.settle(m, day, mm, m.home, lines, sv=pay)
            evs.append(ev)
            if spent * 10 >= balance * 9 and spent >= 50_000:
                expected.append(ev)
        self.new_case("sv_drain", "recharge then drain", evs, expected)

    def points_burn(self, pool: list[Member], i: int) -> None:
        """Points burnt: a 5,200-12,000-point balance redeemed in full within a few hours
        (each checkout pays at most half with points), or (every other case) points
        redeemed within the hour after a 5,000-yuan recharge's 10,000 bonus points."""
        m = self.pick(pool, lambda m: m.points_seed == 0 and not m.sv_user
                      and m.home != self.stores[-1])
        day, minute = self.case_day(), self.open_minute(hi=CLOSE_MIN - 240)
        t0 = self.at(day, minute)
        self.quiet(m.mid, t0 - QUIET["points_burn"][0], t0 + 4 * HOUR + QUIET["points_burn"][1])
        if i % 2:
            rc = self.add(Event(t0, "recharge", m.home, self.key("r"), m.mid,
                                amount=BIG_RECHARGE_CENTS, tag="case"))
            ev = self.settle(m, day, minute + self.rng.uniform(5, 50), m.home,
                             self.basket(self.rng.randint(2, 6), PLAIN),
                             redeem=self.rng.randrange(1_000, 6_001, 20))
            self.new_case("points_burn", "after large accrual", [rc, ev], [ev])
            return
        points = self.rng.randrange(5_200, 12_001)
        self.add(Event(START - PRELUDE_DAYS * DAY + 10 * HOUR, "seed", m.home, self.key("p"),
                       m.mid, amount=points, tag="case"))
        n = -(-points // 2_300)
        evs = []
        for mm in self.steps(minute, n, 20, 40):
            lines: list[dict[str, Any]] = []
            while sum(ln["unit_price_cents"] * ln["quantity"] for ln in lines) < 33_000:
                lines.append({**self.rng.choice(self.catalogue[self.rng.choice(PLAIN)]),
                              "quantity": 1})
                if sum(ln["unit_price_cents"] for ln in lines) > 37_000:
                    lines.pop(0)
            evs.append(self.settle(m, day, mm, m.home, lines,
                                   redeem=points + 5_000))
        self.new_case("points_burn", "balance burnt", evs, evs[-1:])

    def off_hours(self, pool: list[Member]) -> None:
        """A checkout while the store is closed (23:05-06:50 local)."""
        m = self.pick(pool)
        day = self.case_day()
        minute = self.rng.uniform(CLOSE_MIN + 5, 24 * 60 + OPEN_MIN - 10)
        t = self.at(day, minute)
        self.quiet(m.mid, t - QUIET["off_hours"][0], t + QUIET["off_hours"][1])
        ev = self.settle(m, day, minute, m.home, self.basket())
        self.new_case("off_hours", "closed store", [ev], [ev])

    def store_spread(self, pool: list[Member]) -> None:
        """A cloned card: three different stores within 50 minutes."""
        m = self.pick(pool)
        day, minute = self.case_day(), self.open_minute(hi=CLOSE_MIN - 90)
        others = [s for s in self.stores if s != m.home]
        stores = [m.home, *self.rng.sample(others, 2)]
        t0 = self.at(day, minute)
        self.quiet(m.mid, t0 - QUIET["store_spread"][0], t0 + HOUR + QUIET["store_spread"][1])
        evs = []
        for mm, s in zip(self.steps(minute, 3, 15, 25), stores, strict=True):
            evs.append(self.settle(m, day, mm, s,
                                   self.basket(self.rng.randint(1, 4))))
        self.new_case("store_spread", "3 stores", evs, evs[2:])

    def refund_abuse(self, pool: list[Member], i: int) -> None:
        """Buy and return: 4-6 purchases refunded in full within the week (count), or
        (every third case) 2-3 purchases all refunded (ratio)."""
        m = self.pick(pool, lambda m: m.home != self.stores[-1])
        day = self.case_day()
        day = max(0, min(day, self.days - 5))
        ratio = i % 3 == 2
        k = self.rng.randint(2, 3) if ratio else self.rng.randint(4, 6)
        settles = []
        for j in range(k):  # two a day: a morning and an evening visit
            minute = (self.open_minute(hi=13 * 60) if j % 2 == 0
                      else self.open_minute(lo=14 * 60))
            lines = self.basket(self.rng.randint(2, 6), max_qty=2)
            settles.append(self.settle(m, day + j // 2, minute, m.home, lines))
        refunds = []
        for s in settles:
            d = (s.at - START) // DAY + self.rng.randint(1, 2)
            t = self.at(d, self.open_minute())
            refunds.append(self.add(Event(t, "refund", m.home, self.key("f"), m.mid,
                                          parent=s.key)))
        refunds.sort(key=lambda e: e.at)
        # labelled first: quiet() leaves out only the member's clean operations
        self.new_case("refund_abuse", "ratio" if ratio else "count", settles + refunds,
                      refunds[1:] if ratio else refunds[3:])
        lo, hi = settles[0].at - 7 * DAY, max(r.at for r in refunds)
        self.quiet(m.mid, lo, hi + 7 * DAY, ("refund",))
        self.quiet(m.mid, lo, hi, ("settle",))

    def lost_card(self, pool: list[Member]) -> None:
        """A card reported lost, then presented (by the finder) 20 minutes to a day later."""
        m = self.pick(pool)
        day, minute = self.case_day(), self.open_minute()
        t = self.at(day, minute)
        report = self.add(Event(t, "report_lost", m.home, self.key("l"), m.mid, tag="case"))
        later = t + int(self.rng.uniform(20, 24 * 60) * MINUTE)
        d, rem = divmod(later - START, DAY)
        if rem / MINUTE > CLOSE_MIN - 30:  # closed by then: the next day
            d, rem = d + 1, int(self.open_minute() * MINUTE)
        elif rem / MINUTE < OPEN_MIN + 30:  # after midnight: later that morning
            rem = int(self.open_minute() * MINUTE)
        store = self.rng.choice(self.stores)
        self.quiet(m.mid, t - QUIET["lost_card"][0], self.at(d, rem / MINUTE)
                   + QUIET["lost_card"][1])
        ev = self.settle(m, d, rem / MINUTE, store, self.basket(), by_card=True)
        self.new_case("lost_card", "card presented", [report, ev], [ev])
        for e in self.by_member[m.mid]:  # the owner identifies by phone from now on
            if e.label is None and e.at > t:
                e.by_card = False

    # ---- the result

    def build(self) -> list[Event]:
        """Everything, in time order, without left-out operations (or refunds of them)."""
        self.setup()
        self.clean_traffic()
        self.promo_rush()
        self.inject()
        kept = {e.key for e in self.events if not e.dropped}
        out = [e for e in self.events if not e.dropped
               and (e.kind != "refund" or e.parent in kept)]
        out.sort(key=lambda e: (e.at, e.key))
        return out


# --------------------------------------------------------------------------- replay


def iso(at_us: int, store: str) -> str:
    """The instant as the store's terminals send it: +08:00, or UTC at odd stores."""
    zone = UTC if int(store[1:]) % 2 else LOCAL
    return datetime.fromtimestamp(at_us / SEC, zone).isoformat(timespec="microseconds")


class Clock:
    """The simulated "now" the ledger reads."""

    def __init__(self) -> None:
        self.now = START - PRELUDE_DAYS * DAY

    def __call__(self) -> int:
        return self.now


def seed_points(ledger: Ledger, mid: str, store: str, points: int) -> None:
    """A points lot as past settlements would have left it (as the ledger bench seeds)."""
    with ledger.engine.begin() as conn:
        now = ledger.clock()
        tx = Transaction("seed", mid, store, now)
        tx.move(system(conn, "points_issued"), account(conn, mid, "points"), points)
        Ledger._write_lots(conn, tx.write(conn), [(mid, points, None)], now)


@dataclass
class Replayer:
    """Applies timeline events to one ledger, remembering settlement ids."""

    ledger: Ledger
    clock: Clock
    members: dict[str, Member]
    sids: dict[str, str] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def apply(self, ev: Event) -> float | None:
        """Apply ``ev``; returns the settle call's duration in seconds (None otherwise)."""
        self.clock.now = ev.at
        L = self.ledger
        try:
            if ev.kind == "settle":
                req: dict[str, Any] = {"at": iso(ev.at, ev.store), "lines": ev.lines}
                if ev.member is not None:
                    m = self.members[ev.member]
                    if ev.by_card:
                        req["card_no"] = m.card
                    else:
                        req["member_id"] = m.mid
                if ev.redeem:
                    req["redeem_points"] = ev.redeem
                if ev.sv:
                    req["pay_stored_value_cents"] = ev.sv
                t0 = time.perf_counter()
                try:
                    r = L.settle(ev.store, ev.key, req, terminal=ev.terminal)
                except Held:
                    self.held.append(ev.ref)
                    return time.perf_counter() - t0
                took = time.perf_counter() - t0
                self.sids[ev.key] = r["settlement_id"]
                return took
            if ev.kind == "refund":
                assert ev.parent is not None
                lines: list[Mapping[str, int]] | None = (
                    None if ev.refund_line is None
                    else [{"line_no": ev.refund_line, "quantity": 1}])
                L.refund(ev.store, ev.key, self.sids[ev.parent], lines)
            elif ev.kind == "enroll":
                m = self.members[ev.member or ""]
                L.enroll(ev.store, ev.key, member_id=m.mid, card_no=m.card, tier=m.tier)
            elif ev.kind == "seed":
                seed_points(L, ev.member or "", ev.store, ev.amount)
            elif ev.kind == "recharge":
                L.recharge(ev.store, ev.key, ev.member or "", ev.amount)
            elif ev.kind == "report_lost":
                L.report_lost(ev.store, ev.key, self.members[ev.member or ""].card)
        except Held:
            self.held.append(ev.ref)
        except Exception as exc:  # counted and reported: a simulation that errs is visible
            self.errors[f"{ev.kind}: {type(exc).__name__}: {str(exc)[:80]}"] += 1
        return None


def make_ledger(url: str, rulebook: settlement.Rulebook) -> tuple[Ledger, Clock, Engine]:
    """A migrated database at ``url`` and a ledger on it with a simulated clock."""
    engine = create_ledger_engine(url, pool_size=2)
    upgrade(engine)
    clock = Clock()
    return Ledger(engine, rulebook, clock=clock), clock, engine


def flagged(engine: Engine) -> dict[str, set[str]]:
    """Refs each rule flagged: ``rule -> {"<store>/<key>"}``."""
    out: dict[str, set[str]] = defaultdict(set)
    with engine.connect() as conn:
        for rule, ref in conn.execute(text(
                "SELECT a.rule, h.ref FROM alert_hits h JOIN alerts a ON a.id = h.alert_id")):
            out[rule].add(ref)
    return out


# --------------------------------------------------------------------------- scoring


def score(events: list[Event], cases: list[Case], hits: dict[str, set[str]]) -> dict[str, Any]:
    """Recall and precision per rule, and clean alerts per 10,000 (module docstring)."""
    owner = {e.ref: e for e in events}
    rules: dict[str, Any] = {}
    for rule in RULES:
        mine = [c for c in cases if c.rule == rule]
        caught = [c for c in mine if any(r in hits[rule] for r in c.expected)]
        by_variant: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for c in mine:
            by_variant[c.variant][0] += 1
            by_variant[c.variant][1] += c in caught
        refs = hits[rule]
        true = {r for r in refs if r in owner and owner[r].label == rule}
        clean = {r for r in refs if r in owner and owner[r].label is None}
        rules[rule] = {
            "cases": len(mine), "caught": len(caught),
            "recall": len(caught) / len(mine) if mine else None,
            "flagged_refs": len(refs), "true_refs": len(true),
            "precision": len(true) / len(refs) if refs else None,
            "false_clean": len(clean), "false_other_case": len(refs) - len(true) - len(clean),
            "variants": {v: {"cases": n, "caught": k} for v, (n, k) in by_variant.items()},
            "missed": [c.expected for c in mine if c not in caught][:5],
        }
    judged = [e for e in events if e.label is None and e.kind in ("settle", "refund")]
    any_hit = set().union(*hits.values()) if hits else set()
    clean_hit = [e for e in judged if e.ref in any_hit]
    by_rule = {rule: sum(e.ref in hits[rule] for e in judged) for rule in RULES}
    by_tag = Counter(e.tag for e in clean_hit)
    return {"rules": rules, "clean": {
        "operations": len(judged), "settles": sum(e.kind == "settle" for e in judged),
        "refunds": sum(e.kind == "refund" for e in judged),
        "look_alikes": dict(Counter(e.tag for e in judged if e.kind == "settle")),
        "flagged_refs": len(clean_hit),
        "per_10k": len(clean_hit) / len(judged) * 10_000 if judged else None,
        "by_rule": {k: v for k, v in by_rule.items() if v},
        "by_tag": dict(by_tag),
        "examples": [e.ref for e in clean_hit][:10]}}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (seconds)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# --------------------------------------------------------------------------- latency


def latency(events: list[Event], members: dict[str, Member], settles: int,
            urls: tuple[str, str], stores: list[str], block: int = 50) -> dict[str, Any]:
    """Replay the first ``settles`` settles (and every operation before them) into two
    fresh databases, watchdog on (``urls[0]``) and off (``urls[1]``), alternating blocks
    of ``block`` settles in ABBA order so drift does not favour one mode."""
    prefix: list[Event] = []
    n = 0
    for ev in events:
        prefix.append(ev)
        n += ev.kind == "settle"
        if n >= settles:
            break
    modes: dict[str, tuple[Replayer, list[float]]] = {}
    engines = []
    for name, url, on in (("on", urls[0], True), ("off", urls[1], False)):
        ledger, clock, engine = make_ledger(
            url, settlement.rulebook_from_toml(rulebook_text(stores, enabled=on)))
        engines.append(engine)
        modes[name] = (Replayer(ledger, clock, members), [])
    # blocks: split the prefix after every ``block`` settles
    blocks: list[list[Event]] = [[]]
    count = 0
    for ev in prefix:
        blocks[-1].append(ev)
        count += ev.kind == "settle"
        if count and count % block == 0 and ev.kind == "settle":
            blocks.append([])
    for i, chunk in enumerate(blocks):
        order = ("on", "off") if i % 4 in (0, 3) else ("off", "on")
        for name in order:
            rep, times = modes[name]
            for ev in chunk:
                took = rep.apply(ev)
                if took is not None:
                    times.append(took)
    out: dict[str, Any] = {"settles": n, "block": block}
    for name, (rep, times) in modes.items():
        out[name] = {"n": len(times), "p50_ms": percentile(times, 0.5) * 1000,
                     "p99_ms": percentile(times, 0.99) * 1000,
                     "mean_ms": sum(times) / len(times) * 1000 if times else 0.0,
                     "errors": sum(rep.errors.values())}
    out["p50_ratio"] = out["on"]["p50_ms"] / out["off"]["p50_ms"] if out["off"]["p50_ms"] else 0
    for engine in engines:
        engine.dispose()
    return out


# --------------------------------------------------------------------------- report


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """The markdown report."""
    out = ["| rule | cases | caught | recall | flagged refs | true | false (clean / other case)"
           " | precision |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rule, r in result["rules"].items():
        out.append(f"| {rule} | {r['cases']} | {r['caught']} | {fmt(r['recall'])} | "
                   f"{r['flagged_refs']} | {r['true_refs']} | {r['false_clean']} / "
                   f"{r['false_other_case']} | {fmt(r['precision'])} |")
    c = result["clean"]
    out += ["", f"Clean operations judged: {c['operations']} ({c['settles']} settles, "
            f"{c['refunds']} refunds); clean refs flagged: {c['flagged_refs']} = "
            f"**{fmt(c['per_10k'], 2)} per 10,000** (target <= {TARGETS['clean_per_10k']:g})"
            + (f"; by rule {c['by_rule']}, by tag {c['by_tag']}" if c["flagged_refs"] else "")]
    lat = result.get("latency")
    if lat:
        out += ["", "| watchdog | settles | p50 ms | p99 ms | mean ms |",
                "|---|---:|---:|---:|---:|"]
        for mode in ("on", "off"):
            m = lat[mode]
            out.append(f"| {mode} | {m['n']} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | "
                       f"{m['mean_ms']:.3f} |")
        out.append(f"\nSettle p50 on / off: **{lat['p50_ratio']:.3f}x** "
                   f"(target <= {TARGETS['latency_ratio']:.2f}x)")
    return "\n".join(out)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Which targets the run met."""
    below = {rule: {k: r[k] for k in ("recall", "precision")
                    if r[k] is None or r[k] < TARGETS[k]}
             for rule, r in result["rules"].items()}
    lat = result.get("latency")
    return {"rules_below_target": {k: v for k, v in below.items() if v},
            "clean_per_10k_met": (result["clean"]["per_10k"] or 0) <= TARGETS["clean_per_10k"],
            "latency_met": None if not lat else lat["p50_ratio"] <= TARGETS["latency_ratio"]}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--members", type=int, default=300)
    parser.add_argument("--stores", type=int, default=6)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--cases", type=int, default=24, help="injected cases per rule")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--latency-settles", type=int, default=2000,
                        help="settles replayed per watchdog mode (0: skip)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build, replay, score; returns the results (also printed as markdown)."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform()}}
    sim = Sim(args.seed, args.members, args.stores, args.days, args.cases)
    events = sim.build()
    members = {m.mid: m for m in sim.members}
    result["timeline"] = {"events": len(events), "kinds": dict(Counter(e.kind for e in events)),
                          "injected_ops": sum(e.label is not None for e in events),
                          "cases": len(sim.cases)}
    log(f"timeline: {result['timeline']}")
    cluster = None
    tmp = tempfile.TemporaryDirectory(prefix="watchdog_sim_")
    try:
        if args.database == "postgres":
            from tests.pgcluster import PostgresCluster

            cluster = PostgresCluster(durable=True)
            log("starting a durable PostgreSQL cluster")
            cluster.start()
            with cluster.connect("postgres") as conn:
                row = conn.execute("SHOW server_version").fetchone()
                result["server_version"] = row[0] if row else "?"
            urls = {}
            for name in ("sim", "lat_on", "lat_off"):
                cluster.create_database(name)
                urls[name] = cluster.url(dbname=name)
        else:
            urls = {name: f"sqlite:///{tmp.name}/{name}.db"
                    for name in ("sim", "lat_on", "lat_off")}
        rb = settlement.rulebook_from_toml(rulebook_text(sim.stores))
        ledger, clock, engine = make_ledger(urls["sim"], rb)
        rep = Replayer(ledger, clock, members)
        log(f"replaying {len(events)} events ({args.database})")
        t0 = time.perf_counter()
        for ev in events:
            rep.apply(ev)
        result["replay_s"] = time.perf_counter() - t0
        result["errors"] = dict(rep.errors)
        hits = flagged(engine)
        engine.dispose()
        result.update(score(events, sim.cases, hits))
        result["held"] = len(rep.held)
        if args.latency_settles > 0:
            log(f"latency: {args.latency_settles} settles, watchdog on / off")
            result["latency"] = latency(events, members, args.latency_settles,
                                        (urls["lat_on"], urls["lat_off"]), sim.stores)
    finally:
        if cluster is not None:
            log("stopping the cluster")
            cluster.stop()
        tmp.cleanup()
    result["targets"] = targets(result)
    result["elapsed_s"] = time.perf_counter() - t_start
    print(table(result))
    if result["errors"]:
        print(f"\nreplay errors: {result['errors']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
