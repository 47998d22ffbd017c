"""The back-test (``settlement.backtest``, ``settlement backtest``).

The batch path (NumPy columns priced by the kernel's ``price_batch``) must give
exactly the totals of pricing every request one by one with ``quote``, under
both engines (the ``engine`` fixture): on generated store histories, on the
differential generator's random rulebooks and requests (every knob of the
contract), and under hypothesis. The fallback (count cards, ``auto_coupons``)
is counted; the command reports a changed rulebook's effect and refuses bad
input with the file and line.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import settlement
from bench.history import generate, write_jsonl
from settlement import backtest as bt

from . import randomized
from .conftest import LOCAL_EXAMPLES, ROOT, make_rulebook, require_fast

PROMO = ROOT / "bench" / "rulebook-promo.toml"
BASELINE = LOCAL_EXAMPLES / "rulebook.toml"
QuoteFn = Callable[[settlement.Rulebook, Any], dict[str, Any]]


@pytest.fixture(scope="module")
def baseline() -> settlement.Rulebook:
    return settlement.load_rulebook(BASELINE)


@pytest.fixture(scope="module")
def promo() -> settlement.Rulebook:
    return settlement.load_rulebook(PROMO)


def _fallbacks(requests: list[dict[str, Any]]) -> int:
    """Requests the batch encoding does not hold, counted from the dicts themselves."""
    return sum(1 for r in requests
               if (r.get("auto_coupons") and r.get("member") is not None)
               or any(line.get("count_card_id") is not None for line in r["lines"]))


def _batch(requests: list[Any], rulebook: settlement.Rulebook) -> tuple[bt.Totals, int]:
    return bt.price_history(bt.encode_history(requests, rulebook), rulebook)


# ---------------------------------------------------------------- identity

@pytest.mark.parametrize("seed,lines,presented", [(1, None, False), (2, 20, True),
                                                  (3, None, False)])
def test_batch_equals_quote_per_request_on_store_histories(
        engine: QuoteFn, baseline: settlement.Rulebook, promo: settlement.Rulebook,
        seed: int, lines: int | None, presented: bool) -> None:
    require_fast()
    requests = list(generate(400, lines, seed, exotic=0.05, presented=presented))
    history = bt.encode_history(requests, baseline)
    for rulebook in (baseline, promo):
        totals, fallback = bt.price_history(history, rulebook)
        assert totals == bt.reference_totals(rulebook, requests, engine)
        assert fallback == _fallbacks(requests) > 0
    assert totals["baskets"] == 400
    assert totals["coupons_by_template"], "the history must exercise coupons"
    assert totals["points_redeemed"] > 0 and totals["stored_value_cents"] > 0
    assert set(totals["item_discount_by_source"]) >= {"tier", "promotion:FRUIT-WEEKEND"}


def _random_history(seed: int, n: int) -> tuple[settlement.Rulebook, list[dict[str, Any]]]:
    """A random rulebook of the differential generator and ``n`` valid requests for it."""
    rng = random.Random(seed)
    toml_text = randomized.random_rulebook(rng)
    requests = [randomized.random_request_for(rng, toml_text, max_held=12) for _ in range(n)]
    return settlement.rulebook_from_toml(toml_text), requests


def test_batch_equals_quote_on_random_rulebooks(engine: QuoteFn) -> None:
    """Every knob of the contract (tiers, overrides, member prices, promotion windows in
    several timezones, coupon kinds and limits, rounding, points) on 120 random rulebooks."""
    require_fast()
    batch_baskets = 0
    for seed in range(120):
        rulebook, requests = _random_history(seed, 8)
        history = bt.encode_history(requests, rulebook)
        totals, fallback = bt.price_history(history, rulebook)
        assert totals == bt.reference_totals(rulebook, requests, engine), f"seed {seed}"
        assert fallback == _fallbacks(requests)
        batch_baskets += 8 - fallback
    assert batch_baskets > 500, "most random requests must take the batch path"


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12))
def test_batch_equals_quote_hypothesis(seed: int, n: int) -> None:
    from settlement._fast import quote as fast_quote

    rulebook, requests = _random_history(seed, n)
    totals, _ = _batch(requests, rulebook)
    reference = bt.reference_totals(rulebook, requests, fast_quote)
    assert totals == reference
    assert totals == bt.reference_totals(rulebook, requests, settlement.pricing.quote)


def test_edge_baskets(engine: QuoteFn, baseline: settlement.Rulebook) -> None:
    """Walk-ins presenting coupons, coupons not held or of a template the new rulebook
    drops, unknown SKUs and categories, a floor_jiao store, member prices, an empty
    presented list and a walk-in's auto_coupons (nothing to find: batch path)."""
    require_fast()
    member = json.loads((LOCAL_EXAMPLES / "request-member.json").read_text())
    member["lines"] = [x for x in member["lines"] if "count_card_id" not in x]
    member["auto_coupons"] = False
    member["coupon_ids"] = ["C-4", "C-2", "C-1", "C-3", "C-5", "NOT-HELD"]
    walkin = json.loads((LOCAL_EXAMPLES / "request-walkin.json").read_text())
    requests = [member, walkin]
    for store in ("S002", "S009"):
        r = copy.deepcopy(member)
        r["store"] = store
        r["lines"].append({"sku": "NEW-SKU", "category": "new-cat", "unit_price_cents": 777,
                           "quantity": 3})
        requests.append(r)
    r = copy.deepcopy(walkin)
    r["coupon_ids"] = ["C-1"]
    requests.append(r)
    r = copy.deepcopy(walkin)
    r["auto_coupons"] = True
    requests.append(r)
    r = copy.deepcopy(member)
    r["coupon_ids"] = []
    r["member"]["tier"] = "silver"
    requests.append(r)
    dropped = settlement.rulebook_from_toml(
        BASELINE.read_text().replace('code = "PCT12"', 'code = "PCT15"'))
    for rulebook in (baseline, dropped):
        totals, fallback = bt.price_history(bt.encode_history(requests, baseline), rulebook)
        assert fallback == 0
        assert totals == bt.reference_totals(rulebook, requests, engine)
    assert totals["rejected_coupons"]["UNKNOWN_COUPON"] >= 4 + 1  # PCT12 is gone, NOT-HELD
    assert "PCT12" not in totals["coupons_by_template"]


def test_without_the_batch_path_every_request_falls_back(baseline: settlement.Rulebook) -> None:
    requests = list(generate(60, None, 5))
    history = bt.encode_history(requests, baseline, batch=False)
    totals, fallback = bt.price_history(history, baseline)
    assert fallback == 60
    assert totals == bt.reference_totals(baseline, requests)


def test_totals_are_exact_beyond_64_bits() -> None:
    """Sums past 2**63 stay exact (the kernel adds in 128 bits): points earned at x1000 per
    yuan and a x100 multiplier on 500-line baskets of the largest lines."""
    require_fast()
    rulebook = make_rulebook("""
[points]
earn_per_yuan = 1000
redeem_points = 100
redeem_cents = 1
max_redeem_bp = 0
[[tiers]]
code = "vip"
rank = 0
off_bp = 0
points_multiplier_bp = 100000
upgrade_at_cents = 0
[[promotions]]
code = "X10"
points_multiplier_bp = 100000
""")
    big = {"at": "2026-11-20T10:00:00+08:00", "store": "S001",
           "member": {"id": "M1", "tier": "vip"},
           "lines": [{"sku": "GOLD-BAR", "category": "jewel", "unit_price_cents": 100_000_000,
                      "quantity": 9999}] * 500}
    requests = [big] * 40
    totals, fallback = _batch(requests, rulebook)
    assert fallback == 0
    assert totals["points_earned"] == 40 * 500 * 100_000_000 * 9999 * 1000 > 2**64
    assert totals == bt.reference_totals(rulebook, requests)


# ---------------------------------------------------------------- the comparison

def test_added_promotion_lowers_payable(baseline: settlement.Rulebook,
                                        promo: settlement.Rulebook) -> None:
    requests = list(generate(500, None, 11))
    result = bt.run_backtest(bt.encode_history(requests, baseline), baseline, promo)
    old, new, delta = result["baseline"], result["new"], result["change"]
    assert result["baskets"] == 500 and result["batch"] + result["fallback"] == 500
    assert delta["gross_cents"] == 0
    assert "promotion:DAIRY-WEEK" not in old["item_discount_by_source"]
    assert new["item_discount_by_source"]["promotion:DAIRY-WEEK"] > 0
    assert delta["item_discount_cents"] > 0
    assert delta["payable_cents"] < 0 and delta["points_earned"] < 0
    assert delta["payable_cents"] == new["payable_cents"] - old["payable_cents"]
    # the accounts add up on both sides
    for t in (old, new):
        assert t["gross_cents"] == (t["count_card_cents"] + t["item_discount_cents"]
                                    + t["coupon_discount_cents"] + t["points_offset_cents"]
                                    + t["rounding_cents"] + t["payable_cents"])
        assert t["payable_cents"] == t["stored_value_cents"] + t["due_cents"]
        assert t["item_discount_cents"] == sum(t["item_discount_by_source"].values())
        assert t["coupon_discount_cents"] == sum(
            u["discount_cents"] for u in t["coupons_by_template"].values())


def test_history_generator_is_reproducible() -> None:
    a = list(generate(50, 20, 9, exotic=0, presented=True))
    assert a == list(generate(50, 20, 9, exotic=0, presented=True))
    assert a != list(generate(50, 20, 10, exotic=0, presented=True))
    assert all(len(r["lines"]) == 20 and r["coupon_ids"] and r["member"] for r in a)
    assert all(len(r["lines"]) == 20 for r in generate(200, 20, 9))
    sizes = {len(r["lines"]) for r in generate(300, None, 9)}
    assert min(sizes) == 1 and max(sizes) > 30


# ---------------------------------------------------------------- the command

def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "settlement", "backtest", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def history_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "h.jsonl"
    with path.open("w", encoding="utf-8") as out:
        write_jsonl(generate(300, None, 4), out)
    return path


def test_cli_table_and_json(history_file: Path, baseline: settlement.Rulebook,
                            promo: settlement.Rulebook) -> None:
    args = ("--rules", str(PROMO), "--baseline", str(BASELINE), "--history", str(history_file))
    table = _run(*args)
    assert table.returncode == 0, table.stderr
    assert "300 baskets" in table.stdout
    assert "promotion:DAIRY-WEEK" in table.stdout and "payable" in table.stdout
    out = _run(*args, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    requests = [json.loads(x) for x in history_file.read_text().splitlines()]
    assert bt.run_backtest(bt.load_history(history_file, baseline), baseline, promo)["change"] \
        == data["change"]
    assert data["baseline"]["totals"] == bt.reference_totals(baseline, requests)
    assert data["new"]["totals"] == bt.reference_totals(promo, requests)
    assert data["new"]["version"] == promo.version
    assert data["fallback"] == _fallbacks(requests)
    payable = data["change"]["payable_cents"]
    assert payable < 0
    row = next(x for x in table.stdout.splitlines() if x.startswith("payable "))
    assert row.split()[-1] == f"-{-payable // 100:,}.{-payable % 100:02d}"


def test_cli_errors_name_the_file_and_line(tmp_path: Path, history_file: Path) -> None:
    lines = history_file.read_text().splitlines()[:5]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text("\n".join(lines[:3] + ['{"at": ', *lines[3:]]) + "\n")
    bad_request = tmp_path / "bad-request.jsonl"
    broken = json.loads(lines[1])
    broken["lines"][0]["quantity"] = 0
    bad_request.write_text("\n".join([lines[0], "", json.dumps(broken)]) + "\n")
    bad_rules = tmp_path / "bad.toml"
    bad_rules.write_text('version = "x"\ntimezone = "Asia/Shanghai"\nfoo = 1\n')
    no_silver = tmp_path / "no-silver.toml"
    no_silver.write_text(BASELINE.read_text().replace('"silver"', '"bronze"')
                         .replace("silver = 300, ", ""))
    cases = [
        ((str(bad_json),), f"{bad_json}:4: invalid JSON"),
        ((str(bad_request),), f"{bad_request}:3: lines[0].quantity:"),
        ((str(tmp_path / "missing.jsonl"),), "cannot read"),
        ((str(history_file), "--rules", str(bad_rules)), f"rulebook {bad_rules}: foo"),
        ((str(history_file), "--rules", str(no_silver)), "member.tier: unknown tier 'silver'"),
    ]
    for extra, message in cases:
        args = ["--history", *extra]
        if "--rules" not in extra:
            args += ["--rules", str(PROMO)]
        proc = _run(*args, "--baseline", str(BASELINE))
        assert proc.returncode == 2, (extra, proc.stderr)
        assert message in proc.stderr, (message, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_an_instant_the_new_timezone_cannot_place_names_the_line() -> None:
    require_fast()
    utc = make_rulebook("[[tiers]]\ncode = 'n'\nrank = 0\n", timezone="UTC")
    west = make_rulebook("[[tiers]]\ncode = 'n'\nrank = 0\n", timezone="America/New_York")
    early = {"at": "0001-01-01T01:00:00Z", "store": "S",
             "lines": [{"sku": "a", "category": "c", "unit_price_cents": 100, "quantity": 1}]}
    with pytest.raises(settlement.RequestError):
        settlement.quote(west, early)
    history = bt.encode_history([early, early], utc, source="h.jsonl")
    assert bt.price_history(history, utc)[0] == bt.reference_totals(utc, [early, early])
    with pytest.raises(bt.HistoryError, match=r"^h.jsonl:1: at: "):
        bt.price_history(history, west)
