"""A measured figure: several runs, their median and range, and its target.

Each run pairs a crm-mcp measurement with its baseline measured right beside it, so a ratio is
computed per run (the machine is shared and noisy: neighbours' load hits both sides of a pair
alike) and the median of those ratios is the figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["DASH", "TIMES", "Figure", "Series"]

TIMES = "\u00d7"
DASH = "\u2013"


@dataclass(frozen=True)
class Series:
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Series:
        if not values:
            raise ValueError("a series needs at least one run")
        return cls(tuple(values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


@dataclass
class Figure:
    case: str
    backend: str
    what: str
    series: Series
    unit: Literal["x", "MiB"]
    bound: Literal["max", "min"] | None
    """"max": the figure must not exceed `limit`; "min": must reach it; None: reported only."""
    limit: float = 0.0
    judge: Literal["median", "worst"] = "median"
    """Judge the median run, or the worst run (memory: every run must stay under the limit)."""
    detail: str = ""
    note: str = ""
    error: str = ""
    """The case failed before this figure could be measured (what went wrong)."""

    @property
    def judged(self) -> float:
        if self.judge == "median":
            return self.series.median
        return self.series.high if self.bound == "max" else self.series.low

    @classmethod
    def failed(cls, case: str, backend: str, error: str) -> Figure:
        return cls(
            case=case, backend=backend, what="(case failed)", series=Series.of([0.0]), unit="x", bound=None, error=error
        )

    @property
    def met(self) -> bool | None:
        if self.error:
            return False
        if self.bound is None:
            return None
        return self.judged <= self.limit if self.bound == "max" else self.judged >= self.limit

    @property
    def target(self) -> str:
        if self.bound is None:
            return "reported for scale"
        sign = "≤" if self.bound == "max" else "≥"
        value = f"{self.limit:.2f}{TIMES}" if self.unit == "x" else f"{self.limit:.0f} MiB"
        return f"{sign} {value}" + (" (every run)" if self.judge == "worst" else "")

    def shown(self) -> str:
        if self.error:
            return "error"

        def fmt(value: float) -> str:
            return f"{value:.2f}{TIMES}" if self.unit == "x" else f"{value:.0f} MiB"

        s = self.series
        if len(s.values) == 1:
            return fmt(s.median)
        return f"{fmt(s.median)} ({fmt(s.low)}{DASH}{fmt(s.high)})"

    @property
    def verdict(self) -> str:
        if self.error:
            return f"**error**: {self.error}"
        met = self.met
        if met is None:
            return "n/a"
        return "met" if met else "**not met**"
