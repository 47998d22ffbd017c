"""``settlement alerts``: risk staff review the watchdog's alerts from a terminal.

    settlement alerts list [--state open] [--rule R] [--store S] [--min-severity high]
    settlement alerts show ALERT_ID
    settlement alerts ack ALERT_ID [--assignee NAME] [--note TEXT]
    settlement alerts assign ALERT_ID NAME
    settlement alerts note ALERT_ID TEXT
    settlement alerts resolve ALERT_ID confirmed_fraud|false_positive|valuable [--note TEXT]
    settlement alerts watch [--min-severity high] [--store S]

It talks to a running server with a terminal token of the ``risk`` role
(``--token-file``, or ``$SETTLEMENT_TOKEN``); the audit trail records that
terminal as the actor. Exit status: 0 done, 1 refused by the server, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import grpc

from settlement.v1 import settlement_pb2 as pb

from .cli import _refused, _token, connection_arguments, money
from .client import PosClient


def _when(ts: object) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")  # type: ignore[attr-defined]


def _evidence(text: str) -> str:
    """Evidence JSON as ``name=value`` pairs (cents shown as money)."""
    items = []
    for name, value in json.loads(text).items():
        shown = money(value) if name.endswith("_cents") and isinstance(value, int) else value
        items.append(f"{name}={shown}")
    return " ".join(items)


def format_alert_line(a: pb.Alert) -> str:
    """One alert on one line (``list``)."""
    who = a.member_id or a.terminal or a.store
    return (f"{a.alert_id}  {a.state:<12} {a.severity:<8} {a.rule:<14} {a.action:<5} "
            f"{a.store:<6} {who:<12} hits={a.hits:<3} {_when(a.created_at)}  "
            f"{_evidence(a.evidence_json)}")


def format_alert(a: pb.Alert) -> str:
    """An alert in full (``show``): fields, hits, audit trail."""
    out = [f"alert {a.alert_id}: {a.rule} ({a.severity}, {a.action}) - {a.state}"
           + (f", outcome {a.outcome}" if a.outcome else ""),
           f"  subject {a.subject}  member {a.member_id or '-'}  card {a.card_no or '-'}  "
           f"store {a.store}  terminal {a.terminal or '-'}",
           f"  rulebook {a.rule_version}  first settlement {a.settlement_id or '- (held)'}  "
           f"assignee {a.assignee or '-'}",
           f"  evidence: {_evidence(a.evidence_json)}",
           f"  hits ({a.hits}):"]
    for h in a.hit_list:
        out.append(f"    {_when(h.at)}  {h.operation:<6} {h.action:<5} {h.ref}  "
                   f"{h.operation_id or '-'}  {_evidence(h.evidence_json)}")
    out.append("  audit trail:")
    for e in a.audit:
        out.append(f"    {_when(e.at)}  {e.actor:<12} {e.action:<12} {e.detail_json}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``settlement alerts``."""
    parser = argparse.ArgumentParser(prog="settlement alerts",
                                     description=__doc__.splitlines()[0])
    connection_arguments(parser, "a risk terminal")
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="alerts, newest first")
    ls.add_argument("--state", action="append", default=[],
                    choices=("open", "acknowledged", "resolved"))
    ls.add_argument("--rule", default="")
    ls.add_argument("--store", default="")
    ls.add_argument("--member", default="")
    ls.add_argument("--min-severity", default="",
                    choices=("", "low", "medium", "high", "critical"))
    ls.add_argument("--limit", type=int, default=50, help="at most this many (paged)")
    sub.add_parser("show", help="an alert with its hits and audit trail").add_argument("alert")
    ack = sub.add_parser("ack", help="acknowledge an open alert")
    ack.add_argument("alert")
    ack.add_argument("--assignee", default="")
    ack.add_argument("--note", default="")
    assign = sub.add_parser("assign", help="give an alert to someone")
    assign.add_argument("alert")
    assign.add_argument("assignee")
    note = sub.add_parser("note", help="add a note to the case diary")
    note.add_argument("alert")
    note.add_argument("note")
    res = sub.add_parser("resolve", help="close an alert with an outcome")
    res.add_argument("alert")
    res.add_argument("outcome", choices=("confirmed_fraud", "false_positive", "valuable"))
    res.add_argument("--note", default="")
    watch = sub.add_parser("watch", help="print alert events as they happen (Ctrl-C stops)")
    watch.add_argument("--min-severity", default="",
                       choices=("", "low", "medium", "high", "critical"))
    watch.add_argument("--store", default="")
    args = parser.parse_args(argv)
    with PosClient(args.target, _token(args), timeout=args.timeout) as risk:
        try:
            return _run(risk, args)
        except grpc.RpcError as exc:
            return _refused(exc, "settlement alerts")


def _run(risk: PosClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        token, shown = "", 0
        while shown < args.limit:
            page = risk.list_alerts(states=args.state, rule=args.rule, store=args.store,
                                    member_id=args.member, min_severity=args.min_severity,
                                    page_size=min(100, args.limit - shown), page_token=token)
            for a in page.alerts:
                print(format_alert_line(a))
            shown += len(page.alerts)
            token = page.next_page_token
            if not token:
                break
        return 0
    if args.action == "show":
        print(format_alert(risk.get_alert(args.alert)))
        return 0
    if args.action == "watch":
        try:
            for event in risk.watch_alerts(min_severity=args.min_severity, store=args.store):
                print(f"{_when(event.at)}  {event.action:<12} by {event.actor:<10} "
                      f"{format_alert_line(event.alert)}", flush=True)
        except KeyboardInterrupt:
            pass
        return 0
    fields = {"ack": ("acknowledge", {"assignee": getattr(args, "assignee", ""),
                                      "note": getattr(args, "note", "")}),
              "assign": ("assign", {"assignee": getattr(args, "assignee", "")}),
              "note": ("note", {"note": getattr(args, "note", "")}),
              "resolve": ("resolve", {"outcome": getattr(args, "outcome", ""),
                                      "note": getattr(args, "note", "")})}
    action, given = fields[args.action]
    done = risk.update_alert(args.alert, action, **{k: v for k, v in given.items() if v})
    print(format_alert(done))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
