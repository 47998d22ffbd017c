"""``SETTLEMENT_IMPL`` picks the engine at import time; ``fast`` never falls back silently.

Each case runs in a fresh interpreter. "Extension missing" is simulated by a
meta-path finder that refuses to import ``settlement._fast._kernel``, the
way an unbuilt checkout behaves.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

HIDE_KERNEL = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "settlement._fast._kernel":
            raise ImportError("extension not built (simulated)")
        return None
sys.meta_path.insert(0, Hide())
"""


def run(code: str, impl: str | None, hide_kernel: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SETTLEMENT_IMPL"}
    if impl is not None:
        env["SETTLEMENT_IMPL"] = impl
    prelude = HIDE_KERNEL if hide_kernel else ""
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


REPORT = "import settlement; print(settlement.IMPLEMENTATION, settlement.quote.__module__)"


@pytest.mark.parametrize("impl,hide,want", [
    (None, False, "fast settlement._fast._kernel"),
    ("fast", False, "fast settlement._fast._kernel"),
    ("pure", False, "pure settlement.pricing"),
    ("pure", True, "pure settlement.pricing"),
    (None, True, "pure settlement.pricing"),
    (" Pure ", False, "pure settlement.pricing"),
])
def test_selection(impl: str | None, hide: bool, want: str) -> None:
    from .conftest import require_fast

    if not hide and (impl or "fast").strip().lower() == "fast":
        require_fast()
    result = run(REPORT, impl, hide)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == want


def test_fast_without_extension_is_an_import_error() -> None:
    result = run(REPORT, "fast", hide_kernel=True)
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "extension not built" in result.stderr


def test_unknown_implementation_is_an_import_error() -> None:
    result = run(REPORT, "cython")
    assert result.returncode != 0
    assert "SETTLEMENT_IMPL='cython'" in result.stderr


def test_load_rulebook_compiles_for_the_active_engine() -> None:
    """The kernel's compiled form is built at load time, not by the first checkout."""
    from .conftest import require_fast

    require_fast()
    code = ("import settlement; rb = settlement.load_rulebook('examples/rulebook.toml'); "
            "print(sorted(rb.compiled))")
    result = run(code, "fast")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['fast']"


def test_tier_limit_is_a_rulebook_error() -> None:
    import settlement

    from .conftest import make_rulebook

    body = "".join(f"[[tiers]]\ncode = 't{i}'\nrank = {i}\n" for i in range(65))
    with pytest.raises(settlement.RulebookError) as err:
        make_rulebook(body)
    assert err.value.field == "tiers"
    make_rulebook("".join(f"[[tiers]]\ncode = 't{i}'\nrank = {i}\n" for i in range(64)))
