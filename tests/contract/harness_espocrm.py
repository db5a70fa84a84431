"""EspoCRM harnesses: the simulator in-process (API key, 8.4), in-process as 9.1 with HMAC and a
stream-note file, and over a real loopback socket (uvicorn) with Basic auth."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import uvicorn

from tests.contract.harnesses import Harness, Started
from tests.simulators.espocrm import API_KEY, PASSWORD, SECRET, seeded_simulator

__all__ = ["HARNESSES"]


def _toml(url: str, auth: str) -> str:
    return f'[backends.espo]\nvendor = "espocrm"\nurl = "{url}"\n{auth}contact_photo_field = "cPhoto"\n'


@asynccontextmanager
async def _inprocess(scratch: Path) -> AsyncIterator[Started]:
    sim = seeded_simulator()
    yield Started(_toml("http://espo.test", f'api_key = "{API_KEY}"\n'), httpx.ASGITransport(app=sim))


@asynccontextmanager
async def _hmac_91(scratch: Path) -> AsyncIterator[Started]:
    sim = seeded_simulator((9, 1))
    auth = f'api_key = "{API_KEY}-h"\nsecret_key = "{SECRET}"\n'
    yield Started(_toml("http://espo.test/", auth), httpx.ASGITransport(app=sim))


@asynccontextmanager
async def _socket(scratch: Path) -> AsyncIterator[Started]:
    sim = seeded_simulator()
    config = uvicorn.Config(sim, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="espocrm-simulator", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the EspoCRM simulator did not start")
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        auth = f'username = "jane"\npassword = "{PASSWORD}"\n'
        yield Started(_toml(f"http://127.0.0.1:{port}", auth))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


MISSING = "0123456789abcdef0"
HARNESSES = [
    Harness(backend="espo", start=_inprocess, missing_id=MISSING, malformed_id="../etc", label="espocrm-inprocess"),
    Harness(backend="espo", start=_hmac_91, missing_id=MISSING, malformed_id="../etc", label="espocrm-hmac-9.1"),
    Harness(backend="espo", start=_socket, missing_id=MISSING, malformed_id="../etc", label="espocrm-socket"),
]
