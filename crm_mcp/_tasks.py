"""Running a reader and a writer side by side, with plain errors.

A transfer overlaps reading piece N+1 with writing piece N (the tool's `save_file`, the local store's
spool). anyio's task group reports a failure as an ExceptionGroup; callers catch `TooLargeError`,
`BackendError` and the like, so the failing side's own error is raised instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

__all__ = ["side_by_side"]


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
