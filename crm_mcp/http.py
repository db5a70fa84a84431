"""The one place httpx clients are made, so timeouts, pool limits, retries and redaction are the same everywhere.

Vendor backends and URL sources both get their clients here. A backend's `[backends.<name>]` table may
tune its client (`timeouts`, `retries`, `max_connections`: see `Timeouts` and `Retries`); the
retry rule itself lives in `crm_mcp.retry`. Secrets must never reach a log line: `redact_headers`
is what any request logging goes through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field

from crm_mcp import __version__
from crm_mcp.retry import RetryPolicy, RetryTransport

__all__ = [
    "DEFAULT_TIMEOUT",
    "SECRET_HEADERS",
    "USER_AGENT",
    "ConnectionSlots",
    "Retries",
    "Timeouts",
    "new_client",
    "redact_headers",
]

USER_AGENT = f"crm-mcp/{__version__}"

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
"""Generous read/write timeouts: a slow CRM streaming 100 MB is normal, a silent one for a minute is not."""


class Timeouts(BaseModel):
    """`[backends.<name>.timeouts]`, in seconds. Generous read/write: a slow CRM streaming 100 MB is
    normal, a silent one for a minute is not. `pool` is how long a call waits for a free connection
    when `max_connections` are busy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(default=10.0, gt=0, le=600)
    read: float = Field(default=60.0, gt=0, le=3600)
    write: float = Field(default=60.0, gt=0, le=3600)
    pool: float = Field(default=30.0, gt=0, le=3600)

    def as_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


class Retries(BaseModel):
    """`[backends.<name>.retries]`: how often a request is tried when the rule of `crm_mcp.retry`
    allows it again (`attempts = 1` turns retries off), and how long to wait in between."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(default=3, ge=1, le=10)
    backoff: float = Field(default=0.5, ge=0, le=60)
    """First wait in seconds, doubled on each further attempt, with full jitter."""
    max_backoff: float = Field(default=8.0, ge=0, le=300)
    max_retry_after: float = Field(default=30.0, ge=0, le=600)
    """Longest `Retry-After` crm-mcp waits for; a server asking for more gets its error passed on."""

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.attempts,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            max_retry_after=self.max_retry_after,
        )


SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-hmac-authorization",
        "espo-authorization",
        "bpmcsrf",
        "so-apptoken",
    }
)


class ConnectionSlots(httpx.AsyncBaseTransport):
    """At most `limit` requests in flight, each on a connection of its own: `limit` slots, each a
    transport whose pool holds one connection, handed out most recently used first (its connection
    is the likeliest to be still open) and waited for, in order, up to the pool timeout.

    Why not one httpcore pool of `limit` connections: that pool costs CPU that grows with the
    burst. Each arriving request and each closed response rescans every queued request against every
    connection (and polls each idle connection's socket); and requests that arrive together are all
    assigned the same idle connection, so all but one wake up, find it taken and queue again. 64
    listings at once on 20 connections made about 480 such rescans and 350 of those futile wake-ups per
    burst: a third of a Creatio listing's CPU in the burst. A slot's pool only ever sees one request
    at a time. What reaches the CRM at once (`limit` connections) is unchanged.

    A slot is held until its response is closed (a streamed download keeps its connection, and so
    its slot, until then) and given back exactly once."""

    def __init__(self, limit: int, make: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._make = make
        self._free: list[httpx.AsyncBaseTransport] = []
        self._made: list[httpx.AsyncBaseTransport] = []
        self._slots = anyio.Semaphore(limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        try:
            with anyio.fail_after(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(
                "no connection to the CRM became free within the pool timeout: all of max_connections were busy",
                request=request,
            ) from None
        slot = self._free.pop() if self._free else self._new()
        try:
            response = await slot.handle_async_request(request)
        except BaseException:
            self._give_back(slot)
            raise
        if response.is_closed:  # already read whole (a transport that answers from memory)
            self._give_back(slot)
        else:
            response.stream = _Releasing(response.stream, lambda: self._give_back(slot))
        return response

    def _new(self) -> httpx.AsyncBaseTransport:
        slot = self._make()
        self._made.append(slot)
        return slot

    def _give_back(self, slot: httpx.AsyncBaseTransport) -> None:
        self._free.append(slot)
        self._slots.release()

    async def aclose(self) -> None:
        for slot in self._made:
            await slot.aclose()


def _single_connections() -> Callable[[], httpx.AsyncBaseTransport]:
    """Transports of one keep-alive connection each, sharing one TLS context (making a context
    reads the CA bundle: once per client, not once per slot)."""
    context = httpx.create_ssl_context()
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return lambda: httpx.AsyncHTTPTransport(verify=context, limits=one)


class _Releasing(httpx.AsyncByteStream):
    """A response body that gives its `ConnectionSlots` slot back when closed."""

    def __init__(self, stream: httpx.AsyncByteStream | httpx.SyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        try:
            assert isinstance(self._stream, httpx.AsyncByteStream)
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


def new_client(
    *,
    base_url: str = "",
    timeout: httpx.Timeout | Timeouts = DEFAULT_TIMEOUT,
    max_connections: int = 20,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    retries: Retries | None = None,
) -> httpx.AsyncClient:
    """An `AsyncClient` with crm-mcp's defaults. Redirects are never followed automatically:
    a redirect can point at an address the caller must re-check (URL sources) or at a login page
    (an expired CRM session), and both need a decision, not a silent hop.

    `max_connections` bounds the requests in flight at once (the per-backend concurrency limit):
    more wait up to the pool timeout. With `retries`, requests go through `RetryTransport`."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if retries is not None:
        inner = transport or ConnectionSlots(max_connections, _single_connections())
        transport = RetryTransport(inner, retries.policy())
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout.as_httpx() if isinstance(timeout, Timeouts) else timeout,
        limits=limits,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        follow_redirects=False,
        transport=transport,
    )


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` that is safe to log."""
    return {key: ("[redacted]" if key.lower() in SECRET_HEADERS else value) for key, value in headers.items()}
