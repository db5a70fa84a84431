"""The shared client factory: per-backend timeouts, connection limit and retries."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError

from crm_mcp.backends.base import RemoteSettings
from crm_mcp.config import Settings
from crm_mcp.errors import ConfigError
from crm_mcp.http import Retries, Timeouts, new_client
from crm_mcp.retry import RetryTransport

pytestmark = pytest.mark.anyio


async def test_timeouts_reach_the_client() -> None:
    async with new_client(timeout=Timeouts(connect=1, read=2, write=3, pool=4)) as client:
        assert client.timeout == httpx.Timeout(connect=1, read=2, write=3, pool=4)


async def test_retries_wrap_the_transport_and_are_applied() -> None:
    answers = iter([503, 200])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(next(answers), headers={"Retry-After": "0"})

    async with new_client(transport=httpx.MockTransport(handler), retries=Retries(backoff=0)) as client:
        assert isinstance(client._transport, RetryTransport)
        assert (await client.get("https://crm.test/x")).status_code == 200
    assert seen == ["/x", "/x"]


async def test_without_retries_a_request_is_sent_once() -> None:
    async with new_client(transport=httpx.MockTransport(lambda _: httpx.Response(503))) as client:
        assert (await client.get("https://crm.test/x")).status_code == 503


@pytest.mark.parametrize(
    ("model", "values"),
    [(Timeouts, {"read": 0}), (Timeouts, {"connect": -1}), (Retries, {"attempts": 0}), (Retries, {"tries": 2})],
)
def test_bad_network_settings_are_refused(model: type[Timeouts | Retries], values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model(**values)


def test_a_backend_table_tunes_its_client(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        '[backends.crm]\nvendor = "wello"\nurl = "https://wello.test"\nusername = "u"\npassword = "p"\n'
        'domain = "d"\nmax_connections = 4\n[backends.crm.timeouts]\nread = 5\n[backends.crm.retries]\nattempts = 1\n'
    )
    crm = settings.backends["crm"]
    assert isinstance(crm, RemoteSettings)
    assert (crm.max_connections, crm.timeouts.read, crm.timeouts.connect, crm.retries.attempts) == (4, 5, 10, 1)


def test_a_misspelt_network_key_names_the_backend_and_the_key(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(
            '[backends.crm]\nvendor = "wello"\nurl = "https://wello.test"\nusername = "u"\npassword = "p"\n'
            'domain = "d"\n[backends.crm.retries]\ntries = 2\n'
        )
    assert "crm" in str(caught.value)
    assert "tries" in str(caught.value)
