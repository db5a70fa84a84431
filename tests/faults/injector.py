"""Faults injected between a backend and its (in-process) vendor simulator, at the httpx transport.

Why here and not in each simulator: a network fault looks the same whatever the vendor, so one
injector serves all of them, and the simulators stay about vendor behaviour. The injector counts the
requests it sees; a `Rule` fires on the n-th one (counting from when it was armed).

What each kind does, and whether the simulator processed the request:

| kind          | the backend sees                                        | processed |
|---------------|---------------------------------------------------------|-----------|
| `500`         | HTTP 500 with a JSON body                               | no        |
| `503`         | HTTP 503, `Retry-After: 0`                              | no        |
| `429`         | HTTP 429, `Retry-After: 0`                              | no        |
| `reset`       | the connection reset before any answer (`ReadError`)    | no        |
| `reset-after` | the connection reset after the server acted             | yes       |
| `timeout`     | no answer in time (`ReadTimeout`) after the server acted | yes       |
| `cut-body`    | the answer's headers, half its body, then a reset        | yes       |
| `cut-upload`  | a reset while sending a streamed body (`WriteError`)    | no        |
| `expire`      | the vendor's session/ticket expiry just before it       | as usual  |
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx

__all__ = ["KINDS", "FaultTransport", "Kind", "Seen"]

Kind = Literal["500", "503", "429", "reset", "reset-after", "timeout", "cut-body", "cut-upload", "expire"]
KINDS: tuple[Kind, ...] = ("500", "503", "429", "reset", "reset-after", "timeout", "cut-body", "cut-upload", "expire")


@dataclass(frozen=True)
class Seen:
    """A request the injector passed (or faulted)."""

    method: str
    path: str
    streamed: bool
    """The body was a stream (an upload), not bytes."""


@dataclass
class _Rule:
    kind: Kind
    nth: int
    expire: Callable[[], None] | None
    fired: bool = False


@dataclass
class FaultTransport(httpx.AsyncBaseTransport):
    inner: httpx.AsyncBaseTransport
    seen: list[Seen] = field(default_factory=list)
    _rule: _Rule | None = None
    _mark: int = 0

    def mark(self) -> None:
        """Start counting requests from here (see `since_mark`)."""
        self._mark = len(self.seen)

    def since_mark(self) -> list[Seen]:
        return self.seen[self._mark :]

    def arm(self, kind: Kind, nth: int, *, expire: Callable[[], None] | None = None) -> None:
        """Fault the `nth` request (1-based) after the mark, once."""
        self._rule = _Rule(kind, nth, expire)

    @property
    def fired(self) -> bool:
        return self._rule is not None and self._rule.fired

    def disarm(self) -> None:
        self._rule = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        streamed = not isinstance(request.stream, httpx.ByteStream)
        self.seen.append(Seen(request.method, request.url.path, streamed))
        rule = self._rule
        if rule is None or rule.fired or len(self.seen) - self._mark != rule.nth:
            return await self.inner.handle_async_request(request)
        rule.fired = True
        kind = rule.kind
        if kind == "expire":
            assert rule.expire is not None
            rule.expire()
            return await self.inner.handle_async_request(request)
        if kind == "cut-upload":
            async for _ in _body(request):
                break  # the first piece went out, then the connection broke
            raise httpx.WriteError("connection reset by peer (injected)", request=request)
        if kind in ("500", "503", "429", "reset"):
            async for _ in _body(request):
                pass
            if kind == "reset":
                raise httpx.ReadError("connection reset by peer (injected)", request=request)
            headers = {"Retry-After": "0"} if kind != "500" else {}
            return httpx.Response(int(kind), headers=headers, json={"error": f"injected {kind}"}, request=request)
        response = await self.inner.handle_async_request(request)
        if kind in ("reset-after", "timeout"):
            await response.aread()
            await response.aclose()
            if kind == "timeout":
                raise httpx.ReadTimeout("timed out (injected)", request=request)
            raise httpx.ReadError("connection reset by peer (injected)", request=request)
        # cut-body: headers and half the body arrive, then the connection breaks
        body = await response.aread()
        await response.aclose()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Cut(body[: len(body) // 2], request),
            request=request,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _body(request: httpx.Request) -> AsyncIterator[bytes]:
    async for piece in request.stream:  # type: ignore[union-attr]
        yield piece


class _Cut(httpx.AsyncByteStream):
    def __init__(self, head: bytes, request: httpx.Request) -> None:
        self._head = head
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._head:
            yield self._head
        raise httpx.ReadError("connection reset by peer (injected, mid-body)", request=self._request)
