"""The running server's state: the settings and the open backends, shared by every request.

Opened once by the server's lifespan (so connection pools and the local store's database are
reused across calls and, over HTTP, across requests), closed when the server stops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx

from crm_mcp.backends import Backend, BackendContext, vendor_class
from crm_mcp.backends.base import Capabilities
from crm_mcp.config import Settings
from crm_mcp.errors import NotFoundError

__all__ = ["CrmApp", "build_backends", "open_app"]

logger = logging.getLogger(__name__)


@dataclass
class CrmApp:
    """Settings plus the configured backends by name."""

    settings: Settings
    backends: dict[str, Backend]

    def backend(self, name: str | None) -> Backend:
        """The backend called `name` (None: the default one); `NotFoundError` naming the choices."""
        key = name or self.settings.default_backend
        try:
            return self.backends[key]
        except KeyError:
            names = ", ".join(sorted(self.backends))
            raise NotFoundError(
                f"there is no backend named {key!r}; configured backends: {names} (see list_backends)"
            ) from None

    def read_only(self, name: str) -> bool:
        """`read_only = true` on the backend's table, or the whole server started with --read-only."""
        configured = self.settings.backends.get(name)
        return self.settings.read_only or (configured is not None and configured.read_only)

    def capabilities(self, name: str) -> Capabilities:
        """What backend `name` can do here: its own capabilities, with this server's read-only setting."""
        return self.backends[name].capabilities.model_copy(update={"read_only": self.read_only(name)})


def build_backends(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Backend]:
    """Construct (not open) one backend per configured entry. `transport` is the tests' seam for
    in-process vendor simulators."""
    context = BackendContext(
        home=settings.home, max_transfer_bytes=settings.limits.max_transfer_bytes, transport=transport
    )
    backends: dict[str, Backend] = {}
    for name, backend_settings in settings.backends.items():
        cls = vendor_class(backend_settings.vendor)
        backends[name] = cls(name, backend_settings, context)  # type: ignore[call-arg]
    return backends


@asynccontextmanager
async def open_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[CrmApp]:
    """Open every backend for the lifetime of the server; close them all on the way out."""
    async with AsyncExitStack() as stack:
        backends = build_backends(settings, transport)
        for name, backend in backends.items():
            await stack.enter_async_context(backend)
            logger.info("backend %s (%s) ready", name, backend.vendor)
        yield CrmApp(settings=settings, backends=backends)
