"""The shared retry rule: what is sent again, how often, and after how long."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from crm_mcp.retry import IDEMPOTENT, RetryPolicy, RetryTransport, retry_after_seconds

pytestmark = pytest.mark.anyio


class Script:
    """A server that answers each request with the next scripted step (a status, or an exception)."""

    def __init__(self, *steps: int | type[Exception] | tuple[int, dict[str, str]]) -> None:
        self.steps = list(steps)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        step = self.steps.pop(0) if self.steps else 200
        if isinstance(step, type):
            raise step("scripted", request=request) if issubclass(step, httpx.HTTPError) else step("scripted")
        status, headers = step if isinstance(step, tuple) else (step, {})
        return httpx.Response(status, headers=headers, text=f"answer {len(self.seen)}")


def client(script: Script, *, policy: RetryPolicy | None = None, slept: list[float] | None = None) -> httpx.AsyncClient:
    async def sleep(seconds: float) -> None:
        if slept is not None:
            slept.append(seconds)

    transport = RetryTransport(httpx.MockTransport(script), policy or RetryPolicy(), sleep=sleep, jitter=lambda: 0.5)
    return httpx.AsyncClient(transport=transport, base_url="https://crm.test")


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_a_get_is_retried_on_a_passing_failure(status: int) -> None:
    script = Script(status, 200)
    async with client(script) as http:
        response = await http.get("/x")
    assert response.status_code == 200
    assert len(script.seen) == 2


@pytest.mark.parametrize(
    "error", [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, ConnectionResetError]
)
async def test_a_get_is_retried_after_a_connection_failure(error: type[Exception]) -> None:
    script = Script(error, 200)
    async with client(script) as http:
        assert (await http.get("/x")).text == "answer 2"


async def test_attempts_are_bounded_and_the_last_answer_is_passed_on() -> None:
    script = Script(503, 503, 503, 503)
    async with client(script, policy=RetryPolicy(attempts=3)) as http:
        response = await http.get("/x")
    assert response.status_code == 503
    assert len(script.seen) == 3


async def test_the_last_connection_failure_is_raised() -> None:
    script = Script(httpx.ConnectError, httpx.ConnectError)
    async with client(script, policy=RetryPolicy(attempts=2)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/x")
    assert len(script.seen) == 2


@pytest.mark.parametrize("outcome", [500, 502, 503, 504, httpx.ReadError, httpx.ReadTimeout])
async def test_a_write_that_may_have_been_processed_is_not_replayed(outcome: int | type[Exception]) -> None:
    script = Script(outcome, 200)
    async with client(script) as http:
        try:
            response = await http.post("/records", json={"name": "x"})
        except httpx.TransportError:
            pass
        else:
            assert response.status_code == outcome
    assert len(script.seen) == 1


@pytest.mark.parametrize("outcome", [429, httpx.ConnectError])
async def test_a_write_the_server_never_processed_is_sent_again(outcome: int | type[Exception]) -> None:
    script = Script(outcome, 201)
    async with client(script) as http:
        response = await http.post("/records", json={"name": "x"})
    assert response.status_code == 201
    assert [request.content for request in script.seen] == [b'{"name":"x"}'] * 2


async def test_a_post_marked_idempotent_is_retried_like_a_read() -> None:
    script = Script(503, 200)
    async with client(script) as http:
        request = http.build_request("POST", "/soap", content=b"<Envelope/>", extensions={IDEMPOTENT: True})
        response = await http.send(request)
    assert response.status_code == 200
    assert len(script.seen) == 2


async def test_a_streamed_body_is_never_sent_twice() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"bytes that cannot be read again"

    script = Script(429, 200)
    async with client(script) as http:
        request = http.build_request("PUT", "/data", content=body(), extensions={IDEMPOTENT: True})
        response = await http.send(request)
    assert response.status_code == 429
    assert len(script.seen) == 1


async def test_retry_after_is_honoured() -> None:
    slept: list[float] = []
    script = Script((503, {"Retry-After": "3"}), 200)
    async with client(script, slept=slept) as http:
        await http.get("/x")
    assert slept == [3.0]


async def test_a_retry_after_over_the_cap_is_passed_on_without_waiting() -> None:
    slept: list[float] = []
    script = Script((429, {"Retry-After": "3600"}), 200)
    async with client(script, policy=RetryPolicy(max_retry_after=30), slept=slept) as http:
        response = await http.get("/x")
    assert response.status_code == 429
    assert slept == []


async def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    slept: list[float] = []
    script = Script(503, 503, 503, 503, 200)
    policy = RetryPolicy(attempts=5, backoff=1.0, max_backoff=3.0)
    async with client(script, policy=policy, slept=slept) as http:
        await http.get("/x")
    assert slept == [0.5, 1.0, 1.5, 1.5]  # min(cap, 1, 2, 4, 8) x jitter 0.5


async def test_a_request_is_sent_once_when_retries_are_off() -> None:
    script = Script(503, 200)
    async with client(script, policy=RetryPolicy(attempts=1)) as http:
        assert (await http.get("/x")).status_code == 503


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("-5", None),
    ],
)
def test_retry_after_values(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_seconds(header, now=now) == expected
