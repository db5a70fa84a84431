"""The contract suite against the Wello backend, over the Wello simulator on a loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread

from tests.contract.harnesses import Harness, Started
from tests.simulators.wello import WelloSimulator, serve


@asynccontextmanager
async def _wello(scratch: Path) -> AsyncIterator[Started]:
    sim = WelloSimulator().seed()
    manager = serve(sim)
    url = await anyio.to_thread.run_sync(manager.__enter__)
    try:
        yield Started(
            "[backends.wello]\n"
            'vendor = "wello"\n'
            f'url = "{url}"\n'
            f'username = "{sim.username}"\n'
            f'password = "{sim.password}"\n'
            f'domain = "{sim.domain}"\n'
            'api_version = "1"\n'
        )
    finally:
        await anyio.to_thread.run_sync(manager.__exit__, None, None, None)


HARNESS = Harness(
    backend="wello",
    start=_wello,
    missing_id="6f1c2a4e-0000-4000-8000-000000000000",
    malformed_id="JOB-1",
)
