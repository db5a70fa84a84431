"""Progress notifications are throttled but never drop the final one."""

from __future__ import annotations

from typing import Any

import pytest

from crm_mcp.progress import ThrottledProgress

pytestmark = pytest.mark.anyio


class _RecordingContext:
    def __init__(self) -> None:
        self.reports: list[tuple[float, float | None, str | None]] = []

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        self.reports.append((progress, total, message))


async def test_many_small_steps_send_few_notifications_and_the_last() -> None:
    ctx = _RecordingContext()
    progress = ThrottledProgress(ctx, "uploaded")  # type: ignore[arg-type]
    for done in range(1, 1001):
        await progress(done, 1000)
    assert len(ctx.reports) < 10
    assert ctx.reports[-1] == (1000, 1000, "uploaded 1,000 of 1,000 bytes")


async def test_unknown_total_is_reported_without_one() -> None:
    ctx: Any = _RecordingContext()
    await ThrottledProgress(ctx, "read")(5, None)
    assert ctx.reports == [(5, None, "read 5 bytes")]
