"""Running an ASGI simulator on a real loopback socket, shared by the simulators' `serve` helpers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["serve_on_loopback"]


@contextmanager
def serve_on_loopback(app: Any, name: str) -> Iterator[int]:
    """Run `app` with uvicorn on a free 127.0.0.1 port in a background thread; yield the port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name=f"{name}-simulator", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the {name} simulator did not start")
            threading.Event().wait(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
