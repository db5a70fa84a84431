"""Prints the fault-injection summary table at the end of the test run."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tests.faults.summary import OUTCOMES, Outcome

COLUMNS = ("cases", "survived", "recovered", "orphans", "duplicates", "leftovers")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not OUTCOMES:
        return
    rows: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in OUTCOMES:
        rows[outcome.vendor].append(outcome)
    write = terminalreporter.write_line
    terminalreporter.section("fault injection")
    write(f"{'vendor':<12}" + "".join(f"{name:>11}" for name in COLUMNS))
    total = [0] * len(COLUMNS)
    for vendor in sorted(rows):
        outcomes = rows[vendor]
        figures = [
            len(outcomes),
            sum(not o.problem for o in outcomes),
            sum(o.succeeded for o in outcomes),
            sum(o.orphans for o in outcomes),
            sum(o.duplicates for o in outcomes),
            sum(o.leftovers for o in outcomes),
        ]
        total = [a + b for a, b in zip(total, figures, strict=True)]
        write(f"{vendor:<12}" + "".join(f"{figure:>11}" for figure in figures))
    write(f"{'all':<12}" + "".join(f"{figure:>11}" for figure in total))
    write(
        "survived: the right result or a clear tool error, with the CRM consistent; recovered: the tool succeeded "
        "despite the fault; leftovers: records the vendor's API cannot delete, listed nowhere"
    )
