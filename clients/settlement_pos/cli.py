"""``settlement-pos``: run a checkout from a JSON basket and print a readable
receipt.

    settlement-pos checkout basket.json --token-file demo-pos.token [--settle]
    settlement-pos member M0001 --token-file demo-pos.token

The basket is the pricing contract's request without ``member`` and
``store`` (``member_id`` or ``card_no``, ``lines``, ``coupon_ids`` or
``auto_coupons``, ``redeem_points``, ``pay_stored_value_cents``). Without
``--settle`` the basket is only quoted. Exit status: 0 done, 1 refused by
the server (the status and its details on stderr), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import grpc

from settlement.pipes import quiet_broken_pipe
from settlement.v1 import settlement_pb2 as pb

from .client import PosClient, error_details


def money(cents: int) -> str:
    """Cents as a decimal amount (integer arithmetic: no float on the money path)."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def format_receipt(spec: dict[str, Any], r: pb.Receipt, settlement_id: str = "") -> str:
    """A receipt as the cashier reads it."""
    out = []
    for line, priced in zip(spec["lines"], r.lines, strict=False):
        out.append(f"{line['sku']:<14} {line['quantity']:>3} x {money(line['unit_price_cents']):>8}"
                   f"  {money(priced.net_cents):>9}")
        for label, cents in (("count card", priced.count_card_cents),
                             (priced.item_discount_source or "discount",
                              priced.item_discount_cents),
                             ("coupons", priced.coupon_discount_cents),
                             ("points", priced.points_offset_cents)):
            if cents:
                out.append(f"    {label:<28} -{money(cents):>9}")
    out.append("-" * 44)
    for label, cents in (("gross", r.gross_cents), ("count cards", -r.count_card_cents),
                         ("item discounts", -r.item_discount_cents),
                         ("coupons", -r.coupon_discount_cents),
                         ("points offset", -r.points_offset_cents),
                         ("rounding", -r.rounding_cents)):
        if cents or label == "gross":
            out.append(f"{label:<32} {money(cents):>11}")
    out.append(f"{'PAYABLE':<32} {money(r.payable_cents):>11}")
    out.append(f"{'  stored value':<32} {money(r.stored_value_cents):>11}")
    out.append(f"{'  DUE (cash/card)':<32} {money(r.due_cents):>11}")
    for c in r.applied_coupons:
        out.append(f"coupon {c.id} ({c.template}): -{money(c.discount_cents)}")
    for c in r.rejected_coupons:
        out.append(f"coupon {c.id} not applied: {c.reason}")
    out.append(f"points: {r.points_redeemed} redeemed (max {r.points_redeemable_max}), "
               f"{r.points_earned} earned")
    out.append(f"rulebook {r.rulebook_version}")
    if settlement_id:
        out.append(f"SETTLED as {settlement_id}")
    return "\n".join(out)


def connection_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    """``--target``, ``--token-file`` (``whose`` token) and ``--timeout``."""
    parser.add_argument("--target", default=os.environ.get("SETTLEMENT_TARGET",
                                                           "127.0.0.1:50051"))
    parser.add_argument("--token-file", help=f"file holding {whose}'s token "
                        "(default: $SETTLEMENT_TOKEN)")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline per call, s")


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            return handle.read().strip()
    token = os.environ.get("SETTLEMENT_TOKEN")
    if not token:
        raise SystemExit("settlement-pos: give --token-file or set SETTLEMENT_TOKEN")
    return token


def _refused(exc: grpc.RpcError, prog: str = "settlement-pos") -> int:
    print(f"{prog}: refused: {exc.code().name}: {exc.details()}",  # type: ignore[attr-defined]
          file=sys.stderr)
    for detail in error_details(exc):
        if isinstance(detail, pb.SettleResponse):
            print(f"  new payable: {money(detail.receipt.payable_cents)}", file=sys.stderr)
        else:
            print(f"  {type(detail).__name__}: {detail}".rstrip(), file=sys.stderr)
    return 1


@quiet_broken_pipe
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``settlement-pos``."""
    parser = argparse.ArgumentParser(prog="settlement-pos", description=__doc__.splitlines()[0])
    connection_arguments(parser, "the terminal")
    sub = parser.add_subparsers(dest="command", required=True)
    co = sub.add_parser("checkout", help="quote a basket, and settle it with --settle")
    co.add_argument("basket", help="basket JSON file, or - for stdin")
    co.add_argument("--settle", action="store_true")
    co.add_argument("--key", help="idempotency key (default: a new UUID)")
    mb = sub.add_parser("member", help="show a member by id, phone or card number")
    mb.add_argument("who")
    args = parser.parse_args(argv)
    token = _token(args)
    with PosClient(args.target, token, timeout=args.timeout) as pos:
        try:
            if args.command == "member":
                who = args.who
                member = (pos.get_member(card_no=who) if who.startswith("K")
                          else pos.get_member(phone=who) if who.isdigit()
                          else pos.get_member(member_id=who))
                print(member)
                return 0
            try:
                text = sys.stdin.read() if args.basket == "-" else open(
                    args.basket, encoding="utf-8").read()
                spec = json.loads(text)
            except (OSError, ValueError) as exc:
                print(f"settlement-pos: basket: {exc}", file=sys.stderr)
                return 2
            quoted = pos.quote(spec)
            if not args.settle:
                print(format_receipt(spec, quoted))
                return 0
            done = pos.settle(spec, key=args.key or uuid.uuid4().hex,
                              expected_payable_cents=quoted.payable_cents)
            print(format_receipt(spec, done.receipt, done.settlement_id))
            return 0
        except grpc.RpcError as exc:
            return _refused(exc)
        except (KeyError, TypeError, ValueError) as exc:
            print(f"settlement-pos: basket: {exc!r}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
