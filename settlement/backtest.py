"""The back-test: price a history of quote requests under two rulebooks and compare.

"What would this promotion have cost us last month": every request of a
history (one JSON quote request per line, the shape :func:`settlement.quote`
takes) is priced under a baseline rulebook and a new one, and the totals
(gross, item discounts by source, coupon use per template, points offset,
redeemed and earned, rounding, payable, stored value, due) are compared.

Public API::

    history = load_history("requests.jsonl", baseline)   # or encode_history(dicts, baseline)
    result = run_backtest(history, baseline, new)  # {"baseline", "new", "change", ...}
    totals = reference_totals(rulebook, requests)  # settlement.quote per request

The batch path. :func:`encode_history` validates every request once (the
kernel's request parser, and for what it declines the canonical
:func:`settlement.request.parse_request`, so errors are the same as
``quote``'s) and stores it as NumPy columns: per basket the instant, store,
tier, member amounts and offsets into a lines table (SKU, category, gross,
quantity) and a presented-coupons table (template, validity, id rank); codes
are interned into vocabularies, mapped to a rulebook's indices only when it is
priced. :func:`price_history` hands the columns to the Cython kernel's
``price_batch``, which runs the very stage functions ``quote`` runs (one
statement of the rules, see ``settlement/_fast/_kernel.pyx``) over every
basket in C and only adds up totals: no receipt, no Python object per line.

What the batch encoding does not represent is priced by
:func:`settlement.quote` per request and counted as the fallback: requests
with count-card lines, and members' ``auto_coupons``. Without the built
kernel every request takes the fallback.

Money is integer cents and points are integers throughout; totals are exact
Python ints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import quote as _quote
from .errors import InvalidInput, RequestError
from .request import parse_request
from .rulebook import Rulebook
from .timeutil import FOREVER, NEVER_BEFORE

Totals = dict[str, Any]
QuoteFn = Callable[[Rulebook, Any], dict[str, Any]]

#: The scalar totals, in report order (cents unless named points).
SCALARS = ("gross_cents", "count_card_cents", "item_discount_cents", "coupon_discount_cents",
           "points_offset_cents", "rounding_cents", "payable_cents", "stored_value_cents",
           "due_cents", "points_redeemed", "points_earned")


class HistoryError(ValueError):
    """A history that cannot be back-tested; ``str()`` names the file and line."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


# ---------------------------------------------------------------- reading

def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` for every non-blank line of ``path``.

    Raises :class:`HistoryError` (``path:N: ...``) for unreadable files and bad JSON.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise HistoryError(str(path), f"cannot read: {exc.strerror or exc}") from None
    with handle:
        try:
            for number, raw in enumerate(handle, 1):
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise HistoryError(f"{path}:{number}", "not UTF-8 text") from None
                if not text:
                    continue
                try:
                    data = json.loads(text)
                except ValueError as exc:  # JSONDecodeError, or an integer too long
                    raise HistoryError(f"{path}:{number}", f"invalid JSON: {exc}") from None
                except RecursionError:
                    raise HistoryError(f"{path}:{number}", "invalid JSON: nested too deeply") \
                        from None
                yield number, data
        except OSError as exc:
            raise HistoryError(str(path), f"cannot read: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- the reference

def empty_totals() -> Totals:
    """Totals of no basket."""
    totals: Totals = {"baskets": 0}
    totals.update({name: 0 for name in SCALARS})
    totals["item_discount_by_source"] = {}
    totals["coupons_by_template"] = {}
    totals["rejected_coupons"] = {}
    return totals


def add_receipt(totals: Totals, receipt: Mapping[str, Any]) -> None:
    """Add one receipt into ``totals`` (in place)."""
    totals["baskets"] += 1
    for name in SCALARS:
        totals[name] += receipt[name]
    by_source = totals["item_discount_by_source"]
    for line in receipt["lines"]:
        if line["item_discount_cents"]:
            source = line["item_discount_source"]
            by_source[source] = by_source.get(source, 0) + line["item_discount_cents"]
    by_template = totals["coupons_by_template"]
    for coupon in receipt["applied_coupons"]:
        use = by_template.setdefault(coupon["template"], {"applied": 0, "discount_cents": 0})
        use["applied"] += 1
        use["discount_cents"] += coupon["discount_cents"]
    rejected = totals["rejected_coupons"]
    for coupon in receipt["rejected_coupons"]:
        rejected[coupon["reason"]] = rejected.get(coupon["reason"], 0) + 1


def reference_totals(rulebook: Rulebook, requests: Iterable[Any],
                     quote: QuoteFn | None = None) -> Totals:
    """The totals of pricing every request with ``quote`` (default :func:`settlement.quote`)
    one by one: the reference the batch path must equal, and its fallback."""
    quote = _quote if quote is None else quote
    totals = empty_totals()
    for request in requests:
        add_receipt(totals, quote(rulebook, request))
    return totals


def merge_totals(a: Totals, b: Totals) -> Totals:
    """``a + b`` (new dict)."""
    out = empty_totals()
    for part in (a, b):
        out["baskets"] += part["baskets"]
        for name in SCALARS:
            out[name] += part[name]
        for key in ("item_discount_by_source", "rejected_coupons"):
            for name, value in part[key].items():
                out[key][name] = out[key].get(name, 0) + value
        for name, use in part["coupons_by_template"].items():
            mine = out["coupons_by_template"].setdefault(name, {"applied": 0,
                                                               "discount_cents": 0})
            mine["applied"] += use["applied"]
            mine["discount_cents"] += use["discount_cents"]
    return out


def change(baseline: Totals, new: Totals) -> Totals:
    """``new - baseline``, field by field (a key missing on one side counts 0)."""
    out: Totals = {"baskets": new["baskets"] - baseline["baskets"]}
    for name in SCALARS:
        out[name] = new[name] - baseline[name]
    for key in ("item_discount_by_source", "rejected_coupons"):
        names = sorted(set(baseline[key]) | set(new[key]))
        out[key] = {n: new[key].get(n, 0) - baseline[key].get(n, 0) for n in names}
    zero = {"applied": 0, "discount_cents": 0}
    names = sorted(set(baseline["coupons_by_template"]) | set(new["coupons_by_template"]))
    out["coupons_by_template"] = {
        n: {f: new["coupons_by_template"].get(n, zero)[f]
            - baseline["coupons_by_template"].get(n, zero)[f] for f in zero}
        for n in names}
    return out


# ---------------------------------------------------------------- encoding

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


@dataclass(frozen=True, eq=False)
class History:
    """A history encoded into columns (see the module docstring).

    Codes are indices into the vocabularies (``stores``, ``tiers``, ``skus``,
    ``categories``, ``templates``); ``coupon_key`` is the rank of the coupon id
    in string order among every presented id of the history. Baskets with
    ``fallback`` set keep their request in ``fallback_requests`` instead.
    """

    source: str
    numbers: I64                 # line number of each basket in the source
    at: I64
    store: I32
    tier: I32                    # -1: walk-in
    points_balance: I64
    stored_value: I64
    redeem_points: I64
    pay_stored_value: I64
    line_start: I64              # baskets + 1
    line_sku: I32
    line_cat: I32
    line_gross: I64
    line_qty: I64
    coupon_start: I64            # baskets + 1
    coupon_tpl: I32              # -1: not held by the member
    coupon_from: I64
    coupon_until: I64
    coupon_key: I64
    fallback: npt.NDArray[np.uint8]
    fallback_requests: dict[int, Any]
    stores: list[str]
    tiers: list[str]
    skus: list[str]
    categories: list[str]
    templates: list[str]
    members: int = 0             # distinct member ids

    @property
    def baskets(self) -> int:
        """How many requests the history holds."""
        return len(self.at)

    def where(self, n: int) -> str:
        """``source:line`` of basket ``n``."""
        return f"{self.source}:{int(self.numbers[n])}"


def encode_history(requests: Iterable[Any] | Iterable[tuple[int, Any]], rulebook: Rulebook,
                   source: str = "<history>", batch: bool = True) -> History:
    """Validate and encode ``requests`` (request dicts, or ``(line number, request)`` pairs
    as :func:`read_jsonl` yields) against ``rulebook``.

    ``batch=False`` (or no built kernel): every request is kept for the fallback.
    With the kernel, its own request parser validates first (it also prices the
    request, which is still much quicker than the reference parser); what it declines
    goes through :func:`settlement.request.parse_request`.

    Raises :class:`HistoryError` naming ``source:line`` and the field of the first
    invalid request.
    """
    stores: dict[str, int] = {}
    tiers: dict[str, int] = {}
    skus: dict[str, int] = {}
    cats: dict[str, int] = {}
    tpls: dict[str, int] = {}
    coupon_ids: dict[str, int] = {}
    head: list[tuple[int, ...]] = []   # at, store, tier, pb, svb, redeem, paysv, fallback
    numbers: list[int] = []
    line_start, coupon_start = [0], [0]
    l_sku: list[int] = []
    l_cat: list[int] = []
    l_gross: list[int] = []
    l_qty: list[int] = []
    c_tpl: list[int] = []
    c_from: list[int] = []
    c_until: list[int] = []
    c_id: list[int] = []
    fallback_requests: dict[int, Any] = {}
    members: set[str] = set()
    kernel = _kernel() if batch else None
    for count, item in enumerate(requests, 1):
        number, data = item if isinstance(item, tuple) else (count, item)
        try:
            req = _fields(rulebook, data, kernel)
        except RequestError as exc:
            raise HistoryError(f"{source}:{number}", str(exc)) from None
        n = len(numbers)
        numbers.append(number)
        if req.member is not None:
            members.add(req.member)
        fall = kernel is None or req.fallback
        if fall:
            fallback_requests[n] = data
        else:
            for sku, cat, gross, qty in req.lines:
                l_sku.append(skus.setdefault(sku, len(skus)))
                l_cat.append(cats.setdefault(cat, len(cats)))
                l_gross.append(gross)
                l_qty.append(qty)
            for cid, template, valid_from, valid_until in req.presented:
                c_id.append(coupon_ids.setdefault(cid, len(coupon_ids)))
                c_tpl.append(-1 if template is None else tpls.setdefault(template, len(tpls)))
                c_from.append(valid_from)
                c_until.append(valid_until)
        line_start.append(len(l_sku))
        coupon_start.append(len(c_id))
        head.append((req.at, stores.setdefault(req.store, len(stores)),
                     -1 if req.tier is None else tiers.setdefault(req.tier, len(tiers)),
                     req.points_balance, req.stored_value, req.redeem_points,
                     req.pay_stored_value, int(fall)))
    # a coupon id's key is its rank in string order (the contract's id tie-break)
    rank = np.empty(len(coupon_ids), dtype=np.int64)
    for k, cid in enumerate(sorted(coupon_ids)):
        rank[coupon_ids[cid]] = k
    cols = np.array(head, dtype=np.int64).reshape(len(head), 8)

    def i64(values: Any) -> I64:
        return np.ascontiguousarray(values, dtype=np.int64)

    def i32(values: Any) -> I32:
        return np.ascontiguousarray(values, dtype=np.int32)

    return History(
        source=source, numbers=i64(numbers), at=i64(cols[:, 0]), store=i32(cols[:, 1]),
        tier=i32(cols[:, 2]), points_balance=i64(cols[:, 3]), stored_value=i64(cols[:, 4]),
        redeem_points=i64(cols[:, 5]), pay_stored_value=i64(cols[:, 6]),
        line_start=i64(line_start), line_sku=i32(l_sku), line_cat=i32(l_cat),
        line_gross=i64(l_gross), line_qty=i64(l_qty), coupon_start=i64(coupon_start),
        coupon_tpl=i32(c_tpl), coupon_from=i64(c_from), coupon_until=i64(c_until),
        coupon_key=rank[np.asarray(c_id, dtype=np.int64)] if c_id else i64([]),
        fallback=np.ascontiguousarray(cols[:, 7], dtype=np.uint8),
        fallback_requests=fallback_requests, stores=list(stores), tiers=list(tiers),
        skus=list(skus), categories=list(cats), templates=list(tpls), members=len(members))


def load_history(path: str | Path, rulebook: Rulebook, batch: bool = True) -> History:
    """:func:`encode_history` of the JSONL file at ``path`` (errors name ``path:line``)."""
    return encode_history(read_jsonl(path), rulebook, source=str(path), batch=batch)


class _Fields(NamedTuple):
    """What the columns hold of one valid request (member fields zero for a walk-in)."""

    at: int
    store: str
    member: str | None
    tier: str | None
    points_balance: int
    stored_value: int
    redeem_points: int
    pay_stored_value: int
    lines: list[tuple[str, str, int, int]]                  # sku, category, gross, quantity
    presented: list[tuple[str, str | None, int, int]]      # id, held template, validity
    fallback: bool                                          # count cards or auto_coupons


def _fields(rulebook: Rulebook, data: Any, kernel: Any) -> _Fields:
    """Validate ``data``. The kernel's own parser decides first (a quote it prices without
    the pure path is a valid request of plain JSON shapes, read directly); anything else
    goes through :func:`parse_request`, which raises the canonical error."""
    if kernel is not None:
        before = kernel.slow_path_count()
        kernel.quote(rulebook, data)  # a RequestError here is the pure parser's
        if kernel.slow_path_count() == before:
            return _plain_fields(data, kernel._iso_micros)
    req = parse_request(rulebook, data)
    m = req.member
    held = {c.id: c for c in m.coupons} if m is not None else {}
    return _Fields(
        req.at, req.store, m.id if m else None, m.tier if m else None, m.points_balance if m else 0,
        m.stored_value_cents if m else 0, req.redeem_points, req.pay_stored_value_cents,
        [(x.sku, x.category, x.unit_price_cents * x.quantity, x.quantity) for x in req.lines],
        [(cid, held[cid].template, held[cid].valid_from, held[cid].valid_until)
         if cid in held else (cid, None, 0, 0) for cid in req.coupon_ids],
        (req.auto_coupons and m is not None)
        or any(x.count_card_id is not None for x in req.lines))


def _plain_fields(data: dict[str, Any], instant: Callable[[Any], int]) -> _Fields:
    """``_Fields`` of a request the kernel's parser accepted (null is absent)."""
    m = data.get("member")
    held = {}
    for c in (m.get("coupons") or ()) if m is not None else ():
        start, until = c.get("valid_from"), c.get("valid_until")
        held[c["id"]] = (c["template"], NEVER_BEFORE if start is None else instant(start),
                         FOREVER if until is None else instant(until))
    lines = data["lines"]
    return _Fields(
        instant(data["at"]), data["store"], m and m["id"], m and m["tier"],
        (m.get("points_balance") or 0) if m else 0, (m.get("stored_value_cents") or 0) if m else 0,
        data.get("redeem_points") or 0, data.get("pay_stored_value_cents") or 0,
        [(x["sku"], x["category"], x["unit_price_cents"] * x["quantity"], x["quantity"])
         for x in lines],
        [(cid, *held[cid]) if cid in held else (cid, None, 0, 0)
         for cid in data.get("coupon_ids") or ()],
        (data.get("auto_coupons") is True and m is not None)
        or any(x.get("count_card_id") is not None for x in lines))


# ---------------------------------------------------------------- pricing

def _kernel() -> Any:
    try:
        from ._fast import _kernel
    except ImportError:
        return None
    return _kernel


def batch_available() -> bool:
    """Whether the Cython kernel (and so the batch path) is built."""
    return _kernel() is not None


def price_history(history: History, rulebook: Rulebook,
                  quote: QuoteFn | None = None) -> tuple[Totals, int]:
    """Totals of ``history`` under ``rulebook`` and how many baskets took the fallback
    (``quote`` per request, default :func:`settlement.quote`).

    Raises :class:`HistoryError` for a request this rulebook refuses (an unknown tier).
    """
    kernel = _kernel()
    if kernel is None or len(history.fallback_requests) == history.baskets:
        return _fallback(history, rulebook, sorted(history.fallback_requests), quote), \
            history.baskets
    t = kernel.tables(rulebook)
    tier_map = _lookup(history.tiers, t["tiers"])
    tier = np.where(history.tier >= 0, tier_map[np.maximum(history.tier, 0)], -1)
    unknown = np.flatnonzero((history.tier >= 0) & (tier < 0))
    if len(unknown):
        n = int(unknown[0])
        code = history.tiers[int(history.tier[n])]
        raise HistoryError(history.where(n), f"member.tier: unknown tier {code!r}")
    store_rules = [t["stores"].get(code, t["store_default"]) for code in history.stores]
    rounding = np.array([x[0] for x in store_rules] or [0], dtype=np.int32)[history.store]
    maxc = np.array([x[1] for x in store_rules] or [0], dtype=np.int32)[history.store]
    try:
        fast = _price_batch(kernel, history, rulebook, t, tier, rounding, maxc)
    except kernel.BatchError as exc:
        raise HistoryError(history.where(exc.basket), exc.problem) from None
    slow = _fallback(history, rulebook, sorted(history.fallback_requests), quote)
    return merge_totals(fast, slow), len(history.fallback_requests)


def _price_batch(kernel: Any, history: History, rulebook: Rulebook, t: dict[str, Any],
                 tier: I32, rounding: I32, maxc: I32) -> Totals:
    tpl_map = _lookup(history.templates, t["templates"])
    coupon_tpl = np.where(history.coupon_tpl >= 0,
                          tpl_map[np.maximum(history.coupon_tpl, 0)], -1)
    return kernel.price_batch(
        rulebook, history.at, _c32(tier), _c32(rounding), _c32(maxc), history.points_balance,
        history.stored_value, history.redeem_points, history.pay_stored_value,
        history.line_start, _c32(_lookup(history.skus, t["skus"])[history.line_sku]),
        _c32(_lookup(history.categories, t["categories"])[history.line_cat]),
        history.line_gross, history.line_qty, history.coupon_start, _c32(coupon_tpl),
        history.coupon_from, history.coupon_until, history.coupon_key, history.fallback)


def _lookup(vocab: list[str], index: Mapping[str, int]) -> I32:
    """Vocabulary position -> the rulebook's index (-1: not in the rulebook); never empty."""
    return np.array([index.get(code, -1) for code in vocab] or [-1], dtype=np.int32)


def _c32(values: Any) -> I32:
    return np.ascontiguousarray(values, dtype=np.int32)


def _fallback(history: History, rulebook: Rulebook, baskets: Iterable[int],
              quote: QuoteFn | None) -> Totals:
    quote = _quote if quote is None else quote
    totals = empty_totals()
    for n in baskets:
        try:
            add_receipt(totals, quote(rulebook, history.fallback_requests[n]))
        except InvalidInput as exc:
            raise HistoryError(history.where(n), str(exc)) from None
    return totals


def run_backtest(history: History, baseline: Rulebook, new: Rulebook) -> dict[str, Any]:
    """Price ``history`` under both rulebooks: ``{"baskets", "members", "batch",
    "fallback", "baseline", "new", "change"}`` (totals, and ``new - baseline``)."""
    before, fallback = price_history(history, baseline)
    after, _ = price_history(history, new)
    return {"baskets": history.baskets, "members": history.members,
            "batch": history.baskets - fallback,
            "fallback": fallback, "baseline": before, "new": after,
            "change": change(before, after)}
