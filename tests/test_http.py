"""The shared client factory: per-backend timeouts, connection limit and retries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest
from pydantic import ValidationError

from crm_mcp.backends.base import RemoteSettings
from crm_mcp.config import Settings
from crm_mcp.errors import ConfigError
from crm_mcp.http import ConnectionSlots, Retries, Timeouts, new_client
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


async def test_connection_slots_keep_at_most_the_limit_in_flight() -> None:
    go = anyio.Event()
    in_flight: list[int] = []
    state = {"now": 0, "peak": 0}

    class Counting(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            in_flight.append(state["now"])
            await go.wait()
            state["now"] -= 1
            return httpx.Response(200, content=b"ok")

    slots = ConnectionSlots(3, Counting)
    async with httpx.AsyncClient(transport=slots) as client, anyio.create_task_group() as tasks:
        for _ in range(10):
            tasks.start_soon(client.get, "https://crm.test/x")
        await anyio.wait_all_tasks_blocked()
        assert state["now"] == 3
        go.set()
    assert (state["peak"], len(in_flight)) == (3, 10)


async def test_connection_slots_reuse_a_slot_and_make_no_more_than_needed() -> None:
    made: list[httpx.AsyncBaseTransport] = []

    def make() -> httpx.AsyncBaseTransport:
        made.append(httpx.MockTransport(lambda _: httpx.Response(200, content=b"ok")))
        return made[-1]

    async with httpx.AsyncClient(transport=ConnectionSlots(5, make)) as client:
        for _ in range(4):
            assert (await client.get("https://crm.test/x")).content == b"ok"
    assert len(made) == 1


class _Body(httpx.AsyncByteStream):
    """A body read from the network: not read yet when the response comes back."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data"


def _streaming() -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(lambda _: httpx.Response(200, stream=_Body()))


async def test_a_streamed_response_holds_its_slot_until_closed() -> None:
    slots = ConnectionSlots(1, _streaming)
    async with httpx.AsyncClient(transport=slots, timeout=httpx.Timeout(5, pool=0.2)) as client:
        response = await client.send(client.build_request("GET", "https://crm.test/a"), stream=True)
        with pytest.raises(httpx.PoolTimeout, match="max_connections"):
            await client.get("https://crm.test/b")
        await response.aclose()
        await response.aclose()  # a second close gives nothing back twice
        assert (await client.get("https://crm.test/c")).status_code == 200
        with pytest.raises(httpx.PoolTimeout):  # still one slot, not two
            async with client.stream("GET", "https://crm.test/d"), client.stream("GET", "https://crm.test/e"):
                pass


async def test_a_failed_request_gives_its_slot_back() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(
        transport=ConnectionSlots(1, lambda: httpx.MockTransport(refuse)), timeout=httpx.Timeout(5, pool=0.2)
    ) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await client.get("https://crm.test/x")


async def test_backend_clients_send_through_connection_slots_under_the_retries() -> None:
    async with new_client(max_connections=7, retries=Retries()) as client:
        transport = client._transport
        assert isinstance(transport, RetryTransport)
        assert isinstance(transport.inner, ConnectionSlots)
        assert transport.inner._slots.value == 7
