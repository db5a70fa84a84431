"""`python -m benchmarks`: run the cases against the local backend and every vendor simulator, print
the table, and (full runs) write it into benchmarks/README.md between its result markers.

`--quick` uses small payloads and fewer runs: a smoke test that every case still works (it needs
nothing but this repository, its virtualenv and loopback sockets), not figures to quote.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import anyio

from benchmarks.cases import CASES, Sizes
from benchmarks.figures import Figure
from benchmarks.procmem import MiB
from benchmarks.report import render, write_readme
from benchmarks.simulators import VENDORS, running_simulator
from benchmarks.workspace import open_workspace, top_up_files

__all__ = ["main"]

BACKENDS = ("local", *VENDORS)
ORDER = ("download", "listing", "concurrency", "startup", "transfers")
CASE_NUMBERS = {"download": "1", "listing": "4", "concurrency": "5", "startup": "6", "transfers": "2"}
README = Path(__file__).with_name("README.md")

FULL = Sizes(download=20 * MiB, big=200 * MiB, runs=5, big_runs=3, listing_runs=11, startup_runs=5, concurrency_runs=3)
QUICK = Sizes(download=2 * MiB, big=12 * MiB, runs=2, big_runs=1, listing_runs=3, startup_runs=2, concurrency_runs=1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small payloads, few runs (a smoke test)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--cases", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--runs", type=int, help="runs per figure (default: 5, quick: 2)")
    parser.add_argument("--no-readme", action="store_true", help="full run: print only, leave README.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, configs) for inspection")
    parser.add_argument(
        "--workers", type=int, default=1, help="case 5: serve HTTP with this many processes (not 1: prints only)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="case 5: the backends' max_connections (default: one per concurrent call, 64; else prints only)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    if args.workers != 1:
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        sizes = Sizes(**{**sizes.__dict__, "workers": args.workers})

    if args.connections is not None:
        if not 1 <= args.connections <= 256:
            parser.error("--connections must be between 1 and 256 (the range max_connections accepts)")
        sizes = Sizes(**{**sizes.__dict__, "connections": args.connections})

    scratch = Path(tempfile.mkdtemp(prefix="crm-mcp-bench-"))
    load_before = _load()
    started = time.monotonic()
    try:
        figures = anyio.run(_run_all, args.backends, args.cases, sizes, scratch)
    finally:
        if args.keep:
            print(f"scratch kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    context = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks"
        + (" --quick" if args.quick else "")
        + (f" --workers {args.workers}" if args.workers != 1 else "")
        + (f" --connections {args.connections}" if args.connections is not None else ""),
        "load_before": load_before,
        "load_after": _load(),
        "machine": f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}",
        "duration": f"{elapsed / 60:.1f} min",
        "sizes": sizes,
    }
    table = render(figures, context)
    print(table)
    complete = set(args.backends) == set(BACKENDS) and set(args.cases) == set(ORDER)
    default_pool = args.connections is None or args.connections == sizes.concurrency
    if complete and not args.quick and not args.no_readme and args.workers == 1 and default_pool:
        write_readme(README, table)
        print(f"written to {README}", file=sys.stderr)
    if any(figure.met is False for figure in figures):
        print("some targets are not met (see the table)", file=sys.stderr)
    if any(figure.error for figure in figures):
        raise SystemExit("some cases failed (see the table and the tracebacks above)")


async def _run_all(backends: list[str], cases: list[str], sizes: Sizes, scratch: Path) -> list[Figure]:
    figures: list[Figure] = []
    for name in backends:
        log = scratch / f"simulator-{name}.log"
        manager = running_simulator(name, log) if name != "local" else nullcontext(None)
        with manager as simulator:
            max_transfer = max(sizes.big, sizes.download) * 2
            async with open_workspace(name, scratch / name, simulator, max_transfer) as workspace:
                count = await top_up_files(workspace)
                print(f"[{name}] case has {count} files", file=sys.stderr)
                for case in (case for case in ORDER if case in cases):
                    began = time.monotonic()
                    try:
                        found = await CASES[case](workspace, sizes)
                    except Exception as exc:  # one failed case must not cost the other figures
                        traceback.print_exc()
                        found = [Figure.failed(CASE_NUMBERS[case], name, f"{type(exc).__name__}: {exc}"[:300])]
                    figures += found
                    for figure in found:
                        print(
                            f"[{name}] {figure.case} {figure.what}: {figure.shown()} "
                            f"target {figure.target}: {figure.verdict}  {figure.detail}",
                            file=sys.stderr,
                        )
                    print(f"[{name}] {case} took {time.monotonic() - began:.1f} s", file=sys.stderr)
    return figures


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
