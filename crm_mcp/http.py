"""The one place httpx clients are made, so timeouts, pool limits, retries and redaction are the same everywhere.

Vendor backends and URL sources both get their clients here. A backend's `[backends.<name>]` table may
tune its client (`timeouts`, `retries`, `max_connections`: see `Timeouts` and `Retries`); the
retry rule itself lives in `crm_mcp.retry`. Secrets must never reach a log line: `redact_headers`
is what any request logging goes through.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from pydantic import BaseModel, ConfigDict, Field

from crm_mcp import __version__
from crm_mcp.retry import RetryPolicy, RetryTransport

__all__ = [
    "DEFAULT_TIMEOUT",
    "SECRET_HEADERS",
    "USER_AGENT",
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
        inner = transport or httpx.AsyncHTTPTransport(limits=limits)
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
