"""Wello harnesses: the simulator over a loopback socket (jobs as cases, X-Api-Version sent), and
in-process with `case_table = "task"` (the same data with the cases as Service Desk tasks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
import httpx

from tests.contract.harnesses import Harness, Started
from tests.simulators.wello import WelloSimulator, serve

__all__ = ["HARNESSES"]

MISSING_ID = "6f1c2a4e-0000-4000-8000-000000000000"


def _toml(url: str, sim: WelloSimulator, extra: str) -> str:
    return (
        "[backends.wello]\n"
        'vendor = "wello"\n'
        f'url = "{url}"\n'
        f'username = "{sim.username}"\n'
        f'password = "{sim.password}"\n'
        f'domain = "{sim.domain}"\n'
        f"{extra}"
    )


@asynccontextmanager
async def _socket(scratch: Path) -> AsyncIterator[Started]:
    sim = WelloSimulator().seed()
    sim.faults.require_api_version = True  # so a backend that forgot X-Api-Version fails every test
    manager = serve(sim)
    url = await anyio.to_thread.run_sync(manager.__enter__)
    try:
        yield Started(_toml(url, sim, 'api_version = "1"\n'))
    finally:
        await anyio.to_thread.run_sync(manager.__exit__, None, None, None)


@asynccontextmanager
async def _tasks(scratch: Path) -> AsyncIterator[Started]:
    sim = WelloSimulator().seed(case_table="task")
    yield Started(_toml("http://wello.test", sim, 'case_table = "task"\n'), httpx.ASGITransport(app=sim))


HARNESSES = [
    Harness(backend="wello", start=_socket, missing_id=MISSING_ID, malformed_id="JOB-1"),
    Harness(backend="wello", start=_tasks, missing_id=MISSING_ID, malformed_id="TSK-7", label="wello-task"),
]
