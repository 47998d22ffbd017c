"""Turn a pytest-benchmark JSON of ``test_engine_bench.py`` into the markdown table.

Usage: ``python bench/report.py bench/results/engine.json`` prints the table
and rewrites the part of ``bench/README.md`` between the table markers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BEGIN = "<!-- engine-table:begin -->"
END = "<!-- engine-table:end -->"


def table(data: dict) -> str:
    """Markdown: one row per basket shape, pure and fast medians side by side."""
    rows: dict[str, dict[str, dict]] = {}
    order: list[str] = []
    for bench in data["benchmarks"]:
        group = bench["group"]
        if group not in rows:
            rows[group] = {}
            order.append(group)
        rows[group][bench["extra_info"]["engine"]] = bench["stats"]
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    lines = [
        f"Measured {data.get('datetime', '?')[:19]} on {cpu}"
        f" ({machine.get('python_implementation', '')} {machine.get('python_version', '')}),"
        " both engines in one pytest-benchmark run; medians.",
        "",
        "| basket | pure median | fast median | fast min | speedup (median) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for group in order:
        pure, fast = rows[group].get("pure"), rows[group].get("fast")
        if not pure or not fast:
            continue
        lines.append(
            f"| {group} | {pure['median'] * 1e6:,.1f} µs | {fast['median'] * 1e6:,.2f} µs"
            f" | {fast['min'] * 1e6:,.2f} µs | {pure['median'] / fast['median']:,.1f}x |")
    return "\n".join(lines)


def main() -> int:
    """Print the table; splice it into bench/README.md when the markers are there."""
    data = json.loads(Path(sys.argv[1]).read_text())
    text = table(data)
    print(text)
    readme = Path(__file__).with_name("README.md")
    if readme.exists():
        body = readme.read_text()
        if BEGIN in body and END in body:
            head, rest = body.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
