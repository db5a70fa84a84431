"""The outcomes of faulted runs, collected for the summary table conftest.py prints."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OUTCOMES", "Outcome", "record"]


@dataclass
class Outcome:
    vendor: str
    operation: str
    kind: str
    step: int
    succeeded: bool
    """The tool returned a result (else a clear tool error)."""
    orphans: int = 0
    duplicates: int = 0
    leftovers: int = 0
    """Records a failed write left that the vendor's API cannot remove (not visible in any listing)."""
    problem: bool = False


OUTCOMES: list[Outcome] = []


def record(outcome: Outcome) -> None:
    OUTCOMES.append(outcome)
