"""``settlement`` command line: ``settlement quote --rules R.toml --request Q.json``.

``backtest --rules NEW.toml --baseline OLD.toml --history requests.jsonl`` prices
a history under both rulebooks and reports what changes (``--json`` for machines).

``quote`` is also the merchant's dry run of a new rulebook: it prices a
request and prints the receipt JSON. Bad input exits 2 with the message
naming the field on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from settlement.pipes import quiet_broken_pipe

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
          "no negative balance, lots match points, settlements add up, alert hits counted)")
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


def _serve(args: argparse.Namespace) -> int:
    try:
        from settlement_server.app import serve
        from settlement_server.config import load_config
    except ImportError as exc:  # pragma: no cover - installed together
        return _fail(f"serve: the server package is not installed ({exc})")
    try:
        config = load_config(args.config, listen=args.listen, rulebook=args.rulebook,
                             workers=args.workers, threads=args.threads, impl=args.impl,
                             database_url=args.database_url)
    except ValueError as exc:
        return _fail(f"serve: {exc}")
    rulebook = settlement_rulebook(config.rulebook)  # broken: exit 2, not a traceback
    from pathlib import Path

    from .ledger.db import create_ledger_engine
    from .ledger.migrate import current_revision, head_revision

    engine = create_ledger_engine(config.database_url)
    try:
        if args.demo:
            from settlement_server.demo import risk_token_file, seed

            seed(engine, rulebook, Path(args.demo_token_file))
            print(f"settlement serve: demo data ready; a POS terminal token (store S001) is "
                  f"in {args.demo_token_file}, a risk terminal's in "
                  f"{risk_token_file(Path(args.demo_token_file))}", flush=True)
        else:
            revision = current_revision(engine)
            if revision != head_revision():
                return _fail(f"serve: the database is at schema revision {revision or 'none'}"
                             f", the server needs {head_revision()}: run `settlement migrate` "
                             "first")
    except Exception as exc:  # noqa: BLE001 - reported, not raised: a CLI
        return _fail(f"serve: cannot prepare the database: {exc}")
    finally:
        engine.dispose()
    return serve(config)


def settlement_rulebook(path: str):  # type: ignore[no-untyped-def]
    import settlement

    try:
        return settlement.load_rulebook(path)
    except settlement.RulebookError as exc:
        raise SystemExit(_fail(f"rulebook {path}: {exc}")) from None


def _terminals(args: argparse.Namespace) -> int:
    from .ledger.errors import LedgerError
    from .ledger.migrate import upgrade
    from .ledger.terminals import add_terminal, list_terminals, revoke_terminal

    engine = _ledger_engine(args)
    try:
        upgrade(engine)
        if args.action == "add":
            token = add_terminal(engine, args.id, args.store, args.role, args.name)
            print(token)
            print(f"terminal {args.id} ({args.role}, store {args.store}) added; the token "
                  "above is shown once: give it to the terminal", file=sys.stderr)
        elif args.action == "revoke":
            revoke_terminal(engine, args.id)
            print(f"terminal {args.id} revoked (servers stop accepting it within their "
                  "auth cache lifetime, 5 s by default)", file=sys.stderr)
        else:
            for row in list_terminals(engine):
                state = "revoked" if row["revoked_us"] is not None else "active"
                print(f"{row['id']}\t{row['store']}\t{row['role']}\t{state}\t"
                      f"{row['name'] or ''}")
    except (ValueError, LedgerError) as exc:
        return _fail(f"terminals: {exc}")
    finally:
        engine.dispose()
    return 0


def _backtest(args: argparse.Namespace) -> int:
    import settlement

    from .backtest import HistoryError, load_history, run_backtest

    rulebooks = []
    for path in (args.baseline, args.rules):
        try:
            rulebooks.append(settlement.load_rulebook(path))
        except settlement.RulebookError as exc:
            where = "" if exc.field == str(path) else f" {path}"
            return _fail(f"rulebook{where}: {exc}")
    baseline, new = rulebooks
    try:
        history = load_history(args.history, baseline)
        result = run_backtest(history, baseline, new)
    except HistoryError as exc:
        return _fail(f"history {exc}")
    result["history"] = args.history
    result["baseline"] = {"rulebook": args.baseline, "version": baseline.version,
                          "totals": result["baseline"]}
    result["new"] = {"rulebook": args.rules, "version": new.version, "totals": result["new"]}
    if args.json:
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(backtest_table(result))
    return 0


def _money(cents: int, sign: bool = False) -> str:
    text = f"{abs(cents) // 100:,}.{abs(cents) % 100:02d}"
    if cents < 0:
        return "-" + text
    return ("+" + text) if sign else text


def _count(value: int, sign: bool = False) -> str:
    return f"{value:+,}" if sign else f"{value:,}"


def backtest_table(result: dict) -> str:  # type: ignore[type-arg]
    """The readable report of ``settlement backtest`` (money in yuan, exact)."""
    old, new, delta = (result["baseline"]["totals"], result["new"]["totals"],
                       result["change"])
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, a: int, b: int, d: int, fmt=_money) -> None:  # type: ignore[no-untyped-def]
        rows.append((label, fmt(a), fmt(b), fmt(d, True)))

    def by_name(key: str, label: str, fmt=_money, field=None) -> None:  # type: ignore[no-untyped-def]
        for name in sorted(set(old[key]) | set(new[key])):
            a, b = old[key].get(name, 0), new[key].get(name, 0)
            if field is not None:
                a, b = (a[field] if a else 0), (b[field] if b else 0)
            row(label.format(name), a, b, b - a, fmt)

    row("gross", old["gross_cents"], new["gross_cents"], delta["gross_cents"])
    row("paid by count cards", old["count_card_cents"], new["count_card_cents"],
        delta["count_card_cents"])
    row("item discounts", old["item_discount_cents"], new["item_discount_cents"],
        delta["item_discount_cents"])
    by_name("item_discount_by_source", "  {}")
    row("coupon discounts", old["coupon_discount_cents"], new["coupon_discount_cents"],
        delta["coupon_discount_cents"])
    by_name("coupons_by_template", "  {}", field="discount_cents")
    row("points offset", old["points_offset_cents"], new["points_offset_cents"],
        delta["points_offset_cents"])
    row("rounding", old["rounding_cents"], new["rounding_cents"], delta["rounding_cents"])
    row("payable", old["payable_cents"], new["payable_cents"], delta["payable_cents"])
    row("  stored value", old["stored_value_cents"], new["stored_value_cents"],
        delta["stored_value_cents"])
    row("  due (cash, card)", old["due_cents"], new["due_cents"], delta["due_cents"])
    row("points redeemed", old["points_redeemed"], new["points_redeemed"],
        delta["points_redeemed"], _count)
    row("points earned (issued)", old["points_earned"], new["points_earned"],
        delta["points_earned"], _count)
    by_name("coupons_by_template", "coupons used: {}", _count, "applied")
    by_name("rejected_coupons", "coupons refused: {}", _count)
    width = max(len(r[0]) for r in rows)
    cols = [max(len(r[k]) for r in rows) for k in (1, 2, 3)]
    cols = [max(c, 12) for c in cols]
    head = (f"back-test of {result['history']}: {result['baskets']:,} baskets, "
            f"{result['members']:,} members "
            f"({result['batch']:,} on the batch path, {result['fallback']:,} priced one by "
            "one: count cards, auto_coupons)\n"
            f"baseline: {result['baseline']['rulebook']} ({result['baseline']['version']})\n"
            f"new:      {result['new']['rulebook']} ({result['new']['version']})\n"
            "money in yuan, points in points\n\n")
    lines = [f"{'':<{width}}  {'baseline':>{cols[0]}}  {'new':>{cols[1]}}  "
             f"{'change':>{cols[2]}}"]
    for label, a, b, d in rows:
        lines.append(f"{label:<{width}}  {a:>{cols[0]}}  {b:>{cols[1]}}  {d:>{cols[2]}}")
    return head + "\n".join(lines) + "\n"


def _engine(_args: argparse.Namespace) -> int:
    import settlement

    print(settlement.IMPLEMENTATION)
    return 0


@quiet_broken_pipe
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
    bt = sub.add_parser("backtest", help="price a history of requests under two rulebooks "
                        "and report what changes")
    bt.add_argument("--rules", required=True, help="the new rulebook TOML file")
    bt.add_argument("--baseline", required=True, help="the current rulebook TOML file")
    bt.add_argument("--history", required=True,
                    help="JSONL file: one quote request per line")
    bt.add_argument("--json", action="store_true", help="machine-readable JSON output")
    bt.set_defaults(func=_backtest)
    for name, func, text in (
            ("migrate", _migrate, "create or upgrade the ledger database schema"),
            ("verify", _verify, "check the journal's invariants; exit 1 on the first violation")):
        m = sub.add_parser(name, help=text)
        m.add_argument("--database-url", help="default: $SETTLEMENT_DATABASE_URL, else the "
                       "config file's [database] url, else sqlite:///settlement.db")
        m.add_argument("--config", help="a TOML config file (default: $SETTLEMENT_CONFIG)")
        m.set_defaults(func=func)
    db_help = ("default: $SETTLEMENT_DATABASE_URL, else the config file's [database] url, "
               "else sqlite:///settlement.db")
    srv = sub.add_parser("serve", help="run the gRPC server")
    srv.add_argument("--config", help="a TOML config file (default: $SETTLEMENT_CONFIG)")
    srv.add_argument("--database-url", help=db_help)
    srv.add_argument("--listen", help="host:port (default 127.0.0.1:50051)")
    srv.add_argument("--rulebook", help="rulebook TOML file")
    srv.add_argument("--workers", type=int, help="worker processes sharing the port")
    srv.add_argument("--threads", type=int, help="RPC threads per worker process (16)")
    srv.add_argument("--impl", choices=("sync", "aio"),
                     help="server implementation (default sync: measured faster here)")
    srv.add_argument("--demo", action="store_true",
                     help="migrate, load demo members and issue demo terminal tokens first")
    srv.add_argument("--demo-token-file", default="demo-pos.token",
                     help="where --demo writes the POS terminal's token")
    srv.set_defaults(func=_serve)
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database-url", help=db_help)
    database.add_argument("--config", help="a TOML config file (default: $SETTLEMENT_CONFIG)")
    term = sub.add_parser("terminals", help="add, revoke or list API terminals")
    tsub = term.add_subparsers(dest="action", required=True)
    add = tsub.add_parser("add", parents=[database],
                          help="add a terminal and print its token (once)")
    add.add_argument("id")
    add.add_argument("--store", required=True)
    add.add_argument("--role", required=True, choices=("pos", "risk", "admin"))
    add.add_argument("--name")
    tsub.add_parser("revoke", parents=[database],
                    help="revoke a terminal's token").add_argument("id")
    tsub.add_parser("list", parents=[database], help="list terminals (no secrets)")
    term.set_defaults(func=_terminals)
    sub.add_parser("alerts", add_help=False,
                   help="risk staff: list, show, ack, assign, note, resolve or watch "
                   "alerts (settlement alerts --help)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["alerts"]:  # its own parser: a client of a running server
        from settlement_pos.risk_cli import main as alerts_main

        return alerts_main(argv[1:])
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
