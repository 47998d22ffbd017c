"""``python -m bench.peer_oscar [--baskets N] [--repeats R] [--json out.json]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .compare import run, table


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the markdown tables, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_oscar",
                                     description=__doc__)
    for flag, default, what in (
            ("--baskets", 20, "shared 20-line baskets"),
            ("--repeats", 3, "timed passes over the baskets in oscar"),
            ("--ours-repeats", 300, "timed quotes of each basket per engine of ours")):
        parser.add_argument(flag, type=positive, default=default,
                            help=f"{what} (default {default})")
    parser.add_argument("--durable-sqlite", action="store_true",
                        help="SQLite's default journal and fsync for oscar (default: "
                             "synchronous=OFF, journal in memory)")
    parser.add_argument("--json", type=Path, help="write the full result here")
    args = parser.parse_args(argv)
    result = run(args.baskets, args.repeats, args.ours_repeats, args.durable_sqlite)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
