"""side_by_side: the failing side's own error, and the other side stopped."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from crm_mcp._tasks import side_by_side
from crm_mcp.errors import TooLargeError

pytestmark = pytest.mark.anyio


async def test_side_by_side_raises_the_failing_side_s_own_error_and_stops_the_other() -> None:
    stopped = False

    async def fails() -> None:
        await anyio.lowlevel.checkpoint()
        raise TooLargeError("too big")

    async def waits() -> None:
        nonlocal stopped
        try:
            await anyio.sleep(10)
        finally:
            stopped = True

    with pytest.raises(TooLargeError, match="too big"):  # the error itself, not an ExceptionGroup
        await side_by_side(waits, fails)
    assert stopped


async def test_side_by_side_returns_when_both_sides_finish() -> None:
    done: list[str] = []

    async def one() -> None:
        await anyio.lowlevel.checkpoint()
        done.append("one")

    async def two() -> None:
        done.append("two")

    await side_by_side(one, two)
    assert sorted(done) == ["one", "two"]
