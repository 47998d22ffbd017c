"""``python -m bench.peer_oscar [--baskets N] [--repeats R] [--json out.json]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .compare import run, table


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the markdown tables, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_oscar",
                                     description=__doc__)
    parser.add_argument("--baskets", type=int, default=20,
                        help="shared 20-line baskets (default 20)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes over the baskets in oscar (default 3)")
    parser.add_argument("--ours-repeats", type=int, default=300,
                        help="timed quotes of each basket per engine of ours (default 300)")
    parser.add_argument("--durable-sqlite", action="store_true",
                        help="SQLite's default journal and fsync for oscar (default: "
                             "synchronous=OFF, journal in memory)")
    parser.add_argument("--json", type=Path, help="write the full result here")
    args = parser.parse_args(argv)
    if args.baskets < 1 or args.repeats < 1 or args.ours_repeats < 1:
        parser.error("--baskets, --repeats and --ours-repeats must be >= 1")
    result = run(args.baskets, args.repeats, args.ours_repeats, args.durable_sqlite)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
