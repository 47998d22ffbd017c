# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Cython pricing kernel: the stages of ``pricing.md`` on C arrays.

Terse on purpose. The readable statement of every stage is
``settlement/pricing.py``; this module must give identical receipts, and the
differential tests hold it to that. Shape:

* ``_Rules`` is a rulebook compiled once into C arrays and lookup dicts
  (cached in ``Rulebook.compiled["fast"]``).
* ``quote`` parses the request dict straight into a ``Basket`` (C arrays). Any
  rejection (or an input shape it does not handle, e.g. an ``int`` subclass)
  goes to the pure path, which raises the canonical ``RequestError`` (or
  prices the exotic-but-valid input); ``slow_path_count()`` counts those.
* The stages (``price_items``, ``coupons_check``, ``coupons_pick``,
  ``price_rest``) are ``nogil`` functions of a ``Basket``. ``quote`` runs them
  and builds the receipt; ``price_batch`` (the back-test, ``settlement.backtest``)
  fills a ``Basket`` per basket from NumPy columns, runs the same functions and
  only adds up totals. There is no second statement of the rules.
* Money is ``int64``; products that could overflow use ``__int128``.
"""

from cpython.dict cimport PyDict_Copy, PyDict_Size
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport abort, free, malloc
from libc.string cimport memset

from datetime import datetime, timedelta, timezone

from settlement import pricing as _pure
from settlement.request import (
    MAX_AMOUNT, MAX_CARD_SKUS, MAX_COUNT_CARDS, MAX_HELD_COUPONS, MAX_LINES,
    MAX_PRESENTED_COUPONS, MAX_QUANTITY, MAX_UNIT_PRICE,
)
from settlement.timeutil import FOREVER, NEVER_BEFORE, parse_instant

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object, object)
    PyObject* PyErr_Occurred()
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    bint PyLong_CheckExact(object)
    bint PyUnicode_CheckExact(object)
    bint PyList_CheckExact(object)
    bint PyDict_CheckExact(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    bint PyUnicode_IS_ASCII(object)
    void PyErr_Clear()
    const char* PyUnicode_AsUTF8AndSize_nocheck "PyUnicode_AsUTF8AndSize"(object, Py_ssize_t*)
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL

cdef extern from *:
    ctypedef long long i128 "__int128"

cdef inline PyObject* PyDict_GetItem(object d, object key) except? NULL:
    """Borrowed value or NULL when absent (no error-state juggling, unlike the C API's)."""
    cdef PyObject* p = PyDict_GetItemWithError(d, key)
    if p == NULL and PyErr_Occurred() != NULL:
        raise _Reject()
    return p


DEF MAX_DEPTH = 8
DEF POOL = 32

cdef int64_t I64_MIN = NEVER_BEFORE
cdef int64_t I64_MAX = FOREVER
cdef int64_t SAFE_W = 3037000499  # W*W < 2**63: int64 products in allocation

cdef object _EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
cdef Py_ssize_t _slow = 0

REASONS = ("", "UNKNOWN_COUPON", "NOT_YET_VALID", "EXPIRED", "OUTSIDE_HOURS",
           "TIER_TOO_LOW", "NO_ELIGIBLE_LINES", "THRESHOLD_NOT_MET", "NOT_COMBINABLE")
cdef enum:
    R_OK = 0
    R_UNKNOWN = 1
    R_NOT_YET = 2
    R_EXPIRED = 3
    R_HOURS = 4
    R_TIER = 5
    R_NO_LINES = 6
    R_THRESHOLD = 7
    R_NOT_COMB = 8

cdef enum:
    K_THRESHOLD = 0
    K_PERCENT = 1
    K_VOUCHER = 2


class _Reject(Exception):
    """Internal: the fast parser declines this request (the pure path decides)."""


def slow_path_count():
    """How many quotes this process sent to the pure path (invalid or exotic input)."""
    return _slow


# ---------------------------------------------------------------- arithmetic

cdef inline int64_t fdiv(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a / b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline int64_t rhu(int64_t x, int64_t bp) noexcept nogil:
    return <int64_t>(((<i128>x) * bp + 5000) / 10000)


cdef void alloc_lines(int64_t amount, const int* idx, int n, const int64_t* w,
                      int64_t total, int64_t* parts, int64_t* rem) noexcept nogil:
    """Largest-remainder split of ``amount`` over lines ``idx`` (ascending) weighted ``w``."""
    cdef int k, j, best
    cdef int64_t given = 0, left, r
    cdef i128 num
    if total <= 0 or amount <= 0:
        for k in range(n):
            parts[idx[k]] = 0
        return
    if total <= SAFE_W:
        for k in range(n):
            j = idx[k]
            r = amount * w[j]
            parts[j] = r / total
            rem[k] = r % total
            given += parts[j]
    else:
        for k in range(n):
            j = idx[k]
            num = (<i128>amount) * w[j]
            parts[j] = <int64_t>(num / total)
            rem[k] = <int64_t>(num % total)
            given += parts[j]
    left = amount - given
    if left <= 0:
        return
    if left == 1:  # common: one cent to the first largest remainder
        best = 0
        for k in range(1, n):
            if rem[k] > rem[best]:
                best = k
        parts[idx[best]] += 1
        return
    # The left-th largest remainder t; lines above t get a cent, then lines equal to t
    # in index order until the cents run out (ties to the lower index).
    r = kth_largest(rem, n, left)
    for k in range(n):
        if rem[k] > r:
            parts[idx[k]] += 1
            left -= 1
    for k in range(n):
        if left == 0:
            break
        if rem[k] == r:
            parts[idx[k]] += 1
            left -= 1


cdef int64_t kth_largest(const int64_t* a, int n, int k) noexcept nogil:
    """The k-th largest of ``a[0:n]`` (1 <= k <= n), by quickselect on a copy."""
    cdef int64_t buf[512]
    cdef int64_t* t = buf
    cdef int lo = 0, hi = n - 1, i, j, want = k - 1
    cdef int64_t pivot, x, found
    if n > 512:  # quotes have at most 500 lines; larger inputs come from allocate() only
        t = <int64_t*>malloc(sizeof(int64_t) * n)
        if t == NULL:
            abort()
    for i in range(n):
        t[i] = a[i]
    while lo < hi:
        pivot = t[(lo + hi) // 2]
        i = lo
        j = hi
        while i <= j:
            while t[i] > pivot:
                i += 1
            while t[j] < pivot:
                j -= 1
            if i <= j:
                x = t[i]; t[i] = t[j]; t[j] = x
                i += 1
                j -= 1
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            break
    found = t[want]
    if t != buf:
        free(t)
    return found


def allocate(amount, weights):
    """The allocation rule on Python ints (exposed for tests)."""
    cdef int n = len(weights), k
    cdef int64_t total = 0
    cdef int* idx = <int*>PyMem_Malloc(sizeof(int) * (n + 1))
    cdef int64_t* w = <int64_t*>PyMem_Malloc(sizeof(int64_t) * (n + 1))
    cdef int64_t* parts = <int64_t*>PyMem_Malloc(sizeof(int64_t) * (n + 1))
    cdef int64_t* rem = <int64_t*>PyMem_Malloc(sizeof(int64_t) * (n + 1))
    try:
        for k in range(n):
            idx[k] = k
            w[k] = weights[k]
            total += w[k]
        if not 0 <= amount <= total or (amount and not total):
            raise ValueError(f"amount {amount} outside 0..{total}")
        alloc_lines(amount, idx, n, w, total, parts, rem)
        return [parts[k] for k in range(n)]
    finally:
        PyMem_Free(idx); PyMem_Free(w); PyMem_Free(parts); PyMem_Free(rem)


# ---------------------------------------------------------------- instants

cdef inline int64_t days_from_civil(int64_t y, int64_t m, int64_t d) nogil:
    y -= (m <= 2)
    cdef int64_t era = y / 400  # y >= 0 here (years 1..9999)
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m - 3 if m > 2 else m + 9) + 2) / 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    return era * 146097 + doe - 719468


cdef inline int dig2(const char* s, int i) nogil:
    if s[i] < 48 or s[i] > 57 or s[i + 1] < 48 or s[i + 1] > 57:
        return -1
    return (s[i] - 48) * 10 + (s[i + 1] - 48)


cdef int64_t parse_iso(object value) except? -1:
    """``YYYY-MM-DDTHH:MM:SS(Z|±HH:MM)`` in C; any other shape via ``parse_instant``."""
    cdef Py_ssize_t n
    cdef const char* s
    cdef int y1, y2, mo, d, h, mi, se, oh = 0, om = 0, dim
    cdef int64_t off = 0, year
    if PyUnicode_CheckExact(value) and PyUnicode_IS_ASCII(value):
        n = PyUnicode_GET_LENGTH(value)
        if n == 20 or n == 25:
            s = PyUnicode_AsUTF8AndSize(value, &n)
            if (n == 20 or n == 25) and s[4] == 45 and s[7] == 45 and s[10] == 84 \
                    and s[13] == 58 and s[16] == 58:
                y1 = dig2(s, 0); y2 = dig2(s, 2); mo = dig2(s, 5); d = dig2(s, 8)
                h = dig2(s, 11); mi = dig2(s, 14); se = dig2(s, 17)
                if n == 20:
                    ok = s[19] == 90
                else:
                    oh = dig2(s, 20); om = dig2(s, 23)
                    ok = (s[19] == 43 or s[19] == 45) and s[22] == 58 and 0 <= oh <= 23 \
                        and 0 <= om <= 59
                    off = (<int64_t>oh * 60 + om) * 60_000_000
                    if s[19] == 45:
                        off = -off
                year = y1 * 100 + y2
                if ok and y1 >= 0 and y2 >= 0 and year >= 1 and 1 <= mo <= 12 and d >= 1 \
                        and 0 <= h <= 23 and 0 <= mi <= 59 and 0 <= se <= 59:
                    dim = 31
                    if mo == 4 or mo == 6 or mo == 9 or mo == 11:
                        dim = 30
                    elif mo == 2:
                        dim = 29 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) \
                            else 28
                    if d <= dim:
                        return ((days_from_civil(year, mo, d) * 86400
                                 + h * 3600 + mi * 60 + se) * 1_000_000) - off
    try:
        return parse_instant(value)
    except ValueError:
        raise _Reject() from None


def _iso_micros(value):
    """The C parser with its Python fallback (exposed for tests)."""
    return parse_iso(value)


# ---------------------------------------------------------------- compiled rulebook

cdef class _Rules:
    """A rulebook compiled for the kernel (built once per rulebook)."""
    cdef object rb, version, zone, offsets
    cdef dict tier_index, sku_index, cat_index, tpl_index, stores
    cdef tuple promo_source, tpl_code
    cdef int ntiers, npromos, ntpls, default_rounding, default_maxc, has_points
    cdef int64_t earn, rp, rc, max_redeem_bp
    # tiers
    cdef int64_t tier_rank[64]
    cdef int64_t tier_off[64]
    cdef int64_t tier_mult[64]
    # per-rule arrays (malloc'ed)
    cdef int64_t* p_off
    cdef int64_t* p_mult
    cdef int64_t* p_from
    cdef int64_t* p_until
    cdef uint8_t* p_members
    cdef int* p_wd  # weekday bit mask, 0xFF: any day
    cdef int* p_h0  # first span in spans[], -1: all day
    cdef int* p_hn
    cdef int* t_kind
    cdef int64_t* t_thr
    cdef int64_t* t_offc
    cdef int64_t* t_offbp
    cdef int64_t* t_max  # -1: no cap
    cdef uint8_t* t_stack
    cdef int64_t* t_rank
    cdef int* t_limit
    cdef int* t_wd
    cdef int* t_h0
    cdef int* t_hn
    cdef int* spans
    cdef int nspans
    # lookup tables (see _compile): SKUs, categories, their rule lists
    cdef int nskus, ncats, all_p0, all_pn, all_t0, all_tn
    cdef int* lists
    cdef int* sku_tab       # per SKU: promotions (start, n), templates (start, n), prices
    cdef int64_t* mprice    # (min_rank, unit_price_cents) pairs
    cdef int* cat_tab       # per category: promotions (start, n), templates (start, n)
    cdef uint8_t* cat_flags  # per category: discountable, earns_points
    cdef int64_t* cat_toff  # [category * ntiers + tier]: tier_off_bp override or -1

    def __dealloc__(self):  # pointers start NULL (the object is zeroed on allocation)
        PyMem_Free(self.p_off)
        PyMem_Free(self.p_mult)
        PyMem_Free(self.p_from)
        PyMem_Free(self.p_until)
        PyMem_Free(self.p_members)
        PyMem_Free(self.p_wd)
        PyMem_Free(self.p_h0)
        PyMem_Free(self.p_hn)
        PyMem_Free(self.t_kind)
        PyMem_Free(self.t_thr)
        PyMem_Free(self.t_offc)
        PyMem_Free(self.t_offbp)
        PyMem_Free(self.t_max)
        PyMem_Free(self.t_stack)
        PyMem_Free(self.t_rank)
        PyMem_Free(self.t_limit)
        PyMem_Free(self.t_wd)
        PyMem_Free(self.t_h0)
        PyMem_Free(self.t_hn)
        PyMem_Free(self.spans)
        PyMem_Free(self.lists)
        PyMem_Free(self.sku_tab)
        PyMem_Free(self.mprice)
        PyMem_Free(self.cat_tab)
        PyMem_Free(self.cat_flags)
        PyMem_Free(self.cat_toff)


cdef void* _m(Py_ssize_t n) except NULL:
    cdef void* p = PyMem_Malloc(n if n > 0 else 1)
    if p == NULL:
        raise MemoryError()
    return p


cdef void _window(_Rules r, object w, int* wd, int* h0, int* hn, int i) except *:
    wd[i] = 0xFF if w.weekdays is None else sum([1 << d for d in w.weekdays])
    if w.hours is None:
        h0[i] = -1
        hn[i] = 0
        return
    h0[i] = r.nspans
    hn[i] = len(w.hours)
    for a, b in w.hours:
        r.spans[2 * r.nspans] = a
        r.spans[2 * r.nspans + 1] = b
        r.nspans += 1


cdef void _index(int i, int slot, object rule, list every, dict by_sku, dict by_cat) except *:
    """File rule ``i`` under its SKUs and categories (``slot`` 0: promotions, 1: templates)."""
    if not rule.skus and not rule.categories:
        every.append(i)
    for key in rule.skus:
        by_sku.setdefault(key, ([], [], []))[slot].append(i)
    for key in rule.categories:
        by_cat.setdefault(key, ([], [], []))[slot].append(i)


def _compile(object rb):
    cdef _Rules r = _Rules()
    cdef int i, k
    r.rb = rb
    r.version = rb.version
    r.zone = rb.zone
    r.offsets = {}
    tiers = sorted(rb.tiers.values(), key=lambda t: t.rank)
    if len(tiers) > 64:
        raise ValueError("the fast kernel supports at most 64 tiers")
    r.ntiers = len(tiers)
    r.tier_index = {}
    for i, t in enumerate(tiers):
        r.tier_index[t.code] = i
        r.tier_rank[i] = t.rank
        r.tier_off[i] = t.off_bp
        r.tier_mult[i] = t.points_multiplier_bp
    r.stores = {code: (("none", "floor_jiao", "floor_yuan").index(s.rounding),
                       s.max_coupons_per_order) for code, s in rb.stores.items()}
    r.default_rounding = ("none", "floor_jiao", "floor_yuan").index(rb.store_defaults.rounding)
    r.default_maxc = rb.store_defaults.max_coupons_per_order
    r.has_points = rb.points is not None
    if rb.points is not None:
        r.earn = rb.points.earn_per_yuan
        r.rp = rb.points.redeem_points
        r.rc = rb.points.redeem_cents
        r.max_redeem_bp = rb.points.max_redeem_bp

    promos = list(rb.promotions)  # sorted by code: index order is the tie order
    tpls = list(rb.coupon_templates.values())
    r.npromos = len(promos)
    r.ntpls = len(tpls)
    nsp = sum([len(x.window.hours or ()) for x in promos + tpls])
    r.spans = <int*>_m(sizeof(int) * 2 * nsp)
    r.nspans = 0

    r.p_off = <int64_t*>_m(sizeof(int64_t) * r.npromos)
    r.p_mult = <int64_t*>_m(sizeof(int64_t) * r.npromos)
    r.p_from = <int64_t*>_m(sizeof(int64_t) * r.npromos)
    r.p_until = <int64_t*>_m(sizeof(int64_t) * r.npromos)
    r.p_members = <uint8_t*>_m(r.npromos)
    r.p_wd = <int*>_m(sizeof(int) * r.npromos)
    r.p_h0 = <int*>_m(sizeof(int) * r.npromos)
    r.p_hn = <int*>_m(sizeof(int) * r.npromos)
    by_sku = {}
    by_cat = {}
    promo_all = []
    for i, p in enumerate(promos):
        r.p_off[i] = -1 if p.off_bp is None else p.off_bp
        r.p_mult[i] = -1 if p.points_multiplier_bp is None else p.points_multiplier_bp
        r.p_from[i] = p.valid_from
        r.p_until[i] = p.valid_until
        r.p_members[i] = p.members_only
        _window(r, p.window, r.p_wd, r.p_h0, r.p_hn, i)
        _index(i, 0, p, promo_all, by_sku, by_cat)
    r.promo_source = tuple("promotion:" + p.code for p in promos)

    r.t_kind = <int*>_m(sizeof(int) * r.ntpls)
    r.t_thr = <int64_t*>_m(sizeof(int64_t) * r.ntpls)
    r.t_offc = <int64_t*>_m(sizeof(int64_t) * r.ntpls)
    r.t_offbp = <int64_t*>_m(sizeof(int64_t) * r.ntpls)
    r.t_max = <int64_t*>_m(sizeof(int64_t) * r.ntpls)
    r.t_stack = <uint8_t*>_m(r.ntpls)
    r.t_rank = <int64_t*>_m(sizeof(int64_t) * r.ntpls)
    r.t_limit = <int*>_m(sizeof(int) * r.ntpls)
    r.t_wd = <int*>_m(sizeof(int) * r.ntpls)
    r.t_h0 = <int*>_m(sizeof(int) * r.ntpls)
    r.t_hn = <int*>_m(sizeof(int) * r.ntpls)
    r.tpl_index = {}
    tpl_all = []
    for i, t in enumerate(tpls):
        r.tpl_index[t.code] = i
        r.t_kind[i] = ("threshold", "percent", "voucher").index(t.kind)
        r.t_thr[i] = t.threshold_cents
        r.t_offc[i] = t.off_cents
        r.t_offbp[i] = t.off_bp
        r.t_max[i] = -1 if t.max_off_cents is None else t.max_off_cents
        r.t_stack[i] = t.stackable
        r.t_rank[i] = t.min_rank
        r.t_limit[i] = t.per_order_limit
        _window(r, t.window, r.t_wd, r.t_h0, r.t_hn, i)
        _index(i, 1, t, tpl_all, by_sku, by_cat)
    r.tpl_code = tuple(t.code for t in tpls)

    # SKU and category codes -> table index; per index, slices of ``lists`` (promotions,
    # templates) and ``mprice`` (member prices), so pricing reads C arrays only.
    for sku in rb.member_prices:
        by_sku.setdefault(sku, ([], [], []))
    skus = sorted(by_sku)
    cat_codes = sorted(set(by_cat) | set(rb.categories))
    r.sku_index = {code: k for k, code in enumerate(skus)}
    r.cat_index = {code: k for k, code in enumerate(cat_codes)}
    r.nskus = len(skus)
    r.ncats = len(cat_codes)
    lists = []

    def put(seq):
        start = len(lists)
        lists.extend(seq)
        return start, len(lists) - start

    r.sku_tab = <int*>_m(sizeof(int) * 6 * r.nskus)
    r.cat_tab = <int*>_m(sizeof(int) * 4 * r.ncats)
    r.cat_flags = <uint8_t*>_m(2 * r.ncats)
    r.cat_toff = <int64_t*>_m(sizeof(int64_t) * r.ncats * r.ntiers)
    prices = [(mp.min_rank, mp.unit_price_cents) for sku in skus
              for mp in rb.member_prices.get(sku, ())]
    r.mprice = <int64_t*>_m(sizeof(int64_t) * 2 * len(prices))
    for k, (mr, mp) in enumerate(prices):
        r.mprice[2 * k] = mr
        r.mprice[2 * k + 1] = mp
    start = 0
    for k, sku in enumerate(skus):
        a, b, _ = by_sku[sku]
        r.sku_tab[6 * k], r.sku_tab[6 * k + 1] = put(a)
        r.sku_tab[6 * k + 2], r.sku_tab[6 * k + 3] = put(b)
        r.sku_tab[6 * k + 4] = start
        r.sku_tab[6 * k + 5] = len(rb.member_prices.get(sku, ()))
        start += r.sku_tab[6 * k + 5]
    for k, code in enumerate(cat_codes):
        a, b, _ = by_cat.get(code, ([], [], []))
        r.cat_tab[4 * k], r.cat_tab[4 * k + 1] = put(a)
        r.cat_tab[4 * k + 2], r.cat_tab[4 * k + 3] = put(b)
        cat = rb.categories.get(code)
        r.cat_flags[2 * k] = cat is None or cat.discountable
        r.cat_flags[2 * k + 1] = cat is None or cat.earns_points
        for i, t in enumerate(tiers):
            r.cat_toff[k * r.ntiers + i] = -1 if cat is None else cat.tier_off_bp.get(t.code, -1)
    r.all_p0, r.all_pn = put(promo_all)
    r.all_t0, r.all_tn = put(tpl_all)
    r.lists = <int*>_m(sizeof(int) * len(lists))
    for k, x in enumerate(lists):
        r.lists[k] = x
    return r


cdef inline bint admits(_Rules r, int wd_mask, int h0, int hn, int weekday,
                        int minute) noexcept nogil:
    cdef int k
    if not (wd_mask >> weekday) & 1:
        return False
    if h0 < 0:
        return True
    for k in range(h0, h0 + hn):
        if r.spans[2 * k] <= minute < r.spans[2 * k + 1]:
            return True
    return False


cdef _Rules rules_of(object rb):
    compiled = rb.compiled.get("fast")
    if compiled is None:
        compiled = _compile(rb)
        rb.compiled["fast"] = compiled
    return <_Rules>compiled


# ---------------------------------------------------------------- request parsing

cdef inline int64_t want_int(object v, int64_t lo, int64_t hi) except? -1:
    cdef int overflow = 0
    cdef long long x
    if not PyLong_CheckExact(v):
        raise _Reject()
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow or x < lo or x > hi:
        raise _Reject()
    return x


cdef inline object want_code(object v):
    cdef Py_ssize_t n
    if not PyUnicode_CheckExact(v):
        raise _Reject()
    n = PyUnicode_GET_LENGTH(v)
    if n < 1 or n > 128:
        raise _Reject()
    if not PyUnicode_IS_ASCII(v) and PyUnicode_AsUTF8AndSize_nocheck(v, &n) == NULL:
        PyErr_Clear()  # a lone surrogate: not valid Unicode text
        raise _Reject()
    return v


cdef inline object get(dict d, object key):
    """The value at ``key``; None when absent (null and absent are the same)."""
    cdef PyObject* p = PyDict_GetItem(d, key)
    if p == NULL:
        return None
    return <object>p


cdef inline dict want_dict(object v):
    if not PyDict_CheckExact(v):
        raise _Reject()
    return <dict>v


cdef inline list want_list(object v, Py_ssize_t lo, Py_ssize_t hi):
    if not PyList_CheckExact(v):
        raise _Reject()
    cdef Py_ssize_t n = PyList_GET_SIZE(v)
    if n < lo or n > hi:
        raise _Reject()
    return <list>v


cdef inline void closed(dict d, Py_ssize_t seen) except *:
    """Reject unknown fields: every key must have been one we looked up."""
    if PyDict_Size(d) != seen:
        raise _Reject()


cdef Py_ssize_t present(dict d, tuple keys):
    cdef Py_ssize_t n = 0
    for k in keys:
        if PyDict_GetItem(d, k) != NULL:
            n += 1
    return n


cdef dict _LINE = {
    "gross_cents": 0, "count_card_cents": 0, "item_discount_cents": 0,
    "item_discount_source": "", "coupon_discount_cents": 0, "points_offset_cents": 0,
    "rounding_cents": 0, "net_cents": 0,
}

_REQ_KEYS = ("at", "store", "member", "lines", "coupon_ids", "auto_coupons",
             "redeem_points", "pay_stored_value_cents")
_LINE_KEYS = ("sku", "category", "unit_price_cents", "quantity", "count_card_id")
_MEMBER_KEYS = ("id", "tier", "points_balance", "stored_value_cents", "coupons", "count_cards")
_COUPON_KEYS = ("id", "template", "valid_from", "valid_until")
_CARD_KEYS = ("id", "skus", "uses", "valid_until")


cdef int local_time(_Rules r, int64_t at, int* weekday, int* minute) except -1:
    """Local weekday and minute of ``at``; the UTC offset is cached per 15-minute bucket."""
    cdef int64_t bucket = fdiv(at, 900_000_000), off, local, days
    cached = r.offsets.get(bucket)
    if cached is None:
        try:
            a = (_EPOCH + timedelta(microseconds=bucket * 900_000_000)).astimezone(r.zone)
            b = (_EPOCH + timedelta(microseconds=bucket * 900_000_000 + 899_999_999)) \
                .astimezone(r.zone)
            x = (_EPOCH + timedelta(microseconds=at)).astimezone(r.zone)
        except (OverflowError, ValueError, OSError):
            raise _Reject() from None
        off_x = x.utcoffset()
        off = (off_x.days * 86400 + off_x.seconds) * 1_000_000 + off_x.microseconds
        if a.utcoffset() == b.utcoffset() == off_x:
            if len(r.offsets) > 4096:
                r.offsets.clear()
            r.offsets[bucket] = off
    else:
        off = cached
    local = at + off
    days = fdiv(local, 86_400_000_000)
    weekday[0] = <int>((days + 3) % 7 + 7) % 7 + 1
    minute[0] = <int>((local - days * 86_400_000_000) / 60_000_000)
    return 0


cdef inline int promo_best(_Rules r, int start, int n, const uint8_t* active, int64_t g,
                           int64_t* best, int j) noexcept nogil:
    """Best active item promotion of ``r.lists[start:start + n]`` (lowest index on a tie);
    ``j``: best so far."""
    cdef int x, k
    cdef int64_t a
    for x in range(start, start + n):
        k = r.lists[x]
        if not active[k] or r.p_off[k] < 0:
            continue
        a = rhu(g, r.p_off[k])
        if a > best[0] or (a == best[0] and j >= 0 and k < j and a > 0):
            best[0] = a
            j = k
    return j


# ---------------------------------------------------------------- the search

cdef struct Search:
    int n, k, L
    int64_t* cur        # line amounts, updated in place
    int* kind
    int64_t* thr
    int64_t* offc
    int64_t* offbp
    int64_t* maxoff
    uint8_t* stack
    int* tpl
    int* limit
    int64_t* expiry
    int* idrank
    int64_t* alone
    int* eoff            # eligible lines of candidate c: eidx[eoff[c] : eoff[c] + en[c]]
    int* en
    int* eidx
    int64_t* parts      # [depth * L + line]
    int64_t* rem
    int* tcount
    uint8_t samerun[POOL]   # same template as the previous candidate (a run)
    int appl[POOL]          # position in the true application order (kind, id)
    int64_t topsum[POOL + 1][MAX_DEPTH + 1]
    int64_t sufexp[POOL + 1][POOL]  # sorted expiries of candidates [start:]
    int64_t sufid[POOL + 1][POOL]   # sorted id ranks of candidates [start:]
    int chosen[MAX_DEPTH]
    int best[MAX_DEPTH]
    int64_t best_exp[MAX_DEPTH]     # the best subset's sorted expiries and id ranks
    int64_t best_ids[MAX_DEPTH]
    int best_n
    int64_t best_total


cdef inline int64_t coupon_take(Search* s, int c, int64_t w, bint ignore_thr) noexcept nogil:
    cdef int64_t a
    if s.kind[c] == K_THRESHOLD:
        if w < s.thr[c] and not ignore_thr:
            return 0
        return s.offc[c] if s.offc[c] < w else w
    if s.kind[c] == K_PERCENT:
        a = rhu(w, s.offbp[c])
        if s.maxoff[c] >= 0 and a > s.maxoff[c]:
            a = s.maxoff[c]
        return a
    return s.offc[c] if s.offc[c] < w else w


cdef int64_t apply_one(Search* s, int c, int depth) noexcept nogil:
    """Apply candidate ``c`` to ``cur``, parts kept at ``depth``; 0 (nothing changed) if it takes nothing."""
    cdef int k, j
    cdef int64_t w = 0, amount
    cdef int* idx = s.eidx + s.eoff[c]
    cdef int64_t* parts = s.parts + depth * s.L
    for k in range(s.en[c]):
        w += s.cur[idx[k]]
    amount = coupon_take(s, c, w, False)
    if amount <= 0:
        return 0
    alloc_lines(amount, idx, s.en[c], s.cur, w, parts, s.rem)
    for k in range(s.en[c]):
        j = idx[k]
        s.cur[j] -= parts[j]
    return amount


cdef inline void undo_one(Search* s, int c, int depth) noexcept nogil:
    cdef int k, j
    cdef int* idx = s.eidx + s.eoff[c]
    cdef int64_t* parts = s.parts + depth * s.L
    for k in range(s.en[c]):
        j = idx[k]
        s.cur[j] += parts[j]


cdef inline void sort_small(int64_t* a, int n) noexcept nogil:
    cdef int i, j
    cdef int64_t x
    for i in range(1, n):
        x = a[i]
        j = i - 1
        while j >= 0 and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


cdef bint better(Search* s, int depth, int64_t total) noexcept nogil:
    """The contract's order: larger total, fewer coupons, earlier expiries, smaller ids."""
    cdef int64_t a[MAX_DEPTH]
    cdef int64_t b[MAX_DEPTH]
    cdef int i
    if total != s.best_total:
        return total > s.best_total
    if depth != s.best_n:
        return depth < s.best_n
    for i in range(depth):
        a[i] = s.expiry[s.chosen[i]]
        b[i] = s.expiry[s.best[i]]
    sort_small(a, depth)
    sort_small(b, depth)
    for i in range(depth):
        if a[i] != b[i]:
            return a[i] < b[i]
    for i in range(depth):
        a[i] = s.idrank[s.chosen[i]]
        b[i] = s.idrank[s.best[i]]
    sort_small(a, depth)
    sort_small(b, depth)
    for i in range(depth):
        if a[i] != b[i]:
            return a[i] < b[i]
    return False


cdef void set_best(Search* s, int depth, int64_t total) noexcept nogil:
    cdef int i
    s.best_n = depth
    s.best_total = total
    for i in range(depth):
        s.best[i] = s.chosen[i]
        s.best_exp[i] = s.expiry[s.chosen[i]]
        s.best_ids[i] = s.idrank[s.chosen[i]]
    sort_small(s.best_exp, depth)
    sort_small(s.best_ids, depth)


cdef int cmp_merged(Search* s, int depth, int64_t* suffix, int need, int64_t* best,
                    bint ids) noexcept nogil:
    """Compare sorted(chosen values + suffix[:need]) with ``best`` (-1, 0, 1)."""
    cdef int64_t mine[MAX_DEPTH]
    cdef int a = 0, b = 0, i
    cdef int64_t v[MAX_DEPTH]
    for i in range(depth):
        v[i] = s.idrank[s.chosen[i]] if ids else s.expiry[s.chosen[i]]
    sort_small(v, depth)
    for i in range(depth + need):
        if b >= need or (a < depth and v[a] <= suffix[b]):
            mine[i] = v[a]
            a += 1
        else:
            mine[i] = suffix[b]
            b += 1
        if mine[i] != best[i]:
            return -1 if mine[i] < best[i] else 1
    return 0


cdef bint cannot_win_tie(Search* s, int start, int depth, int64_t total) noexcept nogil:
    """At best a tie on total: can no completion win on count, expiries or ids?"""
    cdef int need = s.best_n - depth, c
    if need < 1:
        return True
    if need > 1 and total + s.topsum[start][need - 1] >= s.best_total:
        return False
    if s.n - start < need:
        return True
    c = cmp_merged(s, depth, s.sufexp[start], need, s.best_exp, False)
    if c != 0:
        return c > 0
    return cmp_merged(s, depth, s.sufid[start], need, s.best_ids, True) >= 0


cdef void visit(Search* s, int start, int depth, int64_t total) noexcept nogil:
    cdef int j, slots
    cdef int64_t amount, reach
    if depth > 0 and better(s, depth, total):
        set_best(s, depth, total)
    slots = s.k - depth
    if slots <= 0 or (depth > 0 and not s.stack[s.chosen[0]]):
        return
    reach = total + s.topsum[start][slots]
    if reach < s.best_total or (reach == s.best_total and s.best_n > 0
                                and cannot_win_tie(s, start, depth, total)):
        return
    for j in range(start, s.n):
        if j > start and s.samerun[j]:
            continue  # take a run of one template only as a prefix
        if depth > 0 and not s.stack[j]:
            continue
        if s.tcount[s.tpl[j]] >= s.limit[j]:
            continue
        if total + s.alone[j] + s.topsum[j + 1][slots - 1] < s.best_total:
            continue
        amount = apply_one(s, j, depth)
        if amount == 0:
            continue  # every superset applies j at this same point: all invalid
        s.chosen[depth] = j
        s.tcount[s.tpl[j]] += 1
        visit(s, j + 1, depth + 1, total + amount)
        s.tcount[s.tpl[j]] -= 1
        undo_one(s, j, depth)


# ---------------------------------------------------------------- one basket on C arrays
#
# Every stage of the contract runs on a ``Basket``: per-line and per-candidate C arrays
# plus the request head. ``quote`` fills one from a request dict and turns the result
# into a receipt; ``price_batch`` fills one per basket from NumPy columns and adds the
# result into its totals. Both run these same functions: there is one statement of the
# rules in this module.

cdef struct Basket:
    # inputs
    int L, nc, tier, rounding, maxc, weekday, minute
    bint has_member
    int64_t at, rank, pb, svb, redeem, paysv
    int* sku            # [L] the rulebook's SKU table index, -1: none
    int* cat            # [L] category table index, -1: none
    int64_t* gross      # [L] unit price * quantity
    int64_t* qty        # [L]
    uint8_t* card       # [L] paid by a count card (stage 0)
    int* ctpl           # [nc] coupon candidates in candidate order: template, -1 unknown
    int64_t* cfrom      # [nc]
    int64_t* cuntil     # [nc]
    int64_t* ckey       # [nc] the id's place in string order (read for the pool only)
    # outputs
    int64_t* cur        # [L] net
    int64_t* cardc
    int64_t* item
    int64_t* coup
    int64_t* offs
    int64_t* rnd
    int* src            # [L] item discount source: -1 none, 0 member_price, 1 tier, 2 + k promotion k
    int* reason         # [nc] R_OK: applied, else why not
    int napplied
    int applied[MAX_DEPTH]          # candidates, in application order
    int64_t applied_amt[MAX_DEPTH]
    int64_t payable, stored, redeemed, redeemable, earned, pmult
    # workspace
    uint8_t* disc
    uint8_t* earns
    uint8_t* active     # [npromos]
    int64_t* rem
    int* idx
    int npool
    int* pool           # [POOL] valid candidates: candidate order, then application order
    int* loc            # [ntpls] local slot of a template in play, -1
    int* mat            # [slots * L] eligible lines per slot
    int* cnt            # [slots]
    int64_t* tw         # [slots] eligible amount per slot
    Search* s           # the search, its arrays sized for the workspace's L and maxc


cdef inline char* _carve(char* base, Py_ssize_t* off, Py_ssize_t nbytes) noexcept nogil:
    cdef char* p = base + off[0]
    off[0] += (nbytes + 15) & ~(<Py_ssize_t>15)
    return p


cdef inline void _carve_all(char* base, Py_ssize_t* off, void*** fields, int n,
                            Py_ssize_t nbytes) noexcept nogil:
    """``nbytes`` for each of the ``n`` pointers at ``fields``."""
    cdef int k
    for k in range(n):
        fields[k][0] = _carve(base, off, nbytes)


cdef Py_ssize_t layout(_Rules r, Basket* b, char* base, int L, int nc, int maxc,
                       bint coupons) noexcept nogil:
    """Point ``b``'s arrays into ``base`` for up to ``L`` lines and ``nc`` candidates;
    returns the bytes needed (``base`` NULL: only measure). ``coupons``: room for stage 2."""
    cdef Py_ssize_t off = 0, i8 = sizeof(int64_t), i4 = sizeof(int), slots
    cdef void** f[9]
    cdef Search scratch  # measuring: the search's pointers go nowhere
    cdef Search* s
    f[:9] = [<void**>&b.gross, <void**>&b.qty, <void**>&b.cur, <void**>&b.cardc,
             <void**>&b.item, <void**>&b.coup, <void**>&b.offs, <void**>&b.rnd, <void**>&b.rem]
    _carve_all(base, &off, f, 9, i8 * L)
    f[:4] = [<void**>&b.sku, <void**>&b.cat, <void**>&b.src, <void**>&b.idx]
    _carve_all(base, &off, f, 4, i4 * L)
    f[:3] = [<void**>&b.card, <void**>&b.disc, <void**>&b.earns]
    _carve_all(base, &off, f, 3, L)
    b.active = <uint8_t*>_carve(base, &off, r.npromos)
    f[:3] = [<void**>&b.cfrom, <void**>&b.cuntil, <void**>&b.ckey]
    _carve_all(base, &off, f, 3, i8 * nc)
    f[:2] = [<void**>&b.ctpl, <void**>&b.reason]
    _carve_all(base, &off, f, 2, i4 * nc)
    if not coupons:
        return off
    slots = nc if nc < r.ntpls else r.ntpls
    b.pool = <int*>_carve(base, &off, i4 * POOL)
    b.loc = <int*>_carve(base, &off, i4 * r.ntpls)
    b.mat = <int*>_carve(base, &off, i4 * slots * L)
    b.cnt = <int*>_carve(base, &off, i4 * slots)
    b.tw = <int64_t*>_carve(base, &off, i8 * slots)
    b.s = <Search*>_carve(base, &off, sizeof(Search))
    s = &scratch if base == NULL else b.s
    f[:6] = [<void**>&s.expiry, <void**>&s.alone, <void**>&s.thr, <void**>&s.offc,
             <void**>&s.offbp, <void**>&s.maxoff]
    _carve_all(base, &off, f, 6, i8 * POOL)
    f[:6] = [<void**>&s.kind, <void**>&s.tpl, <void**>&s.limit, <void**>&s.idrank,
             <void**>&s.eoff, <void**>&s.en]
    _carve_all(base, &off, f, 6, i4 * POOL)
    s.rem = <int64_t*>_carve(base, &off, i8 * L)
    s.parts = <int64_t*>_carve(base, &off, i8 * (maxc + 1) * L)  # [depth * L + line]
    s.stack = <uint8_t*>_carve(base, &off, POOL)
    s.tcount = <int*>_carve(base, &off, i4 * (r.ntpls + 1))
    s.eidx = <int*>_carve(base, &off, i4 * POOL * L)
    return off


cdef void price_items(_Rules r, Basket* b) noexcept nogil:
    """Stage 0 (count cards) and stage 1 (item discount); sets ``pmult`` for stage 6."""
    cdef int i, j, k, x, st, sk, ct, L = b.L
    cdef int64_t g, q, a, best, off, pmult = -1
    for k in range(r.npromos):
        b.active[k] = (not r.p_members[k] or b.has_member) and r.p_from[k] <= b.at < r.p_until[k] \
            and admits(r, r.p_wd[k], r.p_h0[k], r.p_hn[k], b.weekday, b.minute)
        if b.active[k] and r.p_mult[k] >= 0 and r.p_mult[k] > pmult:
            pmult = r.p_mult[k]
    b.pmult = pmult
    for i in range(L):
        g = b.gross[i]
        q = b.qty[i]
        sk = b.sku[i]
        ct = b.cat[i]
        b.cardc[i] = b.item[i] = b.coup[i] = b.offs[i] = b.rnd[i] = 0
        b.src[i] = -1
        b.earns[i] = ct < 0 or r.cat_flags[2 * ct + 1]
        if b.card[i]:
            b.cardc[i] = g
            b.cur[i] = 0
            b.disc[i] = 0
            continue
        b.cur[i] = g
        b.disc[i] = ct < 0 or r.cat_flags[2 * ct]
        if not b.disc[i]:
            continue
        best = 0
        if b.tier >= 0:
            if sk >= 0 and r.sku_tab[6 * sk + 5]:
                a = -1
                st = r.sku_tab[6 * sk + 4]
                for x in range(st, st + r.sku_tab[6 * sk + 5]):
                    if r.mprice[2 * x] <= b.rank and (a < 0 or r.mprice[2 * x + 1] < a):
                        a = r.mprice[2 * x + 1]
                if a >= 0:
                    a = g - a * q
                    if a > best:
                        best = a
                        b.src[i] = 0
            off = r.tier_off[b.tier]
            if ct >= 0 and r.cat_toff[ct * r.ntiers + b.tier] >= 0:
                off = r.cat_toff[ct * r.ntiers + b.tier]
            a = rhu(g, off)
            if a > best:
                best = a
                b.src[i] = 1
        j = promo_best(r, r.all_p0, r.all_pn, b.active, g, &best, -1)
        if sk >= 0:
            j = promo_best(r, r.sku_tab[6 * sk], r.sku_tab[6 * sk + 1], b.active, g, &best, j)
        if ct >= 0:
            j = promo_best(r, r.cat_tab[4 * ct], r.cat_tab[4 * ct + 1], b.active, g, &best, j)
        if j >= 0:
            b.src[i] = 2 + j
        b.item[i] = best
        b.cur[i] = g - best


cdef void coupons_check(_Rules r, Basket* b) noexcept nogil:
    """Stage 2, first half: every candidate checked alone, eligible lines per template, and
    the pool (the first POOL valid candidates). The pool's ``ckey`` must be set before
    ``coupons_pick``."""
    cdef int i, t, c, k, x, st, n, nt = 0, L = b.L
    cdef int64_t w
    cdef Search one  # stand-alone takes read the template's own fields
    cdef Search* s = &one
    b.npool = 0
    if b.nc == 0:
        return
    if not b.has_member:
        for i in range(b.nc):
            b.reason[i] = R_UNKNOWN
        return
    for t in range(r.ntpls):
        b.loc[t] = -1
    for i in range(b.nc):
        t = b.ctpl[i]
        if t < 0:
            b.reason[i] = R_UNKNOWN
        elif b.at < b.cfrom[i]:
            b.reason[i] = R_NOT_YET
        elif b.at >= b.cuntil[i]:
            b.reason[i] = R_EXPIRED
        elif not admits(r, r.t_wd[t], r.t_h0[t], r.t_hn[t], b.weekday, b.minute):
            b.reason[i] = R_HOURS
        elif r.t_rank[t] > b.rank:
            b.reason[i] = R_TIER
        else:
            b.reason[i] = R_OK
            if b.loc[t] < 0:
                b.loc[t] = nt
                nt += 1
    if nt == 0:
        return
    # eligibility: discountable lines with an amount, matching the template
    memset(b.cnt, 0, sizeof(int) * nt)
    for i in range(L):
        if not b.disc[i] or b.cur[i] <= 0:
            continue
        for x in range(r.all_t0, r.all_t0 + r.all_tn):
            c = b.loc[r.lists[x]]
            if c >= 0:
                b.mat[c * L + b.cnt[c]] = i
                b.cnt[c] += 1
        for k in range(2):
            if k == 0:
                if b.sku[i] < 0:
                    continue
                st = r.sku_tab[6 * b.sku[i] + 2]
                n = r.sku_tab[6 * b.sku[i] + 3]
            else:
                if b.cat[i] < 0:
                    continue
                st = r.cat_tab[4 * b.cat[i] + 2]
                n = r.cat_tab[4 * b.cat[i] + 3]
            for x in range(st, st + n):
                c = b.loc[r.lists[x]]
                # a template naming both the sku and the category counts the line once
                if c < 0 or (b.cnt[c] and b.mat[c * L + b.cnt[c] - 1] == i):
                    continue
                b.mat[c * L + b.cnt[c]] = i
                b.cnt[c] += 1
    for c in range(nt):
        w = 0
        for k in range(b.cnt[c]):
            w += b.cur[b.mat[c * L + k]]
        b.tw[c] = w
    # stand-alone checks and the pool
    for i in range(b.nc):
        if b.reason[i] != R_OK:
            continue
        t = b.ctpl[i]
        w = b.tw[b.loc[t]]
        s.kind = r.t_kind + t
        s.thr = r.t_thr + t
        s.offc = r.t_offc + t
        s.offbp = r.t_offbp + t
        s.maxoff = r.t_max + t
        if w == 0 or coupon_take(s, 0, w, True) == 0:
            b.reason[i] = R_NO_LINES
        elif r.t_kind[t] == K_THRESHOLD and w < r.t_thr[t]:
            b.reason[i] = R_THRESHOLD
        elif b.npool < POOL:
            b.pool[b.npool] = i
            b.npool += 1
        else:
            b.reason[i] = R_NOT_COMB


cdef inline bint sorts_before(int64_t a1, int64_t a2, int64_t b1, int64_t b2) noexcept nogil:
    return a1 < b1 or (a1 == b1 and a2 < b2)


cdef inline void sorted_insert(const int64_t* suffix, int n, int64_t x,
                               int64_t* out) noexcept nogil:
    """``out[:n + 1] = sorted(suffix[:n] + [x])`` for a sorted ``suffix``."""
    cdef int q, a = 0
    for q in range(n):
        if a == 0 and suffix[q] > x:
            out[q] = x
            a = 1
        out[q + a] = suffix[q]
    if a == 0:
        out[n] = x


cdef void coupons_pick(_Rules r, Basket* b) noexcept nogil:
    """Stage 2, second half: the best subset of the pool, applied in application order."""
    cdef int npool = b.npool, L = b.L, maxc = b.maxc, i, j, k, q, t, c, depth, x, y
    cdef int ap[POOL]
    cdef int64_t a
    cdef Search* s = b.s
    cdef int* pool = b.pool
    b.napplied = 0
    if npool == 0:
        return
    # application order: kind, then id
    for j in range(1, npool):
        x = pool[j]
        k = j - 1
        while k >= 0 and sorts_before(r.t_kind[b.ctpl[x]], b.ckey[x],
                                      r.t_kind[b.ctpl[pool[k]]], b.ckey[pool[k]]):
            pool[k + 1] = pool[k]
            k -= 1
        pool[k + 1] = x
    # runs of one template: the same operation, re-sorted by (expiry, id); see visit()
    for j in range(npool):
        ap[j] = j
    k = 0
    while k < npool:
        q = k + 1
        while q < npool and b.ctpl[pool[q]] == b.ctpl[pool[k]]:
            q += 1
        for j in range(k + 1, q):
            x = pool[j]
            y = ap[j]
            i = j - 1
            while i >= k and sorts_before(b.cuntil[x], b.ckey[x],
                                          b.cuntil[pool[i]], b.ckey[pool[i]]):
                pool[i + 1] = pool[i]
                ap[i + 1] = ap[i]
                i -= 1
            pool[i + 1] = x
            ap[i + 1] = y
        k = q
    s.n = npool
    s.k = maxc
    s.L = L
    s.cur = b.cur
    memset(s.tcount, 0, sizeof(int) * (r.ntpls + 1))
    for j in range(npool):
        i = pool[j]
        t = b.ctpl[i]
        c = b.loc[t]
        s.kind[j] = r.t_kind[t]
        s.thr[j] = r.t_thr[t]
        s.offc[j] = r.t_offc[t]
        s.offbp[j] = r.t_offbp[t]
        s.maxoff[j] = r.t_max[t]
        s.stack[j] = r.t_stack[t]
        s.tpl[j] = t
        s.limit[j] = r.t_limit[t]
        s.expiry[j] = b.cuntil[i]
        s.idrank[j] = <int>b.ckey[i]
        s.appl[j] = ap[j]
        s.samerun[j] = j > 0 and b.ctpl[pool[j - 1]] == t
        s.eoff[j] = j * L
        s.en[j] = b.cnt[c]
        for k in range(b.cnt[c]):
            s.eidx[j * L + k] = b.mat[c * L + k]
        s.alone[j] = coupon_take(s, j, b.tw[c], False)
    # topsum[j][q]: the q largest stand-alone takes among pool[j:]
    for q in range(MAX_DEPTH + 1):
        s.topsum[npool][q] = 0
    for j in range(npool - 1, -1, -1):
        # sorted suffix expiries and id ranks: suffix j = insert(j, suffix j + 1)
        sorted_insert(s.sufexp[j + 1], npool - 1 - j, s.expiry[j], s.sufexp[j])
        sorted_insert(s.sufid[j + 1], npool - 1 - j, s.idrank[j], s.sufid[j])
        for q in range(MAX_DEPTH + 1):
            a = s.topsum[j + 1][q]
            if q > 0 and s.topsum[j + 1][q - 1] + s.alone[j] > a:
                a = s.topsum[j + 1][q - 1] + s.alone[j]
            s.topsum[j][q] = a
    s.best_n = 0
    s.best_total = 0
    if maxc > 0:
        # Seed the incumbent with the best single coupon (a valid subset: every pool
        # member takes alone), so the bound prunes from the first branch on.
        for j in range(npool):
            s.chosen[0] = j
            if better(s, 1, s.alone[j]):
                set_best(s, 1, s.alone[j])
        visit(s, 0, 0, 0)
        # apply in the true application order (runs were re-sorted for the search)
        for depth in range(1, s.best_n):
            j = s.best[depth]
            q = depth - 1
            while q >= 0 and s.appl[s.best[q]] > s.appl[j]:
                s.best[q + 1] = s.best[q]
                q -= 1
            s.best[q + 1] = j
    # the pool's losers are NOT_COMBINABLE; apply the winner for real
    for j in range(npool):
        b.reason[pool[j]] = R_NOT_COMB
    for depth in range(s.best_n):
        j = s.best[depth]
        i = pool[j]
        a = apply_one(s, j, 0)
        for k in range(s.en[j]):
            b.coup[s.eidx[j * L + k]] += s.parts[s.eidx[j * L + k]]
        b.reason[i] = R_OK
        b.applied[depth] = i
        b.applied_amt[depth] = a
    b.napplied = s.best_n


cdef void price_rest(_Rules r, Basket* b) noexcept nogil:
    """Stages 3 (points offset) to 6 (points earned)."""
    cdef int i, j, k, L = b.L
    cdef int64_t base, cap, possible, blocks, total, dropped, stored, mult
    # -- stage 3: points offset
    b.redeemed = b.redeemable = 0
    if b.has_member and r.has_points:
        base = 0
        k = 0
        for i in range(L):
            if b.disc[i]:
                base += b.cur[i]
                if b.cur[i] > 0:
                    b.idx[k] = i
                    k += 1
        cap = <int64_t>((<i128>base) * r.max_redeem_bp / 10000)
        possible = b.pb / r.rp
        if cap / r.rc < possible:
            possible = cap / r.rc
        blocks = b.redeem / r.rp
        if possible < blocks:
            blocks = possible
        b.redeemable = possible * r.rp
        b.redeemed = blocks * r.rp
        if blocks > 0:
            alloc_lines(blocks * r.rc, b.idx, k, b.cur, base, b.offs, b.rem)
            for j in range(k):
                b.cur[b.idx[j]] -= b.offs[b.idx[j]]
    # -- stage 4: rounding
    total = 0
    k = 0
    for i in range(L):
        total += b.cur[i]
        if b.cur[i] > 0:
            b.idx[k] = i
            k += 1
    dropped = 0 if b.rounding == 0 else (total % 10 if b.rounding == 1 else total % 100)
    if dropped > 0:
        alloc_lines(dropped, b.idx, k, b.cur, total, b.rnd, b.rem)
        for j in range(k):
            b.cur[b.idx[j]] -= b.rnd[b.idx[j]]
    # -- stage 5: tender
    b.payable = total - dropped
    stored = 0
    if b.has_member:
        stored = b.paysv
        if b.svb < stored:
            stored = b.svb
        if b.payable < stored:
            stored = b.payable
    b.stored = stored
    # -- stage 6: points earned
    b.earned = 0
    if b.has_member and r.has_points:
        base = 0
        for i in range(L):
            if b.earns[i]:
                base += b.cur[i]
        mult = r.tier_mult[b.tier] * (b.pmult if b.pmult >= 0 else 10000) / 10000
        b.earned = <int64_t>((<i128>base) * r.earn * mult / 1000000)


cdef void price_basket(_Rules r, Basket* b) noexcept nogil:
    """Every stage, for a basket whose candidates' ``ckey`` are all set."""
    price_items(r, b)
    coupons_check(r, b)
    coupons_pick(r, b)
    price_rest(r, b)


# ---------------------------------------------------------------- quote

def prepare(rulebook):
    """Compile ``rulebook`` for the kernel now (otherwise the first quote does it)."""
    rules_of(rulebook)


def quote(rulebook, request):
    """Price ``request`` under ``rulebook``: same contract and results as ``settlement.pricing.quote``."""
    global _slow
    cdef _Rules r = rules_of(rulebook)
    try:
        return _quote(r, request)
    except _Reject:
        _slow += 1
        return _pure.quote(rulebook, request)


cdef object _quote(_Rules r, object request):
    cdef dict req = want_dict(request)
    cdef Py_ssize_t seen = present(req, _REQ_KEYS)
    closed(req, seen)
    at_obj = get(req, "at")
    if at_obj is None:
        raise _Reject()
    cdef int64_t at = parse_iso(at_obj)
    store = want_code(get(req, "store"))
    lines_obj = get(req, "lines")
    if lines_obj is None:
        raise _Reject()
    cdef list lines = want_list(lines_obj, 1, MAX_LINES)
    return _price(r, req, at, store, lines, <int>PyList_GET_SIZE(lines))


cdef object _price(_Rules r, dict req, int64_t at, object store, list lines, int L):
    """Parse the rest of ``req`` into a ``Basket``, run the stages, build the receipt."""
    cdef Basket b
    cdef int i, j, k, tier = -1, weekday = 0, minute = 0, nc = 0
    cdef int64_t rank = -1, pb = 0, svb = 0, redeem = 0, paysv = 0, q, n_used
    cdef bint has_member, auto
    cdef dict line, d, m = None
    cdef PyObject *p, *p2, *p3, *p4, *p5
    cdef list sku_of = [None] * L
    cdef list card_of = [None] * L

    # -- request head
    member_obj = get(req, "member")
    has_member = member_obj is not None
    coupon_ids = get(req, "coupon_ids")
    cdef list presented = None
    if coupon_ids is not None:
        presented = want_list(coupon_ids, 0, MAX_PRESENTED_COUPONS)
        for x in presented:
            want_code(x)
        if len(set(presented)) != len(presented):
            raise _Reject()
    auto_obj = get(req, "auto_coupons")
    auto = False
    if auto_obj is not None:
        if auto_obj is True:
            auto = True
        elif auto_obj is not False:
            raise _Reject()
    if auto and presented:
        raise _Reject()
    if get(req, "redeem_points") is not None:
        redeem = want_int(get(req, "redeem_points"), 0, MAX_AMOUNT)
    if get(req, "pay_stored_value_cents") is not None:
        paysv = want_int(get(req, "pay_stored_value_cents"), 0, MAX_AMOUNT)

    # -- member
    cdef list held_ids = [], held_tpl = []
    cdef dict held_index = {}, card_index = {}
    cdef list held_from = [], held_until = []
    if has_member:
        m = want_dict(member_obj)
        closed(m, present(m, _MEMBER_KEYS))
        want_code(get(m, "id"))
        tier_obj = want_code(get(m, "tier"))
        if get(m, "points_balance") is not None:
            pb = want_int(get(m, "points_balance"), 0, MAX_AMOUNT)
        if get(m, "stored_value_cents") is not None:
            svb = want_int(get(m, "stored_value_cents"), 0, MAX_AMOUNT)
        if get(m, "coupons") is not None:
            for c in want_list(get(m, "coupons"), 0, MAX_HELD_COUPONS):
                cd = want_dict(c)
                p = PyDict_GetItem(cd, "id")
                p2 = PyDict_GetItem(cd, "template")
                p3 = PyDict_GetItem(cd, "valid_from")
                p4 = PyDict_GetItem(cd, "valid_until")
                if p == NULL or p2 == NULL or \
                        PyDict_Size(cd) != 2 + (p3 != NULL) + (p4 != NULL):
                    raise _Reject()
                cid = want_code(<object>p)
                held_tpl.append(want_code(<object>p2))
                held_from.append(I64_MIN if p3 == NULL or <object>p3 is None
                                 else parse_iso(<object>p3))
                held_until.append(I64_MAX if p4 == NULL or <object>p4 is None
                                  else parse_iso(<object>p4))
                if PyDict_GetItem(held_index, cid) != NULL:
                    raise _Reject()
                held_index[cid] = len(held_ids)
                held_ids.append(cid)
        if get(m, "count_cards") is not None:
            for c in want_list(get(m, "count_cards"), 0, MAX_COUNT_CARDS):
                cd = want_dict(c)
                closed(cd, present(cd, _CARD_KEYS))
                kid = want_code(get(cd, "id"))
                skus = want_list(get(cd, "skus"), 0, MAX_CARD_SKUS)
                for x in skus:
                    want_code(x)
                uses = want_int(get(cd, "uses"), 0, MAX_AMOUNT)
                v = get(cd, "valid_until")
                if kid in card_index:
                    raise _Reject()
                card_index[kid] = [frozenset(skus), uses, I64_MAX if v is None else parse_iso(v)]
        p = PyDict_GetItem(r.tier_index, tier_obj)
        if p == NULL:
            raise _Reject()
        tier = <object>p
        rank = r.tier_rank[tier]

    local_time(r, at, &weekday, &minute)

    # -- coupon candidates, in candidate order (presented, or by expiry then id)
    cdef list cand_ids = None
    cdef list cand_h = None
    if has_member and auto:
        cand_h = [h for _, _, h in sorted(zip(held_until, held_ids, range(len(held_ids))))]
        cand_ids = [held_ids[h] for h in cand_h]
    elif presented:
        cand_ids = presented
    if cand_ids is not None:
        nc = len(cand_ids)
    st = r.stores.get(store)
    rounding, maxc = (r.default_rounding, r.default_maxc) if st is None else st

    cdef Py_ssize_t size = layout(r, &b, NULL, L, nc, maxc, has_member and nc > 0)
    cdef char* mem = <char*>PyMem_Malloc(size)
    if mem == NULL:
        raise MemoryError()
    layout(r, &b, mem, L, nc, maxc, has_member and nc > 0)
    try:
        b.L = L
        b.nc = nc
        b.at = at
        b.weekday = weekday
        b.minute = minute
        b.has_member = has_member
        b.tier = tier
        b.rank = rank
        b.pb = pb
        b.svb = svb
        b.redeem = redeem
        b.paysv = paysv
        b.rounding = rounding
        b.maxc = maxc
        for i in range(L):
            line = want_dict(<object>PyList_GET_ITEM(lines, i))
            p = PyDict_GetItem(line, "sku")
            p2 = PyDict_GetItem(line, "category")
            p3 = PyDict_GetItem(line, "unit_price_cents")
            p4 = PyDict_GetItem(line, "quantity")
            if p == NULL or p2 == NULL or p3 == NULL or p4 == NULL:
                raise _Reject()
            p5 = NULL  # the optional key is looked up only when the line has a fifth key
            if PyDict_Size(line) != 4:
                p5 = PyDict_GetItem(line, "count_card_id")
                if p5 == NULL or PyDict_Size(line) != 5:
                    raise _Reject()
            sku = want_code(<object>p)
            cat = want_code(<object>p2)
            q = want_int(<object>p4, 1, MAX_QUANTITY)
            b.gross[i] = want_int(<object>p3, 0, MAX_UNIT_PRICE) * q
            b.qty[i] = q
            sku_of[i] = sku
            p = PyDict_GetItem(r.sku_index, sku)
            b.sku[i] = -1 if p == NULL else <int>(<object>p)
            p = PyDict_GetItem(r.cat_index, cat)
            b.cat[i] = -1 if p == NULL else <int>(<object>p)
            b.card[i] = p5 != NULL and <object>p5 is not None
            if b.card[i]:
                card_of[i] = want_code(<object>p5)

        # -- count card checks (same order of checks as the pure parser)
        uses_by_card = {}
        for i in range(L):
            kid = card_of[i]
            if kid is None:
                continue
            info = card_index.get(kid)
            if info is None or at >= <int64_t>info[2] or sku_of[i] not in info[0]:
                raise _Reject()
            n_used = uses_by_card.get(kid, 0) + b.qty[i]
            if n_used > info[1]:
                raise _Reject()
            uses_by_card[kid] = n_used

        if has_member:
            for i in range(nc):
                h = held_index.get(cand_ids[i]) if cand_h is None else cand_h[i]
                b.ctpl[i] = -1
                if h is not None:
                    p = PyDict_GetItem(r.tpl_index, held_tpl[h])
                    if p != NULL:
                        b.ctpl[i] = <object>p
                        b.cfrom[i] = held_from[h]
                        b.cuntil[i] = held_until[h]

        price_items(r, &b)
        coupons_check(r, &b)
        if b.npool:  # the pool's ids in string order
            ranked = sorted([(cand_ids[b.pool[j]], b.pool[j]) for j in range(b.npool)])
            for k in range(b.npool):
                b.ckey[<int>ranked[k][1]] = k
        coupons_pick(r, &b)
        price_rest(r, &b)
        return _receipt(r, &b, cand_ids, uses_by_card)
    finally:
        PyMem_Free(mem)


cdef dict _receipt(_Rules r, Basket* b, list cand_ids, dict uses_by_card):
    cdef int i
    cdef dict d
    cdef list out_lines = []
    cdef int64_t s_gross = 0, s_card = 0, s_item = 0, s_coup = 0, s_offs = 0, s_rnd = 0
    for i in range(b.L):
        s_gross += b.gross[i]; s_card += b.cardc[i]; s_item += b.item[i]
        s_coup += b.coup[i]; s_offs += b.offs[i]; s_rnd += b.rnd[i]
        d = PyDict_Copy(_LINE)  # same key order; replacing values beats inserting keys
        d["gross_cents"] = b.gross[i]
        if b.cardc[i]:
            d["count_card_cents"] = b.cardc[i]
        if b.item[i]:
            d["item_discount_cents"] = b.item[i]
            d["item_discount_source"] = _source(r, b.src[i])
        if b.coup[i]:
            d["coupon_discount_cents"] = b.coup[i]
        if b.offs[i]:
            d["points_offset_cents"] = b.offs[i]
        if b.rnd[i]:
            d["rounding_cents"] = b.rnd[i]
        d["net_cents"] = b.cur[i]
        out_lines.append(d)
    applied = [{"id": cand_ids[b.applied[i]], "template": r.tpl_code[b.ctpl[b.applied[i]]],
                "discount_cents": b.applied_amt[i]} for i in range(b.napplied)]
    rejected = [{"id": cand_ids[i], "reason": REASONS[b.reason[i]]}
                for i in range(b.nc) if b.reason[i] != R_OK]
    return {
        "lines": out_lines,
        "gross_cents": s_gross,
        "count_card_cents": s_card,
        "item_discount_cents": s_item,
        "coupon_discount_cents": s_coup,
        "points_offset_cents": s_offs,
        "rounding_cents": s_rnd,
        "payable_cents": b.payable,
        "stored_value_cents": b.stored,
        "due_cents": b.payable - b.stored,
        "points_redeemed": b.redeemed,
        "points_redeemable_max": b.redeemable,
        "points_earned": b.earned,
        "applied_coupons": applied,
        "rejected_coupons": rejected,
        "count_cards_used": [{"id": kid, "uses": uses_by_card[kid]}
                             for kid in sorted(uses_by_card)],
        "rulebook_version": r.version,
    }


cdef inline object _source(_Rules r, int src):
    if src == 0:
        return "member_price"
    if src == 1:
        return "tier"
    return r.promo_source[src - 2]


# ---------------------------------------------------------------- batch (back-test)

class BatchError(ValueError):
    """A basket ``price_batch`` cannot price under this rulebook; ``basket`` is its index."""

    def __init__(self, basket, problem):
        super().__init__(problem)
        self.basket = basket
        self.problem = problem


def tables(rulebook):
    """The compiled rulebook's code -> index maps, for encoding columns to this rulebook:
    ``skus``, ``categories``, ``tiers``, ``templates`` (dicts), ``stores`` (code ->
    ``(rounding, max_coupons)``), ``store_default``, ``sources`` (index -> item discount
    source) and ``template_codes`` (index -> code)."""
    cdef _Rules r = rules_of(rulebook)
    return {
        "skus": dict(r.sku_index), "categories": dict(r.cat_index),
        "tiers": dict(r.tier_index), "templates": dict(r.tpl_index),
        "stores": dict(r.stores), "store_default": (r.default_rounding, r.default_maxc),
        "sources": ("member_price", "tier") + r.promo_source, "template_codes": r.tpl_code,
    }


cdef object _py(i128 x):
    """An exact Python int from a 128-bit sum."""
    if -(<i128>1 << 62) < x < (<i128>1 << 62):
        return <int64_t>x
    return (int(<int64_t>(x >> 64)) << 64) + int(<uint64_t>(x & 0xFFFFFFFFFFFFFFFF))


def price_batch(rulebook, const int64_t[::1] at, const int32_t[::1] tier,
                const int32_t[::1] rounding, const int32_t[::1] maxc,
                const int64_t[::1] points_balance, const int64_t[::1] stored_value,
                const int64_t[::1] redeem_points, const int64_t[::1] pay_stored_value,
                const int64_t[::1] line_start, const int32_t[::1] line_sku,
                const int32_t[::1] line_cat, const int64_t[::1] line_gross,
                const int64_t[::1] line_qty, const int64_t[::1] coupon_start,
                const int32_t[::1] coupon_tpl, const int64_t[::1] coupon_from,
                const int64_t[::1] coupon_until, const int64_t[::1] coupon_key,
                const uint8_t[::1] skip):
    """Price every basket ``n`` with ``skip[n] == 0`` and return the totals.

    Columns are already in this rulebook's indices (see :func:`tables`): per basket
    ``at`` (epoch micros), ``tier`` (-1: walk-in), the store's ``rounding`` and
    ``maxc``, the member's amounts, and ``line_start``/``coupon_start`` (length
    baskets + 1) into the per-line columns (``line_sku``/``line_cat`` -1: not in the
    rulebook) and the presented coupons (``coupon_tpl`` -1: unknown or not held;
    ``coupon_key``: the id's rank in string order). No count-card lines, no
    ``auto_coupons``: those baskets are skipped and priced by the caller.
    """
    cdef _Rules r = rules_of(rulebook)
    cdef Py_ssize_t nb = at.shape[0], n, k
    cdef int i, maxl = 0, maxn = 0, L, nc
    cdef int64_t l0, c0
    cdef Basket b
    for n in range(nb):
        if not skip[n]:
            if line_start[n + 1] - line_start[n] > maxl:
                maxl = <int>(line_start[n + 1] - line_start[n])
            if coupon_start[n + 1] - coupon_start[n] > maxn:
                maxn = <int>(coupon_start[n + 1] - coupon_start[n])
    cdef Py_ssize_t size = layout(r, &b, NULL, maxl, maxn, MAX_DEPTH, True)
    cdef char* mem = <char*>PyMem_Malloc(size)
    cdef int* clock = <int*>PyMem_Malloc(sizeof(int) * 2 * nb + 8)
    cdef Py_ssize_t nsrc = 2 + r.npromos
    # totals: 0 baskets, 1 gross, 2 coupon, 3 points offset, 4 rounding, 5 payable,
    # 6 stored value, 7 due, 8 points redeemed, 9 points earned, 10 item discount
    cdef i128* acc = <i128*>PyMem_Malloc(sizeof(i128) * (16 + nsrc + 2 * r.ntpls + 9))
    if mem == NULL or clock == NULL or acc == NULL:
        PyMem_Free(mem); PyMem_Free(clock); PyMem_Free(acc)
        raise MemoryError()
    cdef i128* by_src = acc + 16
    cdef i128* tpl_n = by_src + nsrc
    cdef i128* tpl_c = tpl_n + r.ntpls
    cdef i128* rej = tpl_c + r.ntpls
    try:
        memset(mem, 0, size)  # the card column stays zero: no count-card lines here
        memset(acc, 0, sizeof(i128) * (16 + nsrc + 2 * r.ntpls + 9))
        layout(r, &b, mem, maxl, maxn, MAX_DEPTH, True)
        for n in range(nb):  # local weekday and minute: the zone lookup needs the GIL
            if not skip[n]:
                try:
                    local_time(r, at[n], clock + 2 * n, clock + 2 * n + 1)
                except _Reject:
                    raise BatchError(n, f"at: out of range in timezone {r.zone}") from None
        with nogil:
            for n in range(nb):
                if skip[n]:
                    continue
                l0 = line_start[n]
                c0 = coupon_start[n]
                L = <int>(line_start[n + 1] - l0)
                nc = <int>(coupon_start[n + 1] - c0)
                b.L = L
                b.nc = nc
                b.at = at[n]
                b.weekday = clock[2 * n]
                b.minute = clock[2 * n + 1]
                b.tier = tier[n]
                b.has_member = b.tier >= 0
                b.rank = r.tier_rank[b.tier] if b.has_member else -1
                b.pb = points_balance[n]
                b.svb = stored_value[n]
                b.redeem = redeem_points[n]
                b.paysv = pay_stored_value[n]
                b.rounding = rounding[n]
                b.maxc = maxc[n]
                if L > 0:
                    b.sku = <int*>&line_sku[l0]
                    b.cat = <int*>&line_cat[l0]
                    b.gross = <int64_t*>&line_gross[l0]
                    b.qty = <int64_t*>&line_qty[l0]
                if nc > 0:
                    b.ctpl = <int*>&coupon_tpl[c0]
                    b.cfrom = <int64_t*>&coupon_from[c0]
                    b.cuntil = <int64_t*>&coupon_until[c0]
                    b.ckey = <int64_t*>&coupon_key[c0]
                price_basket(r, &b)
                acc[0] += 1
                for i in range(L):
                    acc[1] += b.gross[i]
                    acc[2] += b.coup[i]
                    acc[3] += b.offs[i]
                    acc[4] += b.rnd[i]
                    acc[10] += b.item[i]
                    if b.src[i] >= 0:
                        by_src[b.src[i]] += b.item[i]
                acc[5] += b.payable
                acc[6] += b.stored
                acc[7] += b.payable - b.stored
                acc[8] += b.redeemed
                acc[9] += b.earned
                for i in range(b.napplied):
                    tpl_n[b.ctpl[b.applied[i]]] += 1
                    tpl_c[b.ctpl[b.applied[i]]] += b.applied_amt[i]
                for i in range(nc):
                    rej[b.reason[i]] += 1
        sources = ("member_price", "tier") + r.promo_source
        return {
            "baskets": _py(acc[0]),
            "gross_cents": _py(acc[1]),
            "count_card_cents": 0,
            "item_discount_cents": _py(acc[10]),
            "item_discount_by_source": {sources[k]: _py(by_src[k]) for k in range(nsrc)
                                        if by_src[k]},
            "coupon_discount_cents": _py(acc[2]),
            "coupons_by_template": {r.tpl_code[k]: {"applied": _py(tpl_n[k]),
                                                    "discount_cents": _py(tpl_c[k])}
                                    for k in range(r.ntpls) if tpl_n[k]},
            "rejected_coupons": {REASONS[k]: _py(rej[k]) for k in range(1, 9) if rej[k]},
            "points_offset_cents": _py(acc[3]),
            "points_redeemed": _py(acc[8]),
            "points_earned": _py(acc[9]),
            "rounding_cents": _py(acc[4]),
            "payable_cents": _py(acc[5]),
            "stored_value_cents": _py(acc[6]),
            "due_cents": _py(acc[7]),
        }
    finally:
        PyMem_Free(mem); PyMem_Free(clock); PyMem_Free(acc)
