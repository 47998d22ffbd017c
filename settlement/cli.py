"""``settlement`` command line: ``settlement quote --rules R.toml --request Q.json``.

``quote`` is also the merchant's dry run of a new rulebook: it prices a
request and prints the receipt JSON. Bad input exits 2 with the message
naming the field on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

EXIT_BAD_INPUT = 2


def _read_request(path: str) -> object:
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise SystemExit(_fail(f"request: cannot read {path}: {exc.strerror or exc}")) from None
    except UnicodeDecodeError:
        raise SystemExit(_fail(f"request: {path} is not UTF-8 text")) from None
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        raise SystemExit(_fail(f"request: invalid JSON: {exc}")) from None
    except RecursionError:
        raise SystemExit(_fail("request: invalid JSON: nested too deeply")) from None


def _fail(message: str) -> int:
    print(f"settlement: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _quote(args: argparse.Namespace) -> int:
    import settlement

    try:
        rulebook = settlement.load_rulebook(args.rules)
    except settlement.RulebookError as exc:
        where = "" if exc.field == str(args.rules) else f" {args.rules}"
        return _fail(f"rulebook{where}: {exc}")
    request = _read_request(args.request)
    try:
        receipt = settlement.quote(rulebook, request)
    except settlement.RequestError as exc:
        return _fail(str(exc))
    json.dump(receipt, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _ledger_engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .ledger.db import create_ledger_engine

    try:
        return create_ledger_engine(args.database_url, config=args.config)
    except ValueError as exc:
        raise SystemExit(_fail(f"database: {exc}")) from None


def _verify(args: argparse.Namespace) -> int:
    from .ledger.migrate import current_revision
    from .ledger.verify import verify

    engine = _ledger_engine(args)
    try:
        if current_revision(engine) is None:
            return _fail("database: no ledger schema here (run `settlement migrate`)")
        with engine.connect() as conn:
            problem = verify(conn)
    finally:
        engine.dispose()
    if problem is not None:
        print(f"settlement verify: FAILED: {problem}", file=sys.stderr)
        return 1
    print("settlement verify: ok (journal balanced per asset, balances match postings, "
          "no negative balance, lots match points, settlements add up)")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from .ledger.migrate import current_revision, upgrade

    engine = _ledger_engine(args)
    try:
        upgrade(engine)
        print(f"database at revision {current_revision(engine)}: "
              f"{engine.url.render_as_string(hide_password=True)}")
    finally:
        engine.dispose()
    return 0


def _engine(_args: argparse.Namespace) -> int:
    import settlement

    print(settlement.IMPLEMENTATION)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``settlement`` console script."""
    parser = argparse.ArgumentParser(prog="settlement", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quote", help="price a request and print the receipt JSON")
    q.add_argument("--rules", required=True, help="rulebook TOML file")
    q.add_argument("--request", required=True, help="request JSON file, or - for stdin")
    q.set_defaults(func=_quote)
    sub.add_parser("engine", help="print which engine implementation is active").set_defaults(
        func=_engine)
    for name, func, text in (
            ("migrate", _migrate, "create or upgrade the ledger database schema"),
            ("verify", _verify, "check the journal's invariants; exit 1 on the first violation")):
        m = sub.add_parser(name, help=text)
        m.add_argument("--database-url", help="default: $SETTLEMENT_DATABASE_URL, else the "
                       "config file's [database] url, else sqlite:///settlement.db")
        m.add_argument("--config", help="a TOML config file (default: $SETTLEMENT_CONFIG)")
        m.set_defaults(func=func)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
