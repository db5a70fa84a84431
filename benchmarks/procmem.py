"""A process's memory as the kernel counts it: resident set now and its high-water mark.

Read from `/proc/<pid>/status` (Linux) so the figure is the server process's own, not the
benchmark's. Writing 5 to `/proc/<pid>/clear_refs` resets the high-water mark, which lets one
server process measure several transfers, each against the idle level just before it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Memory", "MiB", "cpu_seconds", "memory", "reset_peak", "tree_cpu_seconds"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Memory:
    rss: int
    """Resident set size now (bytes)."""
    peak: int
    """Largest resident set size since start or the last `reset_peak` (bytes)."""


def memory(pid: int) -> Memory:
    """VmRSS and VmHWM of `pid`."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return Memory(rss=values["VmRSS"], peak=values["VmHWM"])


def reset_peak(pid: int) -> None:
    """Set the high-water mark of `pid` back to its current RSS (Linux >= 4.0, same user)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its live descendants (a server's worker processes)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # exited meanwhile
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # after the command name: state is field 3, utime field 14 and stime field 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
