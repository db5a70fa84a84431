"""The contract suite against the SuperOffice backend over the simulator: in-process and over a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.contract.harnesses import Harness, Started
from tests.simulators.superoffice import SuperOfficeSimulator, contract_simulator, serve

__all__ = ["HARNESSES", "superoffice_toml"]

MISSING = "999999"


def superoffice_toml(url: str, sim: SuperOfficeSimulator, name: str = "so") -> str:
    token = f'application_token = "{sim.application_token}"\n' if sim.application_token else ""
    return (
        f'[backends.{name}]\nvendor = "superoffice"\nurl = "{url}"\n'
        f'username = "{sim.username}"\npassword = "{sim.password}"\n{token}'
    )


@asynccontextmanager
async def _inprocess(scratch: Path) -> AsyncIterator[Started]:
    sim = contract_simulator()
    yield Started(superoffice_toml(f"https://sod.superoffice.test/{sim.tenant}", sim), httpx.ASGITransport(app=sim))


@asynccontextmanager
async def _socket(scratch: Path) -> AsyncIterator[Started]:
    # Online-like: the application token is checked, and errors come back as SOAP faults.
    sim = contract_simulator(application_token="app-token-123456", error_style="fault", expiry_style="header")
    with serve(sim) as url:
        yield Started(superoffice_toml(url, sim))


HARNESSES = [
    Harness(backend="so", start=_inprocess, missing_id=MISSING, malformed_id="abc", label="superoffice-inprocess"),
    Harness(backend="so", start=_socket, missing_id=MISSING, malformed_id="abc", label="superoffice-socket"),
]
