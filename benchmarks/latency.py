"""A simulated CRM round-trip time, wrapped around any simulator's ASGI app.

The simulators answer in microseconds; a real CRM takes tens of milliseconds. `Latency` delays
every request by `seconds` (without blocking the event loop, so concurrent requests overlap as
they would against a real server). `POST /__bench/latency?seconds=0.05` changes the delay at run
time, so one simulator process serves both the cases that want latency and those that do not.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CONTROL_PATH", "Latency"]

CONTROL_PATH = "/__bench/latency"


class Latency:
    def __init__(self, app: ASGIApp, seconds: float = 0.0) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CONTROL_PATH:
            await self._control(scope, send)
            return
        if scope["type"] == "http" and self.seconds:
            await anyio.sleep(self.seconds)
        await self.app(scope, receive, send)

    async def _control(self, scope: Scope, send: Send) -> None:
        query = dict(part.split("=", 1) for part in scope.get("query_string", b"").decode().split("&") if "=" in part)
        status = 204
        try:
            self.seconds = float(query["seconds"])
        except (KeyError, ValueError):
            status = 400
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
