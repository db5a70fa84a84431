"""side_by_side: the failing side's own error, and the other side stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from crm_mcp._tasks import side_by_side, write_behind
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


async def test_write_behind_writes_every_piece_in_order_with_two_in_flight_at_most() -> None:
    written: list[bytes] = []
    produced = 0
    in_flight: list[int] = []

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal produced
        for number in range(10):
            produced += 1
            in_flight.append(produced - len(written))
            yield bytes([number])

    async def write(piece: bytes) -> None:
        await anyio.sleep(0.001)
        written.append(piece)

    await write_behind(pieces(), write)
    assert written == [bytes([number]) for number in range(10)]
    assert max(in_flight) <= 2
