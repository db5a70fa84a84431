"""Record the HTTP exchanges a backend makes, and replay them with plain httpx.

The baselines of the issue are "the backend's own HTTP calls" (a listing), "one httpx GET of the
same bytes" (a download) and "a raw httpx streamed upload of the same body". Rather than rewrite
each vendor's protocol by hand, the benchmark lets crm-mcp's backend do the operation once through
`RecordingTransport` (a real socket underneath) and keeps every request: method, URL, headers
(session cookies, CSRF tokens included) and body — large bodies spooled to disk. Replaying those
requests is then exactly the wire work with none of crm-mcp's code around it.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

__all__ = [
    "Exchange",
    "RecordingTransport",
    "UploadReplay",
    "concurrent_groups",
    "replay",
    "replay_all",
    "replay_client",
]

HEAD_BYTES = 64 * 1024
"""How much of each response is kept (enough for ids and metadata, never a whole file)."""
SPOOL_PIECE = 1024 * 1024


@dataclass
class Exchange:
    method: str
    url: str
    headers: list[tuple[str, str]]
    body_path: Path | None = None
    """The request body, spooled to disk (None: no body)."""
    body_size: int = 0
    status: int = 0
    content_type: str = ""
    response_head: bytes = b""
    response_size: int = 0
    started: float = 0.0
    finished: float = 0.0
    """perf_counter when the request was sent and when its answer was read (or closed)."""

    def body_head(self, count: int = HEAD_BYTES) -> bytes:
        if self.body_path is None:
            return b""
        with self.body_path.open("rb") as file:
            return file.read(count)


class _TeeBody(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, exchange: Exchange, spool: Path) -> None:
        self._inner = inner
        self._exchange = exchange
        self._spool = spool

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with self._spool.open("wb") as file:
            async for chunk in self._inner:
                file.write(chunk)
                self._exchange.body_size += len(chunk)
                yield chunk
        self._exchange.body_path = self._spool if self._exchange.body_size else None

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CountedResponse(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            room = HEAD_BYTES - len(self._exchange.response_head)
            if room > 0:
                self._exchange.response_head += chunk[:room]
            self._exchange.response_size += len(chunk)
            yield chunk
        self._exchange.finished = time.perf_counter()

    async def aclose(self) -> None:
        if not self._exchange.finished:
            self._exchange.finished = time.perf_counter()
        await self._inner.aclose()


class RecordingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that, while `recording` is on, keeps every exchange in `exchanges`."""

    def __init__(self, spool_dir: Path) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._spool_dir = spool_dir
        self.recording = False
        self.exchanges: list[Exchange] = []
        self._count = 0

    def start(self) -> None:
        self.exchanges = []
        self.recording = True

    def stop(self) -> list[Exchange]:
        self.recording = False
        return self.exchanges

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.recording:
            return await self._inner.handle_async_request(request)
        exchange = Exchange(
            method=request.method,
            url=str(request.url),
            headers=list(request.headers.multi_items()),
            started=time.perf_counter(),
        )
        self._count += 1
        spool = self._spool_dir / f"body-{self._count}"
        assert isinstance(request.stream, httpx.AsyncByteStream)
        request.stream = _TeeBody(request.stream, exchange, spool)
        response = await self._inner.handle_async_request(request)
        exchange.status = response.status_code
        exchange.content_type = response.headers.get("content-type", "")
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CountedResponse(response.stream, exchange)
        self.exchanges.append(exchange)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def replay_client() -> httpx.AsyncClient:
    """A plain client: no retries, no redirects, long timeouts, a generous pool."""
    return httpx.AsyncClient(timeout=httpx.Timeout(300.0), follow_redirects=False)


_SKIPPED_HEADERS = {"host", "transfer-encoding"}


async def _file_body(path: Path, substitute: Callable[[bytes], bytes]) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as file:
        first = True
        while chunk := await file.read(SPOOL_PIECE):
            yield substitute(chunk) if first else chunk
            first = False


async def replay(
    client: httpx.AsyncClient,
    exchange: Exchange,
    *,
    sink: Callable[[bytes], object] | None = None,
    substitutions: Iterable[tuple[str, str]] = (),
) -> tuple[float, int, bytes]:
    """Send `exchange` again (body streamed from its spool file); return seconds, status and the
    first `HEAD_BYTES` of the answer. `substitutions` (old, new) rewrite the URL and the first
    MiB of the body, e.g. a client-chosen id that must be fresh for the CRM to accept the request
    again; they must keep lengths equal, or the recorded Content-Length is wrong."""
    pairs = list(substitutions)
    url = exchange.url
    for old, new in pairs:
        assert len(old) == len(new), "substitutions must keep the length"
        url = url.replace(old, new)

    def rewrite(head: bytes) -> bytes:
        for old, new in pairs:
            head = head.replace(old.encode(), new.encode())
        return head

    headers = [(key, value) for key, value in exchange.headers if key.lower() not in _SKIPPED_HEADERS]
    content = _file_body(exchange.body_path, rewrite) if exchange.body_path is not None else None
    start = time.perf_counter()
    head = b""
    async with client.stream(exchange.method, url, headers=headers, content=content) as response:
        async for chunk in response.aiter_raw():
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
            if sink is not None:
                sink(chunk)
    return time.perf_counter() - start, response.status_code, head


def concurrent_groups(exchanges: list[Exchange]) -> list[list[Exchange]]:
    """Split a recording into groups the backend ran concurrently (each started before the group's
    earlier requests had finished), so a replay keeps the backend's own parallelism."""
    groups: list[list[Exchange]] = []
    for exchange in exchanges:
        if groups and exchange.started < max(other.finished for other in groups[-1]):
            groups[-1].append(exchange)
        else:
            groups.append([exchange])
    return groups


async def replay_all(client: httpx.AsyncClient, exchanges: list[Exchange]) -> float:
    """Replay a recording group by group (concurrently within a group); seconds taken."""
    start = time.perf_counter()
    for group in concurrent_groups(exchanges):
        async with anyio.create_task_group() as tasks:
            for exchange in group:
                tasks.start_soon(_replay_checked, client, exchange)
    return time.perf_counter() - start


async def _replay_checked(client: httpx.AsyncClient, exchange: Exchange) -> None:
    _, status, _ = await replay(client, exchange)
    if status != exchange.status:
        raise RuntimeError(f"replay of {exchange.method} {exchange.url} answered {status}, recorded {exchange.status}")


_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
BIG_BODY = 1024 * 1024


def _json_id(head: bytes) -> str | None:
    try:
        value = json.loads(head)
    except ValueError:
        return None
    if isinstance(value, dict):
        found = value.get("id", value.get("Id"))
        return found if isinstance(found, str) else None
    return None


@dataclass
class UploadReplay:
    """How to send a recorded upload's bytes again as new records: the requests that carry the
    bytes (bodies over 1 MiB) plus any earlier request that created the id they are sent to.

    Ids the client chose (a GUID in the creating request's body, as Creatio and Wello take) are
    replaced by fresh ones; ids the CRM chose (EspoCRM) are read from the replayed answer."""

    steps: list[Exchange]
    producers: dict[int, str]
    """index in `steps` → the id its recorded answer carried (replaced by the new answer's id)."""
    client_chosen: list[str]

    @classmethod
    def of(cls, exchanges: list[Exchange]) -> UploadReplay:
        big = [exchange for exchange in exchanges if exchange.body_size > BIG_BODY]
        if not big:
            raise RuntimeError("the recorded upload sent no body over 1 MiB")
        first = exchanges.index(big[0])
        steps: list[Exchange] = []
        producers: dict[int, str] = {}
        client_chosen: set[str] = set()
        for exchange in exchanges[:first]:
            made = _json_id(exchange.response_head)
            if made and any(made in other.url for other in big):
                producers[len(steps)] = made
                steps.append(exchange)
                if made.encode() in exchange.body_head():
                    client_chosen.add(made)
        for exchange in big:
            steps.append(exchange)
            head = exchange.body_head(4096)
            client_chosen |= {found.decode() for found in _UUID.findall(head) if found in exchange.response_head}
        return cls(steps=steps, producers=producers, client_chosen=sorted(client_chosen))

    async def run(self, client: httpx.AsyncClient) -> float:
        """Send the steps once; seconds taken. Fails if the CRM answers otherwise than recorded."""
        mapping = {old: str(uuid.uuid4()) for old in self.client_chosen}
        start = time.perf_counter()
        for index, exchange in enumerate(self.steps):
            _, status, head = await replay(client, exchange, substitutions=list(mapping.items()))
            if status != exchange.status:
                raise RuntimeError(
                    f"upload replay: {exchange.method} {exchange.url} answered {status} "
                    f"(recorded {exchange.status}): {head[:300]!r}"
                )
            if index in self.producers and self.producers[index] not in mapping:
                made = _json_id(head)
                if made is None or len(made) != len(self.producers[index]):
                    raise RuntimeError(f"upload replay: no usable id in {head[:300]!r}")
                mapping[self.producers[index]] = made
        return time.perf_counter() - start
