"""The ``settlement`` command line, run as a user runs it: in a subprocess.

Both ``python -m settlement`` and the ``settlement`` console script (when the
venv has it). ``quote`` prints the receipt JSON and nothing else; bad input
exits 2 with the message naming the field on stderr and nothing on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, fast_quote

SCRIPT = Path(sys.executable).parent / "settlement"
MODULE = [sys.executable, "-m", "settlement"]
EXIT_BAD_INPUT = 2


def _runners() -> list:
    return [
        pytest.param(MODULE, id="module"),
        pytest.param([str(SCRIPT)], id="script",
                     marks=pytest.mark.skipif(not SCRIPT.exists(),
                                              reason=f"{SCRIPT} is not installed")),
    ]


def run(cmd: list[str], *args: str, impl: str | None = "pure", stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SETTLEMENT_IMPL"}
    if impl is not None:
        env["SETTLEMENT_IMPL"] = impl
    return subprocess.run([*cmd, *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


@pytest.fixture(params=_runners())
def cli(request: pytest.FixtureRequest) -> list[str]:
    """The command prefix: ``python -m settlement`` or the console script."""
    return request.param


@pytest.fixture(params=["pure", "fast"])
def impl(request: pytest.FixtureRequest) -> str:
    """The engine the CLI is forced to use (``fast`` skips when the kernel is not built)."""
    if request.param == "fast" and fast_quote() is None:
        pytest.skip("Cython kernel settlement._fast is not built")
    return request.param


def rejected(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a clean refusal (exit 2, no traceback, empty stdout); returns stderr."""
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("settlement: ")
    return result.stderr


# --------------------------------------------------------------------------
# quote


@pytest.mark.parametrize("name", ["member", "walkin"])
def test_quote_prints_the_receipt(cli, impl, examples_dir: Path, name: str) -> None:
    result = run(cli, "quote", "--rules", str(examples_dir / "rulebook.toml"),
                 "--request", str(examples_dir / f"request-{name}.json"), impl=impl)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    assert result.stdout.endswith("}\n")
    expected = json.loads((examples_dir / f"receipt-{name}.json").read_text())
    assert json.loads(result.stdout) == expected


def test_quote_reads_stdin(cli, impl, examples_dir: Path) -> None:
    request = (examples_dir / "request-member.json").read_text()
    result = run(cli, "quote", "--rules", str(examples_dir / "rulebook.toml"),
                 "--request", "-", impl=impl, stdin=request)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = json.loads((examples_dir / "receipt-member.json").read_text())
    assert json.loads(result.stdout) == expected


def test_quote_output_is_utf8_json(tmp_path: Path, examples_dir: Path) -> None:
    """Non-ASCII codes (a Chinese store's SKUs) come back as they went in."""
    request = json.loads((examples_dir / "request-walkin.json").read_text())
    request["lines"][0]["sku"] = "苹果-富士"
    result = run(MODULE, "quote",
                 "--rules", str(examples_dir / "rulebook.toml"), "--request", "-",
                 stdin=json.dumps(request, ensure_ascii=False))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["payable_cents"] >= 0


@pytest.mark.parametrize(("mutation", "field"), [
    pytest.param({"lines": []}, "lines: must have 1..500 lines", id="no-lines"),
    pytest.param({"at": "2026-11-22T10:30:00"}, "at: ", id="naive-at"),
    pytest.param({"coupon_ids": ["C-1"]}, "auto_coupons: ", id="coupon_ids-with-auto"),
    pytest.param({"bogus": 1}, "bogus: unknown field", id="unknown-field"),
])
def test_bad_request_exits_2(impl, examples_dir: Path, mutation: dict, field: str) -> None:
    request = json.loads((examples_dir / "request-member.json").read_text())
    request.update(mutation)
    result = run(MODULE, "quote", "--rules", str(examples_dir / "rulebook.toml"),
                 "--request", "-", impl=impl, stdin=json.dumps(request))
    assert f"settlement: {field}" in rejected(result)


def test_lone_surrogate_escape_exits_2(impl, examples_dir: Path) -> None:
    """``"\\ud800"`` is valid JSON but not text: refused, never a crash while printing."""
    request = json.loads((examples_dir / "request-walkin.json").read_text())
    request["coupon_ids"] = ["SURROGATE"]
    text = json.dumps(request).replace("SURROGATE", "\\ud800")
    result = run(MODULE, "quote", "--rules", str(examples_dir / "rulebook.toml"),
                 "--request", "-", impl=impl, stdin=text)
    assert "settlement: coupon_ids[0]: " in rejected(result)


def test_bad_line_names_the_path(cli, impl, examples_dir: Path, tmp_path: Path) -> None:
    request = json.loads((examples_dir / "request-member.json").read_text())
    request["lines"][1]["quantity"] = 0
    path = tmp_path / "q.json"
    path.write_text(json.dumps(request))
    result = run(cli, "quote", "--rules", str(examples_dir / "rulebook.toml"),
                 "--request", str(path), impl=impl)
    assert rejected(result).startswith("settlement: lines[1].quantity: ")


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("{", "request: invalid JSON", id="truncated"),
    pytest.param("", "request: invalid JSON", id="empty"),
    pytest.param("{'at': 1}", "request: invalid JSON", id="single-quotes"),
    pytest.param("[" * 100_000, "request: invalid JSON", id="deeply-nested"),
    pytest.param("[]", "request: must be a JSON object", id="a-list"),
    pytest.param('"quote me"', "request: must be a JSON object", id="a-string"),
    pytest.param("null", "request: must be a JSON object", id="null"),
    pytest.param('{"at": NaN}', "at: ", id="NaN-literal"),
    pytest.param('{"at": "2026-11-22T10:30:00+08:00", "store": "S", "lines": [{"sku": "A", '
                 '"category": "c", "unit_price_cents": 1, "quantity": 1e999}]}',
                 "lines[0].quantity: ", id="infinity-literal"),
    pytest.param('{"at": 1' + "0" * 5000 + "}", "", id="5000-digit-integer"),
])
def test_invalid_json_exits_2(examples_dir: Path, text: str, message: str) -> None:
    result = run(MODULE, "quote", "--rules", str(examples_dir / "rulebook.toml"),
                 "--request", "-", stdin=text)
    assert message in rejected(result)


def test_request_not_utf8_exits_2(examples_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_bytes(b'{"store": "caf\xe9"}')
    result = run(MODULE, "quote",
                 "--rules", str(examples_dir / "rulebook.toml"), "--request", str(path))
    assert "request" in rejected(result)


def test_bad_rulebook_exits_2_naming_the_field(cli, examples_dir: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text((examples_dir / "rulebook.toml").read_text().replace(
        "off_bp = 1200", "off_bp = 12000"))
    result = run(cli, "quote", "--rules", str(rules),
                 "--request", str(examples_dir / "request-member.json"))
    stderr = rejected(result)
    assert "coupon_templates[1] (PCT12).off_bp: " in stderr
    assert str(rules) in stderr


@pytest.mark.parametrize(("toml", "needle"), [
    pytest.param("x = = 1\n", "invalid TOML", id="invalid-toml"),
    pytest.param('version = "v"\ntimezone = "Mars/Base"\n', "timezone: ", id="unknown-zone"),
    pytest.param('version = "v"\ntimezone = "Asia"\n', "timezone", id="zone-directory"),
    pytest.param('version = "v"\ntimezone = "UTC"\nx = 1' + "0" * 5000 + "\n", "",
                 id="5000-digit-integer"),
])
def test_broken_rulebook_exits_2(examples_dir: Path, tmp_path: Path, toml: str,
                                 needle: str) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(toml)
    result = run(MODULE, "quote", "--rules", str(rules),
                 "--request", str(examples_dir / "request-member.json"))
    assert needle in rejected(result)


def test_missing_rulebook_exits_2(cli, examples_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = run(cli, "quote", "--rules", str(missing),
                 "--request", str(examples_dir / "request-member.json"))
    assert str(missing) in rejected(result)


def test_missing_request_exits_2(cli, examples_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    result = run(cli, "quote", "--rules", str(examples_dir / "rulebook.toml"),
                 "--request", str(missing))
    assert str(missing) in rejected(result)


def test_request_directory_exits_2(examples_dir: Path, tmp_path: Path) -> None:
    result = run(MODULE, "quote",
                 "--rules", str(examples_dir / "rulebook.toml"), "--request", str(tmp_path))
    rejected(result)


@pytest.mark.parametrize("args", [
    pytest.param([], id="no-command"),
    pytest.param(["quote"], id="quote-without-options"),
    pytest.param(["price"], id="unknown-command"),
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(MODULE, *args)
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stdout == ""
    assert "usage: settlement" in result.stderr


# --------------------------------------------------------------------------
# engine


def test_engine_default(cli) -> None:
    result = run(cli, "engine", impl=None)
    assert result.returncode == 0, result.stderr
    expected = "fast" if fast_quote() is not None else "pure"
    assert result.stdout == f"{expected}\n"


def test_engine_honours_settlement_impl_pure(cli) -> None:
    result = run(cli, "engine", impl="pure")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pure\n"


@pytest.mark.parametrize("value", ["PURE", " pure "])
def test_settlement_impl_is_trimmed_and_case_blind(value: str) -> None:
    result = run(MODULE, "engine", impl=value)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pure\n"


def test_engine_fast(cli) -> None:
    if fast_quote() is None:
        result = run(cli, "engine", impl="fast")
        assert result.returncode != 0 and result.stdout == ""  # never a silent fallback
    else:
        result = run(cli, "engine", impl="fast")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "fast\n"


def test_bogus_settlement_impl_fails_the_import(cli) -> None:
    result = run(cli, "engine", impl="bogus")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "SETTLEMENT_IMPL" in result.stderr


@pytest.mark.parametrize("value", ["pure,fast"])
def test_other_settlement_impl_values_fail_the_import(value: str) -> None:
    result = run(MODULE, "engine", impl=value)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "SETTLEMENT_IMPL" in result.stderr


def test_bogus_settlement_impl_fails_quote_too(examples_dir: Path) -> None:
    result = run(MODULE, "quote",
                 "--rules", str(examples_dir / "rulebook.toml"),
                 "--request", str(examples_dir / "request-member.json"), impl="bogus")
    assert result.returncode != 0
    assert result.stdout == ""


def test_output_into_a_closed_pipe_ends_quietly(cli, examples_dir: Path) -> None:
    """``settlement ... | head`` with the reader gone: exit 141 (a shell's SIGPIPE status),
    no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        done = subprocess.run(
            [*cli, "quote", "--rules", str(examples_dir / "rulebook.toml"), "--request",
             str(examples_dir / "request-member.json")],
            stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True,
            cwd=ROOT, timeout=60)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")
