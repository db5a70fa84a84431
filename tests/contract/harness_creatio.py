"""The contract suite against the Creatio backend over the simulator: in-process (forms and OAuth) and
over a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.contract.harnesses import Harness, Started
from tests.simulators.creatio import CreatioSimulator, contract_simulator, serve

__all__ = ["HARNESSES", "creatio_toml"]

MISSING = "6f1c2a4e-0000-4000-8000-000000000000"


def creatio_toml(url: str, sim: CreatioSimulator, name: str = "creatio") -> str:
    return (
        f'[backends.{name}]\nvendor = "creatio"\nurl = "{url}"\nauth = "forms"\n'
        f'username = "{sim.username}"\npassword = "{sim.password}"\n'
    )


@asynccontextmanager
async def _inprocess(scratch: Path) -> AsyncIterator[Started]:
    sim = contract_simulator()
    yield Started(creatio_toml("https://creatio.test", sim), httpx.ASGITransport(app=sim))


@asynccontextmanager
async def _oauth(scratch: Path) -> AsyncIterator[Started]:
    """OAuth client credentials, with expiry answered as a bare 401 (as Creatio does for a bearer token)."""
    sim = contract_simulator(expiry_style="401")
    toml = (
        '[backends.creatio]\nvendor = "creatio"\nurl = "https://creatio.test"\nauth = "oauth"\n'
        'token_url = "https://creatio-is.test/connect/token"\n'
        f'client_id = "{sim.client_id}"\nclient_secret = "{sim.client_secret}"\n'
    )
    yield Started(toml, httpx.ASGITransport(app=sim))


@asynccontextmanager
async def _socket(scratch: Path) -> AsyncIterator[Started]:
    sim = contract_simulator(expiry_style="redirect")
    with serve(sim) as url:
        yield Started(creatio_toml(url, sim))


HARNESSES = [
    Harness(
        backend="creatio",
        start=_inprocess,
        missing_id=MISSING,
        malformed_id="CS-1001",
        label="creatio-inprocess",
    ),
    Harness(
        backend="creatio",
        start=_oauth,
        missing_id=MISSING,
        malformed_id="CS-1001",
        label="creatio-oauth",
    ),
    Harness(
        backend="creatio",
        start=_socket,
        missing_id=MISSING,
        malformed_id="CS-1001",
        label="creatio-socket",
    ),
]
