"""Retries for CRM requests, as one httpx transport every backend's client sends through.

Why a transport and not per-vendor loops: the rule for when a request may be sent again is the
same for every CRM, and a vendor module should not have to remember it. The rule:

- A request that never reached the server (connection refused, DNS failure, connect timeout) may be
  sent again whatever it does: nothing was processed.
- `429 Too Many Requests` means the server refused before processing, so any request may be sent
  again after the wait it asks for.
- `502`, `503`, `504` and a connection lost before the answer (reset, read timeout) leave open
  whether the server acted. Only *idempotent* requests are sent again: GET, HEAD and OPTIONS, and a
  request a backend marks idempotent (a read that has to be a POST, such as a SOAP call) with
  `extensions={IDEMPOTENT: True}`. A write is never replayed blindly; its backend decides what to do
  (look at what exists, undo what was half done).
- A request whose body is a stream (an upload) is never sent again: the bytes are gone.

Waits grow exponentially with full jitter, and honour `Retry-After` (seconds or an HTTP date) up to
a cap: a server that asks for a longer wait gets its answer passed on instead of a hung tool call.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx

__all__ = ["IDEMPOTENT", "RETRY_STATUSES", "RetryPolicy", "RetryTransport", "retry_after_seconds"]

logger = logging.getLogger(__name__)

IDEMPOTENT = "crm_mcp.idempotent"
"""Request extension: True marks a non-GET request as safe to send again (a read that must be a POST)."""

RETRY_STATUSES = frozenset({429, 502, 503, 504})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, ConnectionRefusedError)
_LOST = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    ConnectionError,  # raw OS errors from transports that do not map them (e.g. an in-process ASGI app)
)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. `attempts` counts the first try: 1 means never retry."""

    attempts: int = 3
    backoff: float = 0.5
    """First wait in seconds; doubled on each further attempt (with full jitter)."""
    max_backoff: float = 8.0
    max_retry_after: float = 30.0
    """Longest `Retry-After` honoured; a longer one is passed on to the caller as the answer."""

    def delay(self, attempt: int, jitter: float) -> float:
        """The wait before attempt `attempt + 1` (attempt counts from 1), `jitter` in [0, 1)."""
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * jitter


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


class RetryTransport(httpx.AsyncBaseTransport):
    """Wraps another transport and sends a request again when the rule above allows it."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._jitter = jitter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        replayable = isinstance(request.stream, httpx.ByteStream)
        idempotent = replayable and (request.method in _SAFE_METHODS or bool(request.extensions.get(IDEMPOTENT)))
        attempt = 1
        while True:
            last = attempt >= self.policy.attempts
            try:
                response = await self.inner.handle_async_request(request)
            except _NEVER_SENT as exc:
                if last or not replayable:
                    raise
                await self._wait(request, attempt, None, type(exc).__name__)
            except _LOST as exc:
                if last or not idempotent:
                    raise
                await self._wait(request, attempt, None, type(exc).__name__)
            else:
                status = response.status_code
                allowed = (status == 429 and replayable) or (status in RETRY_STATUSES and idempotent)
                if last or not allowed:
                    return response
                asked = retry_after_seconds(response.headers.get("retry-after"))
                if asked is not None and asked > self.policy.max_retry_after:
                    return response  # the server wants a longer pause than a tool call should hang
                await response.aclose()
                await self._wait(request, attempt, asked, f"HTTP {status}")
            attempt += 1

    async def _wait(self, request: httpx.Request, attempt: int, asked: float | None, why: str) -> None:
        delay = asked if asked is not None else self.policy.delay(attempt, self._jitter())
        logger.info(
            "%s %s%s: %s; trying again in %.2f s (attempt %d of %d)",
            request.method,
            request.url.host,
            request.url.path,
            why,
            delay,
            attempt + 1,
            self.policy.attempts,
        )
        await self._sleep(delay)

    async def aclose(self) -> None:
        await self.inner.aclose()
