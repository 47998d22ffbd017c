"""Loading rulebooks: every error names section, entry and field; defaults; validity instants.

``settlement.rulebook_from_toml`` / ``load_rulebook`` raise
:class:`settlement.RulebookError` (never another exception) whose ``field``
is ``section[index] (code).field`` for list entries
(``coupon_templates[2] (PCT12).off_bp``) and whose ``str()`` is
``"<field>: <problem>"`` (``docs/pricing-notes.md``, "Rulebook").
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import settlement
from settlement import RulebookError
from settlement.rulebook import StoreRules

from .conftest import make_rulebook

TIERS = """
[[tiers]]
code = "normal"
rank = 0

[[tiers]]
code = "gold"
rank = 2
off_bp = 1000
"""

CATEGORY = """
[[categories]]
code = "fresh"
tier_off_bp = { gold = 800 }
"""

PROMO = """
[[promotions]]
code = "P1"
off_bp = 1000
"""

VOUCHER = """
[[coupon_templates]]
code = "V5"
kind = "voucher"
off_cents = 500
"""


def raised(text: str, **kw: Any) -> RulebookError:
    """The RulebookError for ``make_rulebook(text)``; fails on success or another exception."""
    try:
        make_rulebook(text, **kw)
    except RulebookError as exc:
        assert type(exc) is RulebookError
        assert str(exc) == f"{exc.field}: {exc.problem}"
        return exc
    except Exception as exc:  # noqa: BLE001 - the point: nothing but RulebookError
        pytest.fail(f"raised {type(exc).__name__}: {str(exc)[:300]} instead of RulebookError")
    pytest.fail("the rulebook was accepted")


def promo(**fields: str | None) -> str:
    """A promotion P1 with ``fields`` given as raw TOML values (default off_bp = 1000)."""
    fields = {"off_bp": "1000", **fields}
    body = "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)
    return f'[[promotions]]\ncode = "P1"\n{body}'


def template(kind: str, **fields: str) -> str:
    """A coupon template X of ``kind`` with ``fields`` as raw TOML values."""
    body = "".join(f"{k} = {v}\n" for k, v in fields.items())
    return f'[[coupon_templates]]\ncode = "X"\nkind = "{kind}"\n{body}'


# --------------------------------------------------------------------------
# Errors: (id, TOML body after version/timezone, field, problem substring).

ERRORS: list[tuple[str, str, str, str | None]] = [
    # unknown sections and fields
    ("unknown-section", "[discounts]\nx = 1\n", "discounts", "unknown field"),
    ("unknown-top-level-key", 'currency = "CNY"\n', "currency", "unknown field"),
    ("unknown-field-tier", TIERS + "discount = 5\n", "tiers[1] (gold).discount", "unknown field"),
    ("unknown-field-category", TIERS + CATEGORY + "tier_discount = 5\n",
     "categories[0] (fresh).tier_discount", "unknown field"),
    ("unknown-field-promotion", PROMO + "stackable = true\n", "promotions[0] (P1).stackable",
     "unknown field"),
    ("unknown-field-coupon-template", VOUCHER + "threshold = 1\n",
     "coupon_templates[0] (V5).threshold", "unknown field"),
    ("unknown-field-second-template", VOUCHER + template("voucher", off_cents="1", value="2"),
     "coupon_templates[1] (X).value", "unknown field"),
    ("unknown-field-member-price",
     '[[member_prices]]\nsku = "MILK"\nunit_price_cents = 1\nprice = 2\n',
     "member_prices[0] (MILK).price", "unknown field"),
    ("unknown-field-points",
     "[points]\nearn_per_yuan = 1\nredeem_points = 20\nredeem_cents = 100\n"
     "max_redeem_bp = 5000\nper_yuan = 1\n", "points.per_yuan", "unknown field"),
    ("unknown-field-store_defaults", "[store_defaults]\nmax_coupons = 2\n",
     "store_defaults.max_coupons", "unknown field"),
    ("unknown-field-store", "[stores.S1]\ntimezone = \"UTC\"\n", "stores.S1.timezone",
     "unknown field"),
    # the notes' example
    ("off_bp-10001-named-like-the-notes",
     VOUCHER + template("voucher", off_cents="1").replace('"X"', '"V2"')
     + '[[coupon_templates]]\ncode = "PCT12"\nkind = "percent"\noff_bp = 10001\n',
     "coupon_templates[2] (PCT12).off_bp", "10000"),
    # ranges
    ("tier-off_bp-10001", TIERS.replace("off_bp = 1000", "off_bp = 10001"),
     "tiers[1] (gold).off_bp", None),
    ("tier-off_bp-negative", TIERS.replace("off_bp = 1000", "off_bp = -1"),
     "tiers[1] (gold).off_bp", None),
    ("tier-multiplier-100001", TIERS + "points_multiplier_bp = 100001\n",
     "tiers[1] (gold).points_multiplier_bp", None),
    ("tier-upgrade-over-1e12", TIERS + "upgrade_at_cents = 1000000000001\n",
     "tiers[1] (gold).upgrade_at_cents", None),
    ("promotion-off_bp-10001", promo(off_bp="10001"), "promotions[0] (P1).off_bp", None),
    ("tier_off_bp-10001", TIERS + CATEGORY.replace("800", "10001"),
     "categories[0] (fresh).tier_off_bp.gold", None),
    ("max_redeem_bp-10001",
     "[points]\nearn_per_yuan = 1\nredeem_points = 20\nredeem_cents = 100\n"
     "max_redeem_bp = 10001\n", "points.max_redeem_bp", None),
    ("redeem_points-0",
     "[points]\nearn_per_yuan = 1\nredeem_points = 0\nredeem_cents = 100\nmax_redeem_bp = 1\n",
     "points.redeem_points", None),
    ("earn_per_yuan-1001",
     "[points]\nearn_per_yuan = 1001\nredeem_points = 1\nredeem_cents = 1\nmax_redeem_bp = 1\n",
     "points.earn_per_yuan", None),
    ("points-incomplete", "[points]\nearn_per_yuan = 1\n", "points.redeem_points", "missing"),
    ("max_coupons_per_order-9", "[store_defaults]\nmax_coupons_per_order = 9\n",
     "store_defaults.max_coupons_per_order", None),
    ("store-max_coupons_per_order-negative", "[stores.S1]\nmax_coupons_per_order = -1\n",
     "stores.S1.max_coupons_per_order", None),
    ("per_order_limit-0", template("voucher", off_cents="1", per_order_limit="0"),
     "coupon_templates[0] (X).per_order_limit", None),
    ("per_order_limit-9", template("voucher", off_cents="1", per_order_limit="9"),
     "coupon_templates[0] (X).per_order_limit", None),
    ("member-price-negative", '[[member_prices]]\nsku = "MILK"\nunit_price_cents = -1\n',
     "member_prices[0] (MILK).unit_price_cents", None),
    ("rounding-unknown", '[store_defaults]\nrounding = "ceil"\n', "store_defaults.rounding",
     None),
    ("store-rounding-unknown", '[stores.S2]\nrounding = "floor_fen"\n', "stores.S2.rounding",
     None),
    ("kind-unknown", template("bogo"), "coupon_templates[0] (X).kind", None),
    ("kind-missing", '[[coupon_templates]]\ncode = "X"\noff_cents = 1\n',
     "coupon_templates[0] (X).kind", "missing"),
    # wrong types
    ("rank-string", '[[tiers]]\ncode = "normal"\nrank = "0"\n', "tiers[0] (normal).rank", None),
    ("rank-float", '[[tiers]]\ncode = "normal"\nrank = 0.0\n', "tiers[0] (normal).rank", None),
    ("rank-bool", '[[tiers]]\ncode = "normal"\nrank = false\n', "tiers[0] (normal).rank", None),
    ("rank-nan", '[[tiers]]\ncode = "normal"\nrank = nan\n', "tiers[0] (normal).rank", None),
    ("rank-inf", '[[tiers]]\ncode = "normal"\nrank = inf\n', "tiers[0] (normal).rank", None),
    ("rank-huge", '[[tiers]]\ncode = "normal"\nrank = 99999999999999999999999999999\n',
     "tiers[0] (normal).rank", None),
    ("off_bp-float", promo(off_bp="10.0"), "promotions[0] (P1).off_bp", None),
    ("off_bp-string", promo(off_bp='"1000"'), "promotions[0] (P1).off_bp", None),
    ("discountable-string", '[[categories]]\ncode = "c"\ndiscountable = "no"\n',
     "categories[0] (c).discountable", None),
    ("earns_points-int", '[[categories]]\ncode = "c"\nearns_points = 0\n',
     "categories[0] (c).earns_points", None),
    ("members_only-string", promo(members_only='"yes"'), "promotions[0] (P1).members_only",
     None),
    ("stackable-int", template("voucher", off_cents="1", stackable="1"),
     "coupon_templates[0] (X).stackable", None),
    ("skus-string", promo(skus='"MILK"'), "promotions[0] (P1).skus", None),
    ("skus-int-entry", promo(skus='["MILK", 7]'), "promotions[0] (P1).skus[1]", None),
    ("categories-empty-code", promo(categories='[""]'), "promotions[0] (P1).categories[0]",
     None),
    ("weekdays-string", promo(weekdays='"6"'), "promotions[0] (P1).weekdays", None),
    ("hours-string", promo(hours='"10:00-14:00"'), "promotions[0] (P1).hours", None),
    ("hours-int-entry", promo(hours="[1000]"), "promotions[0] (P1).hours[0]", None),
    ("tier_off_bp-int", TIERS + '[[categories]]\ncode = "c"\ntier_off_bp = 5\n',
     "categories[0] (c).tier_off_bp", None),
    ("tier_off_bp-value-string", TIERS + '[[categories]]\ncode = "c"\ntier_off_bp = {gold = "5"}\n',
     "categories[0] (c).tier_off_bp.gold", None),
    ("tiers-not-a-list", "tiers = 5\n", "tiers", None),
    ("tiers-a-table", '[tiers]\ncode = "normal"\n', "tiers", None),
    ("points-not-a-table", "points = 5\n", "points", None),
    ("stores-entry-not-a-table", "stores = { S1 = 5 }\n", "stores.S1", None),
    ("code-missing", "[[tiers]]\nrank = 0\n", "tiers[0].code", "missing"),
    ("code-int", "[[tiers]]\ncode = 5\nrank = 0\n", "tiers[0].code", None),
    ("code-129-chars", f'[[tiers]]\ncode = "{"t" * 129}"\nrank = 0\n',
     f"tiers[0] ({'t' * 129}).code", None),
    ("member-price-sku-missing", "[[member_prices]]\nunit_price_cents = 1\n",
     "member_prices[0].sku", "missing"),
    ("min_tier-int", TIERS + template("voucher", off_cents="1", min_tier="2"),
     "coupon_templates[0] (X).min_tier", None),
    ("valid_from-int", promo(valid_from="5"), "promotions[0] (P1).valid_from", None),
    ("valid_from-bool", promo(valid_from="true"), "promotions[0] (P1).valid_from", None),
    ("valid_from-local-time", promo(valid_from="10:00:00"), "promotions[0] (P1).valid_from",
     None),
    ("valid_until-list", promo(valid_until="[2026-11-01]"), "promotions[0] (P1).valid_until",
     None),
    ("valid_from-garbage-string", promo(valid_from='"soon"'), "promotions[0] (P1).valid_from",
     None),
    ("valid_until-garbage-string", promo(valid_until='"2026-13-01"'),
     "promotions[0] (P1).valid_until", None),
    # references to tiers
    ("min_tier-unknown", TIERS + template("voucher", off_cents="1", min_tier='"platinum"'),
     "coupon_templates[0] (X).min_tier", "platinum"),
    ("min_tier-without-tiers", template("voucher", off_cents="1", min_tier='"gold"'),
     "coupon_templates[0] (X).min_tier", "gold"),
    ("tier_off_bp-unknown-tier", TIERS + CATEGORY.replace("gold", "platinum"),
     "categories[0] (fresh).tier_off_bp.platinum", "platinum"),
    ("member_prices-min_tier-unknown",
     TIERS + '[[member_prices]]\nsku = "MILK"\nmin_tier = "silver"\nunit_price_cents = 1\n',
     "member_prices[0] (MILK).min_tier", "silver"),
    # duplicates
    ("duplicate-tier-code", TIERS + '[[tiers]]\ncode = "gold"\nrank = 3\n',
     "tiers[2] (gold).code", "duplicate"),
    ("duplicate-tier-rank", TIERS + '[[tiers]]\ncode = "silver"\nrank = 2\n',
     "tiers[2] (silver).rank", "duplicate"),
    ("duplicate-category", CATEGORY + '[[categories]]\ncode = "fresh"\n',
     "categories[1] (fresh).code", "duplicate"),
    ("duplicate-promotion", PROMO + PROMO, "promotions[1] (P1).code", "duplicate"),
    ("duplicate-template", VOUCHER + template("percent", off_bp="5").replace('"X"', '"V5"'),
     "coupon_templates[1] (V5).code", "duplicate"),
    # hours and weekdays
    *[(f"hours-{window}", promo(hours=f'["{window}"]'), "promotions[0] (P1).hours[0]", window)
      for window in ("25:00-26:00", "14:00-10:00", "10:00-10:00", "1000-1400", "24:00-24:00",
                     "10:00-24:01", "23:60-24:00", "10:00-14:60", "9:00-14:00", "10:00",
                     "10:00 - 14:00", "", "10:00-14:00-18:00", "-1:00-02:00")],
    ("hours-second-window-bad", promo(hours='["08:00-10:00", "22:00-02:00"]'),
     "promotions[0] (P1).hours[1]", "22:00-02:00"),
    ("hours-empty", promo(hours="[]"), "promotions[0] (P1).hours", None),
    ("template-hours-bad", template("voucher", off_cents="1", hours='["14:00-10:00"]'),
     "coupon_templates[0] (X).hours[0]", None),
    ("weekdays-empty", promo(weekdays="[]"), "promotions[0] (P1).weekdays", None),
    ("weekdays-8", promo(weekdays="[6, 8]"), "promotions[0] (P1).weekdays[1]", None),
    ("weekdays-0", promo(weekdays="[0]"), "promotions[0] (P1).weekdays[0]", None),
    ("weekdays-negative", promo(weekdays="[-1]"), "promotions[0] (P1).weekdays[0]", None),
    ("template-weekdays-8", template("voucher", off_cents="1", weekdays="[8]"),
     "coupon_templates[0] (X).weekdays[0]", None),
    ("template-weekdays-empty", template("voucher", off_cents="1", weekdays="[]"),
     "coupon_templates[0] (X).weekdays", None),
    # promotions: exactly one of off_bp / points_multiplier_bp; multipliers are order-level
    ("promotion-both", promo(points_multiplier_bp="20000"), "promotions[0] (P1)", "exactly one"),
    ("promotion-neither", '[[promotions]]\ncode = "P1"\n', "promotions[0] (P1)", "exactly one"),
    ("multiplier-with-skus", promo(off_bp=None, points_multiplier_bp="20000", skus='["A"]'),
     "promotions[0] (P1).skus", None),
    ("multiplier-with-categories",
     promo(off_bp=None, points_multiplier_bp="20000", categories='["dairy"]'),
     "promotions[0] (P1).categories", None),
    ("multiplier-100001", promo(off_bp=None, points_multiplier_bp="100001"),
     "promotions[0] (P1).points_multiplier_bp", None),
    # coupon templates: per-kind fields
    ("threshold-without-threshold_cents", template("threshold", off_cents="2000"),
     "coupon_templates[0] (X).threshold_cents", "required"),
    ("threshold-without-off_cents", template("threshold", threshold_cents="20000"),
     "coupon_templates[0] (X).off_cents", "required"),
    ("threshold-with-off_bp", template("threshold", threshold_cents="1", off_cents="1",
                                       off_bp="5"),
     "coupon_templates[0] (X).off_bp", "kind"),
    ("threshold-with-max_off_cents",
     template("threshold", threshold_cents="1", off_cents="1", max_off_cents="5"),
     "coupon_templates[0] (X).max_off_cents", "kind"),
    ("percent-without-off_bp", template("percent", max_off_cents="5"),
     "coupon_templates[0] (X).off_bp", "required"),
    ("percent-with-off_cents", template("percent", off_bp="1200", off_cents="5"),
     "coupon_templates[0] (X).off_cents", "kind"),
    ("percent-with-threshold_cents", template("percent", off_bp="1200", threshold_cents="5"),
     "coupon_templates[0] (X).threshold_cents", "kind"),
    ("percent-off_bp-10001", template("percent", off_bp="10001"),
     "coupon_templates[0] (X).off_bp", None),
    ("voucher-without-off_cents", template("voucher"), "coupon_templates[0] (X).off_cents",
     "required"),
    ("voucher-with-off_bp", template("voucher", off_cents="500", off_bp="1000"),
     "coupon_templates[0] (X).off_bp", "kind"),
    ("voucher-with-threshold_cents", template("voucher", off_cents="500", threshold_cents="1"),
     "coupon_templates[0] (X).threshold_cents", "kind"),
    ("voucher-with-max_off_cents", template("voucher", off_cents="500", max_off_cents="1"),
     "coupon_templates[0] (X).max_off_cents", "kind"),
    # validity
    ("valid_until-before-valid_from", promo(valid_from="2026-11-02", valid_until="2026-11-01"),
     "promotions[0] (P1).valid_until", None),
    ("valid_until-equals-valid_from", promo(valid_from="2026-11-02", valid_until="2026-11-02"),
     "promotions[0] (P1).valid_until", None),
    ("valid_until-before-valid_from-mixed-kinds",
     promo(valid_from="2026-11-02T00:00:00+08:00", valid_until="2026-11-01T23:59:59"),
     "promotions[0] (P1).valid_until", None),
    ("valid_until-same-instant-other-offset",
     promo(valid_from="2026-11-02T08:00:00+08:00", valid_until="2026-11-02T00:00:00Z"),
     "promotions[0] (P1).valid_until", None),
]


@pytest.mark.parametrize(("body", "field", "problem"),
                         [pytest.param(*case[1:], id=case[0]) for case in ERRORS])
def test_error_names_section_entry_and_field(body: str, field: str, problem: str | None) -> None:
    err = raised(body)
    if field.endswith(")"):  # the entry itself: any of its fields may be named
        assert err.field.startswith(field + "."), str(err)
    else:
        assert err.field == field, str(err)
    assert str(err).startswith(f"{err.field}: ")
    if problem is not None:
        assert problem in err.problem, str(err)


def test_empty_code_is_an_error() -> None:
    err = raised('[[tiers]]\ncode = ""\nrank = 0\n')
    assert err.field.startswith("tiers[0]") and err.field.endswith(".code"), str(err)


def test_error_message_matches_the_notes() -> None:
    body = (VOUCHER + template("voucher", off_cents="1").replace('"X"', '"V2"')
            + '[[coupon_templates]]\ncode = "PCT12"\nkind = "percent"\noff_bp = 10001\n')
    err = raised(body)
    assert err.field == "coupon_templates[2] (PCT12).off_bp"
    assert str(err).startswith("coupon_templates[2] (PCT12).off_bp: ")
    assert isinstance(err, settlement.InvalidInput) and isinstance(err, ValueError)


@pytest.mark.parametrize(("text", "field"), [
    pytest.param('timezone = "Asia/Shanghai"\n', "version", id="version-missing"),
    pytest.param('version = "v"\n', "timezone", id="timezone-missing"),
    pytest.param('version = 1\ntimezone = "UTC"\n', "version", id="version-int"),
    pytest.param('version = ""\ntimezone = "UTC"\n', "version", id="version-empty"),
    pytest.param('version = "v"\ntimezone = 8\n', "timezone", id="timezone-int"),
    pytest.param('version = "v"\ntimezone = ""\n', "timezone", id="timezone-empty"),
    *[pytest.param(f'version = "v"\ntimezone = "{zone}"\n', "timezone", id=f"timezone-{zone}")
      for zone in ("Mars/Olympus", "asia/shanghai", "Asia/Shanghai ", "+08:00", "CST-8x",
                   "../etc/passwd", "/etc/localtime", ".", "Asia/", "Asia", "America", "Etc")],
])
def test_version_and_timezone(text: str, field: str) -> None:
    try:
        settlement.rulebook_from_toml(text)
    except RulebookError as exc:
        assert exc.field == field, str(exc)
        assert str(exc).startswith(f"{field}: ")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"raised {type(exc).__name__}: {exc} instead of RulebookError")
    else:
        pytest.fail("accepted")


@pytest.mark.parametrize("text", [
    pytest.param("x = = 1", id="bad-syntax"),
    pytest.param('version = "v"\nversion = "w"\ntimezone = "UTC"\n', id="duplicate-key"),
    pytest.param('version = "v\ntimezone = "UTC"\n', id="unterminated-string"),
    pytest.param("[[tiers]\n", id="bad-table-header"),
    pytest.param("\x00", id="nul"),
])
def test_invalid_toml(text: str) -> None:
    with pytest.raises(RulebookError) as info:
        settlement.rulebook_from_toml(text, source="rules.toml")
    assert info.value.field == "rules.toml"
    assert str(info.value).startswith("rules.toml: invalid TOML")


@pytest.mark.parametrize("text", [
    pytest.param(f'version = "v"\ntimezone = "UTC"\nx = 1{"0" * 5000}\n', id="5000-digit-int"),
    pytest.param('version = "v"\ntimezone = "UTC"\n[[tiers]]\ncode = "a"\nrank = 1' + "0" * 5000,
                 id="5000-digit-rank"),
    pytest.param('version = "v"\ntimezone = "UTC"\nx = ' + "[" * 5000 + "]" * 5000,
                 id="deeply-nested-array"),
    pytest.param('version = "v"\ntimezone = "UTC"\nx = ' + "{a = " * 5000 + "1" + "}" * 5000,
                 id="deeply-nested-inline-table"),
])
def test_hostile_toml_is_a_rulebook_error(text: str) -> None:
    """Never a crash: a plain ValueError or RecursionError would escape the CLI's handler."""
    try:
        settlement.rulebook_from_toml(text)
    except RulebookError as exc:
        assert str(exc).startswith(f"{exc.field}: ")
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"raised {type(exc).__name__}: {str(exc)[:120]} instead of RulebookError")
    else:
        pytest.fail("accepted")


# --------------------------------------------------------------------------
# Files.


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(RulebookError) as info:
        settlement.load_rulebook(path)
    assert info.value.field == str(path)
    assert "cannot read" in info.value.problem


def test_directory_is_not_a_rulebook(tmp_path: Path) -> None:
    with pytest.raises(RulebookError) as info:
        settlement.load_rulebook(tmp_path)
    assert info.value.field == str(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text('version = "v"\ntimezone = "UTC"\n')
    path.chmod(0)
    with pytest.raises(RulebookError) as info:
        settlement.load_rulebook(path)
    assert info.value.field == str(path)


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('version = "caf\xe9"\ntimezone = "UTC"\n'.encode("latin-1"))
    with pytest.raises(RulebookError) as info:
        settlement.load_rulebook(str(path))
    assert info.value.field == str(path)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("x = = 1\n")
    with pytest.raises(RulebookError) as info:
        settlement.load_rulebook(path)
    assert info.value.field == str(path)
    path.write_text('version = "v"\ntimezone = "UTC"\n' + PROMO + "weekdays = [8]\n")
    with pytest.raises(RulebookError) as info:
        settlement.load_rulebook(path)
    assert info.value.field == "promotions[0] (P1).weekdays[0]"


def test_example_rulebook_loads(examples_dir: Path) -> None:
    for path in (examples_dir / "rulebook.toml", str(examples_dir / "rulebook.toml")):
        rb = settlement.load_rulebook(path)
        assert rb.version == "demo-2026-11-22.1"
        assert rb.timezone == "Asia/Shanghai"
        assert rb.source == str(path)
        assert set(rb.tiers) == {"normal", "silver", "gold"}
        assert rb.tiers["gold"].rank == 2 and rb.tiers["gold"].off_bp == 1000
        assert rb.store_defaults == StoreRules("none", 3)
        assert rb.store_rules("S002") == StoreRules("floor_jiao", 3)
        assert rb.store_rules("S001") == rb.store_defaults
        assert set(rb.coupon_templates) == {"SPEND200-20", "PCT12", "VOUCHER5", "DAIRY-30PCT"}
        assert [p.code for p in rb.promotions] == ["FRUIT-WEEKEND", "MEMBER-DAY-POINTS"]
        assert rb.points is not None and rb.points.redeem_points == 20
        assert rb.categories["tobacco"].discountable is False
        assert rb.categories["fresh"].tier_off_bp == {"silver": 300, "gold": 800}


def test_loading_is_deterministic(examples_dir: Path) -> None:
    a = settlement.load_rulebook(examples_dir / "rulebook.toml")
    b = settlement.rulebook_from_toml((examples_dir / "rulebook.toml").read_text(),
                                      source=str(examples_dir / "rulebook.toml"))
    assert a == b


# --------------------------------------------------------------------------
# Accepted and defaults.


@pytest.mark.parametrize("hours", [
    '["22:00-24:00"]', '["00:00-24:00"]', '["22:00-24:00", "00:00-02:00"]',
    '["08:00-12:00", "14:00-18:00"]', '["00:00-00:01"]', '["23:59-24:00"]',
])
def test_hours_accepted(hours: str) -> None:
    make_rulebook(promo(hours=hours))
    make_rulebook(template("voucher", off_cents="1", hours=hours))


def test_defaults() -> None:
    rb = make_rulebook(TIERS + CATEGORY + PROMO + VOUCHER)
    assert rb.store_defaults == StoreRules("none", 1)
    assert rb.store_rules("ANY") == StoreRules("none", 1)
    assert rb.points is None
    assert rb.tiers["normal"].off_bp == 0
    assert rb.tiers["normal"].points_multiplier_bp == 10000
    fresh = rb.categories["fresh"]
    assert fresh.discountable is True and fresh.earns_points is True
    p = rb.promotions[0]
    assert p.members_only is False and not p.skus and not p.categories
    assert p.window.weekdays is None and p.window.hours is None
    v = rb.coupon_templates["V5"]
    assert v.stackable is True and v.per_order_limit == 1 and v.min_rank == -1
    assert v.max_off_cents is None


def test_empty_rulebook() -> None:
    rb = make_rulebook()
    assert rb.store_defaults == StoreRules("none", 1)
    assert not rb.tiers and not rb.promotions and not rb.coupon_templates


def test_store_override_inherits_defaults() -> None:
    rb = make_rulebook("""
[store_defaults]
rounding = "floor_jiao"
max_coupons_per_order = 3

[stores.S2]
rounding = "floor_yuan"

[stores.S3]
max_coupons_per_order = 0

[stores.S4]
""")
    assert rb.store_rules("S1") == StoreRules("floor_jiao", 3)
    assert rb.store_rules("S2") == StoreRules("floor_yuan", 3)
    assert rb.store_rules("S3") == StoreRules("floor_jiao", 0)
    assert rb.store_rules("S4") == StoreRules("floor_jiao", 3)
    only_store = make_rulebook('[stores.S2]\nrounding = "floor_yuan"\n')
    assert only_store.store_rules("S2") == StoreRules("floor_yuan", 1)
    assert only_store.store_rules("S1") == StoreRules("none", 1)


def _walkin(at: str, store: str = "S1", price: int = 1234, category: str = "c") -> dict:
    return {"at": at, "store": store,
            "lines": [{"sku": "A", "category": category, "unit_price_cents": price,
                       "quantity": 1}]}


def test_store_rounding_through_the_engine(engine) -> None:
    rb = make_rulebook('[stores.S2]\nrounding = "floor_yuan"\n'
                       '[stores.S3]\nmax_coupons_per_order = 2\n')
    at = "2026-11-10T12:00:00+08:00"
    assert engine(rb, _walkin(at, "S1"))["payable_cents"] == 1234
    assert engine(rb, _walkin(at, "S2"))["payable_cents"] == 1200
    assert engine(rb, _walkin(at, "S3"))["payable_cents"] == 1234  # inherits rounding none


def test_max_coupons_per_order_defaults_to_one(engine) -> None:
    body = TIERS + template("voucher", off_cents="100").replace('"X"', '"VA"') + template(
        "voucher", off_cents="200").replace('"X"', '"VB"')
    request = {
        "at": "2026-11-10T12:00:00+08:00", "store": "S1",
        "member": {"id": "M", "tier": "normal",
                   "coupons": [{"id": "A", "template": "VA"}, {"id": "B", "template": "VB"}]},
        "lines": [{"sku": "X", "category": "c", "unit_price_cents": 10000, "quantity": 1}],
        "coupon_ids": ["A", "B"],
    }
    one = engine(make_rulebook(body), request)
    assert [c["id"] for c in one["applied_coupons"]] == ["B"]
    assert one["rejected_coupons"] == [{"id": "A", "reason": "NOT_COMBINABLE"}]
    two = engine(make_rulebook("[store_defaults]\nmax_coupons_per_order = 2\n" + body), request)
    assert sorted(c["id"] for c in two["applied_coupons"]) == ["A", "B"]
    assert two["coupon_discount_cents"] == 300


def test_no_points_section_means_no_points(engine) -> None:
    rb = make_rulebook(TIERS)
    request = _walkin("2026-11-10T12:00:00+08:00", price=100_000)
    request.update(member={"id": "M", "tier": "gold", "points_balance": 10**6},
                   redeem_points=10**6)
    receipt = engine(rb, request)
    assert receipt["points_earned"] == 0
    assert receipt["points_redeemed"] == 0
    assert receipt["points_redeemable_max"] == 0
    assert receipt["points_offset_cents"] == 0


# --------------------------------------------------------------------------
# Promotion validity: TOML dates, local and offset date-times, ISO strings.
# (rulebook timezone, TOML value, the instant it denotes in UTC)

VALIDITY = [
    ("Asia/Shanghai", "2026-11-10", "2026-11-09T16:00:00"),
    ("Asia/Shanghai", "2026-11-10T09:30:00", "2026-11-10T01:30:00"),
    ("Asia/Shanghai", "2026-11-10T09:30:00.250", "2026-11-10T01:30:00.250"),
    ("Asia/Shanghai", "2026-11-10 09:30:00", "2026-11-10T01:30:00"),
    ("Asia/Shanghai", "2026-11-10T09:30:00-05:00", "2026-11-10T14:30:00"),
    ("Asia/Shanghai", "2026-11-10T09:30:00Z", "2026-11-10T09:30:00"),
    ("Asia/Shanghai", '"2026-11-10"', "2026-11-09T16:00:00"),
    ("Asia/Shanghai", '"2026-11-10T09:30:00"', "2026-11-10T01:30:00"),
    ("Asia/Shanghai", '"2026-11-10T09:30:00+09:00"', "2026-11-10T00:30:00"),
    ("America/New_York", "2026-11-10", "2026-11-10T05:00:00"),  # EST
    ("America/New_York", "2026-07-04", "2026-07-04T04:00:00"),  # EDT
    ("America/New_York", "2026-03-08T03:00:00", "2026-03-08T07:00:00"),  # just after the jump
    ("America/New_York", "2026-07-04T09:30:00+08:00", "2026-07-04T01:30:00"),
    ("UTC", "2026-11-10", "2026-11-10T00:00:00"),
    ("Europe/London", "2026-07-01T00:00:00", "2026-06-30T23:00:00"),  # BST
]


def _utc(text: str, shift_us: int = 0) -> str:
    return (datetime.fromisoformat(text) + timedelta(microseconds=shift_us)).isoformat() + "Z"


@pytest.mark.parametrize("bound", ["valid_from", "valid_until"])
@pytest.mark.parametrize(("zone", "value", "instant"), VALIDITY,
                         ids=[f"{z}-{v.strip(chr(34))}" for z, v, _ in VALIDITY])
def test_promotion_validity_boundary(engine, zone: str, value: str, instant: str,
                                     bound: str) -> None:
    rb = make_rulebook(promo(**{bound: value}), timezone=zone)
    before = engine(rb, _walkin(_utc(instant, -1)))["lines"][0]
    at = engine(rb, _walkin(_utc(instant)))["lines"][0]
    active_before, active_at = (False, True) if bound == "valid_from" else (True, False)
    for line, active in ((before, active_before), (at, active_at)):
        assert line["item_discount_source"] == ("promotion:P1" if active else "")
        assert line["item_discount_cents"] == (123 if active else 0)


def test_promotion_window_over_midnight_keeps_the_local_weekday(engine) -> None:
    """``weekdays`` is that of the local date of ``at``: Saturday 23:00 yes, Sunday 01:00 no."""
    rb = make_rulebook(promo(weekdays="[6]", hours='["22:00-24:00", "00:00-02:00"]'))
    cases = [
        ("2026-11-21T21:59:59+08:00", False),  # Saturday, before the window
        ("2026-11-21T22:00:00+08:00", True),
        ("2026-11-21T23:59:59.999999+08:00", True),
        ("2026-11-21T15:59:59Z", True),  # the same Saturday evening, written in UTC
        ("2026-11-22T00:00:00+08:00", False),  # Sunday
        ("2026-11-22T01:00:00+08:00", False),
        ("2026-11-21T00:30:00+08:00", True),  # Saturday small hours
        ("2026-11-21T02:00:00+08:00", False),  # end excluded
    ]
    for at, active in cases:
        line = engine(rb, _walkin(at))["lines"][0]
        assert line["item_discount_source"] == ("promotion:P1" if active else ""), at
