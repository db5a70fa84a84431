"""The one place httpx clients are made, so timeouts, pool limits and redaction are the same everywhere.

Vendor backends and URL sources both get their clients here. Secrets must never reach a log line:
`redact_headers` is what any request logging goes through.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from crm_mcp import __version__

__all__ = ["DEFAULT_TIMEOUT", "SECRET_HEADERS", "USER_AGENT", "new_client", "redact_headers"]

USER_AGENT = f"crm-mcp/{__version__}"

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
"""Generous read/write timeouts: a slow CRM streaming 100 MB is normal, a silent one for a minute is not."""

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
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    max_connections: int = 20,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An `AsyncClient` with crm-mcp's defaults. Redirects are never followed automatically:
    a redirect can point at an address the caller must re-check (URL sources) or at a login page
    (an expired CRM session), and both need a decision, not a silent hop."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        follow_redirects=False,
        transport=transport,
    )


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` that is safe to log."""
    return {key: ("[redacted]" if key.lower() in SECRET_HEADERS else value) for key, value in headers.items()}
