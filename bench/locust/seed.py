"""Seed a ledger for the locust load test: members with points, stored value and coupons,
and a POS terminal whose token the users send.

    .venv/bin/python -m bench.locust.seed --database-url URL [--members 2000]
        [--zipf 1.0] [--checkouts 200000] [--token-file bench/results/locust-pos.token]

Enrolment is bench/ledger_vs_pgbench.py's ``set_up_ledger`` (migrates the schema; tiers,
100,000 yuan of stored value, 50,000 points and 3 coupons per member). Under Zipf-skewed
activity the busiest members would run their stored value dry within a long run, so each
member whose expected share of ``--checkouts`` settlements could spend more than that is
topped up by ``Ledger.recharge`` (integer cents) to cover it. Use the same ``--members``,
``--zipf`` and ``--seed`` for the locust run.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import settlement
from bench.ledger_vs_pgbench import (
    RECHARGE_CENTS,
    RULEBOOK,
    STORE,
    log,
    member_id,
    set_up_ledger,
)
from bench.locust.workload import (
    MAX_STORED_VALUE_CENTS,
    rank_to_member,
    zipf_cumulative,
)
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import add_terminal


def top_ups(members: int, zipf_s: float, seed: int, checkouts: int) -> dict[int, int]:
    """Member number -> extra stored value (cents) so that its expected share of
    ``checkouts`` settlements, each paying at most the largest stored-value amount the
    workload asks for, fits in its balance. Members the seeded balance covers are left
    out."""
    cumulative = zipf_cumulative(members, zipf_s)
    total = cumulative[-1]
    out: dict[int, int] = {}
    for rank, number in enumerate(rank_to_member(members, seed)):
        share = (1.0 / (rank + 1) ** zipf_s) / total
        need = math.ceil(checkouts * share) * MAX_STORED_VALUE_CENTS
        if need <= RECHARGE_CENTS:
            break  # ranks only get quieter
        out[number] = need - RECHARGE_CENTS
    return out


def seed_ledger(url: str, members: int, *, zipf_s: float = 1.0, seed: int = 7,
                checkouts: int = 200_000, terminal: str = "LOCUST",
                terminals: int = 16) -> list[str]:
    """Enrol ``members`` members into the ledger at ``url`` (migrating it first), top up the
    busiest ones, add ``terminals`` POS terminals of the bench store (``terminal``-01, ...;
    just ``terminal`` when one); returns their tokens. Users spread over the terminals:
    one terminal taking every checkout is an anomaly the watchdog flags on each of them
    (terminal_burst), all on one alert row."""
    rulebook = settlement.load_rulebook(RULEBOOK)
    log(f"ledger: migrate and enrol {members} members")
    set_up_ledger(url, rulebook, members)
    engine = create_ledger_engine(url)
    try:
        ledger = Ledger(engine, rulebook, max_clock_skew_us=None)
        extra = top_ups(members, zipf_s, seed, checkouts)
        log(f"topping up the {len(extra)} busiest members")
        for number, cents in extra.items():
            ledger.recharge(STORE, f"top-up-{member_id(number)}", member_id(number), cents)
        names = [terminal] if terminals == 1 else [
            f"{terminal}-{t:02d}" for t in range(1, terminals + 1)]
        return [add_terminal(engine, name, STORE, "pos") for name in names]
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Command line: seed, write the token to ``--token-file`` (or stdout)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="the server's database")
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of activity")
    parser.add_argument("--seed", type=int, default=7, help="activity ranks' permutation")
    parser.add_argument("--checkouts", type=int, default=200_000,
                        help="settlements the stored value must last for")
    parser.add_argument("--terminal", default="LOCUST", help="POS terminal id (prefix) to add")
    parser.add_argument("--terminals", type=int, default=16,
                        help="POS terminals to add; users spread over them")
    parser.add_argument("--token-file", type=Path,
                        help="write the tokens here, one per line")
    args = parser.parse_args(argv)
    tokens = seed_ledger(args.database_url, args.members, zipf_s=args.zipf, seed=args.seed,
                         checkouts=args.checkouts, terminal=args.terminal,
                         terminals=args.terminals)
    if args.token_file:
        args.token_file.parent.mkdir(parents=True, exist_ok=True)
        args.token_file.write_text("".join(t + "\n" for t in tokens))
        log(f"tokens of {len(tokens)} terminal(s) in {args.token_file}")
    else:
        print("\n".join(tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
