"""Progress reporting for long transfers.

Clients that send no progressToken give up on calls that stay silent for about a minute; those
that do send one get `notifications/progress` — throttled, because a 100 MB transfer in 64 KiB
chunks would otherwise send thousands of them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import Context

__all__ = ["MIN_INTERVAL_SECONDS", "Progress", "ThrottledProgress"]

Progress = Callable[[int, int | None], Awaitable[None]]
"""Called with (bytes done, bytes total or None) while a transfer runs."""

MIN_INTERVAL_SECONDS = 0.2


class ThrottledProgress:
    """A `Progress` that forwards to `ctx.report_progress` at most every 0.2 s, plus the final update
    (a no-op when the client sent no progressToken)."""

    def __init__(self, ctx: Context[Any, Any], verb: str) -> None:
        self._ctx = ctx
        self._verb = verb
        self._last = 0.0

    async def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if done != total and now - self._last < MIN_INTERVAL_SECONDS:
            return
        self._last = now
        of = f" of {total:,}" if total is not None else ""
        await self._ctx.report_progress(done, total, f"{self._verb} {done:,}{of} bytes")
