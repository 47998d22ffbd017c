"""Drill: hostile input. Generated and malformed protobuf messages to every RPC of the
three services of ``settlement serve`` (run as a process of its own, on SQLite), from a
few threads over a few channels: valid-shaped messages with hostile values (int64
extremes, long strings, odd unicode, NUL), missing fields, unknown enum values, huge
repeated fields, requests over the 1 MiB limit, raw bytes that are not the method's
message (truncated, bit-flipped, random, invalid UTF-8, wrong wire types, nesting past
the parser's recursion limit), deadlines of ~0, missing, bad and revoked tokens, another
role's token, another store's settlement, and ``WatchAlerts`` streams cut by a deadline.

Checked: every answer is a documented status code of that kind of request (never
``INTERNAL`` or ``UNKNOWN``), the server keeps answering ``Ping``, its process stays
up, and its memory (VmRSS of the process and its children) stays bounded.

Size: a short run by default (CI), ``SETTLEMENT_DRILLS=long`` for at least 100,000
requests; ``SETTLEMENT_HOSTILE_REQUESTS=N`` overrides, ``SETTLEMENT_HOSTILE_SEED=S``
changes the seed. Request ``i`` is built from ``random.Random(f"{seed}/{i}")`` alone,
so any request the report names can be rebuilt with :func:`build_call`.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import settlement
from settlement.ledger.db import create_ledger_engine
from settlement.ledger.migrate import upgrade
from settlement.ledger.service import Ledger
from settlement.ledger.terminals import add_terminal, revoke_terminal
from settlement.v1 import settlement_pb2 as pb

from .harness import ServerProcess

try:  # the suite's report collector; alone, the drill prints its report only
    from .conftest import record as _record
except ImportError:  # pragma: no cover - depends on the suite's conftest
    _record = None

Code = grpc.StatusCode

#: True for the long drill (SETTLEMENT_DRILLS=long).
LONG = os.environ.get("SETTLEMENT_DRILLS", "short") == "long"
#: Requests in the barrage: >= 100,000 in the long run, a CI-sized run otherwise.
REQUESTS = int(os.environ.get("SETTLEMENT_HOSTILE_REQUESTS", "100000" if LONG else "4000"))
SEED = int(os.environ.get("SETTLEMENT_HOSTILE_SEED", "20261122"))
THREADS = 4
CHANNELS = 2
#: Ping the server and sample its RSS this often (in requests).
CHECK_EVERY = max(100, REQUESTS // 100)
#: The RSS sampled once this share of the requests is done is the warm baseline.
WARM_UP_SHARE = 0.10
#: Allowed RSS growth from the warm baseline to the end. Why 64 MiB: after warm-up the
#: server's memory is its steady state (16 RPC threads, each with a SQLite connection
#: whose page cache is capped at 2 MiB; an auth cache capped at 10,000 tokens; gRPC
#: buffers for 1 MiB messages), none of which grows with the number of requests. A leak
#: of 1 KiB per request would add ~88 MiB over the long run's 90,000 post-warm-up
#: requests, so the bound catches per-request leaks of ~0.7 KiB and more there (and
#: only gross ones in the short run), while leaving room for allocator noise.
RSS_GROWTH_BOUND_MIB = 64
#: Deadline of an ordinary call: generous, a call that takes longer is a hang.
CALL_TIMEOUT_S = 30.0
#: The server's limit on a request (max_message_bytes, docs/api.md).
MAX_MESSAGE_BYTES = 1 << 20
STORE, OTHER_STORE = "S001", "S002"

#: What any request with a valid token of a role that may call the method can get.
BASE = frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS,
                  Code.FAILED_PRECONDITION, Code.PERMISSION_DENIED})
#: Never acceptable, whatever the request.
FORBIDDEN = frozenset({Code.INTERNAL, Code.UNKNOWN})

SERVICES = {name: pb.DESCRIPTOR.services_by_name[name]
            for name in ("SettlementService", "MemberService", "RiskService")}
#: Every RPC as (service, method descriptor).
METHODS: list[tuple[str, MethodDescriptor]] = [
    (service, method) for service, descriptor in SERVICES.items()
    for method in descriptor.methods]
#: Methods a "pos" terminal may not call (docs/api.md, Auth and roles).
POS_DENIED = {"IssueCoupon", "IssueCountCard"} | {
    m.name for m in SERVICES["RiskService"].methods}
#: Methods a "risk" terminal may call.
RISK_ALLOWED = {"GetSettlement", "GetMember", "ListCoupons", "Ping"} | {
    m.name for m in SERVICES["RiskService"].methods}


def _has_repeated(method: MethodDescriptor) -> bool:
    fields = list(method.input_type.fields)
    basket = method.input_type.fields_by_name.get("basket")
    if basket is not None:
        fields += list(basket.message_type.fields)
    return any(f.is_repeated for f in fields)


#: The RPCs whose request has a repeated field (directly or in its basket).
HUGE_METHODS = [(s, m) for s, m in METHODS if _has_repeated(m)]
#: (role, RPC) pairs the role may not call: (pos, RiskService and the admin methods),
#: (risk, everything but GetSettlement, GetMember, ListCoupons, Ping).
DENIED = [("pos", (s, m)) for s, m in METHODS if m.name in POS_DENIED] + [
    ("risk", (s, m)) for s, m in METHODS if m.name not in RISK_ALLOWED]


def role_for(method: str) -> str:
    """The least-privileged role that may call ``method``."""
    if method in {m.name for m in SERVICES["RiskService"].methods}:
        return "risk"
    return "admin" if method in POS_DENIED else "pos"


# ---------------------------------------------------------------- the world under test


@dataclass
class World:
    """The running server and what the requests can refer to."""

    server: ServerProcess
    tokens: dict[str, str]  # role -> token ("pos2": a POS terminal of S002)
    ids: dict[str, list[str]]  # field name -> real values (settlements, alerts, ...)
    reserved_settlement: str  # an S001 settlement the barrage never touches
    log: Path

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Iterator[World]:
    """A migrated SQLite ledger with terminals of every role, members, settlements, a
    recharge, a coupon, a count card and an alert; ``settlement serve`` on it."""
    tmp = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{tmp}/hostile.db"
    rulebook = tmp / "rulebook.toml"
    shutil.copy(examples_dir / "rulebook.toml", rulebook)
    engine = create_ledger_engine(url)
    upgrade(engine)
    tokens = {"pos": add_terminal(engine, "T1", STORE, "pos"),
              "pos2": add_terminal(engine, "T2", OTHER_STORE, "pos"),
              "risk": add_terminal(engine, "TR", STORE, "risk"),
              "admin": add_terminal(engine, "TA", STORE, "admin"),
              "revoked": add_terminal(engine, "TOLD", STORE, "pos")}
    revoke_terminal(engine, "TOLD")
    ledger = Ledger(engine, settlement.load_rulebook(rulebook))
    ledger.enroll(STORE, "e1", member_id="M0001", card_no="K0001")
    ledger.enroll(STORE, "e2", member_id="M0002", card_no="K0002")
    recharge = ledger.recharge(STORE, "r1", "M0001", 10_000)
    line = {"sku": "A", "category": "grain", "unit_price_cents": 1000, "quantity": 2}
    settlements = [ledger.settle(STORE, f"s{i}", {"member_id": "M0001", "lines": [line]})
                   ["settlement_id"] for i in range(3)]
    big = {"member_id": "M0002", "lines": [{"sku": "TV", "category": "grain",
                                            "unit_price_cents": 600_000, "quantity": 1}]}
    settlements.append(ledger.settle(STORE, "big", big)["settlement_id"])
    coupon = ledger.issue_coupon(STORE, "c1", "M0001", "VOUCHER5")["coupon_id"]
    ledger.issue_count_card(STORE, "cc1", "M0001", "CC1", ["MILK-1L"], 5)
    alerts, _ = ledger.alerts.list_alerts()
    engine.dispose()
    ids = {"settlement_id": settlements[:3] + settlements[3:],
           "alert_id": [a["id"] for a in alerts] or ["no-alert"],
           "recharge_id": [recharge["recharge_id"]],
           "coupon_id": [coupon], "coupon_ids": [coupon]}
    log = tmp / "serve.log"
    server = ServerProcess(url, rulebook, log, workers=1)
    server.start()
    try:
        yield World(server, tokens, ids, settlements[0], log)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


# ---------------------------------------------------------------- generating requests

INT64_EDGES = [0, 1, -1, 2**31 - 1, -(2**31), 2**31, 2**53 + 1, 2**62, 2**63 - 1, -(2**63),
               -(2**63) + 1, 10**15, 999_999_999]
INT32_EDGES = [0, 1, -1, 2, 500, 501, 2**31 - 1, -(2**31), 2**16]
HOSTILE_TEXT = ["", " ", "\x00", "a\x00b", "A" * 129, "A" * 300, "Z" * 10_000, "é", "e\u0301",
                "\u202etxet", "\ufeff", "\U0001d518\U0001d52b\U0001d526", "\U0001f642" * 50,
                "\u0301" * 40, "null", "None", "-1", "1e309", "NaN", "' OR '1'='1", "%s%n%x",
                "../../etc/passwd", "\r\n", "\t", "M0001 ", "m0001", "K0001\x00",
                "open,resolved", "\u4e2d\u6587", "\U0010ffff", "\x7f\x1b[2J"]
#: Plausible values by field name, so that some requests get past validation.
PLAUSIBLE = {
    "member_id": ["M0001", "M0002", "M9999"], "card_no": ["K0001", "K0002", "K9999"],
    "new_card_no": ["K0100", "K0001"], "phone": ["13800000000", "+86 138 0000 0000"],
    "tier": ["normal", "silver", "gold"], "birthday": ["1990-01-01", "2000-02-30", "1990-1-1"],
    "referrer_id": ["M0001"], "sku": ["A", "MILK-1L", "TV"],
    "category": ["grain", "fresh", "tobacco", "dairy", "fruit"],
    "count_card_id": ["CC1", ""], "card_id": ["CC1", "CC2"], "skus": ["MILK-1L", "A"],
    "template": ["VOUCHER5", "PCT12", "SPEND200-20", "DAIRY-30PCT", "NOPE"],
    "states": ["open", "acknowledged", "resolved"], "rule": ["high_value", "card_burst"],
    "store": [STORE, OTHER_STORE], "min_severity": ["low", "medium", "high", "critical"],
    "action": ["acknowledge", "assign", "note", "resolve"], "assignee": ["alice"],
    "note": ["looked at it"], "outcome": ["confirmed_fraud", "false_positive", "valuable"],
    "page_token": ["", "bm9wZQ==", "%%%"],
}
#: Same-length stand-in for a string field, replaced in the bytes by invalid UTF-8.
MARKER = "\x01MARK\x02\x03\x04"
BAD_UTF8 = b"\xc3\x28\xff\xfe\xed\xa0\x80\xc0"  # lone lead, 0xff, a surrogate, overlong
assert len(MARKER.encode()) == len(BAD_UTF8)


@dataclass
class Call:
    """One request to send, and the status codes it may get."""

    index: int
    kind: str  # what fault it injects
    sub: str  # the variant of that fault
    service: str
    method: str
    payload: bytes
    metadata: tuple[tuple[str, str], ...]
    timeout: float
    allowed: frozenset[Code]
    streaming: bool = False
    note: str = ""  # what the request was, for the report of a violation

    @property
    def path(self) -> str:
        return f"/settlement.v1.{self.service}/{self.method}"


class Gen:
    """Random values and messages for one request (``random.Random`` rather than
    hypothesis: ``.example()`` is far too slow for 100,000 requests)."""

    def __init__(self, rnd: random.Random, ids: dict[str, list[str]], tag: str) -> None:
        self.r, self.ids, self.tag = rnd, ids, tag
        self.marker = False  # True: string fields may be the invalid-UTF-8 marker
        self.keys = itertools.count()

    def int64(self) -> int:
        r = self.r.random()
        if r < 0.45:
            return self.r.choice(INT64_EDGES)
        if r < 0.8:
            return self.r.randrange(1, 20_000)
        return self.r.randrange(-(2**63), 2**63)

    def int32(self) -> int:
        r = self.r.random()
        if r < 0.4:
            return self.r.choice(INT32_EDGES)
        if r < 0.8:
            return self.r.randrange(0, 4)
        return self.r.randrange(-(2**31), 2**31)

    def junk_text(self) -> str:
        if self.r.random() < 0.7:
            return self.r.choice(HOSTILE_TEXT)
        # random code points, surrogates excluded (protobuf cannot encode them)
        points = (self.r.randrange(1, 0x10FFFF) for _ in range(self.r.randrange(1, 24)))
        return "".join(chr(p) for p in points if not 0xD800 <= p <= 0xDFFF)

    def text(self, name: str) -> str:
        if self.marker and self.r.random() < 0.5:
            return MARKER
        if name == "idempotency_key":
            r = self.r.random()
            if r < 0.6:  # fresh: the request can go through
                return f"h{self.tag}-{next(self.keys)}"
            if r < 0.8:  # reused across requests: ALREADY_EXISTS or a replay
                return f"dup-{self.r.randrange(5)}"
            return self.junk_text()
        pool = self.ids.get(name) or PLAUSIBLE.get(name)
        if pool and self.r.random() < 0.6:
            return self.r.choice(pool)
        return self.junk_text()

    def value(self, f: FieldDescriptor) -> Any:
        t = f.type
        if t == FieldDescriptor.TYPE_STRING:
            return self.text(f.name)
        if t == FieldDescriptor.TYPE_INT64:
            return self.int64()
        if t == FieldDescriptor.TYPE_INT32:
            return self.int32()
        if t == FieldDescriptor.TYPE_BOOL:
            return self.r.random() < 0.5
        if t == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: unknown numbers too
            known = [v.number for v in f.enum_type.values]
            return self.r.choice(known) if self.r.random() < 0.8 else self.r.choice(
                [-1, 5, 99, 2**31 - 1, -(2**31)])
        raise AssertionError(f"no generator for {f.full_name} (type {t})")

    def fill(self, msg: Message, depth: int = 0) -> Message:
        """Set most fields of ``msg`` (in place) to random values; returns it."""
        for f in msg.DESCRIPTOR.fields:
            if self.r.random() < 0.25:
                continue  # missing fields
            if f.message_type is not None and f.message_type.full_name.startswith("google."):
                stamp = getattr(msg, f.name)  # a Timestamp: now-ish or anything
                if self.r.random() < 0.5:
                    stamp.seconds = int(time.time()) + self.r.randrange(-60, 60)
                else:
                    stamp.seconds, stamp.nanos = self.int64(), self.int32()
            elif f.is_repeated:
                items = getattr(msg, f.name)
                for _ in range(self.r.choice([0, 1, 1, 2, 3])):
                    if f.message_type is not None:
                        self.fill(items.add(), depth + 1)
                    else:
                        items.append(self.value(f))
            elif f.message_type is not None:
                sub = getattr(msg, f.name)
                sub.SetInParent()
                self.fill(sub, depth + 1)
            else:
                setattr(msg, f.name, self.value(f))
        return msg

    def huge(self, msg: Message, count: int) -> str:
        """Give a repeated field of ``msg`` (or of its basket) ``count`` small elements;
        returns the field's path ("" when the message has no repeated field)."""
        holders = [(msg, "")]
        if msg.DESCRIPTOR.fields_by_name.get("basket") is not None:
            holders.append((msg.basket, "basket."))  # type: ignore[attr-defined]
        choices = [(h, p, f) for h, p in holders for f in h.DESCRIPTOR.fields if f.is_repeated]
        if not choices:
            return ""
        holder, prefix, f = self.r.choice(choices)
        items = getattr(holder, f.name)
        if f.message_type is not None:
            for _ in range(count):  # compact, plausible elements (pb.Line or pb.RefundLine)
                item = items.add()
                for name, value in (("sku", "A"), ("category", "grain"),
                                    ("unit_price_cents", 100), ("quantity", 1),
                                    ("line_no", 1)):
                    if name in item.DESCRIPTOR.fields_by_name:
                        setattr(item, name, value)
        else:
            items.extend([self.text(f.name) or "x" for _ in range(count)])
        return prefix + f.name


def checkout(g: Gen, name: str) -> Message:
    """A plausible Quote or Settle (a member or a walk-in, 1..3 sane lines), in half the
    cases with one field of one line or of the basket set to a hostile value."""
    r = g.r
    basket = pb.Basket(lines=[pb.Line(sku=r.choice(["A", "MILK-1L", "TV"]),
                                      category=r.choice(["grain", "fresh", "dairy", "fruit"]),
                                      unit_price_cents=r.randrange(1, 5_000),
                                      quantity=r.randrange(1, 4))
                              for _ in range(r.randrange(1, 4))])
    if r.random() < 0.7:
        basket.member_id = r.choice(["M0001", "M0002"])
    if r.random() < 0.5:
        target = r.choice([basket, *basket.lines])
        f = r.choice([f for f in target.DESCRIPTOR.fields
                      if f.message_type is None and not f.is_repeated])
        setattr(target, f.name, g.value(f))
    if name == "Quote":
        return pb.QuoteRequest(basket=basket)
    return pb.SettleRequest(idempotency_key=g.text("idempotency_key"), basket=basket)


def request_class(method: MethodDescriptor) -> type[Message]:
    return getattr(pb, method.input_type.name)  # type: ignore[no-any-return]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of ``n`` (negative: two's complement on 64 bits)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def malformed(g: Gen, cls: type[Message]) -> tuple[str, bytes]:
    """Bytes that are not (or not quite) a ``cls`` message, and what was done to them."""
    r = g.r
    sub = r.choice(["truncated", "bit-flipped", "random", "invalid-utf8", "invalid-utf8",
                    "wrong-wire-type", "bad-length", "overlong-varint", "deep-nesting",
                    "unknown-fields", "enum-varint"])
    if sub == "invalid-utf8":
        g.marker = True
        data = g.fill(cls()).SerializeToString()
        g.marker = False
        bad = MARKER.encode()
        if bad in data:
            return sub, data.replace(bad, BAD_UTF8)
        # no string field drawn: field 1 (a string, or a message holding one at field 1)
        inner = b"\x0a" + varint(2) + b"\xc3\x28"
        return sub, b"\x0a" + varint(len(inner)) + inner if cls is pb.QuoteRequest else inner
    data = g.fill(cls()).SerializeToString() or b"\x08\x01"
    if sub == "truncated":
        return sub, data[:r.randrange(len(data))] if len(data) > 1 else b"\x0a"
    if sub == "bit-flipped":
        buf = bytearray(data)
        for _ in range(r.randrange(1, 9)):
            buf[r.randrange(len(buf))] ^= 1 << r.randrange(8)
        return sub, bytes(buf)
    if sub == "random":
        return sub, r.randbytes(r.randrange(0, 256))
    if sub == "wrong-wire-type":  # field 1..8 with a wire type its declaration does not have
        field_no, wire = r.randrange(1, 9), r.choice([0, 1, 2, 5])
        body = {0: varint(r.randrange(2**64)), 1: r.randbytes(8), 5: r.randbytes(4),
                2: varint(3) + b"abc"}[wire]
        return sub, data + varint(field_no << 3 | wire) + body
    if sub == "bad-length":  # a length-delimited field claiming far more bytes than follow
        return sub, b"\x0a" + varint(r.choice([2**31, 2**32 - 1, 2**63, 1000])) + b"abc"
    if sub == "overlong-varint":  # eleven continuation bytes: no valid varint is that long
        return sub, b"\x08" + b"\xff" * 11 + b"\x01"
    if sub == "deep-nesting":  # unknown groups nested far past the recursion limit
        depth = r.choice([101, 1000, 30_000])
        return sub, varint(15 << 3 | 3) * depth + varint(15 << 3 | 4) * depth
    if sub == "unknown-fields":  # valid wire format, field numbers the message lacks
        extra = b"".join(varint(n << 3 | 0) + varint(r.randrange(2**64))
                         for n in r.sample(range(100, 10_000), 5))
        return sub, data + extra
    # enum-varint: card_type (EnrollRequest field 6) or any field 6 as a 10-byte varint
    return sub, data + b"\x30" + varint(r.choice([2**64 - 1, 2**63, 2**32 + 1, 99]))


def build_call(seed: int, index: int, ids: dict[str, list[str]],
               tokens: dict[str, str]) -> Call:
    """Request ``index`` of the barrage of ``seed``: a function of these alone."""
    r = random.Random(f"{seed}/{index}")
    g = Gen(r, ids, f"{seed}-{index}")
    service, method = r.choice(METHODS)
    name = method.name
    cls = request_class(method)
    streaming = method.server_streaming
    role = role_for(name)

    def auth(who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {tokens[who]}"),)

    timeout = 0.2 if streaming else CALL_TIMEOUT_S
    # A stream cut by its deadline is the expected end of a WatchAlerts call.
    base = BASE | {Code.DEADLINE_EXCEEDED} if streaming else BASE
    kind = r.choices(["valid-shape", "empty", "unknown-enum", "huge-repeated", "oversized",
                      "malformed", "deadline", "unauthenticated", "wrong-role", "cross-store"],
                     weights=[44, 6, 2, 4, 1, 24, 5, 6, 5, 3])[0]
    sub, note = "", ""
    metadata = auth(role)
    allowed = base
    if kind == "valid-shape":
        if name in ("Quote", "Settle") and r.random() < 0.4:
            sub, msg = "checkout", checkout(g, name)  # mostly valid: the pricing path too
        else:
            msg = g.fill(cls())
        payload, note = msg.SerializeToString(), f"{msg}"
    elif kind == "empty":
        payload = b""
    elif kind == "unknown-enum":
        service, name, streaming, timeout = "MemberService", "Enroll", False, CALL_TIMEOUT_S
        metadata, allowed = auth("pos"), BASE
        msg = g.fill(pb.EnrollRequest())
        msg.card_type = r.choice([5, 99, -1, 2**31 - 1, -(2**31)])  # type: ignore[assignment]
        sub, payload, note = str(msg.card_type), msg.SerializeToString(), f"{msg}"
    elif kind == "huge-repeated":
        service, method = r.choice(HUGE_METHODS)
        name, cls, streaming = method.name, request_class(method), False
        metadata, timeout, allowed = auth(role_for(name)), CALL_TIMEOUT_S, BASE
        msg = g.fill(cls())
        count = r.choice([501, 5_000, 20_000])
        sub = g.huge(msg, count) or "none"
        payload, note = msg.SerializeToString(), f"{sub} x {count}"
        if len(payload) > MAX_MESSAGE_BYTES:
            allowed = frozenset({Code.RESOURCE_EXHAUSTED})
    elif kind == "oversized":  # over the server's 1 MiB limit: refused by gRPC itself
        size = r.choice([MAX_MESSAGE_BYTES + 1, 2 * MAX_MESSAGE_BYTES])
        sub = r.choice(["unknown-field", "string"])
        if sub == "string" and cls.DESCRIPTOR.fields and any(
                f.type == FieldDescriptor.TYPE_STRING for f in cls.DESCRIPTOR.fields):
            f = next(f for f in cls.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_STRING)
            payload = cls(**{f.name: "x" * size}).SerializeToString()
        else:
            sub = "unknown-field"
            payload = varint(999 << 3 | 2) + varint(size) + b"\0" * size
        allowed, note = frozenset({Code.RESOURCE_EXHAUSTED}), f"{len(payload)} bytes"
        timeout = CALL_TIMEOUT_S  # (a stream's 0.2 s could end before 2 MiB are sent)
    elif kind == "malformed":
        sub, payload = malformed(g, cls)
        note = repr(payload[:200]) + (f"... ({len(payload)} bytes)" if len(payload) > 200 else "")
    elif kind == "deadline":
        sub = r.choice(["0", "1us", "100us"])
        timeout = {"0": 0.0, "1us": 1e-6, "100us": 1e-4}[sub]
        payload = g.fill(cls()).SerializeToString()
        allowed = BASE | {Code.DEADLINE_EXCEEDED}
    elif kind == "unauthenticated":
        sub = r.choice(["none", "empty", "garbage", "wrong-secret", "unknown-terminal",
                        "revoked", "not-bearer", "long"])
        metadata = {
            "none": (), "empty": (("authorization", ""),),
            "garbage": (("authorization", "Bearer !!garbage!!"),),
            "wrong-secret": (("authorization", f"Bearer {tokens['pos'].split('.')[0]}.x"),),
            "unknown-terminal": (("authorization", "Bearer NOPE.abcdef"),),
            "revoked": auth("revoked"),
            "not-bearer": (("authorization", f"Basic {tokens[role]}"),),
            "long": (("authorization", "Bearer " + "A" * 4000),),
        }[sub]
        payload = g.fill(cls()).SerializeToString()
        # refused at the door: the request is never looked at (and a stream never starts,
        # so no short deadline: it could only turn a slow refusal into a false alarm)
        allowed, timeout = frozenset({Code.UNAUTHENTICATED}), CALL_TIMEOUT_S
    elif kind == "wrong-role":
        sub, (service, method) = r.choice(DENIED)  # a valid token of a role denied it
        name, cls, streaming = method.name, request_class(method), method.server_streaming
        metadata, allowed = auth(sub), frozenset({Code.PERMISSION_DENIED})
        timeout = CALL_TIMEOUT_S  # (refused before a stream starts, as above)
        payload = g.fill(cls()).SerializeToString()
    else:  # cross-store: a POS terminal of S002 at an S001 settlement
        service, streaming, timeout = "SettlementService", False, CALL_TIMEOUT_S
        # well-formed requests (bad input is refused before the store is looked at, as
        # INVALID_ARGUMENT): what is checked here is the store alone
        name = r.choice(["Refund", "Refund-lines", "Void", "GetSettlement"])
        sid, key = r.choice(ids["settlement_id"]), f"x{seed}-{index}"
        msg = {"Refund": pb.RefundRequest(idempotency_key=key, settlement_id=sid,
                                          all_remaining=True),
               "Refund-lines": pb.RefundRequest(idempotency_key=key, settlement_id=sid,
                                                lines=[pb.RefundLine(line_no=0, quantity=1)]),
               "Void": pb.VoidRequest(idempotency_key=key, settlement_id=sid),
               "GetSettlement": pb.GetSettlementRequest(settlement_id=sid)}[name]
        sub, name = name, name.split("-")[0]
        metadata, payload, note = auth("pos2"), msg.SerializeToString(), f"{msg}"
        allowed = frozenset({Code.PERMISSION_DENIED})
    return Call(index, kind, sub, service, name, payload, metadata, timeout, allowed,
                streaming, note[:2000])


# ---------------------------------------------------------------- sending and checking


def reason(exc: grpc.RpcError) -> str:
    """The ``ErrorInfo`` reason of a refusal ("" when it has none)."""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:
        return ""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason  # type: ignore[no-any-return]
    return ""


@dataclass
class Tally:
    """One sender thread's counts (merged at the end: no lock on the hot path)."""

    kinds: Counter[str] = field(default_factory=Counter)
    subs: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    per_rpc: Counter[tuple[str, str]] = field(default_factory=Counter)
    per_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    tolerated: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    #: (rpc, code, the details' first 70 characters) -> count
    violation_kinds: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def merge(self, other: Tally) -> None:
        for mine, theirs in ((self.kinds, other.kinds), (self.subs, other.subs),
                             (self.codes, other.codes), (self.per_rpc, other.per_rpc),
                             (self.per_kind, other.per_kind),
                             (self.tolerated, other.tolerated),
                             (self.violation_kinds, other.violation_kinds)):
            mine.update(theirs)
        self.violations.extend(other.violations)


class Sender:
    """Sends calls over one channel with raw bytes in and out (so malformed bytes and
    well-formed messages take the same path), and judges the answers."""

    def __init__(self, channel: grpc.Channel, tally: Tally) -> None:
        self.channel, self.tally = channel, tally
        self.unary: dict[str, Callable[..., Any]] = {}
        self.stream: dict[str, Callable[..., Any]] = {}

    def send(self, call: Call) -> Code:
        """Send ``call``; returns its status code (the server's or the client's)."""
        try:
            if call.streaming:
                stub = self.stream.get(call.path) or self.stream.setdefault(
                    call.path, self.channel.unary_stream(call.path))
                for _ in stub(call.payload, timeout=call.timeout, metadata=call.metadata):
                    pass  # read until the deadline cuts the stream
            else:
                stub = self.unary.get(call.path) or self.unary.setdefault(
                    call.path, self.channel.unary_unary(call.path))
                answer = stub(call.payload, timeout=call.timeout, metadata=call.metadata)
                # an OK answer must be a well-formed message of the method's response type
                out = getattr(pb, SERVICES[call.service].methods_by_name[call.method]
                              .output_type.name)
                out.FromString(answer)
            return Code.OK
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            self.judge(call, code, exc)
            return code  # type: ignore[no-any-return]

    def judge(self, call: Call, code: Code, exc: grpc.RpcError) -> None:
        t = self.tally
        label = f"{call.service.removesuffix('Service')}.{call.method}"
        t.codes[code.name] += 1
        t.per_rpc[(label, code.name)] += 1
        if code in call.allowed and code not in FORBIDDEN:
            return
        why = reason(exc)
        if code == Code.UNAVAILABLE and why == "LOCK_TIMEOUT":
            t.tolerated["UNAVAILABLE LOCK_TIMEOUT (documented: retry with the same key)"] += 1
            return
        t.violation_kinds[(label, code.name, (exc.details() or "")[:70])] += 1
        t.violations.append(
            f"#{call.index} {label} [{call.kind}/{call.sub}] -> {code.name} {why} "
            f"{exc.details()!r} (allowed: {sorted(c.name for c in call.allowed)}); "
            f"request: {call.note or repr(call.payload[:200])}")

    def run(self, call: Call) -> None:
        t = self.tally
        t.kinds[call.kind] += 1
        if call.sub:
            t.subs[f"{call.kind}/{call.sub}"] += 1
        code = self.send(call)
        t.per_kind[(call.kind, code.name)] += 1
        if code == Code.OK:
            label = f"{call.service.removesuffix('Service')}.{call.method}"
            t.codes["OK"] += 1
            t.per_rpc[(label, "OK")] += 1
            if Code.OK not in call.allowed:
                t.violation_kinds[(label, "OK", "")] += 1
                t.violations.append(f"#{call.index} {label} [{call.kind}/{call.sub}] -> OK "
                                    f"(allowed: {sorted(c.name for c in call.allowed)})")


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, in KiB (0 for a process gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def ping(target: str, token: str) -> Code:
    """A Ping with a valid token: the server's answer code (OK while it serves)."""
    with grpc.insecure_channel(target) as channel:
        try:
            pb.PingResponse.FromString(channel.unary_unary(
                "/settlement.v1.SettlementService/Ping")(
                b"", timeout=10, metadata=(("authorization", f"Bearer {token}"),)))
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined,no-any-return]
    return Code.OK


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def report(name: str, lines: list[str]) -> None:
    """Print the drill's report, keep it in :data:`REPORTS`, and hand it to the suite."""
    REPORTS.append({"name": name, "lines": lines})
    print(f"\n{name}:\n" + "\n".join(f"  {line}" for line in lines))
    if _record is not None:
        _record(name, lines)


#: Every report of this module, as {"name", "lines"}.
REPORTS: list[dict[str, Any]] = []


# ---------------------------------------------------------------- the drills


def test_refusals_of_unauthenticated_and_cross_store_calls(world: World) -> None:
    """Calls without a valid token are UNAUTHENTICATED; another store's settlement and
    another role's methods are PERMISSION_DENIED; the store's own terminal succeeds."""
    target, tokens, sid = world.server.target, world.tokens, world.reserved_settlement
    settle = pb.SettleRequest(idempotency_key="det-1", basket=pb.Basket(
        member_id="M0001", lines=[pb.Line(sku="A", category="grain", unit_price_cents=100,
                                          quantity=1)]))
    checks: list[tuple[str, str, Message, tuple[tuple[str, str], ...], Code]] = []

    def bearer(who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {tokens[who]}"),)

    checks += [
        ("Settle without a token", "SettlementService/Settle", settle, (),
         Code.UNAUTHENTICATED),
        ("Settle with a bad token", "SettlementService/Settle", settle,
         (("authorization", "Bearer T1.not-the-secret"),), Code.UNAUTHENTICATED),
        ("Settle with a revoked terminal", "SettlementService/Settle", settle,
         bearer("revoked"), Code.UNAUTHENTICATED),
        ("S002 refunds an S001 settlement", "SettlementService/Refund",
         pb.RefundRequest(idempotency_key="det-2", settlement_id=sid, all_remaining=True),
         bearer("pos2"), Code.PERMISSION_DENIED),
        ("S002 voids an S001 settlement", "SettlementService/Void",
         pb.VoidRequest(idempotency_key="det-3", settlement_id=sid), bearer("pos2"),
         Code.PERMISSION_DENIED),
        ("pos token on ListAlerts", "RiskService/ListAlerts", pb.ListAlertsRequest(),
         bearer("pos"), Code.PERMISSION_DENIED),
        ("pos token on IssueCoupon", "MemberService/IssueCoupon",
         pb.IssueCouponRequest(idempotency_key="det-4", member_id="M0001",
                               template="VOUCHER5"), bearer("pos"), Code.PERMISSION_DENIED),
        ("risk token on Settle", "SettlementService/Settle", settle, bearer("risk"),
         Code.PERMISSION_DENIED),
        # the settlement is still there and the S001 terminal may read it: the refusals
        # above were about who asked, not about a missing settlement
        ("S001 reads its settlement", "SettlementService/GetSettlement",
         pb.GetSettlementRequest(settlement_id=sid), bearer("pos"), Code.OK),
    ]
    got: list[str] = []
    failures: list[str] = []
    with grpc.insecure_channel(target) as channel:
        for what, path, request, metadata, expected in checks:
            try:
                channel.unary_unary(f"/settlement.v1.{path}")(
                    request.SerializeToString(), timeout=10, metadata=metadata)
                code, why = Code.OK, ""
            except grpc.RpcError as exc:
                code, why = exc.code(), reason(exc)  # type: ignore[attr-defined]
            got.append(f"{what}: {code.name}{f' ({why})' if why else ''}")
            if code != expected:
                failures.append(f"{what}: expected {expected.name}, got {code.name} {why}")
    # the S002 refund and void changed nothing: the settlement is not refunded or voided
    with grpc.insecure_channel(target) as channel:
        kept = pb.Settlement.FromString(channel.unary_unary(
            "/settlement.v1.SettlementService/GetSettlement")(
            pb.GetSettlementRequest(settlement_id=sid).SerializeToString(), timeout=10,
            metadata=bearer("pos")))
    if kept.status != "settled" or list(kept.refunded):
        failures.append(f"the refused calls changed the settlement: {kept}")
    report("hostile input: refusals", [
        f"deterministic checks: {len(checks)}, as expected: {len(checks) - len(failures)}",
        *got,
        f"settlement {sid} after the refused refund/void: status {kept.status}, "
        f"{len(kept.refunded)} refunded lines",
        f"violations: {len(failures)}"])
    assert not failures, failures


def test_hostile_barrage(world: World) -> None:
    """REQUESTS generated and malformed requests from THREADS threads: documented codes
    only, the server keeps serving, and its memory stays bounded."""
    target, pid, token = world.server.target, world.pid, world.tokens["pos"]
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    channels = [grpc.insecure_channel(target, options=options) for _ in range(CHANNELS)]
    tallies = [Tally() for _ in range(THREADS)]
    counter = itertools.count()
    done = [0] * THREADS  # requests finished, per thread
    stop = threading.Event()
    errors: list[BaseException] = []

    def sender(n: int) -> None:
        s = Sender(channels[n % CHANNELS], tallies[n])
        try:
            while not stop.is_set():
                index = next(counter)  # atomic under the GIL: each index sent once
                if index >= REQUESTS:
                    return
                s.run(build_call(SEED, index, world.ids, world.tokens))
                done[n] += 1
        except BaseException as exc:  # a bug of the drill itself: stop everything
            errors.append(exc)
            stop.set()

    rss_start = rss_kib(pid)
    pings: Counter[str] = Counter()
    samples: list[tuple[int, int]] = [(0, rss_start)]
    rss_warm: int | None = None
    warm_at = int(REQUESTS * WARM_UP_SHARE)
    began = time.monotonic()
    threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    next_check = CHECK_EVERY
    ping_failures: list[str] = []
    # the monitor: every CHECK_EVERY requests, Ping and RSS (the process must be up)
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.05)
        progress = sum(done)
        if progress < next_check:
            continue
        next_check = progress + CHECK_EVERY
        alive = world.server.proc is not None and world.server.proc.poll() is None
        code = ping(target, token) if alive else Code.UNAVAILABLE
        pings[code.name] += 1
        if code != Code.OK:
            ping_failures.append(f"after {progress} requests: Ping {code.name}, "
                                 f"process {'up' if alive else 'gone'}")
            if not alive:
                stop.set()
        samples.append((progress, rss_kib(pid)))
        if rss_warm is None and progress >= warm_at:
            rss_warm = samples[-1][1]
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    for channel in channels:
        channel.close()
    if errors:
        raise errors[0]

    total = Tally()
    for tally in tallies:
        total.merge(tally)
    alive = world.server.proc is not None and world.server.proc.poll() is None
    final_ping = ping(target, token) if alive else Code.UNAVAILABLE
    rss_end = rss_kib(pid)
    rss_warm = rss_warm if rss_warm is not None else samples[-1][1]
    rss_max = max(kib for _, kib in samples + [(0, rss_end)])
    growth = rss_end - rss_warm
    log_text = world.log.read_text(errors="replace")
    tracebacks = log_text.count("Traceback")
    sent = sum(done)

    violations = list(total.violations) + ping_failures
    if not alive:
        violations.append(f"the server process exited with {world.server.proc.returncode}"
                          if world.server.proc else "no server process")
    if final_ping != Code.OK:
        violations.append(f"final Ping: {final_ping.name}")
    if growth > RSS_GROWTH_BOUND_MIB * 1024:
        violations.append(f"RSS grew {mib(growth)} after warm-up (bound "
                          f"{RSS_GROWTH_BOUND_MIB} MiB): {samples}")
    if tracebacks:  # an INTERNAL is logged with its trace: name the first one
        start = log_text.index("Traceback")
        violations.append(f"{tracebacks} traceback(s) in the server log {world.log}, first: "
                          f"{log_text[max(0, start - 300):start + 1500]}")

    faults = {k: v for k, v in total.kinds.items() if k != "valid-shape"}
    per_kind: dict[str, list[str]] = {}
    for (kind, code_name), count in sorted(total.per_kind.items()):
        per_kind.setdefault(kind, []).append(f"{code_name} {count}")
    per_rpc: dict[str, list[str]] = {}
    for (label, code_name), count in sorted(total.per_rpc.items()):
        per_rpc.setdefault(label, []).append(f"{code_name} {count}")
    lines = [
        f"requests: {sent} in {elapsed:.1f} s ({sent / elapsed:.0f}/s), {THREADS} threads "
        f"over {CHANNELS} channels, seed {SEED}, {len(METHODS)} RPCs of 3 services, "
        f"server: `settlement serve` pid {pid} on SQLite",
        "by kind: " + ", ".join(f"{k} {v}" for k, v in total.kinds.most_common()),
        f"faults injected: {sum(faults.values())} (all but valid-shape); variants: "
        + ", ".join(f"{k} {v}" for k, v in sorted(total.subs.items())),
        "codes: " + ", ".join(f"{k} {v}" for k, v in total.codes.most_common()),
        "codes by kind:",
        *(f"  {kind}: {', '.join(codes)}" for kind, codes in per_kind.items()),
        "codes by RPC:",
        *(f"  {label}: {', '.join(codes)}" for label, codes in per_rpc.items()),
        *(f"tolerated: {k}: {v}" for k, v in total.tolerated.items()),
        f"checks while running: {sum(pings.values())} Pings "
        f"({', '.join(f'{k} {v}' for k, v in pings.items()) or 'none'}), "
        f"final Ping {final_ping.name}, process {'up' if alive else 'GONE'}",
        f"RSS: start {mib(rss_start)}, after warm-up ({warm_at} requests) {mib(rss_warm)}, "
        f"end {mib(rss_end)}, max {mib(rss_max)}; growth after warm-up {mib(growth)} "
        f"(bound {RSS_GROWTH_BOUND_MIB} MiB)",
        "RSS samples (requests: MiB): " + ", ".join(
            f"{n}: {kib / 1024:.0f}" for n, kib in samples[::max(1, len(samples) // 10)]),
        f"server log: {tracebacks} tracebacks",
        f"violations: {len(violations)} (INTERNAL/UNKNOWN seen: "
        f"{total.codes['INTERNAL'] + total.codes['UNKNOWN']})",
        *(f"  violation: {label} -> {code_name} x{count}: {details!r}"
          for (label, code_name, details), count in total.violation_kinds.most_common()),
    ]
    report("hostile input: barrage", lines)
    assert sent == REQUESTS, f"sent {sent} of {REQUESTS}"
    assert not violations, f"{len(violations)} violations, first ones:\n" + "\n".join(
        v[:3000] for v in violations[:8])
