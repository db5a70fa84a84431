"""How the server process asks glibc's allocator to hand large blocks back to the OS.

A server moves files in ~1 MiB pieces and, for `resources/read` and `read_file`, builds answers of
tens of MiB (a file's base64). glibc's defaults suit neither: its mmap threshold grows to the largest
block freed (up to 32 MiB), so after the first large answer every later one comes from the heap and
its freed space is kept; and with the threshold fixed, its trim threshold stays at 128 KiB, so the
heap top is given back and faulted in again for every pair of pieces in flight. `serve` calls
`return_large_blocks_to_os` once at start-up, for every transport (and in every worker process).
"""

from __future__ import annotations

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "return_large_blocks_to_os"]

MMAP_THRESHOLD = 4 << 20
"""Allocations of at least this size get their own mapping, returned to the OS when freed. 4 MiB, not
1: transfer pieces and frame slices (about 1 MiB) then reuse heap memory instead of being mapped and
faulted in each time (a 20 MiB read: 29,000 page faults instead of 49,000, about 20 ms less CPU), for
3 MiB more RSS kept after a large answer. Transfer piece sizes are kept below it (tests check)."""

TRIM_THRESHOLD = 8 << 20
"""Free memory at the top of the heap kept for reuse rather than given back (glibc's default, once the
mmap threshold is fixed, is 128 KiB: a 200 MiB transfer then faulted 17,000-22,000 pages back in;
with 8 MiB, under 900). At most 8 MiB more RSS when idle."""

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3


def return_large_blocks_to_os() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD` and its trim threshold at `TRIM_THRESHOLD`.

    By default glibc raises the mmap threshold to the size of the largest block freed: after the first
    large answer, every later 27 MiB string came from the heap, whose freed space is kept, so the server
    stayed ~130 MiB above its idle size after one read and its peak grew by a frame per read. Fixed
    values stop the adjustment. Returns False where there is no glibc (nothing changed)."""
    import ctypes  # here, not at the top: only `serve` needs it

    try:
        libc = ctypes.CDLL(None)  # the interpreter's own symbols, which include the C library's
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt does nothing
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
