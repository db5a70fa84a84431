"""Running a reader and a writer side by side, with plain errors.

A transfer overlaps reading piece N+1 with writing piece N (the tool's `save_file`, the local store's
spool): `write_behind`. anyio's task group reports a failure as an ExceptionGroup; callers catch
`TooLargeError`, `BackendError` and the like, so `side_by_side` raises the failing side's own error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

__all__ = ["side_by_side", "write_behind"]


async def side_by_side(first: Callable[[], Awaitable[None]], second: Callable[[], Awaitable[None]]) -> None:
    """Run two coroutines side by side (a reader and a writer); if one fails, cancel the other and
    raise that error itself, not an ExceptionGroup, so callers keep catching `TooLargeError` and the like."""
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(first)
            group.start_soon(second)
    except BaseExceptionGroup as failed:
        error = _first_error(failed)
    if error is not None:
        raise error


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that made a task group fail: the first that is not the cancellation it caused."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, anyio.get_cancelled_exc_class()):
            return error
    return group.exceptions[0]


async def write_behind(pieces: AsyncIterator[bytes], write: Callable[[bytes], Awaitable[None]]) -> None:
    """`write` every piece, in order, while the next one is produced: the source and the disk overlap.
    The hand-over is unbuffered, so at most two pieces are in flight (one being written, one waiting)
    and memory stays flat whatever the file's size. If either side fails, the other is stopped and
    that side's error raised; a piece the source refuses (a limit check) is never written."""
    send, receive = anyio.create_memory_object_stream[bytes](0)

    async def produce() -> None:
        async with send:
            async for piece in pieces:
                await send.send(piece)

    async def consume() -> None:
        async with receive:
            async for piece in receive:
                await write(piece)

    await side_by_side(produce, consume)
