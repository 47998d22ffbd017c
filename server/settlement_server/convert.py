"""Proto messages to the domain's request dicts and back (no logic of its own).

The domain speaks the pricing contract's JSON shapes (``settlement.quote``,
``settlement.ledger.Ledger``); these functions translate field for field.
proto3 cannot tell an empty string or a zero from "not set": for optional
fields an empty string or zero means "not set".
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from settlement.errors import RequestError
from settlement.timeutil import format_instant
from settlement.v1 import settlement_pb2 as pb

CARD_TYPES = {pb.CARD_TYPE_UNSPECIFIED: "free", pb.CARD_TYPE_FREE: "free",
              pb.CARD_TYPE_PAID: "paid", pb.CARD_TYPE_TIERED: "tiered",
              pb.CARD_TYPE_INTERNAL: "internal"}
CARD_TYPE_OF = {"free": pb.CARD_TYPE_FREE, "paid": pb.CARD_TYPE_PAID,
                "tiered": pb.CARD_TYPE_TIERED, "internal": pb.CARD_TYPE_INTERNAL}
_MIN_S, _MAX_S = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31 (Timestamp's range)


def micros(ts: Timestamp, field: str) -> int:
    """A Timestamp as epoch microseconds (nanoseconds below a microsecond are dropped)."""
    if not _MIN_S <= ts.seconds <= _MAX_S or not 0 <= ts.nanos < 1_000_000_000:
        raise RequestError(field, "is not a valid timestamp (years 0001..9999)")
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def optional_micros(message: Any, name: str, field: str) -> int | None:
    return micros(getattr(message, name), field) if message.HasField(name) else None


def timestamp(us: int | None) -> Timestamp | None:
    if us is None:
        return None
    ts = Timestamp()
    ts.seconds, rest = divmod(us, 1_000_000)
    ts.nanos = rest * 1000
    return ts


def basket(b: pb.Basket) -> dict[str, Any]:
    """A Basket as the ledger's settle/quote request (the pricing contract's fields)."""
    which = b.WhichOneof("member")
    out: dict[str, Any] = {}
    if which == "member_id":
        out["member_id"] = b.member_id
    elif which == "card_no":
        out["card_no"] = b.card_no
    lines = []
    for line in b.lines:
        item: dict[str, Any] = {"sku": line.sku, "category": line.category,
                                "unit_price_cents": line.unit_price_cents,
                                "quantity": line.quantity}
        if line.count_card_id:
            item["count_card_id"] = line.count_card_id
        lines.append(item)
    out["lines"] = lines
    if b.coupon_ids:
        out["coupon_ids"] = list(b.coupon_ids)
    if b.auto_coupons:
        out["auto_coupons"] = True
    if b.redeem_points:
        out["redeem_points"] = b.redeem_points
    if b.pay_stored_value_cents:
        out["pay_stored_value_cents"] = b.pay_stored_value_cents
    if b.HasField("at"):
        out["at"] = format_instant(micros(b.at, "at"))
    return out


_BASKET_FIELDS = ("member_id", "card_no", "lines", "coupon_ids", "auto_coupons",
                  "redeem_points", "pay_stored_value_cents", "at")


def field_path(prefix: str, field: str) -> str:
    """The proto path of a domain field name: with ``prefix="basket"``, ``lines[3].quantity``
    is ``basket.lines[3].quantity`` (the request's own fields keep their names)."""
    head = field.split("[", 1)[0].split(".", 1)[0]
    return f"{prefix}.{field}" if prefix and head in _BASKET_FIELDS else field


def receipt(r: dict[str, Any]) -> pb.Receipt:
    return pb.Receipt(
        lines=[pb.ReceiptLine(**line) for line in r["lines"]],
        gross_cents=r["gross_cents"], count_card_cents=r["count_card_cents"],
        item_discount_cents=r["item_discount_cents"],
        coupon_discount_cents=r["coupon_discount_cents"],
        points_offset_cents=r["points_offset_cents"], rounding_cents=r["rounding_cents"],
        payable_cents=r["payable_cents"], stored_value_cents=r["stored_value_cents"],
        due_cents=r["due_cents"], points_redeemed=r["points_redeemed"],
        points_redeemable_max=r["points_redeemable_max"], points_earned=r["points_earned"],
        applied_coupons=[pb.AppliedCoupon(**c) for c in r["applied_coupons"]],
        rejected_coupons=[pb.RejectedCoupon(**c) for c in r["rejected_coupons"]],
        count_cards_used=[pb.CountCardUse(**c) for c in r["count_cards_used"]],
        rulebook_version=r["rulebook_version"])


def settle_response(r: dict[str, Any]) -> pb.SettleResponse:
    return pb.SettleResponse(settlement_id=r["settlement_id"], receipt=receipt(r))


def refund_response(r: dict[str, Any]) -> pb.RefundResponse:
    return pb.RefundResponse(
        refund_id=r["refund_id"], settlement_id=r["settlement_id"],
        lines=[pb.RefundedLine(**line) for line in r["lines"]], net_cents=r["net_cents"],
        stored_value_cents=r["stored_value_cents"], cash_cents=r["cash_cents"],
        points_returned=r["points_returned"], points_taken_back=r["points_taken_back"],
        points_debt_added=r["points_debt_added"], coupons_returned=r["coupons_returned"],
        voided=r["voided"])


def settlement(s: dict[str, Any]) -> pb.Settlement:
    return pb.Settlement(
        settlement_id=s["settlement_id"], store=s["store"], terminal=s["terminal"] or "",
        member_id=s["member_id"] or "", at=timestamp(s["at_us"]), status=s["status"],
        receipt=receipt(s["receipt"]),
        refunded=[pb.RefundLine(**r) for r in s["refunded"]])


def member(m: dict[str, Any], available_coupons: int) -> pb.Member:
    return pb.Member(
        member_id=m["member_id"], phone=m["phone"] or "", tier=m["tier"],
        card_type=CARD_TYPE_OF.get(m["card_type"], pb.CARD_TYPE_UNSPECIFIED),
        cumulative_spend_cents=m["cumulative_spend_cents"],
        points_balance=m["points_balance"], points_total=m["points_total"],
        points_debt=m["points_debt"], sv_principal_cents=m["sv_principal_cents"],
        sv_bonus_cents=m["sv_bonus_cents"], available_coupons=available_coupons,
        count_cards=[pb.CountCard(id=k["id"], skus=k["skus"], uses=k["uses"],
                                  valid_until=timestamp(k["valid_until_us"]))
                     for k in m["count_cards"]])


def coupon(c: dict[str, Any]) -> pb.Coupon:
    return pb.Coupon(id=c["id"], template=c["template"],
                     valid_from=timestamp(c["valid_from_us"]),
                     valid_until=timestamp(c["valid_until_us"]))


def _evidence(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def alert(a: dict[str, Any]) -> pb.Alert:
    """An alert (``AlertDesk`` shape) as an ``Alert``; its hits and audit trail when given."""
    out = pb.Alert(
        alert_id=a["id"], rule=a["rule"], rule_version=a["rule_version"],
        severity=a["severity"], action=a["action"], subject=a["subject"],
        member_id=a["member_id"] or "", card_no=a["card_no"] or "", store=a["store"],
        terminal=a["terminal"] or "", settlement_id=a["settlement_id"] or "",
        evidence_json=_evidence(a["evidence"]), state=a["state"], outcome=a["outcome"] or "",
        assignee=a["assignee"] or "", hits=a["hits"], created_at=timestamp(a["created_us"]),
        updated_at=timestamp(a["updated_us"]), last_hit_at=timestamp(a["last_hit_us"]))
    for h in a.get("hit_list", ()):
        out.hit_list.add(ref=h["ref"], operation=h["operation"],
                         operation_id=h["operation_id"] or "", action=h["action"],
                         rule_version=h["rule_version"], store=h["store"],
                         terminal=h["terminal"] or "", evidence_json=_evidence(h["evidence"]),
                         at=timestamp(h["created_us"]))
    for e in a.get("events", ()):
        out.audit.add(event_id=e["id"], actor=e["actor"], action=e["action"],
                      detail_json=_evidence(e["detail"]), at=timestamp(e["created_us"]))
    return out


def alert_event(e: dict[str, Any]) -> pb.AlertEvent:
    """An audit event with its alert (``AlertDesk.events``) as an ``AlertEvent``."""
    return pb.AlertEvent(event_id=e["id"], action=e["action"], actor=e["actor"],
                         detail_json=_evidence(e["detail"]), at=timestamp(e["created_us"]),
                         alert=alert(e["alert"]))
